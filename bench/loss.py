"""Benchmark: the box loss against torchvision's GIoU loss, forward + backward, on this machine.

    python bench/loss.py [--boxes 4096] [--repeats 50]

Prints milliseconds per call (median of the repeats) and ratios measured in the same run, so that the cost of our
input validation and the L1 term is visible. Not a test: these machines are noisy, so only same-run ratios mean much.
"""

import argparse
import statistics
import time

import torch
from torchvision.ops import generalized_box_iou_loss

from boxrefine.loss import box_loss, giou_loss


def random_boxes(n, generator, size=640.0):
    xy = torch.rand(n, 2, generator=generator) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * size / 2 + 1], 1)


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    target = random_boxes(args.boxes, g)
    pred = random_boxes(args.boxes, g).requires_grad_()

    def step(loss_fn):
        return lambda: loss_fn().backward()

    rows = {
        "torchvision generalized_box_iou_loss (mean)": step(
            lambda: generalized_box_iou_loss(pred, target, reduction="mean")
        ),
        "boxrefine giou_loss (mean, validated)": step(lambda: giou_loss(pred, target).mean()),
        "boxrefine box_loss (L1 + GIoU, validated)": step(lambda: box_loss(pred, target, (480, 640)).total),
        "boxrefine box_loss, bf16 inputs": step(lambda: box_loss(pred.bfloat16(), target.bfloat16(), (480, 640)).total),
    }
    print(
        f"box loss, forward + backward, {args.boxes} boxes, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    base = None
    for name, fn in rows.items():
        ms = median_ms(fn, args.repeats)
        base = base or ms
        print(f"  {name:<46} {ms:8.3f} ms   {ms / base:5.2f}x torchvision")


if __name__ == "__main__":
    main()
