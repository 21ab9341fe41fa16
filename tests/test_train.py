"Training, resuming, evaluating and refining, end to end on real BCCD images from the bundled sample."

import json
import math
import warnings

import numpy as np
import pytest
import torch

from boxrefine.cache import FeatureCache
from boxrefine.data import load_sample, sample_paths
from boxrefine.encoder import Encoder, EncoderConfig, RandomWeightsWarning
from boxrefine.config import load_config
from boxrefine.gate import curve_line
from boxrefine.learner import Callback, NonFiniteLoss
from boxrefine.train import split_records, train_refiner
from boxrefine.metrics import METRIC_KEYS
from boxrefine.refiner import BoxRefiner, EncoderMismatch
from test_cli import SAMPLE, run


@pytest.fixture(scope="module")
def records():
    train, val = split_records(load_sample(verbose=False).records, load_config().data)
    return train[:4], val[:2]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    "A run trained by the command line: 2 epochs on 4 + 4 sample images."
    out = tmp_path_factory.mktemp("runs") / "run"
    done = run("train", *SAMPLE, "--out", str(out), "--epochs", "2", "--max-images", "4", "--set", "data.batch_size=2",
               "--monitor")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done


def test_train_command_writes_the_run(cli_run):
    out, done = cli_run
    assert {p.name for p in out.iterdir()} == {
        ".boxrefine-run",
        "data.json",
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "config.yaml",
        "curves.png",
        "monitor-boxes.png",
        "monitor-curves.png",
    }
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(
        0 < r["train_loss"] < 5 and 0 < r["val_loss"] < 5 and 0 < r["val_mean_iou"] <= 1 for r in rows
    )  # never in the hundreds
    assert "SAM features: off" in done.stdout and "best validation mean IoU" in done.stdout
    assert load_config(out / "config.yaml").training.epochs == 2


def test_a_run_is_never_overwritten_and_resume_continues(cli_run, tmp_path):
    out, _ = cli_run
    again = run("train", *SAMPLE, "--out", str(out), "--epochs", "2", "--max-images", "4")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    copy = tmp_path / "run"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    resumed = run("train", *SAMPLE, "--out", str(copy), "--epochs", "3", "--max-images", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(l)["epoch"] for l in (copy / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_eval_with_run_adds_refined(cli_run, tmp_path):
    out, _ = cli_run
    result_path = tmp_path / "eval.json"
    done = run(
        "eval",
        *SAMPLE,
        "--split",
        "val",
        "--max-images",
        "3",
        "--no-sam",
        "--run",
        str(out),
        "--json",
        str(result_path),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(result_path.read_text())
    assert set(result["methods"]) == {"noisy", "refined"}
    for method in result["methods"].values():
        assert set(METRIC_KEYS) <= set(method)
    assert result["methods"]["refined"]["n_boxes"] == result["methods"]["noisy"]["n_boxes"] == result["n_boxes"]


def test_refine_writes_a_new_coco_file_and_never_overwrites(cli_run, tmp_path):
    out, _ = cli_run
    target = tmp_path / "refined.json"
    done = run("refine", "--run", str(out), *SAMPLE, "--max-images", "3", "--out", str(target))
    assert done.returncode == 0, done.stderr
    before, after = json.loads(sample_paths().annotations.read_text()), json.loads(target.read_text())
    assert len(after["annotations"]) == len(before["annotations"]) and after["images"] == before["images"]
    refined = [a for a in after["annotations"] if "quality" in a]
    first_three = {im["id"] for im in before["images"][:3]}
    assert {a["image_id"] for a in refined} == first_three and len(refined) == sum(
        a["image_id"] in first_three for a in before["annotations"]
    )
    originals = {a["id"]: a["bbox"] for a in before["annotations"]}
    assert all(
        a["bbox_input"] == originals[a["id"]] and 0 <= a["quality"] <= 1 and min(a["bbox"][2:]) > 0 for a in refined
    )
    assert (
        run("refine", "--run", str(out), *SAMPLE, "--out", str(target)).returncode == 2
    )  # exists: refused without --overwrite
    same = run("refine", "--run", str(out), *SAMPLE, "--out", str(sample_paths().annotations))
    assert same.returncode == 2 and "refine never overwrites its input" in same.stderr
    assert json.loads(sample_paths().annotations.read_text()) == before


def test_config_errors_are_one_line(tmp_path):
    bad = run("train", *SAMPLE, "--out", str(tmp_path / "r"), "--set", "training.lrr=1")
    assert bad.returncode == 2 and "unknown config key training.lrr" in bad.stderr and "Traceback" not in bad.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("training:\n  schedule: linear\n")
    bad = run("train", *SAMPLE, "--out", str(tmp_path / "r"), "--config", str(cfg))
    assert bad.returncode == 2 and "training schedule must be one of" in bad.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_amp_on_and_off_both_train(records, precision):
    "Two images only: on a CPU without native bf16, bf16 is many times slower."
    train, val = records
    config = load_config(overrides=["training.epochs=2", "data.batch_size=2", f"training.precision={precision}"])
    learn = train_refiner(config, train[:2], val[:1], progress=False)
    assert learn.precision == precision and len(learn.history) == 2
    assert all(math.isfinite(h["val_loss"]) and h["skipped_steps"] == 0 for h in learn.history)


def test_the_edge_head_trains_saves_and_refines(records, tmp_path):
    "`model.head: edges` from scratch: its position loss falls, its run loads as a refiner that moves boxes by it."
    config = load_config(
        overrides=["training.epochs=3", "data.batch_size=2", "model.head=edges", "training.init=scratch"]
    )
    learn = train_refiner(config, *records, tmp_path / "edges", progress=False)
    assert learn.step_losses[-1] < learn.step_losses[0] and all(math.isfinite(h["val_loss"]) for h in learn.history)
    refiner = BoxRefiner.load(tmp_path / "edges")
    assert refiner.net.config.head == "edges" and refiner.net.deltas is None
    rec = records[1][0]
    out = refiner.refine_boxes(rec.path, rec.boxes, min_gain=-1.0)  # every proposal taken
    assert out.boxes.shape == rec.boxes.shape and torch.isfinite(out.boxes).all()


def test_non_finite_loss_names_the_batch(records):
    class Poison(Callback):
        def before_batch(self, learn):
            with torch.no_grad():
                learn.model.edges.head_x[-1].bias.fill_(float("nan"))  # the default edge head

    config = load_config(overrides=["training.epochs=1", "data.batch_size=2"])
    with pytest.raises(
        NonFiniteLoss, match=r"non-finite prediction in refinement pass 1 at epoch 0, step 0, images \[\d+, \d+\]"
    ):
        train_refiner(config, *records, progress=False, cbs=[Poison()])


@pytest.fixture(scope="module")
def sam_run(records, tmp_path_factory):
    "A refiner that reads SAM features, trained from a warm cache; the encoder's calls are counted."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        cache = FeatureCache(Encoder(EncoderConfig()), tmp_path_factory.mktemp("cache"))
    train, val = records
    cache.warm([r.path for r in train + val], progress=False)
    calls = cache.encoder.calls
    config = load_config(overrides=["training.epochs=2", "data.batch_size=2", "model.sam=embedding+interm"])
    learn = train_refiner(config, train, val, tmp_path_factory.mktemp("runs") / "sam", cache=cache, progress=False)
    return learn, cache, calls


def test_warm_cache_training_never_calls_the_encoder(sam_run):
    learn, cache, calls = sam_run
    assert cache.encoder.calls == calls and cache.stats.hit_rate > 0.5
    assert all(h["cache_hit_rate"] == 1.0 for h in learn.history)  # every read of every epoch was a hit


def test_the_hit_rate_is_counted_in_loader_workers(records, tmp_path):
    "With `data.num_workers` > 0 the workers read their own copies of the cache: the logged rate still counts them."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        cache = FeatureCache(Encoder(EncoderConfig()), tmp_path / "cache")
    train, val = records[0][:4], records[1][:2]
    cache.warm([r.path for r in train], progress=False)  # the validation images are not cached yet
    config = load_config(
        overrides=["training.epochs=2", "data.batch_size=2", "model.sam=embedding+interm", "data.num_workers=2"]
    )
    learn = train_refiner(config, train, val, cache=cache, progress=False)
    first, second = (h["cache_hit_rate"] for h in learn.history)
    assert first == 4 / 6 and second == 1.0  # epoch 1: the 2 validation images missed, then were cached


def test_a_refiner_refuses_features_of_another_encoder(sam_run, records, tmp_path):
    learn, cache, _ = sam_run
    refiner = learn.refiner
    rec = records[1][0]
    boxes = rec.boxes[:3].numpy()
    refined, quality = refiner.refine(rec.path, boxes, cache=cache)
    assert refined.shape == (3, 4) and quality.shape == (3,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        other = FeatureCache(Encoder(EncoderConfig(seed=1)), tmp_path)
    with pytest.raises(EncoderMismatch, match="this refiner was trained on features of encoder vit_tiny-"):
        refiner.refine(rec.path, boxes, cache=other)


def test_refine_a_single_box_and_boxes_on_the_border(cli_run):
    refiner = BoxRefiner.load(cli_run[0])
    rec = load_sample(verbose=False).records[0]
    h, w = rec.image_hw
    one, quality = refiner.refine(rec.path, rec.boxes[:1])
    assert one.shape == (1, 4) and quality.shape == (1,) and isinstance(one, torch.Tensor)
    border = np.array([[0, 0, 40, 30], [w - 50, h - 40, w, h], [0, 100, 60, h], [-10, -10, 30, 30]], np.float32)
    refined, _ = refiner.refine(rec.path, border)
    assert refined.shape == (4, 4) and np.isfinite(refined).all()
    assert (refined[:, :2] >= 0).all() and (refined[:, 2] <= w).all() and (refined[:, 3] <= h).all()
    assert (refined[:, 2:] > refined[:, :2]).all()


def test_split_records_reads_valid_and_never_uses_test_images():
    "Roboflow's `valid` is the validation split; without train + validation splits, test images stay out of both."
    from boxrefine.data import ImageBoxes

    def rec(i, split):
        return ImageBoxes(i, f"{i}.jpg", None, (10, 10), split, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))

    data = load_config().data
    train, val = split_records([rec(1, "train"), rec(2, "valid"), rec(3, "test"), rec(4, "train")], data)
    assert ([r.id for r in train], [r.id for r in val]) == ([1, 4], [2])
    train, val = split_records([rec(i, "test" if i < 5 else None) for i in range(20)], data)
    assert {r.id for r in train + val} == set(range(5, 20)) and len(val) == 3


def test_train_starts_from_the_prior_and_writes_the_gate_into_best(cli_run, tmp_path):
    "The default run fine-tunes the shipped prior; --from-scratch does not; best.pt carries the margin and its curve."
    out, done = cli_run
    assert "starting from the shipped prior (" in done.stdout and "gate: min_gain" in done.stdout
    trained = BoxRefiner.load(out)
    assert -0.1 <= trained.min_gain <= 0.2 and curve_line(trained.gate_curve) in done.stdout  # the curve it printed
    scratch = run(
        "train", *SAMPLE, "--out", str(tmp_path / "s"), "--epochs", "1", "--max-images", "2", "--from-scratch"
    )
    assert scratch.returncode == 0, scratch.stderr
    assert "starting from random weights (training.init: scratch)" in scratch.stdout


class _RunsCode:
    "A pickle that runs code when unpickled (the attack `weights_only=True` stops)."

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_malicious_checkpoint_runs_nothing_and_gets_one_line(tmp_path):
    proof = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"model": _RunsCode(proof), "extra_state": {}}, evil / "best.pt")
    torch.save({"model": _RunsCode(proof)}, evil / "last.pt")
    (evil / ".boxrefine-run").write_text("")
    (evil / "config.yaml").write_text("{}\n")
    for args in (
        ["refine", "--run", str(evil), *SAMPLE, "--max-images", "1", "--out", str(tmp_path / "o.json")],
        ["eval", "--run", str(evil), *SAMPLE, "--split", "val", "--max-images", "1", "--no-sam"],
        ["train", *SAMPLE, "--out", str(evil), "--resume", "--epochs", "2"],
    ):
        done = run(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args[0], done.stderr)
        assert "is not a boxrefine refiner checkpoint" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not proof.exists(), f"{args[0]} ran code from a checkpoint"


def test_train_never_writes_into_a_folder_that_is_not_its_run(tmp_path, cli_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own settings\n")
    (mine / "best.pt").write_bytes(b"my own model")
    done = run("train", *SAMPLE, "--out", str(mine), "--epochs", "1", "--max-images", "2")
    assert done.returncode == 2 and "is not empty and is not a boxrefine run" in done.stderr
    assert (mine / "config.yaml").read_text() == "my own settings\n" and (
        mine / "best.pt"
    ).read_bytes() == b"my own model"
    again = run("train", *SAMPLE, "--out", str(mine), "--epochs", "1", "--max-images", "2", "--overwrite")
    assert (
        again.returncode == 2 and (mine / "best.pt").read_bytes() == b"my own model"
    )  # --overwrite replaces only our runs
    out, _ = cli_run
    done = run("train", *SAMPLE, "--out", str(out), "--epochs", "1", "--max-images", "2")
    assert done.returncode == 2 and "already holds a run" in done.stderr and "--overwrite" in done.stderr


def test_resume_drops_epochs_logged_after_the_last_checkpoint(tmp_path):
    "A kill between the log line and the checkpoint leaves an extra line; the resumed log has each epoch once."
    out = tmp_path / "run"
    first = run("train", *SAMPLE, "--out", str(out), "--epochs", "1", "--max-images", "2", "--from-scratch")
    assert first.returncode == 0, first.stderr
    log = out / "metrics.jsonl"
    log.write_text(log.read_text() * 2)  # epoch 0 logged twice, as after a kill and a replay
    done = run("train", *SAMPLE, "--out", str(out), "--resume", "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert [json.loads(l)["epoch"] for l in log.read_text().splitlines()] == [0, 1]


def test_resume_refuses_other_data_unless_forced(tmp_path):
    out = tmp_path / "run"
    assert (
        run("train", *SAMPLE, "--out", str(out), "--epochs", "1", "--max-images", "2", "--from-scratch").returncode == 0
    )
    other = tmp_path / "other.json"
    coco = json.loads(sample_paths().annotations.read_text())
    coco["annotations"] = coco["annotations"][:-1]
    other.write_text(json.dumps(coco))
    args = [
        "train",
        "--ann",
        str(other),
        "--images",
        str(sample_paths().images),
        "--out",
        str(out),
        "--resume",
        "--epochs",
        "2",
    ]
    done = run(*args)
    assert done.returncode == 2 and "was trained on" in done.stderr and "--force" in done.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    encoder = run("train", *SAMPLE, "--out", str(out), "--resume", "--epochs", "2", "--encoder", "vit_b")
    assert encoder.returncode == 2 and "encoder options differ" in encoder.stderr
    forced = run(*args, "--force", "--max-images", "2")
    assert forced.returncode == 0, forced.stderr
