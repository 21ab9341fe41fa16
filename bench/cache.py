"""Benchmark: the feature cache's cold and warm passes over real BCCD images.

    python bench/cache.py [--images 32] [--ann ../shared/data/bccd/instances.json] [--model vit_tiny]

Prints the cold pass (encoder runs for every image) and the warm pass (a new cache object, as a new run would make:
decode, hash, read and verify every entry) in seconds and as a ratio, the warm pass's hit rate, and the load
throughput of the entries (read and verified with safetensors) against a plain `numpy.fromfile` of the same bytes.
Goals: warm pass at least 50x faster than cold; load throughput at least 0.8x the plain read; 100% hits.
"""

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boxrefine.cache import FeatureCache, read_entry
from boxrefine.encoder import DTYPES, Encoder, EncoderConfig, RandomWeightsWarning

ROOT = Path(__file__).resolve().parent.parent


def bccd_images(ann: Path, n: int) -> list:
    images = json.loads(ann.read_text())["images"]
    return [ann.parent / "images" / im["file_name"] for im in images[:n]]


def load_throughput(cache: FeatureCache, repeats: int = 15) -> tuple:
    "Best-of-`repeats` MiB/s of reading and verifying every entry, and of numpy.fromfile, interleaved."
    files = cache.entries()
    size = sum(p.stat().st_size for p in files) / 2**20
    dtype = DTYPES[cache.encoder.config.storage_dtype]
    readers = {
        "plain": lambda p: np.fromfile(p, dtype=np.uint8),
        "ours": lambda p: read_entry(p, cache.fingerprint, cache.encoder.interm_channels, dtype),
    }
    best = {name: float("inf") for name in readers}
    for _ in range(repeats):  # interleaved, so that a noisy moment hits both
        for name, read in readers.items():
            start = time.perf_counter()
            for p in files:
                read(p)
            best[name] = min(best[name], time.perf_counter() - start)
    return size / best["ours"], size / best["plain"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--ann", type=Path, default=ROOT.parent / "shared" / "data" / "bccd" / "instances.json")
    p.add_argument("--model", default="vit_tiny")
    args = p.parse_args()
    images = bccd_images(args.ann, args.images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        encoder = Encoder(EncoderConfig(model_type=args.model))
    root = Path(tempfile.mkdtemp(prefix="boxrefine-bench-cache-"))

    start = time.perf_counter()
    cold = FeatureCache(encoder, root)
    cold.warm(images, progress=False)
    cold_s = time.perf_counter() - start

    calls = encoder.calls
    start = time.perf_counter()
    warm = FeatureCache(encoder, root)
    feats = warm.get_many(images, dtype=None)
    warm_s = time.perf_counter() - start
    assert encoder.calls == calls and len(feats) == len(images)

    ours, plain = load_throughput(warm)
    print(
        f"feature cache, {args.model} (random weights, {encoder.config.autocast} autocast, "
        f"{encoder.config.storage_dtype} storage), "
        f"{len(images)} BCCD images, {torch.get_num_threads()} threads"
    )
    print(
        f"  cold pass: {cold_s:8.2f} s  ({cold_s / len(images):.3f} s per image; encoder "
        f"{cold.stats.encoder_seconds:.2f} s)"
    )
    print(f"  warm pass: {warm_s:8.3f} s  ({1000 * warm_s / len(images):.1f} ms per image)")
    print(f"  warm / cold speed-up: {cold_s / warm_s:.0f}x   (goal >= 50x)")
    print(
        f"  warm-pass hit rate: {warm.stats.hit_rate:.1%}   (goal 100%); encoder calls in the warm pass: "
        f"{encoder.calls - calls}"
    )
    print(
        f"  load throughput: {ours:.0f} MiB/s vs numpy.fromfile {plain:.0f} MiB/s = {ours / plain:.2f}x   (goal >= "
        "0.8x)"
    )
    print(f"  on disk: {warm.disk_usage()['entries']} entries, {warm.disk_usage()['bytes'] / 2**20:.1f} MiB in {root}")


if __name__ == "__main__":
    main()
