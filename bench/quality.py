"""Refinement beyond one dataset: the shipped prior, leave-one-dataset-out, and small data (issue 12's table).

    python bench/quality.py prior --sets bccd aquarium license_plates --out boxrefine/weights/prior.safetensors
    python bench/quality.py gate boxrefine/weights/prior.safetensors
    python bench/quality.py table --json bench/quality.json
    python bench/quality.py shipped --json bench/quality_shipped.json
    python bench/quality.py augment --set license_plates --images 50 --json bench/augment.json
    python bench/quality.py sets --json bench/set_gate.json
    python bench/quality.py response --refiner PRIORS/without_aquarium.safetensors --sets aquarium

`prior` trains a refiner from scratch on the train splits of the named sets in ../shared/data (validation on
their val/valid splits picks the best epoch and the gate) and saves it as safetensors with its provenance.
`gate` chooses a refiner file's do-no-harm margin again on those val splits (after a change of the rule).
`shipped` scores the shipped prior on each test split (in domain: it trained on their train splits).
`table`, for each set S: trains a prior on the other two sets (S is never seen; `--priors DIR` keeps it and
reuses it later), scores it on S's test split (no training on S), then fine-tunes it with the default settings
on 25, 50, 100 and all of S's training images, or the `--sizes` named (none: the prior only; validation: S's val
split), and scores each on S's test split; other sets' rows and other sizes' runs in the JSON are kept. Input
errors: clean boxes, OA-MIL jitter at r = 0.1 and 0.2, boxes too large, too small, shifted and with one edge off
at level 0.2 (seed 0).
`augment` trains from scratch on a set's first N training images (the seeded choice), without and with the
default augmentation, and scores both, gated and ungated, on the set's val split (it tunes a default).
`sets` scores the shipped prior (or `--refiner`) on each set's val split (it tunes a default), each kind of
input, and a set where a quarter of the boxes are jittered at r = 0.2 and the rest exact, gated as one set (the
default: the gate curve's margin for the set), at the refiner's one margin, and ungated.
`response` refines each kind of input of each val split at levels 0.05 to 0.3 (and the quarter-jittered mix), each as
one set, and reports the set's response to its boxes spoilt on purpose (`gate.set_response`), the mean IoU of the
input, of the ungated proposals, and gated without and with the response (bench/response.json; it tunes a default).
Tuning data only feeds training and the gate: test images are read only for scoring.
"""

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETS = ("bccd", "aquarium", "license_plates")
INPUTS = (
    ("clean", 0.2),
    ("jitter", 0.1),
    ("jitter", 0.2),
    ("larger", 0.2),
    ("smaller", 0.2),
    ("shift", 0.2),
    ("edge", 0.2),
)
MIXED = (("clean:3 jitter:1", 0.2),)  # a set where a quarter of the boxes are jittered and the rest exact
LEVELS = (
    ("clean", 0.2),
    *(("jitter", r) for r in (0.05, 0.1, 0.2, 0.3)),
    *((kind, level) for kind in ("larger", "smaller", "shift", "edge") for level in (0.1, 0.2)),
    *MIXED,
)
SIZES = (25, 50, 100, None)


def size_arg(text):
    "A number of training images, or all of them (None)."
    return None if text == "all" else int(text)


def load(name):
    from boxrefine.data import load_coco
    from boxrefine.train import VAL_SPLITS

    records = load_coco(DATA / name / "instances.json", DATA / name / "images", verbose=False).records
    split = {s: [r for r in records if r.split == s] for s in ("train", "test")}
    return split["train"], [r for r in records if r.split in VAL_SPLITS], split["test"]


def subset(records, n):
    "A seeded choice of n training images (all with n None)."
    from boxrefine.boxes import stable_int

    return records if n is None else sorted(records, key=lambda r: stable_int((0, r.id)))[:n]


def train(train_records, val_records, init, settings=()):
    from boxrefine.config import load_config
    from boxrefine.train import train_refiner

    config = load_config(overrides=[f"training.init={init}", *settings])
    with tempfile.TemporaryDirectory() as run:
        learn = train_refiner(config, train_records, val_records, Path(run) / "run", progress=False)
    return learn.refiner, config


def score(refiner, records, inputs=INPUTS, min_gain=None):
    "Per kind of input error: mean IoU of the input and of the answer (gated at `min_gain`), and the change shares."
    from boxrefine.boxes import elementwise_iou
    from boxrefine.inference import gated_at, refine_records
    from boxrefine.data import NoiseConfig
    from boxrefine.metrics import change_shares

    rows = {}
    for kind, r in inputs:
        noise = NoiseConfig(r=r, seed=0, errors=kind)
        noisy = [noise.noisy(x) for x in records]
        out = refine_records(refiner, records, noisy, progress=False, min_gain=min_gain)
        before = torch.cat([elementwise_iou(n, x.boxes) for n, x in zip(noisy, records)])
        after = torch.cat([elementwise_iou(o.boxes, x.boxes) for o, x in zip(out, records)])
        rows[f"{kind} {r}" if kind == "jitter" else kind] = {
            "input": before.mean().item(),
            "output": after.mean().item(),
            **change_shares(before, after),
            "min_gain": gated_at(out, refiner, min_gain),  # the margin this kind, as one set, was gated at
        }
    return rows


def prior_command(args):
    from boxrefine.machine import cpu_description

    parts = [load(s) for s in args.sets]
    tr, va = [r for p in parts for r in p[0]], [r for p in parts for r in p[1]]
    start = time.perf_counter()
    lr = [f"training.lr={args.lr}"] if args.lr is not None else []
    settings = [f"training.epochs={args.epochs}", *lr, *args.set]
    refiner, config = train(tr, va, args.init, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    about = f"{' + '.join(args.sets)} train splits, {len(tr)} images, {sum(len(r.boxes) for r in tr)} boxes"
    refiner.save(
        args.out,
        trained_on=about,
        training=f"{args.epochs} epochs from {args.init}{''.join(f', {s}' for s in settings[1:])}, defaults otherwise, "
        f"{time.perf_counter() - start:.0f} s on {cpu_description()}",
        made_by="python bench/quality.py prior",
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {about}, min_gain {refiner.min_gain:+.2f}")


def gate_command(args):
    "Choose the gate's margin of a refiner file again, on the val splits of its training sets; save in place."
    from functools import partial
    from boxrefine.config import Config
    from boxrefine.gate import gate_line
    from boxrefine.train import choose_min_gain, record_inputs
    from boxrefine.prior import prior_info
    from boxrefine.refiner import BoxRefiner

    refiner, info = BoxRefiner.load(args.refiner), prior_info(args.refiner)
    val = [r for s in args.sets for r in load(s)[1]]
    gate = choose_min_gain(
        refiner.net, val, Config(), partial(record_inputs, use_sam=False), torch.device("cpu"), "fp32"
    )
    print(gate_line(gate))
    refiner.min_gain, refiner.gate_curve = gate["min_gain"], gate["curve"]
    refiner.save(
        args.refiner,
        **{k: v for k, v in info.items() if k in ("trained_on", "training", "made_by")},
        gate=f"chosen by python bench/quality.py gate on {' + '.join(args.sets)} val splits",
    )


def shipped_command(args):
    "The shipped prior on each set's test split, without training on the set (it has trained on their train splits)."
    from boxrefine.machine import cpu_description
    from boxrefine.prior import load_prior, prior_info

    prior = load_prior()
    out = {
        "cpu": cpu_description(),
        "prior": prior_info()["trained_on"],
        "min_gain": prior.min_gain,
        "sets": {s: score(prior, load(s)[2]) for s in SETS},
    }
    args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


def held_out_prior(held, others, folder, epochs):
    "(file, seconds) of a prior trained from scratch on the `others` sets: reused when `folder` already holds it."
    path = Path(folder) / f"without_{held}.safetensors"
    if path.exists():
        print(f"{held}: reusing the prior {path}", flush=True)
        return path, None
    parts = [load(s) for s in others]
    start = time.perf_counter()
    prior, _ = train(
        [r for p in parts for r in p[0]], [r for p in parts for r in p[1]], "scratch", [f"training.epochs={epochs}"]
    )
    prior.save(path, trained_on=" + ".join(others), training=f"{epochs} epochs from scratch")
    return path, round(time.perf_counter() - start)


def save_row(path, results, held, row):
    "Write `held`'s row into the JSON at `path`, read again now: other sets' rows and other sizes' runs are kept."
    sets = json.loads(path.read_text()).get("sets", {}) if path.exists() else {}
    old = sets.get(held, {})
    trained = {**old.get("trained", {}), **row["trained"]}
    seconds = row["prior_seconds"] if row["prior_seconds"] is not None else old.get("prior_seconds")  # None: reused
    new = {**row, "prior_seconds": seconds, "trained": trained}
    path.write_text(json.dumps({**results, "sets": {**sets, held: new}}, indent=1))


def table_command(args):
    from boxrefine.machine import cpu_description
    from boxrefine.refiner import BoxRefiner

    results = {"cpu": cpu_description(), "prior_epochs": args.prior_epochs}
    with tempfile.TemporaryDirectory() as scratch:
        for held in args.sets:
            others = [s for s in SETS if s != held]
            tr, va, te = load(held)
            prior_file, seconds = held_out_prior(held, others, args.priors or scratch, args.prior_epochs)
            row = {"prior_on": others, "prior_seconds": seconds, "prior": score(BoxRefiner.load(prior_file), te)}
            row["trained"] = {}
            print(held, "prior only:", json.dumps(row["prior"]), flush=True)
            for n in args.sizes:
                start = time.perf_counter()
                refiner, _ = train(subset(tr, n), va, str(prior_file))
                key = "all" if n is None else str(n)
                row["trained"][key] = {
                    "images": len(subset(tr, n)),
                    "seconds": round(time.perf_counter() - start),
                    "min_gain": refiner.min_gain,  # its one margin; each kind's row says what it was gated at
                    **score(refiner, te),
                }
                print(held, key, json.dumps(row["trained"][key]), flush=True)
                save_row(args.json, results, held, row)  # after each run: a stopped table keeps what it measured
            save_row(args.json, results, held, row)


def augment_command(args):
    "From scratch on `--images` of a set's training images, without and with augmentation; scored on its val split."
    from boxrefine.machine import cpu_description

    results = json.loads(args.json.read_text()) if args.json.exists() else {"cpu": cpu_description(), "runs": []}
    tr, va, _ = load(args.set)
    for augment in ("none", "hflip color"):
        start = time.perf_counter()
        refiner, _ = train(subset(tr, args.images), va, "scratch", [f"data.augment={augment}"])
        seconds = round(time.perf_counter() - start)
        gated, proposed = score(refiner, va), score(refiner, va, min_gain=float("-inf"))
        run = {"set": args.set, "images": args.images, "augment": augment, "seconds": seconds, "gated": gated}
        results["runs"].append({**run, "proposals": proposed, "min_gain": refiner.min_gain})
        print(args.set, args.images, augment, f"{seconds} s", flush=True)
    args.json.write_text(json.dumps(results, indent=1))


def sets_command(args):
    "Each kind of input of each val split gated as one set, at one margin, and ungated."
    from boxrefine.machine import cpu_description
    from boxrefine.prior import load_prior

    refiner = load_prior(args.refiner)
    gates = {"per set": None, "one margin": refiner.min_gain, "ungated": float("-inf")}
    out = {"cpu": cpu_description(), "refiner": refiner.about, "min_gain": refiner.min_gain, "sets": {}}
    for name in SETS:
        val = load(name)[1]
        out["sets"][name] = {gate: score(refiner, val, INPUTS + MIXED, m) for gate, m in gates.items()}
        print(
            name,
            json.dumps({g: {k: round(v["output"], 3) for k, v in r.items()} for g, r in out["sets"][name].items()}),
        )
    args.json.write_text(json.dumps(out, indent=1))


def response_row(refiner, records, kind, r):
    "One kind of input of `records` as one set: mean IoUs ungated and gated without and with its response, the margins."
    from boxrefine.boxes import elementwise_iou
    from boxrefine.data import NoiseConfig
    from boxrefine.gate import area_change
    from boxrefine.inference import joined, refine_records, response_to_spoilt
    from boxrefine.refiner import regate

    noisy = [NoiseConfig(r=r, seed=0, errors=kind).noisy(x) for x in records]
    out = refine_records(refiner, records, noisy, progress=False, min_gain=float("-inf"))
    gain, proposed, given = (
        joined(out, "proposed_quality") - joined(out, "input_quality"),
        *(joined(out, k) for k in ("proposed", "given")),
    )
    response = response_to_spoilt(refiner, records, out)
    margins = [refiner.margin_for(gain, None, proposed, given, m) for m in (None, response)]
    truth = torch.cat([x.boxes for x in records])
    answers = [proposed, *(torch.cat([regate(o, m).boxes for o in out]) for m in margins)]
    ious = [elementwise_iou(boxes, truth).mean().item() for boxes in (given, *answers)]
    return {
        **dict(zip(("input", "ungated", "gated before", "gated"), ious)),
        "response": response,
        "resizing": area_change(proposed, given).median().item(),
        "margins": margins,
    }


def response_command(args):
    "Each kind and level of input of each val split as one set: its response to spoilt boxes, the margin, the answers."
    from boxrefine.machine import cpu_description
    from boxrefine.prior import load_prior

    refiner = load_prior(args.refiner)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for name in args.sets:
        val, rows = load(name)[1], {}
        for kind, r in LEVELS:
            rows[f"{kind} {r}"] = row = response_row(refiner, val, kind, r)
            print(name, kind, r, json.dumps({k: round(v, 3) for k, v in row.items() if k != "margins"}), flush=True)
        key = f"{args.refiner.name if args.refiner else 'shipped prior'} on {name}"
        results[key] = {"cpu": cpu_description(), "refiner": refiner.about, "kinds": rows}
        args.json.write_text(json.dumps(results, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("prior")
    a.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--epochs", type=int, default=30)
    a.add_argument("--init", default="scratch", help="scratch, or a refiner file to train further")
    a.add_argument("--lr", type=float, help="peak learning rate (default: the training default)")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    a.set_defaults(handler=prior_command)
    g = sub.add_parser("gate")
    g.add_argument("refiner", type=Path)
    g.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    g.set_defaults(handler=gate_command)
    h = sub.add_parser("shipped")
    h.add_argument("--json", type=Path, default=Path(__file__).with_name("quality_shipped.json"))
    h.set_defaults(handler=shipped_command)
    t = sub.add_parser("table")
    t.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    t.add_argument("--prior-epochs", type=int, default=30)
    t.add_argument("--priors", type=Path, help="keep the held-out priors here (reused when present)")
    t.add_argument(
        "--sizes",
        nargs="*",
        type=size_arg,
        default=list(SIZES),
        help="training images: numbers or all; none: the prior only",
    )
    t.add_argument("--json", type=Path, default=Path(__file__).with_name("quality.json"))
    t.set_defaults(handler=table_command)
    u = sub.add_parser("augment")
    u.add_argument("--set", choices=SETS, required=True)
    u.add_argument("--images", type=int, default=50)
    u.add_argument("--json", type=Path, default=Path(__file__).with_name("augment.json"))
    u.set_defaults(handler=augment_command)
    w = sub.add_parser("response")
    w.add_argument("--refiner", type=Path, help="a refiner file (default: the shipped prior)")
    w.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    w.add_argument("--json", type=Path, default=Path(__file__).with_name("response.json"))
    w.set_defaults(handler=response_command)
    v = sub.add_parser("sets")
    v.add_argument("--refiner", type=Path, help="a refiner file (default: the shipped prior)")
    v.add_argument("--json", type=Path, default=Path(__file__).with_name("set_gate.json"))
    v.set_defaults(handler=sets_command)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    args.handler(args)


if __name__ == "__main__":
    main()
