"Two CPU processes under torchrun (gloo): training, sharded cache filling, and metrics equal to one process's."

import json
import os
import subprocess
import sys
import warnings

from boxrefine.cache import FeatureCache
from boxrefine.data import load_sample
from boxrefine.encoder import Encoder, EncoderConfig, RandomWeightsWarning
from boxrefine.config import load_config
from boxrefine.train import split_records, validate_checkpoint
from test_cli import SAMPLE


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "boxrefine.cli",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_train_fill_the_cache_once_and_match_one_process(tmp_path):
    out, cache_dir = tmp_path / "run", tmp_path / "cache"
    done = torchrun("train", *SAMPLE, "--out", str(out), "--epochs", "2", "--max-images", "2", "--cache-dir",
                    str(cache_dir), "--set", "model.sam=embedding", "--set", "data.batch_size=2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training on 2 images") == 1 and "in 2 processes" in done.stdout  # only rank 0 speaks
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # one log, written once
    train, val = (recs[:2] for recs in split_records(load_sample(verbose=False).records, load_config().data))
    assert rows[-1]["val_boxes"] == sum(len(r.boxes) for r in val)  # every validation box counted once
    entries = list(cache_dir.rglob("*.safetensors"))
    assert len(entries) == 4 and not [
        p for p in cache_dir.rglob("*") if p.name.startswith(".tmp")
    ]  # each image once, no leftovers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        cache = FeatureCache(Encoder(EncoderConfig()), cache_dir)
    single = validate_checkpoint(out / "last.pt", val, cache)
    assert (
        abs(single["val_mean_iou"] - rows[-1]["val_mean_iou"]) < 1e-4 and single["val_boxes"] == rows[-1]["val_boxes"]
    )
    assert cache.stats.misses == 0  # the run filled everything it needed


def test_cache_command_under_torchrun_shards_the_work(tmp_path):
    done = torchrun("cache", *SAMPLE, "--max-images", "2", "--cache-dir", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert (stats["misses"], stats["hits"], stats["n_images"]) == (2, 0, 2)  # 1 + 1, added up over the processes
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2


def test_an_error_on_one_process_stops_all_promptly_and_is_shown_once(tmp_path):
    "A training image that only one process reads is truncated: that process fails, the other does not wait for it."
    import shutil
    import time

    from boxrefine.data import sample_paths

    coco = json.loads(sample_paths().annotations.read_text())
    images = tmp_path / "images"
    shutil.copytree(sample_paths().images, images)
    train_names = [im["file_name"] for im in coco["images"] if im["split"] == "train"][:4]
    bad = images / train_names[0]
    bad.write_bytes(bad.read_bytes()[:4000])  # the header reads, the pixels do not
    start = time.perf_counter()
    done = torchrun(
        "train", "--ann", str(sample_paths().annotations), "--images", str(images), "--out", str(tmp_path / "run"),
        "--epochs", "2", "--max-images", "4", "--set", "data.batch_size=1",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    ours = [line for line in done.stderr.splitlines() if line.startswith("boxrefine train: error:")]
    assert done.returncode != 0 and seconds < 120, (done.returncode, seconds)  # not the 30-minute collective timeout
    assert len(ours) == 1 and train_names[0] in ours[0], done.stderr[-3000:]


def test_an_error_every_process_hits_is_shown_once(tmp_path):
    done = torchrun("train", *SAMPLE, "--out", str(tmp_path / "run"), "--set", "training.lr=-1")
    ours = [line for line in done.stderr.splitlines() if line.startswith("boxrefine train: error:")]
    assert done.returncode != 0 and ours == [
        "boxrefine train: error: config training: training lr must be a number > 0, got -1.0"
    ], done.stderr[-2000:]
