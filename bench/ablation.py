"""Refiner ablation on BCCD: which inputs, how many passes, AMP on or off.

    python bench/ablation.py [--epochs 20] [--bccd ../shared/data/bccd] [--cache-dir DIR] [--only NAME ...]

Trains each configuration on BCCD train and scores it on BCCD val (tuning happens on val only; test is for
reporting), with the deterministic random-weight vit_tiny encoder. Prints a Markdown table: validation mean
IoU and share >= 0.75 of the best epoch, seconds per training step of 8 images with a warm cache, and the
training wall time. SAM-feature configurations warm the feature cache first (not counted in the step time).
"""

import argparse
import json
import time
import warnings
from pathlib import Path

from boxrefine.cache import FeatureCache
from boxrefine.data import load_coco
from boxrefine.encoder import Encoder, EncoderConfig, RandomWeightsWarning
from boxrefine.config import load_config
from boxrefine.train import train_refiner

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name -> config overrides
    "crop, 1 pass": ["model.sam=off", "model.iterations=1"],
    "crop, 2 passes (default)": ["model.sam=off"],
    "crop, 3 passes": ["model.sam=off", "model.iterations=3"],
    "crop, 2 passes, fp32 (AMP off)": ["model.sam=off", "training.precision=fp32"],
    "SAM embedding, 2 passes": ["model.crop=false", "model.sam=embedding"],
    "SAM embedding + interm, 2 passes": ["model.crop=false", "model.sam=embedding+interm"],
    "crop + SAM embedding + interm, 2 passes": ["model.sam=embedding+interm"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "data" / "bccd")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--only", nargs="*", default=None, help="names of configurations to run (default: all)")
    args = p.parse_args()
    records = load_coco(args.bccd / "instances.json", args.bccd / "images", verbose=False).records
    train, val = [r for r in records if r.split == "train"], [r for r in records if r.split == "val"]
    cache = None
    rows = []
    for name, overrides in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        config = load_config(overrides=overrides + [f"training.epochs={args.epochs}"])
        if config.model.sam != "off" and cache is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RandomWeightsWarning)
                cache = FeatureCache(Encoder(EncoderConfig()), args.cache_dir)
            start = time.perf_counter()
            cache.warm([r.path for r in train + val], progress=False)
            print(f"cache warmed in {time.perf_counter() - start:.0f} s: {cache.stats}", flush=True)
        calls = cache.encoder.calls if cache else 0
        start = time.perf_counter()
        learn = train_refiner(
            config, train, val, cache=cache if config.model.sam != "off" else None, progress=False, random_weights=True
        )
        wall = time.perf_counter() - start
        if cache:
            assert cache.encoder.calls == calls, "training called the encoder"
        best = max(learn.history, key=lambda h: h["val_mean_iou"])
        step = sum(h["train_seconds"] for h in learn.history) / (len(learn.history) * len(learn.train_dl))
        rows.append(
            {
                "config": name,
                "val_mean_iou": best["val_mean_iou"],
                "val_iou_ge_0.75": best["val_iou_ge_0.75"],
                "noisy_mean_iou": best["noisy_mean_iou"],
                "s_per_step": step,
                "train_s": wall,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nBCCD val ({len(val)} images), noise r = 0.2, {args.epochs} epochs, random-weight vit_tiny; noisy input "
        f"mean IoU {rows[0]['noisy_mean_iou']:.3f}\n"
    )
    print(
        "| inputs, passes | val mean IoU | val IoU ≥ 0.75 | s per step (8 images) | training s |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['config']} | {r['val_mean_iou']:.3f} | {r['val_iou_ge_0.75']:.3f} | {r['s_per_step']:.3f} | "
            f"{r['train_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
