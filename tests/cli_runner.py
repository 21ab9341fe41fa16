"""`run_cli`: the `boxrefine` command as a user runs it, in a process of its own, without importing torch each time.

A subprocess per command spent about 5 s importing torch and torchvision on a 2-core AVX2 CPU (some 200 s of the
suite). Here a server process imports `boxrefine.cli` once and forks a child per command: each command still gets
its own process, environment, working folder, exit code, stdout and stderr, as `python -m boxrefine.cli` does, and
never shares the test's process. The server is single-threaded, so forking it is safe. Commands that need a new
interpreter (torchrun, the console script) still use `subprocess`.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

_server = None


def _serve() -> None:
    "The server: per request line (JSON), fork; the child runs the command; answer its exit code on a line."
    from boxrefine.cli import main

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(main, **request))
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _child(main, argv: list, cwd: str, env: dict, out: str, err: str, timeout: int) -> int:
    "In the forked process: the caller's environment and folder, stdin empty, stdout and stderr to the files."
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
        os.dup2(os.open(path, flags), fd)
    sys.stdin, sys.stdout, sys.stderr = open(0, closefd=False), *(open(fd, "w", 1, closefd=False) for fd in (1, 2))
    signal.alarm(timeout)  # past it the command is killed, as subprocess.run's timeout would
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # uncaught: the traceback and exit code 1, as Python gives
        traceback.print_exc()
        code = 1
    sys.stdout.flush(), sys.stderr.flush()
    return code


def run_cli(*args, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    "Run `boxrefine ARGS` in a process of its own: its exit code, stdout and stderr."
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
    argv = [str(a) for a in args]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch(), err.touch()
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": dict(os.environ), "timeout": timeout}
        _server.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}) + "\n")
        code = int(_server.stdout.readline())
        if code == -signal.SIGALRM:
            raise subprocess.TimeoutExpired(["boxrefine", *argv], timeout)
        return subprocess.CompletedProcess(["boxrefine", *argv], code, out.read_text(), err.read_text())


if __name__ == "__main__":
    _serve()
