"""The regression head against the edge head, each trained from scratch on one shared set (issue 12).

    python bench/heads.py --set aquarium --epochs 5
    python bench/heads.py --set aquarium --epochs 15 --heads edges

Each head trains with the default settings (every kind of box error, the random-weight encoder, so crops
only) on the set's train split, from random weights (`training.init: scratch`), and is scored on its
val/valid split at r = 0.2 jitter, as training logs it. Test images are never read. Prints one JSON line per head:
the noisy input's mean IoU, the best validation epoch's, the gate chosen afterwards, and the seconds.
"""

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def train_head(name: str, head: str, epochs: int) -> dict:
    from boxrefine.config import load_config
    from boxrefine.data import load_coco
    from boxrefine.machine import cpu_description
    from boxrefine.train import split_records, train_refiner

    records = load_coco(DATA / name / "instances.json", DATA / name / "images", verbose=False).records
    config = load_config(overrides=[f"training.epochs={epochs}", "training.init=scratch", f"model.head={head}"])
    train, val = split_records(records, config.data)
    start = time.perf_counter()
    learn = train_refiner(config, train, val, progress=False)
    return {
        "set": name,
        "head": head,
        "epochs": epochs,
        "train_images": len(train),
        "noisy_mean_iou": learn.history[-1]["noisy_mean_iou"],
        "best_val_mean_iou": learn.best["val_mean_iou"],
        "best_epoch": learn.best["epoch"] + 1,
        "gate": learn.gate,
        "seconds": time.perf_counter() - start,
        "machine": cpu_description(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", default="aquarium", help="a folder of ../shared/data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--heads", nargs="+", default=["regression", "edges"])
    args = p.parse_args()
    for head in args.heads:
        print(json.dumps(train_head(args.set, head, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
