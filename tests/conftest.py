"Shared fixtures: the real BCCD data beside the checkout, and small box strategies."

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BCCD = Path(os.environ.get("BOXREFINE_BCCD", ROOT.parent / "shared" / "data" / "bccd"))


@pytest.fixture(scope="session")
def bccd_annotations() -> Path:
    "The full BCCD COCO file (364 images, 4,886 boxes), which tests may read but the package never does."
    path = BCCD / "instances.json"
    if not path.exists():
        pytest.fail(f"BCCD not found at {path}: put ../shared beside the checkout or set BOXREFINE_BCCD")
    return path
