#!/usr/bin/env bash
# boxrefine's set-up and checks. The README's two commands:
#   bash run.sh demo   the main job on the bundled sample
#   bash run.sh test   install the development tools and run every check (CI runs this)
# and, for developers:
#   bash run.sh setup  create or update .venv only
#   bash run.sh nbs    execute the notebooks in place (saving outputs), export and clean them
#   bash run.sh docs   build the offline docs site into _build/site
#   bash run.sh lab    open JupyterLab on the tutorial notebook, with the project's environment
# Every command creates or reuses the virtual environment .venv inside the checkout and is safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
# glibc's allocator returns big tensors' memory to the OS on every free; keeping it is 1.6x faster here (DESIGN.md)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-17179869184} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184} MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-1073741824}

say() { printf '\n== %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

base_python() {  # the newest Python >= 3.10 on PATH, preferring 3.11 (the local torch wheels are built for it)
    local p
    for p in ${PYTHON:-} python3.11 python3.12 python3.13 python3.10 python3; do
        command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && { echo "$p"; return; }
    done
    die "no Python 3.10 or newer on PATH (set PYTHON=/path/to/python3)"
}

TORCH_OK='import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)'

torch_pair() {  # the torch + torchvision requirement for this machine
    if [ -n "${BOXREFINE_TORCH:-}" ]; then echo "$BOXREFINE_TORCH"; return; fi
    case "$(uname -m)" in
        aarch64|arm64) echo "torch==2.9.1 torchvision==0.24.1" ;;   # CPU builds exist for this pair
        *) echo "torch==2.14.1 torchvision==0.29.1" ;;             # a pair that installs and imports together
    esac
}

ensure_venv() {
    if [ ! -x "$PY" ]; then
        local base; base=$(base_python)
        if "$base" -c "$TORCH_OK" >/dev/null 2>&1; then
            say "creating .venv with $base, reusing its working torch + torchvision"
            "$base" -m venv --system-site-packages "$VENV"
        else
            say "creating .venv with $base"
            "$base" -m venv "$VENV"
        fi
    fi
    if ! "$PY" -c "$TORCH_OK" >/dev/null 2>&1; then
        local pair; pair=$(torch_pair)
        say "installing $pair (pip takes it from local disk where the machine has it)"
        # shellcheck disable=SC2086
        pip_install $pair
        "$PY" -c "$TORCH_OK" || die "torch + torchvision ($pair) installed but do not work together; set BOXREFINE_TORCH to a pair that does"
    fi
}

ensure_package() {  # $1: "" or "[dev]"; reinstalls only when settings.ini or setup.py changed
    local stamp="$VENV/.boxrefine-installed$1" digest
    digest=$(cat settings.ini setup.py | sha256sum | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ] || ! "$PY" -c 'import boxrefine' 2>/dev/null; then
        say "installing boxrefine$1 (editable) and its requirements"
        pip_install -e ".$1"
        "$PY" -c 'import boxrefine' || die "boxrefine did not install"
        echo "$digest" > "$stamp"
    fi
}

ensure_chromium() {  # Debian's Chromium and ChromeDriver drive the docs' browser check
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
    say "installing Debian's chromium and chromium-driver for the docs' browser check"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null \
        || die "could not install chromium and chromium-driver with apt-get"
}

pip_install() {  # quiet on success; on failure, pip's whole log and a non-zero exit
    "$PY" -m pip install "$@" > "$VENV/pip.log" 2>&1 || { cat "$VENV/pip.log" >&2; die "pip install $* failed (log above, kept in .venv/pip.log)"; }
}

setup() { ensure_venv; ensure_package "${1:-}"; export PATH="$VENV/bin:$PATH"; }

fingerprint() { find boxrefine nbs README.md -type f \( -name '*.py' -o -name '*.ipynb' -o -name '*.md' -o -name '*.yml' \) -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; }

check_unchanged() {  # $1: what is checked; the rest: the command that must leave every file as it is
    local what=$1; shift
    local before after; before=$(fingerprint)
    "$@"
    after=$(fingerprint)
    if [ "$before" != "$after" ]; then
        diff <(echo "$before") <(echo "$after") | grep '^>' | awk '{print "  changed: " $3}' >&2
        die "$what: '$*' changed the files above. Run it, review, and commit the result."
    fi
}

run_tests() {
    setup "[dev]"
    ensure_chromium
    local bin=$VENV/bin start=$SECONDS
    say "notebooks and boxrefine/ in sync (nbdev_export)";  check_unchanged "export" "$bin/nbdev_export"
    say "notebooks clean (nbdev_clean)";                    check_unchanged "clean" "$bin/nbdev_clean"
    say "README generated from nbs/index.ipynb";            check_unchanged "readme" "$PY" tools/docs.py readme
    say "lint and format (ruff: lines <= 120, no joined statements, pyflakes)"
    "$bin/ruff" check .
    "$bin/ruff" format --check nbs tests bench tools
    # two notebooks at a time, one thread each: two torch processes with two threads each on two cores run 5x slower
    say "notebooks run (nbdev_test)";                       OMP_NUM_THREADS=1 "$bin/nbdev_test" --n_workers 2
    say "pytest tests/ (includes the offline docs build and its browser check)"
    # two test files at a time (pytest-xdist), one thread each, as for the notebooks; a file's fixtures stay in one process
    OMP_NUM_THREADS=1 "$PY" -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile --durations=15
    say "all checks passed in $((SECONDS - start)) s"
}

execute_notebooks() {
    setup "[dev]"
    "$PY" tools/docs.py execute nbs/*.ipynb
    "$VENV/bin/nbdev_export"
    "$VENV/bin/nbdev_clean"
    "$PY" tools/docs.py readme
}

case "${1:-}" in
    demo) setup ""; shift; exec "$VENV/bin/boxrefine" demo "$@" ;;
    test) run_tests ;;
    setup) setup "[dev]" ;;
    nbs) execute_notebooks ;;
    docs) setup "[dev]"; "$PY" tools/docs.py build --out _build/site ;;
    lab) setup "[dev]"; shift; exec "$VENV/bin/jupyter" lab nbs/tutorial_sample.ipynb "$@" ;;
    *) die "usage: bash run.sh demo|test|setup|nbs|docs|lab" ;;
esac
