"The `boxrefine` command, run as a user runs it."

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_runner import run_cli as run  # each command in a process of its own, forked after torch's import


def test_demo_trains_prints_the_tables_and_writes_the_pictures_twice(tmp_path):
    for epochs in (1, 2):  # safe to run twice: the second run replaces the first one's run folder
        done = run("demo", "--out", str(tmp_path / "out"), "--epochs", str(epochs))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert "463 true boxes" in lines[0]
        header = lines[1].split()
        assert header[:4] == ["r", "boxes", "mean_iou", "iou_ge_0.75"]
        rows = [dict(zip(header, map(float, l.split()))) for l in lines[2:5]]
        assert [r["r"] for r in rows] == [0.1, 0.2, 0.4]
        assert (
            0.75 < rows[0]["mean_iou"] < 0.87 and 0.6 < rows[1]["mean_iou"] < 0.72 and 0.4 < rows[2]["mean_iou"] < 0.52
        )
        assert all(0 < r["loss"] < 5 and r["pixel_l1"] > 10 * r["loss"] for r in rows)
        table = {
            l.split("|")[1].strip(): [float(v) for v in l.split("|")[2:-1]]
            for l in lines
            if l.startswith(("| noisy", "| prior", "| fine-tuned"))
        }
        assert set(table) == {"noisy", "prior", "fine-tuned", "fine-tuned, no gate"}
        assert abs(table["noisy"][0] - 0.673) < 0.01  # mean IoU of the 8 validation images' noisy boxes
        assert (
            table["prior"][0] > table["noisy"][0] + 0.05 and 0.5 < table["fine-tuned"][0] <= 1
        )  # the prior helps before training
        assert any(l.startswith("before training: the shipped prior") for l in lines)
        assert any(l.startswith("fine-tuned: ") and "% of boxes improved" in l for l in lines)
        with Image.open(tmp_path / "out" / "noise.png") as im:
            assert im.size[0] > 1000 and im.size[1] > 300
        with Image.open(tmp_path / "out" / "refined.png") as im:
            assert im.size[0] >= 600
        assert (tmp_path / "out" / "run" / "best.pt").exists() and len(
            (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()
        ) == epochs


def test_unknown_command_fails_with_usage():
    done = run("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "boxrefine"  # beside the interpreter that installed the package
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


import json

from boxrefine.cli import main
from boxrefine.data import sample_paths

SAMPLE = ["--ann", str(sample_paths().annotations), "--images", str(sample_paths().images)]


def test_cache_command_warms_then_hits_then_reports_and_clears(tmp_path, capsys):
    args = ["cache", *SAMPLE, "--max-images", "2", "--cache-dir", str(tmp_path), "--json"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    cold = json.loads(first.stdout)
    assert {"hits", "misses", "corrupt", "hit_rate", "bytes_read", "bytes_written", "encoder_calls"} <= set(cold)
    assert (
        (cold["hits"], cold["misses"], cold["corrupt"]) == (0, 2, 0)
        and cold["encoder_calls"] >= 1
        and cold["bytes_written"] > 0
    )
    assert "RANDOM weights" in first.stderr  # said loudly, on stderr, so --json output stays one JSON object
    capsys.readouterr()

    def in_process(*argv) -> dict:  # the later calls run main() here: only the first needs its own process
        assert main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    warm = in_process(*args)
    assert (warm["hits"], warm["misses"], warm["encoder_calls"], warm["hit_rate"]) == (2, 0, 0, 1.0)
    assert warm["bytes_read"] == cold["bytes_written"]
    stats = in_process("cache", "--stats", "--cache-dir", str(tmp_path), "--json")
    assert stats["entries"] == 2 and stats["bytes"] == cold["bytes_written"]
    limit = str(cold["bytes_written"] * 1.2 / 2**30)  # GB: room for two entries, not three
    assert main(["cache", *SAMPLE, "--max-images", "3", "--cache-dir", str(tmp_path), "--max-disk", limit]) == 0
    capsys.readouterr()
    assert in_process("cache", "--stats", "--cache-dir", str(tmp_path), "--json")["entries"] == 2
    assert main(["cache", *SAMPLE, "--cache-dir", str(tmp_path), "--max-disk", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--max-disk must be a size in GB > 0, got 0.0")
    assert in_process("cache", "--clear", "--cache-dir", str(tmp_path), "--json")["cleared_entries"] == 2
    with pytest.raises(SystemExit) as refused:  # neither a dataset nor --stats/--clear: argparse's usage error
        main(["cache", "--cache-dir", str(tmp_path)])
    assert refused.value.code == 2


def test_user_errors_are_one_line(tmp_path):
    done = run("eval", *SAMPLE, "--no-sam")  # the sample has no test split
    assert (
        done.returncode == 2
        and "Traceback" not in done.stderr
        and "boxrefine eval: error:" in done.stderr
        and "test" in done.stderr
    )
    same = run("eval", *SAMPLE, "--split", "val", "--no-sam", "--json", str(sample_paths().annotations))
    assert same.returncode == 2 and "would overwrite the input annotations" in same.stderr


def test_eval_and_demo_never_overwrite_what_they_did_not_make(tmp_path, capsys):
    existing = tmp_path / "precious.json"
    existing.write_text("{}")
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "mine.txt").write_text("keep me")
    cases = [  # in this process: main() is what the console script runs
        (["eval", *SAMPLE, "--split", "val", "--no-sam", "--json", str(existing)], "exists"),
        (["eval", *SAMPLE, "--split", "val", "--no-sam", "--noise", "1.5"], "--noise must be in [0, 1)"),
        (["eval", *SAMPLE, "--split", "val", "--no-sam", "--run", str(existing)], "is not a boxrefine refiner"),
        (["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"], "is not a demo run"),
    ]
    for args, message in cases:
        code, err = main(args), capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert existing.read_text() == "{}" and (tmp_path / "demo" / "run" / "mine.txt").read_text() == "keep me"


def test_bad_inputs_end_with_one_line(tmp_path, capsys):
    "A folder as --ann, an info that is not a mapping, --max-images 0, a split without boxes: one line each, no file."
    cases = [
        (["eval", "--ann", str(tmp_path), "--images", str(tmp_path), "--no-sam"], "a folder with neither XML files"),
        (["eval", *SAMPLE, "--split", "val", "--no-sam", "--max-images", "0"], "--max-images must be >= 1"),
    ]
    coco = json.loads(sample_paths().annotations.read_text())
    coco["info"] = ["not", "a", "mapping"]
    bad_info = tmp_path / "info.json"
    bad_info.write_text(json.dumps(coco))
    cases.append(
        (
            [
                "refine",
                "--ann",
                str(bad_info),
                "--images",
                str(sample_paths().images),
                "--out",
                str(tmp_path / "o.json"),
            ],
            "'info' must be a mapping",
        )
    )
    empty = json.loads(sample_paths().annotations.read_text())
    val_ids = {im["id"] for im in empty["images"] if im["split"] == "val"}
    empty["annotations"] = [a for a in empty["annotations"] if a["image_id"] not in val_ids]
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    cases.append(
        (
            [
                "eval",
                "--ann",
                str(tmp_path / "empty.json"),
                "--images",
                str(sample_paths().images),
                "--split",
                "val",
                "--no-sam",
            ],
            "holds no boxes to evaluate",
        )
    )
    for args, message in cases:  # in this process: main() is what the console script runs
        code, err = main(args), capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "o.json").exists()
