"The `boxrefine` command, run as a user runs it."
import subprocess
import sys
from pathlib import Path

from PIL import Image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "boxrefine.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_prints_the_table_and_writes_the_picture_twice(tmp_path):
    for _ in range(2):  # safe to run twice
        done = run("demo", "--out", str(tmp_path / "out"))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert "463 true boxes" in lines[0]
        header = lines[1].split()
        assert header[:4] == ["r", "boxes", "mean_iou", "iou_ge_0.75"]
        rows = [dict(zip(header, map(float, l.split()))) for l in lines[2:5]]
        assert [r["r"] for r in rows] == [0.1, 0.2, 0.4]
        assert 0.75 < rows[0]["mean_iou"] < 0.87 and 0.6 < rows[1]["mean_iou"] < 0.72 and 0.4 < rows[2]["mean_iou"] < 0.52
        assert all(0 < r["loss"] < 5 and r["pixel_l1"] > 10 * r["loss"] for r in rows)
        with Image.open(tmp_path / "out" / "noise.png") as im: assert im.size[0] > 1000 and im.size[1] > 300


def test_unknown_command_fails_with_usage():
    done = run("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "boxrefine"  # beside the interpreter that installed the package
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout
