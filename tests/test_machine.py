"Precision by device: what auto picks where bf16 is native and where it is not, and what a run records."

import json
import os
import subprocess
import sys

import torch

from boxrefine.machine import choose_precision, native_bf16

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # an AVX2 CPU without native bf16, imitated

CHOICES = """
import json, warnings
from boxrefine.machine import SlowPrecisionWarning, choose_precision, native_bf16
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    explicit = choose_precision("bf16", "cpu")
print(json.dumps({"native": native_bf16(torch.device("cpu")), "capability": torch.backends.cpu.get_cpu_capability(),
                  "auto": choose_precision("auto", "cpu").precision, "reason": choose_precision("auto", "cpu").reason,
                  "explicit": explicit.precision,
                  "warnings": [str(w.message) for w in caught if w.category is SlowPrecisionWarning]}))
"""


def choices(env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHOICES], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_auto_is_fp32_where_bf16_is_not_native_and_bf16_asked_for_there_warns_with_the_ratio():
    got = choices(AVX2_ONLY)
    assert (got["native"], got["capability"], got["auto"]) == (False, "AVX2", "fp32")
    assert "no native bf16" in got["reason"]
    assert got["explicit"] == "bf16" and len(got["warnings"]) == 1 and "x slower than fp32" in got["warnings"][0]


def test_auto_on_this_machine_follows_its_capability(tmp_path, monkeypatch):
    monkeypatch.setenv("BOXREFINE_PROBES", str(tmp_path / "probes.json"))
    here = choose_precision("auto", "cpu", probe=lambda p: None, what="nothing")
    if native_bf16(torch.device("cpu")):
        assert here.seconds is not None and set(here.seconds) == {"bf16", "fp32"}  # measured, and remembered
        assert json.loads((tmp_path / "probes.json").read_text())
    else:
        assert here.precision == "fp32" and here.seconds is None


def test_a_run_records_its_precision_in_every_epoch(tmp_path):
    from boxrefine.data import load_sample
    from boxrefine.config import load_config
    from boxrefine.train import split_records, train_refiner

    train, val = split_records(load_sample(verbose=False).records, load_config().data)
    learn = train_refiner(
        load_config(overrides=["training.epochs=1", "data.batch_size=2"]),
        train[:2],
        val[:2],
        tmp_path / "run",
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["precision"] == learn.precision in ("bf16", "fp32")
