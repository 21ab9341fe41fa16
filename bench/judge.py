"""Where a refiner's gains are lost: its proposals against its gate, and what tells a clean box from a noisy one.

    python bench/judge.py --json bench/judge.json [--refiner FILE] [--images 40]

On each shared set's validation split (tuning data; test splits are not read), with the seven kinds of input
of bench/quality.py: the first `--images` images choose a gate's margin under the gate's harm limit, the next
`--images` report. Prints and saves, per set: mean IoU of the input and of the ungated proposals at r = 0.2;
the AUROC of clean boxes against r = 0.2 jitter by the judge's input quality, its predicted gain and the
refiner's move (1 - IoU of input and proposal); gated on the predicted gain, and on the gain plus the move:
the mean IoU at r = 0.2, over the seven kinds, and the share of clean boxes made worse by > 0.05.
"""

import argparse
import json
import warnings
from pathlib import Path

import torch

from audit import auroc
from quality import INPUTS, SETS, load


def answers(refiner, records):
    "Per kind of input: input, proposal and true boxes, predicted input quality and gain (ungated)."
    from boxrefine.data import NoiseConfig
    from boxrefine.inference import refine_records

    out = {}
    for kind, r in INPUTS:
        noisy = [NoiseConfig(r=r, seed=0, errors=kind).noisy(x) for x in records]
        got = refine_records(refiner, records, noisy, progress=False, min_gain=float("-inf"))  # quality: the proposal's
        out[f"{kind} {r}" if kind == "jitter" else kind] = {
            "input": torch.cat([g.given for g in got]),
            "proposal": torch.cat([g.proposed for g in got]),
            "true": torch.cat([x.boxes for x in records]),
            "input_quality": torch.cat([g.input_quality for g in got]),
            "gain": torch.cat([g.quality - g.input_quality for g in got]),
        }
    return out


def clean_auroc(clean, noisy):
    "AUROC of telling clean boxes from noisy ones by a signal that is higher for boxes to move."
    return auroc(-torch.cat([clean, noisy]), torch.arange(len(clean) + len(noisy)) < len(clean))


def signals(a):
    from boxrefine.boxes import elementwise_iou

    move = 1 - elementwise_iou(a["input"], a["proposal"])
    return {"input quality": -a["input_quality"], "gain": a["gain"], "move": move, "gain + move": a["gain"] + move}


def gated_means(choose, report, signal):
    "Mean IoU per kind of the reporting half gated on `signal` (margin chosen on the choosing half); clean harm."
    from boxrefine.boxes import elementwise_iou
    from boxrefine.gate import best_min_gain

    def pooled(half):
        return [torch.cat(x) for x in zip(*(parts(a) for a in half.values()))]

    def parts(a):
        return elementwise_iou(a["input"], a["true"]), elementwise_iou(a["proposal"], a["true"]), signals(a)[signal]

    before, after, score = pooled(choose)
    grid = tuple(torch.quantile(score, torch.linspace(0, 1, 101)).tolist())  # the signal's own scale
    margin = best_min_gain(before, after, score, margins=grid)
    out, harmed = {}, None
    for kind, a in report.items():
        before, after, score = parts(a)
        gated = torch.where(score >= margin, after, before)
        out[kind] = gated.mean().item()
        harmed = (gated < before - 0.05).double().mean().item() if kind == "clean" else harmed
    return out, harmed


def main():
    from boxrefine.boxes import elementwise_iou
    from boxrefine.machine import cpu_description
    from boxrefine.prior import load_prior

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refiner", type=Path, help="a refiner file (default: the shipped prior)")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("judge.json"))
    args = p.parse_args()
    warnings.simplefilter("ignore")
    refiner = load_prior(args.refiner)
    result = {"cpu": cpu_description(), "refiner": str(args.refiner or "the shipped prior"), "sets": {}}
    for name in SETS:
        val = load(name)[1]
        choose, report = (answers(refiner, val[i * args.images : (i + 1) * args.images]) for i in (0, 1))
        j = report["jitter 0.2"]
        row = {
            "r0.2": {
                "input": elementwise_iou(j["input"], j["true"]).mean().item(),
                "proposal": elementwise_iou(j["proposal"], j["true"]).mean().item(),
            },
            "clean proposal": elementwise_iou(report["clean"]["proposal"], report["clean"]["true"]).mean().item(),
            "auroc clean vs r0.2": {
                k: clean_auroc(signals(report["clean"])[k], signals(j)[k]) for k in ("input quality", "gain", "move")
            },
            "gated": {},
        }
        for signal in ("gain", "gain + move"):
            means, harmed = gated_means(choose, report, signal)
            row["gated"][signal] = {
                "r0.2": means["jitter 0.2"],
                "mean of kinds": sum(means.values()) / len(means),
                "clean worse by 0.05": harmed,
            }
        result["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
