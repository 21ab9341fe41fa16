"""The audit against corrupted labels (issue 15): a known share of BCCD's test boxes spoilt, then found and fixed.

    python bench/audit.py --json bench/audit.json

10% of the boxes of BCCD's test split (seeded) get an error at a level drawn in [0.3, 0.4]: OA-MIL jitter (2 parts
in 6), too large, too small, shifted, or one edge off (1 part each); the rest stay as labelled. The corrupted file
is audited, and each of five orders is scored with k = the number of corrupted boxes: precision in the top k,
recall in the top 2k, AUROC, and the mean IoU with the true box of the corrupted and of the clean boxes after the
proposals of the top k are accepted:
- random order (seeded);
- box-size outliers within each class (`audit.size_outliers`);
- in sample: one refiner fine-tuned (the audit's settings) on all the corrupted images, judging them;
- the shipped prior alone (it trained on BCCD's train split, never on these images);
- the audit: out of fold (3 folds), each fold's refiner fine-tuned from the prior on the others.
Then the uncorrupted test split is audited out of fold, and the top of that audit is kept and drawn
(`audit_uncorrupted_top.png`).
Test images are never used to choose anything: the suspicion and the passes were chosen on BCCD's val split.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bccd"
SHARE, LEVELS, ERRORS, SEED = 0.1, (0.3, 0.4), "jitter:2 larger:1 smaller:1 shift:1 edge:1", 0


def corrupted(records):
    "The records with SHARE of their boxes spoilt (seeded), and the mask of spoilt boxes per record."
    from boxrefine.boxes import stable_int
    from boxrefine.data import NoiseConfig

    noise = NoiseConfig(r=LEVELS[1], r_min=LEVELS[0], seed=SEED, errors=ERRORS)
    out, masks = [], []
    for r in records:
        spoilt = torch.from_numpy(np.random.default_rng([SEED, stable_int(r.id)]).random(len(r.boxes)) < SHARE)
        out.append(dataclasses.replace(r, boxes=torch.where(spoilt[:, None], noise.noisy(r), r.boxes)))
        masks.append(spoilt)
    return out, torch.cat(masks)


def auroc(scores, positive):
    "The probability that a spoilt box scores above a clean one (ties count half)."
    d = scores[positive][:, None] - scores[~positive][None]
    return ((d > 0).double() + 0.5 * (d == 0).double()).mean().item()


def scored(scores, spoilt, given, proposed, truth):
    "How well an order finds the spoilt boxes, and what accepting the top k proposals does."
    from boxrefine.boxes import elementwise_iou

    k, order = int(spoilt.sum()), torch.argsort(scores, descending=True, stable=True)
    top = torch.zeros_like(spoilt)
    top[order[:k]] = True
    row = {
        "precision_at_k": spoilt[top].double().mean().item(),
        "recall_at_2k": spoilt[order[: 2 * k]].double().sum().item() / k,
        "auroc": auroc(scores, spoilt),
    }
    if proposed is not None:
        before = elementwise_iou(given, truth)
        after = torch.where(top, elementwise_iou(proposed, truth), before)
        row |= {
            "spoilt_iou_before": before[spoilt].mean().item(),
            "spoilt_iou_after": after[spoilt].mean().item(),
            "clean_iou_before": before[~spoilt].mean().item(),
            "clean_iou_after": after[~spoilt].mean().item(),
        }
    return row


def audit_order(audit, records):
    "The suspicion and proposal of every box, in the records' order."
    from boxrefine.boxes import convert_boxes

    rows = {(r["image_id"], r["annotation_id"]): r for r in audit.rows}
    keys = [(r.id, a) for r in records for a in r.annotation_ids]
    score = torch.tensor([rows[k]["suspicion"] if rows[k]["suspicion"] is not None else -1.0 for k in keys])
    proposed = convert_boxes(torch.tensor([rows[k]["proposed"] for k in keys]), "xywh", "xyxy")
    return score, proposed


def in_sample_refiner(records, path):
    "A refiner fine-tuned as a fold's is, on all the records (no record is in fold 0), saved to `path`."
    from boxrefine.audit import fold_refiner

    fold_refiner(records, np.ones(len(records), dtype=int), 0, progress=False).save(path)
    return path


def top_picture(rows, out, columns=4):
    "The given box (red, dashed) and the proposal (yellow) of each row, in a grid."
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from boxrefine.widgets import neighbourhood_figure

    fig, axes = plt.subplots(-(-len(rows) // columns), columns, figsize=(3 * columns, 3 * -(-len(rows) // columns)))
    for ax, r in zip(axes.flat, rows):
        title = f"#{r['rank']} ann {r['annotation_id']}: {r['suspicion']:.2f}" + (
            f", repeats {r['duplicate_of']}" if r["duplicate_of"] is not None else ""
        )
        neighbourhood_figure(DATA / "images" / r["file_name"], r["given"], r["proposed"], title, ax=ax)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=60)


def main():
    from boxrefine.audit import audit_records, size_outliers
    from boxrefine.data import load_coco
    from boxrefine.machine import cpu_description
    from boxrefine.prior import prior_path
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("audit.json"))
    p.add_argument("--picture", type=Path, default=Path(__file__).with_name("audit_uncorrupted_top.png"))
    p.add_argument("--picture-only", action="store_true", help="draw the picture from --json, and stop")
    args = p.parse_args()
    if args.picture_only:
        return top_picture(json.loads(args.json.read_text())["uncorrupted"]["top"], args.picture)
    clean = [
        r
        for r in load_coco(DATA / "instances.json", DATA / "images", verbose=False, split="test").records
        if len(r.boxes)
    ]
    records, spoilt = corrupted(clean)
    given, truth = torch.cat([r.boxes for r in records]), torch.cat([r.boxes for r in clean])
    classes = torch.cat([r.category_ids for r in records])
    out = {
        "cpu": cpu_description(),
        "data": f"BCCD test split: {len(records)} images, {len(given)} boxes, {int(spoilt.sum())} spoilt "
        f"({SHARE:.0%}, levels {LEVELS}, errors {ERRORS!r}, seed {SEED})",
        "methods": {},
    }
    gen = torch.Generator().manual_seed(SEED)
    out["methods"]["random order"] = scored(torch.rand(len(given), generator=gen), spoilt, given, None, truth)
    out["methods"]["box-size outliers"] = scored(size_outliers(given, classes), spoilt, given, None, truth)
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        run = in_sample_refiner(records, Path(d) / "in_sample.safetensors")
        audit = audit_records(records, run=run, progress=False)
        score, proposed = audit_order(audit, records)
        out["methods"]["in sample"] = {
            **scored(score, spoilt, given, proposed, truth),
            "seconds": round(time.perf_counter() - start),
        }
    for name, kwargs in (("shipped prior alone", {"run": prior_path()}), ("audit, out of fold", {})):
        audit = audit_records(records, progress=False, **kwargs)
        score, proposed = audit_order(audit, records)
        out["methods"][name] = {**scored(score, spoilt, given, proposed, truth), "seconds": audit.about["seconds"]}
        print(name, json.dumps(out["methods"][name]), flush=True)
    audit = audit_records(clean, progress=False)
    out["uncorrupted"] = {"about": audit.about, "top": audit.judged[:12]}
    args.json.write_text(json.dumps(out, indent=1))
    top_picture(out["uncorrupted"]["top"], args.picture)
    print(json.dumps(out["methods"], indent=1))


if __name__ == "__main__":
    main()
