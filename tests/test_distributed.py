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
    done = torchrun(
        "train",
        *SAMPLE,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--max-images",
        "4",
        "--cache-dir",
        str(cache_dir),
        "--set",
        "model.sam=embedding",
        "--set",
        "data.batch_size=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training on 4 images") == 1 and "in 2 processes" in done.stdout  # only rank 0 speaks
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # one log, written once
    train, val = (recs[:4] for recs in split_records(load_sample(verbose=False).records, load_config().data))
    assert rows[-1]["val_boxes"] == sum(len(r.boxes) for r in val)  # every validation box counted once
    entries = list(cache_dir.rglob("*.safetensors"))
    assert len(entries) == 8 and not [
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
    done = torchrun("cache", *SAMPLE, "--max-images", "4", "--cache-dir", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert (stats["misses"], stats["hits"], stats["n_images"]) == (4, 0, 4)  # 2 + 2, added up over the processes
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4
