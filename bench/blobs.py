"""A classical blood-cell detector, for real detections of BCCD's test split to refine (issue 14).

    python bench/blobs.py --out bench/detections_bccd_blobs.json
    boxrefine eval --ann ../shared/data/bccd/instances.json --images ../shared/data/bccd/images --split test \
        --detections bench/detections_bccd_blobs.json --json bench/detections_bccd_eval.json

No pretrained detector can be had here, and torchvision's detectors trained from random weights for minutes on
this CPU found nothing (bench/detector.py). This one needs no training: stained cells are darker than the
plasma around them in green, so a pixel is a cell's where it is darker than an Otsu threshold of the image
(at half resolution); an erosion removes specks and parts touching cells, each connected region is a detection,
and its box grows back by the erosion. Its boxes have a weak detector's errors: cells that
touch merge into one box, pale rims are cut off, and boxes follow the thresholded shape rather than the cell's
outline. Class: purple regions (more blue than red) are WBC when large and Platelets when small, the rest RBC.
Score: how round the region fills its box (a lone cell fills about 0.79 of it), times how far the region is
from the threshold. Written as COCO results, as detectors and pycocotools emit them.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def otsu(gray: torch.Tensor) -> float:
    "The threshold between the two modes of `gray` (values in 0..1) that maximises the between-class variance."
    hist = torch.histc(gray, bins=256, min=0, max=1)
    p = hist / hist.sum()
    levels = torch.linspace(0, 1, 256)
    w0, m0 = p.cumsum(0), (p * levels).cumsum(0)
    between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    return levels[between.argmax()].item()


def components(mask: torch.Tensor) -> torch.Tensor:
    "Labels of the 8-connected regions of `mask` (0 outside), by propagating the largest index to a fixed point."
    labels = torch.where(mask, torch.arange(1, mask.numel() + 1).view(mask.shape).float(), torch.zeros(()))
    while True:
        grown = torch.where(mask, F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0], labels)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def detect(image: torch.Tensor, erode: int = 8, min_area: int = 15) -> list:
    "Detections [(x, y, w, h), category_id, score] of an (H, W, 3) uint8 image."
    rgb = F.avg_pool2d(image.permute(2, 0, 1)[None].float() / 255, 2)[0].permute(1, 2, 0)  # half resolution
    gray = rgb[..., 1]  # green: stained cells absorb it, the plasma does not
    threshold = otsu(gray)
    cores = -F.max_pool2d(-(gray < threshold)[None, None].float(), 2 * erode + 1, 1, erode)[0, 0] > 0.5
    labels = components(cores)  # eroded: cells that touch come apart; their boxes grow back by `erode` below
    ids, inverse, areas = labels.flatten().unique(return_inverse=True, return_counts=True)
    h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    n = len(ids)

    def reduce(values, how, init):
        return torch.full((n,), init).scatter_reduce(0, inverse, values.flatten().float(), how)

    x1, x2 = reduce(xs, "amin", float(w)) - erode, reduce(xs, "amax", -1.0) + erode + 1
    y1, y2 = reduce(ys, "amin", float(h)) - erode, reduce(ys, "amax", -1.0) + erode + 1
    blue_minus_red = reduce(rgb[..., 2] - rgb[..., 0], "mean", 0.0)
    darkness = reduce(threshold - gray, "mean", 0.0)
    out = []
    for i in range(n):
        if ids[i] == 0 or areas[i] < min_area:
            continue
        box = [max(x1[i].item(), 0), max(y1[i].item(), 0), min(x2[i].item(), w), min(y2[i].item(), h)]
        bw, bh = box[2] - box[0], box[3] - box[1]
        fill = areas[i].item() / max((bw - 2 * erode) * (bh - 2 * erode), 1)
        purple = blue_minus_red[i].item() > 0.0
        category = (2 if areas[i] > 400 else 3) if purple else 1
        score = min(fill / 0.79, 1.0) * min(darkness[i].item() / 0.1, 1.0)
        out.append(([2 * box[0], 2 * box[1], 2 * bw, 2 * bh], category, round(score, 4)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA / "bccd")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from boxrefine.data import read_image

    coco = json.loads((args.data / "instances.json").read_text())
    results = []
    for im in coco["images"]:
        if im.get("split") != args.split:
            continue
        image = torch.from_numpy(read_image(args.data / "images" / im["file_name"]).copy())
        for bbox, category, score in detect(image):
            results.append({"image_id": im["id"], "category_id": category, "bbox": bbox, "score": score})
    args.out.write_text(json.dumps(results))
    print(f"{len(results)} detections on {sum(im.get('split') == args.split for im in coco['images'])} images")


if __name__ == "__main__":
    main()
