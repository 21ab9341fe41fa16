"""How the training noise's kinds of error change the refiner on each kind of input error (BCCD train -> val).

    python bench/errors.py [--epochs 12] [--mix "jitter" "jitter:3 clean:1 larger:1 smaller:1 shift:1 edge:1"]

For each training mix: trains on BCCD's train split (validation on val picks nothing here: the last epoch
is scored), then refines val boxes made wrong in each way (seed 1) and prints, per kind, the mean IoU of
the input and of the refined boxes, and the share of boxes made worse by more than 0.05. Tuning data only:
no test images are read.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

KINDS = (
    ("jitter", 0.2),
    ("jitter", 0.1),
    ("clean", 0.0),
    ("larger", 0.2),
    ("smaller", 0.2),
    ("shift", 0.2),
    ("edge", 0.2),
)


def main():
    from boxrefine.boxes import elementwise_iou
    from boxrefine.inference import refine_records
    from boxrefine.data import NoiseConfig, load_coco
    from boxrefine.config import load_config
    from boxrefine.train import train_refiner
    from boxrefine.machine import cpu_description

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bccd", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bccd"
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--mix", nargs="+", default=["jitter", "jitter:3 clean:1 larger:1 smaller:1 shift:1 edge:1"])
    args = p.parse_args()
    warnings.simplefilter("ignore")
    records = load_coco(args.bccd / "instances.json", args.bccd / "images", verbose=False).records
    train, val = [r for r in records if r.split == "train"], [r for r in records if r.split == "val"]
    print(f"{cpu_description()}; BCCD {len(train)} train, {len(val)} val images; {args.epochs} epochs")
    for mix in args.mix:
        start = time.perf_counter()
        config = load_config(overrides=[f"training.epochs={args.epochs}", f"data.train_errors={mix}"])
        refiner = train_refiner(config, train, val, progress=False).refiner
        row = {"training errors": mix, "train_s": round(time.perf_counter() - start)}
        for kind, r in KINDS:
            noise = NoiseConfig(r=r, seed=1, errors=kind)
            noisy = [noise.noisy(x) for x in val]
            refined = [o.boxes for o in refine_records(refiner, val, noisy, progress=False)]
            before = torch.cat([elementwise_iou(n, x.boxes) for n, x in zip(noisy, val)])
            after = torch.cat([elementwise_iou(f, x.boxes) for f, x in zip(refined, val)])
            row[f"{kind} r={r}"] = (
                f"{before.mean():.3f} -> {after.mean():.3f} (worse: {(after < before - 0.05).float().mean():.0%})"
            )
        print(json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    main()
