"The bundled sample: small, real, licensed, shipped as package data, and readable through the normal path."

import json
from pathlib import Path

from boxrefine.data import load_sample, sample_paths

ROOT = Path(__file__).resolve().parent.parent


def test_sample_is_small_and_from_train_and_val():
    paths = sample_paths()
    coco = json.loads(paths.annotations.read_text())
    assert len(coco["images"]) <= 30
    assert {im["split"] for im in coco["images"]} <= {"train", "val"}
    size = sum(f.stat().st_size for f in paths.images.iterdir() if f.is_file())
    assert size <= 2 * 1024 * 1024, size
    for im in coco["images"]:
        assert (paths.images / im["file_name"]).is_file(), im
    assert "MIT License" in paths.licence.read_text()
    assert "BCCD" in paths.attribution.read_text()


def test_sample_files_are_all_declared_package_data():
    "Every file of the sample must match a `package_data` pattern, or a wheel would ship without it."
    from configparser import ConfigParser

    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    patterns = cfg["DEFAULT"]["package_data"].split()
    root = ROOT / "boxrefine"
    declared = {p for pattern in patterns for p in root.glob(pattern)}
    assert {p for p in (root / "sample").iterdir()} <= declared


def test_sample_loads_like_a_user_dataset():
    records = load_sample().records
    assert len(records) == 24 and sum(len(r.boxes) for r in records) == 463
    for r in records:
        h, w = r.image_hw
        assert (r.boxes[:, 2] <= w).all() and (r.boxes[:, 3] <= h).all()


def test_package_never_reads_shared_data():
    "No module refers to the workplace's ../shared/data folder (the tests and benchmarks may; the package may not)."
    import re

    for module in (ROOT / "boxrefine").glob("*.py"):
        assert not re.search(r"shared[/\\]+data|\.\.[/\\]+shared|BOXREFINE_BCCD", module.read_text()), module
