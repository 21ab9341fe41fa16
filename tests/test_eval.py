"The `boxrefine eval` and `refine` commands on the bundled sample and on BCCD, run as a user runs them."

import json

from boxrefine.cli import main
from boxrefine.metrics import METRIC_KEYS
from test_cli import SAMPLE, run


def test_eval_command_writes_the_contract(tmp_path):
    out = tmp_path / "eval.json"
    done = run(
        "eval",
        *SAMPLE,
        "--split",
        "val",
        "--max-images",
        "1",
        "--noise",
        "0.2",
        "--cache-dir",
        str(tmp_path / "c"),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["n_images"], result["noise"], result["seed"], result["split"]) == (1, 0.2, 0, "val")
    assert result["n_boxes"] == result["methods"]["noisy"]["n_boxes"] > 0
    assert set(result["methods"]) == {"noisy", "sam", "refined"} and result["refiner"].startswith("the shipped prior")
    for method in result["methods"].values():
        assert set(METRIC_KEYS) <= set(method)
    assert result["encoder"]["random_weights"] is True and "RANDOM weights" in done.stdout
    assert "| noisy |" in done.stdout and "| sam |" in done.stdout


def test_eval_noisy_baseline_on_bccd_test(bccd_annotations, tmp_path):
    out = tmp_path / "eval.json"
    done = run(
        "eval",
        "--ann",
        str(bccd_annotations),
        "--images",
        str(bccd_annotations.parent / "images"),
        "--no-sam",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["n_images"], result["split"], set(result["methods"])) == (72, "test", {"noisy", "refined"})
    assert abs(result["methods"]["noisy"]["mean_iou"] - 0.66) < 0.03


def test_eval_scores_systematic_errors_and_refuses_unknown_kinds(tmp_path, capsys):
    "--errors measures one kind of box error; clean input has mean IoU 1; an unknown kind is one line."
    ious = {}
    for kind in ("clean", "larger", "edge"):  # in this process: main() is what the console script runs
        out = tmp_path / f"{kind}.json"
        assert main(["eval", *SAMPLE, "--split", "val", "--no-sam", "--errors", kind, "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["errors"] == kind
        ious[kind] = result["methods"]["noisy"]["mean_iou"]
    assert ious["clean"] > 0.999 and 0.6 < ious["larger"] < 0.95 and 0.75 < ious["edge"] < 0.97
    capsys.readouterr()
    code = main(["eval", *SAMPLE, "--split", "val", "--no-sam", "--errors", "jitter:1 rotated:1"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown kind 'rotated'" in err and len(err.strip().splitlines()) == 1


def test_refine_and_eval_use_the_prior_and_report_what_the_gate_did(tmp_path):
    "Without --run the shipped prior refines; a margin above any predicted gain keeps every input box."
    out = tmp_path / "refined.json"
    done = run("refine", *SAMPLE, "--max-images", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "refiner: the shipped prior (" in done.stdout and "kept" in done.stdout
    anns = [a for a in json.loads(out.read_text())["annotations"] if "quality" in a]
    assert anns and all(isinstance(a["moved"], bool) and 0 <= a["quality"] <= 1 for a in anns)
    assert sum(a["moved"] for a in anns) <= 0.2 * len(
        anns
    )  # the sample's boxes are its true boxes: the gate keeps most
    assert all(a["bbox"] == a["bbox_input"] for a in anns if not a["moved"])
    kept = tmp_path / "kept.json"
    assert run("refine", *SAMPLE, "--max-images", "3", "--out", str(kept), "--min-gain", "2").returncode == 0
    assert all(
        a["bbox"] == a["bbox_input"] and not a["moved"]
        for a in json.loads(kept.read_text())["annotations"]
        if "moved" in a
    )
    every = tmp_path / "every.json"  # a margin below any predicted loss takes every proposal
    assert run("refine", *SAMPLE, "--max-images", "3", "--out", str(every), "--min-gain", "-1").returncode == 0
    assert all(a["moved"] for a in json.loads(every.read_text())["annotations"] if "moved" in a)
    done = run("eval", *SAMPLE, "--split", "val", "--no-sam", "--errors", "clean", "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    refined = json.loads((tmp_path / "e.json").read_text())["methods"]["refined"]
    assert abs(refined["improved"] + refined["unchanged"] + refined["worse"] - 1) < 1e-9
    assert refined["mean_iou"] > 0.95 and refined["worse_by_0.05"] < 0.05  # clean boxes: do no harm
    assert "% of boxes improved" in done.stdout and "unchanged" in done.stdout
