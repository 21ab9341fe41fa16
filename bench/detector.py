"""A weak detector trained here from random weights, for real detections to refine (issue 14).

    python bench/detector.py --set license_plates --minutes 8 --out bench/detections_license_plates.json
    boxrefine eval --ann ../shared/data/license_plates/instances.json --images ../shared/data/license_plates/images \
        --split test --detections bench/detections_license_plates.json --no-sam --json bench/detections_eval.json

No pretrained detector weights can be downloaded here, so torchvision's `fasterrcnn_mobilenet_v3_large_320_fpn`
trains from random weights on the set's train split for a fixed time on the CPU: a weak detector, whose boxes
have the errors of a real one (loose, shifted, partial), not of a noise model. Its detections on the test split
(score >= 0.05, at most 100 per image) are written as COCO results, the format detectors and pycocotools emit.
"""

import argparse
import json
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def image_tensor(record) -> torch.Tensor:
    from boxrefine.data import read_image

    return torch.from_numpy(read_image(record.path).copy()).permute(2, 0, 1).float() / 255


def train_detector(records, classes: int, minutes: float, seed: int = 0):
    "The detector after `minutes` of SGD on `records` (batches of 4 images, shuffled, horizontal flips)."
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=classes + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    images = [image_tensor(r) for r in records]
    model.train()
    start, steps, g = time.perf_counter(), 0, torch.Generator().manual_seed(seed)
    while time.perf_counter() - start < minutes * 60:
        for idx in torch.randperm(len(records), generator=g).split(4):
            batch, targets = [], []
            for i in idx.tolist():
                im, boxes = images[i], records[i].boxes.clone()
                if torch.rand(1, generator=g) < 0.5:
                    im, boxes = (
                        im.flip(-1),
                        torch.stack(
                            [im.shape[-1] - boxes[:, 2], boxes[:, 1], im.shape[-1] - boxes[:, 0], boxes[:, 3]], 1
                        ),
                    )
                batch.append(im)
                targets.append({"boxes": boxes, "labels": records[i].category_ids})
            loss = sum(model(batch, targets).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            steps += 1
            if time.perf_counter() - start >= minutes * 60:
                break
        print(f"{steps} steps, {time.perf_counter() - start:.0f} s, loss {loss.item():.3f}", flush=True)
    return model.eval(), steps


@torch.no_grad()
def detections(model, records) -> list:
    "COCO results of the model on `records`."
    out = []
    for r in records:
        pred = model([image_tensor(r)])[0]
        for box, label, score in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
            x1, y1, x2, y2 = box
            bbox = [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)]
            out.append({"image_id": r.id, "category_id": label, "bbox": bbox, "score": round(score, 4)})
    return out


def main():
    from boxrefine.data import load_coco
    from boxrefine.machine import cpu_description

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", default="license_plates", help="a folder of ../shared/data")
    p.add_argument("--minutes", type=float, default=8.0, help="training time on this machine")
    p.add_argument("--out", type=Path, required=True, help="COCO results JSON to write")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = load_coco(DATA / args.set / "instances.json", DATA / args.set / "images", verbose=False)
    if sorted(data.categories) != list(range(1, len(data.categories) + 1)):
        raise SystemExit(f"{args.set}: category ids must be 1..K for this script, got {sorted(data.categories)}")
    train = [r for r in data.records if r.split == "train" and len(r.boxes)]
    test = [r for r in data.records if r.split == "test"]
    model, steps = train_detector(train, len(data.categories), args.minutes)
    dets = detections(model, test)
    args.out.write_text(json.dumps(dets))
    print(
        f"wrote {len(dets)} detections on {len(test)} test images to {args.out}: fasterrcnn_mobilenet_v3_large_320_fpn "
        f"from random weights, {steps} steps in {args.minutes:g} min on {cpu_description()}"
    )


if __name__ == "__main__":
    main()
