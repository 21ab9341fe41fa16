"""All benchmarks in one run: the encoder, the feature cache, training steps, scaling with dataset size, the monitor.

    python bench/suite.py [--bccd ../shared/data/bccd] [--out nbs/benchmarks.ipynb]

Prints each figure against its goal, and writes them as the docs page `nbs/benchmarks.ipynb` (Markdown
tables with the machine they were measured on). Peak memory is measured in a fresh process per row (its
peak resident set, VmHWM), so rows do not inherit each other's peaks. Ratios are
measured within one run, interleaved where it matters, because these machines are noisy.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def quiet_encoder(**kw):
    from boxrefine.encoder import Encoder, EncoderConfig, RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return Encoder(EncoderConfig(**kw))


def bccd(bccd_dir: Path):
    from boxrefine.data import load_coco

    return load_coco(bccd_dir / "instances.json", bccd_dir / "images", verbose=False).records


def peak_rss_mib() -> float:
    "This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent across fork and exec)."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_encoder(records, n: int = 8) -> dict:
    "Images per second: HQ-SAM's encoder forward alone on ready inputs vs our path (decode, preprocess, encode, write)."
    from boxrefine.cache import FeatureCache
    from boxrefine.encoder import autocast_context, preprocess
    from boxrefine.data import read_image

    encoder = quiet_encoder()
    paths = [r.path for r in records[:n]]
    inputs = torch.stack([preprocess(encoder.sam, read_image(p))[0] for p in paths])
    bs = encoder.config.batch_size

    def raw():
        with torch.inference_mode(), autocast_context("cpu", encoder.config.autocast):
            for i in range(0, n, bs):
                encoder.sam.image_encoder(inputs[i : i + bs])

    def ours():
        FeatureCache(encoder, tempfile.mkdtemp(prefix="boxrefine-bench-")).warm(paths, progress=False)

    raw()  # warm-up
    times = {"raw": [], "ours": []}
    for _ in range(2):  # interleaved
        for name, f in (("raw", raw), ("ours", ours)):
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    raw_ips, ours_ips = n / min(times["raw"]), n / min(times["ours"])
    return {"raw_images_per_s": raw_ips, "ours_images_per_s": ours_ips, "ratio": ours_ips / raw_ips, "images": n}


def bench_cache(records, n: int = 32) -> dict:
    "Cold against warm pass, warm load throughput against numpy.fromfile, hit rate of the second run."
    from boxrefine.cache import FeatureCache
    from cache import load_throughput

    encoder = quiet_encoder()
    root = tempfile.mkdtemp(prefix="boxrefine-bench-")
    paths = [r.path for r in records[:n]]
    start = time.perf_counter()
    FeatureCache(encoder, root).warm(paths, progress=False)
    cold = time.perf_counter() - start
    calls = encoder.calls
    warm_cache = FeatureCache(encoder, root)
    start = time.perf_counter()
    warm_cache.get_many(paths, dtype=None)
    warm = time.perf_counter() - start
    ours, plain = load_throughput(warm_cache)
    return {
        "images": n,
        "cold_s": cold,
        "warm_s": warm,
        "speedup": cold / warm,
        "hit_rate": warm_cache.stats.hit_rate,
        "encoder_calls_warm": encoder.calls - calls,
        "load_ratio": ours / plain,
        "load_mib_s": ours,
        "plain_mib_s": plain,
    }


TRAIN_CONFIGS = {  # precision auto throughout: bench_precision compares bf16 and fp32
    "crop (default)": ["model.sam=off"],
    "SAM embedding": ["model.crop=false", "model.sam=embedding"],
    "SAM embedding + interm": ["model.crop=false", "model.sam=embedding+interm"],
    "crop + SAM embedding + interm": ["model.sam=embedding+interm"],
}


def step_timer():
    "A callback that times each training step and ends the fit after the first training epoch."
    from boxrefine.learner import Callback, CancelFitException

    class StepTimer(Callback):
        def before_fit(self, learn):
            self.times = []

        def before_batch(self, learn):
            self.start = time.perf_counter()

        def after_step(self, learn):
            self.times.append(time.perf_counter() - self.start)

        def after_epoch(self, learn):
            if learn.training:
                raise CancelFitException()

    return StepTimer()


def bench_precision(records, steps: int = 6) -> dict:
    "Training step and encoder seconds in bf16 and fp32 side by side, what auto chose, and chosen / fastest."
    from boxrefine.config import load_config
    from boxrefine.train import train_refiner
    from boxrefine.machine import SlowPrecisionWarning, time_call
    from boxrefine.data import read_image

    train = [r for r in records if r.split == "train"][: 8 * steps]

    def step_seconds(precision):
        timer = step_timer()
        config = load_config(
            overrides=["model.sam=off", "training.epochs=1", "data.batch_size=8", f"training.precision={precision}"]
        )
        learn = train_refiner(config, train, train[:1], progress=False, cbs=[timer], random_weights=True)
        return sorted(timer.times[1:])[len(timer.times[1:]) // 2], learn.precision

    image = read_image(records[0].path)

    def encoder_seconds(precision):
        encoder = quiet_encoder(autocast=precision, batch_size=1)
        return time_call(lambda: encoder.encode([image]), repeats=1), encoder.config.autocast

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # bf16 asked for on purpose, even where it is slow
        for name, measure in (("training step (8 images)", step_seconds), ("encoder (1 image)", encoder_seconds)):
            for p in ("bf16", "fp32"):  # warm-up: oneDNN builds its kernels per precision on first use
                measure(p)
            seconds = {p: measure(p)[0] for p in ("bf16", "fp32")}
            auto_s, chosen = measure("auto")
            out[name] = {
                **seconds,
                "auto": auto_s,
                "chosen": chosen,
                "chosen_over_fastest": min(seconds.values()) / seconds[chosen],
            }
            print(json.dumps({name: out[name]}), flush=True)
    return out


def one_training(name: str, bccd_dir: Path, cache_dir: str, steps: int = 12) -> dict:
    "In this (fresh) process: seconds per training step of 8 images from a warm cache, and the peak RSS."
    from boxrefine.cache import FeatureCache
    from boxrefine.config import load_config
    from boxrefine.train import train_refiner

    records = [r for r in bccd(bccd_dir) if r.split == "train"][: 8 * steps]
    config = load_config(overrides=TRAIN_CONFIGS[name] + ["training.epochs=1", "data.batch_size=8"])
    cache = FeatureCache(quiet_encoder(), cache_dir) if config.model.sam != "off" else None
    timer = step_timer()
    calls = cache.encoder.calls if cache else 0
    train_refiner(config, records, records[:1], cache=cache, progress=False, cbs=[timer], random_weights=True)
    assert cache is None or cache.encoder.calls == calls, "a warm-cache step called the encoder"
    steady = sorted(timer.times[2:])  # the first steps include one-time set-up
    return {
        "config": name,
        "s_per_step": steady[len(steady) // 2],
        "steps": len(timer.times),
        "peak_rss_mib": peak_rss_mib(),
    }


def one_scaling(n: int, bccd_dir: Path, cache_dir: str) -> dict:
    "In this (fresh) process: a warm epoch's seconds per image and the peak RSS, memory layer off."
    from boxrefine.cache import FeatureCache

    paths = [r.path for r in bccd(bccd_dir)[:n]]
    cache = FeatureCache(quiet_encoder(), cache_dir)
    start = time.perf_counter()
    for p in paths:
        cache.get(p)  # one image at a time, as a training epoch reads them
    warm = time.perf_counter() - start
    assert cache.stats.misses == 0
    return {"images": n, "warm_s_per_image": warm / n, "peak_rss_mib": peak_rss_mib()}


def in_fresh_process(kind: str, arg, bccd_dir: Path, cache_dir: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(arg), "--bccd", str(bccd_dir), "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_training(records, bccd_dir: Path) -> list:
    from boxrefine.cache import FeatureCache

    cache_dir = tempfile.mkdtemp(prefix="boxrefine-bench-")
    FeatureCache(quiet_encoder(), cache_dir).warm([r.path for r in records if r.split == "train"][:96], progress=False)
    return [in_fresh_process("train", name, bccd_dir, cache_dir) for name in TRAIN_CONFIGS]


def bench_scaling(records, bccd_dir: Path, sizes=(16, 64, 256)) -> list:
    from boxrefine.cache import FeatureCache

    rows = []
    for n in sizes:
        cache_dir = tempfile.mkdtemp(prefix="boxrefine-bench-")
        start = time.perf_counter()
        FeatureCache(quiet_encoder(), cache_dir).warm([r.path for r in records[:n]], progress=False)
        cold = (time.perf_counter() - start) / n
        rows.append({"cold_s_per_image": cold, **in_fresh_process("scale", n, bccd_dir, cache_dir)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_monitor(records, epochs: int = 3) -> dict:
    "The training monitor's cost on BCCD-sized epochs: every epoch with no budget, and with the default 5% budget."
    from boxrefine.config import load_config
    from boxrefine.train import train_refiner
    from boxrefine.widgets import TrainingMonitor

    train, val = [r for r in records if r.split == "train"], [r for r in records if r.split == "val"]
    config = load_config(overrides=[f"training.epochs={epochs}"])
    out = {}
    for name, budget in (("no budget", None), ("default budget", 0.05)):
        monitor = TrainingMonitor(
            budget=budget, save_dir=tempfile.mkdtemp(prefix="boxrefine-bench-")
        )  # saving makes it work outside Jupyter
        learn = train_refiner(config, train, val, progress=False, cbs=[monitor])
        out[name] = {
            "refreshes": monitor.refreshes,
            "skipped": monitor.skipped,
            "s_per_refresh": monitor.seconds / monitor.refreshes,
            "epoch_s": sum(h["seconds"] for h in learn.history) / len(learn.history),
            "overhead": monitor.overhead,
        }
    return out


def machine() -> str:
    from boxrefine.machine import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_description()}, {torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}"


def report(r: dict) -> str:
    e, c, t, s = r["encoder"], r["cache"], r["training"], r["scaling"]
    lines = [
        f"Measured by `python bench/suite.py` on {r['machine']}, {r['date']}; HQ-SAM `vit_tiny` with deterministic "
        "random",
        "weights (speed does not depend on the weights), precision `auto` unless a row names one, fp16 cache entries,",
        "real BCCD images. Figures from one CPU kind say nothing about another: bf16 is fast only where it is native.",
        "",
        "| precision | bf16 s | fp32 s | auto chose | auto s | chosen / fastest | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {p['bf16']:.3f} | {p['fp32']:.3f} | {p['chosen']} | {p['auto']:.3f} | "
        f"{p['chosen_over_fastest']:.2f} | >= 0.95 |"
        for name, p in r["precision"].items()
    ]
    lines += [
        "",
        "| encoder and cache | measured | goal |",
        "|---|---|---|",
        f"| raw HQ-SAM encoder forward | {e['raw_images_per_s']:.2f} images/s | - |",
        f"| our path: decode, preprocess, encode, write entry | {e['ours_images_per_s']:.2f} images/s "
        f"({e['ratio']:.2f}x the raw forward) | >= 0.9x |",
        f"| cold pass, {c['images']} images | {c['cold_s']:.1f} s | - |",
        f"| warm pass (a new run: hash, read, verify) | {c['warm_s']:.2f} s, {c['speedup']:.0f}x faster than cold | "
        ">= 50x |",
        f"| warm load throughput | {c['load_mib_s']:.0f} MiB/s, {c['load_ratio']:.2f}x numpy.fromfile "
        f"({c['plain_mib_s']:.0f} MiB/s) | >= 0.8x |",
        f"| hit rate of the second run | {c['hit_rate']:.0%} ({c['encoder_calls_warm']} encoder calls) | 100% |",
        "",
        "| training step, 8 images, warm cache | s per step | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    lines += [f"| {row['config']} | {row['s_per_step']:.3f} | {row['peak_rss_mib']:.0f} |" for row in t]
    lines += [
        "",
        "| images | cold epoch, s per image | warm epoch, s per image | peak RSS of a warm epoch (MiB) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {row['images']} | {row['cold_s_per_image']:.3f} | {row['warm_s_per_image']:.4f} | "
        f"{row['peak_rss_mib']:.0f} |"
        for row in s
    ]
    lines += [
        "",
        "| training monitor, BCCD (205 + 87 images) | refreshes | s per refresh | epoch s | share of training time | "
        "goal |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {m['refreshes']} ({m['skipped']} skipped) | {m['s_per_refresh']:.2f} | {m['epoch_s']:.1f} | "
        f"{m['overhead']:.1%} | < 5% by default |"
        for name, m in r["monitor"].items()
    ]
    lines += [
        "",
        "GPU rows: not measured (no GPU was lent to the session that ran this)."
        if not torch.cuda.is_available()
        else "",
    ]
    return "\n".join(lines)


def write_page(out: Path, text: str) -> None:
    cells = [
        {
            "cell_type": "markdown",
            "id": "b0000001",
            "metadata": {},
            "source": [
                "# Benchmarks\n",
                "\n",
                "> Speed and memory of the encoder, the feature cache, training steps, and how they grow with the "
                "dataset.\n",
            ],
        },
        {"cell_type": "markdown", "id": "b0000002", "metadata": {}, "source": text.splitlines(keepends=True)},
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "data" / "bccd")
    p.add_argument("--out", type=Path, default=ROOT / "nbs" / "benchmarks.ipynb")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, arg = args.one
        print(
            json.dumps(
                one_training(arg, args.bccd, args.cache_dir)
                if kind == "train"
                else one_scaling(int(arg), args.bccd, args.cache_dir)
            )
        )
        return
    start = time.perf_counter()
    records = bccd(args.bccd)
    r = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    r["precision"] = bench_precision(records)
    r["encoder"] = bench_encoder(records)
    print(json.dumps(r["encoder"]), flush=True)
    r["cache"] = bench_cache(records)
    print(json.dumps(r["cache"]), flush=True)
    r["training"] = bench_training(records, args.bccd)
    print(json.dumps(r["training"]), flush=True)
    r["scaling"] = bench_scaling(records, args.bccd)
    r["monitor"] = bench_monitor(records)
    print(json.dumps(r["monitor"]), flush=True)
    text = report(r)
    print("\n" + text + f"\n\nsuite: {time.perf_counter() - start:.0f} s")
    write_page(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
