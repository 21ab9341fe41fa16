"`boxrefine audit`: out-of-fold judging, the ranking, the files it writes, and the report in headless Chromium."

import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import pytest

from boxrefine import audit as audit_module
from boxrefine.cli import main
from boxrefine.data import load_coco, sample_paths
from boxrefine.formats import write_voc, write_yolo
from boxrefine.prior import prior_path
from boxrefine.widgets import ReviewSession

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import docs  # noqa: E402

# two 1-epoch fine-tunings: seconds (without augmentation, which one epoch is too short to gain from)
QUICK = ["--folds", "2", "--set", "training.epochs=1", "--set", "data.augment=none", "--max-images", "6"]


def spoilt_sample(tmp_path, n=3, grow=0.4) -> tuple:
    "The sample's first 6 images with `n` boxes away from the borders made `grow` too large; the file, their ids."
    coco = json.loads(sample_paths().annotations.read_text())
    first = {im["id"] for im in coco["images"][:6]}
    inside = [
        a
        for a in coco["annotations"]
        if a["image_id"] in first and min(a["bbox"][:2]) > 60 and a["bbox"][0] + a["bbox"][2] < 580
    ]
    inside = [a for a in inside if a["bbox"][1] + a["bbox"][3] < 420][::7][:n]
    for a in inside:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x - grow * w / 2, y - grow * h / 2, (1 + grow) * w, (1 + grow) * h]
    path = tmp_path / "spoilt.json"
    path.write_text(json.dumps(coco))
    return path, [a["id"] for a in inside]


def audit(tmp_path, ann, *extra):
    "`boxrefine audit` on the first 6 images: quick folds, or the `--run` in `extra`."
    out, quick = tmp_path / "audit", QUICK if "--run" not in extra else QUICK[-2:]
    code = main(["audit", "--ann", str(ann), "--images", str(sample_paths().images), "--out", str(out), *quick, *extra])
    return code, out


@pytest.fixture(scope="module")
def spoilt_audit(tmp_path_factory):
    "The quick out-of-fold audit of the spoilt sample: the folder, the spoilt ids, what it printed."
    tmp = tmp_path_factory.mktemp("spoilt")
    ann, spoilt = spoilt_sample(tmp)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code, out = audit(tmp, ann, "--top", "6")
    assert code == 0, printed.getvalue()
    return out, spoilt, printed.getvalue()


def test_audit_ranks_spoilt_boxes_first_out_of_fold_and_writes_every_file(spoilt_audit):
    out, spoilt, printed = spoilt_audit
    assert "out of fold: 2 folds by image" in printed and "judged 109 boxes in 6 images" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(audit_module.AUDIT_FILES)
    saved = json.loads((out / "audit.json").read_text())
    rows = saved["boxes"]
    assert len(rows) == 109 and [r["rank"] for r in rows] == list(range(1, 110))
    scores = [r["suspicion"] for r in rows]
    assert scores == sorted(scores, reverse=True) and 0 <= min(scores) and max(scores) <= 1
    assert {r["scored"] for r in rows} == {"out of fold"}
    folds = {}
    for r in rows:  # folds are made of images: all boxes of an image share one
        folds.setdefault(r["image_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds.values()) and {f for (f,) in folds.values()} == {0, 1}
    top = [r["annotation_id"] for r in rows[:10]]
    assert set(spoilt) <= set(top), (spoilt, top)
    spoilt_rows = [r for r in rows if r["annotation_id"] in spoilt]
    truth = {a["id"]: a["bbox"] for a in json.loads(sample_paths().annotations.read_text())["annotations"]}

    def iou(a, b):
        ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)

    before = sum(iou(r["given"], truth[r["annotation_id"]]) for r in spoilt_rows) / len(spoilt_rows)
    after = sum(iou(r["proposed"], truth[r["annotation_id"]]) for r in spoilt_rows) / len(spoilt_rows)
    assert after > before + 0.05, (before, after)  # the proposals bring the spoilt boxes back towards the truth
    with (out / "audit.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 109 and lines[0]["annotation_id"] == str(rows[0]["annotation_id"])
    assert lines[0]["category"] in {"RBC", "WBC", "Platelets"} and float(lines[0]["given_w"]) > 0
    proposed = json.loads((out / "proposed.json").read_text())
    assert proposed["info"]["boxrefine"]["audit"] is True
    session = ReviewSession(out / "proposed.json", sample_paths().images)
    assert session.order("suspicion")[:10] == top


def test_the_audit_never_trains_on_the_fold_it_judges(monkeypatch):
    records = load_coco(sample_paths().annotations, sample_paths().images, verbose=False).records
    folds = audit_module.image_folds(records, 3)
    seen = {}

    def spy(config, train, val, **kwargs):
        seen["train"], seen["val"] = {r.id for r in train}, {r.id for r in val}
        raise StopIteration

    monkeypatch.setattr(audit_module, "train_refiner", spy)
    for fold in range(3):
        with pytest.raises(StopIteration):
            audit_module.fold_refiner(records, folds, fold)
        judged = {r.id for r, f in zip(records, folds) if f == fold}
        assert not judged & (seen["train"] | seen["val"])
        assert len(seen["train"] | seen["val"]) == len(records) - len(judged) and seen["val"]


def test_unjudgeable_boxes_and_near_duplicates_are_said_not_scored(tmp_path, capsys):
    coco = json.loads(sample_paths().annotations.read_text())
    first = coco["images"][0]["id"]
    box = next(a for a in coco["annotations"] if a["image_id"] == first)
    coco["annotations"] += [
        {**box, "id": 9001, "bbox": [box["bbox"][0] + 1, box["bbox"][1], box["bbox"][2], box["bbox"][3]]},
        {**box, "id": 9002, "bbox": [10, 10, 0, 20]},
        {**box, "id": 9003, "bbox": [100, 100, 3, 3], "bbox_input": [90, 90, 9, 9], "quality": 0.5},  # from refine
        {**box, "id": 9005, "bbox": [200, 200, 30, 30], "iscrowd": 1},
        {**box, "id": 9004, "bbox": [620, 100, 40, 30]},  # runs 20 px past the right border of the 640 px image
    ]
    (tmp_path / "odd.json").write_text(json.dumps(coco))
    code, out = audit(tmp_path, tmp_path / "odd.json", "--run", str(prior_path()))  # judged by the prior: no training
    assert code == 0, capsys.readouterr().out
    rows = {r["annotation_id"]: r for r in json.loads((out / "audit.json").read_text())["boxes"]}
    assert rows[9001]["duplicate_of"] == box["id"] and rows[9001]["suspicion"] is not None
    assert rows[9002]["suspicion"] is None and rows[9002]["note"] == "not judged: boxes of zero width or height"
    assert rows[9003]["suspicion"] is None and "smaller than 4 px" in rows[9003]["note"]
    assert rows[9004]["suspicion"] is not None and "clipped to its image" in rows[9004]["note"]
    assert rows[9005]["suspicion"] is None and "crowd" in rows[9005]["note"]
    proposed = {a["id"]: a for a in json.loads((out / "proposed.json").read_text())["annotations"]}
    assert "bbox_input" not in proposed[9003] and proposed[9003]["bbox"] == [100, 100, 3, 3]  # stale fields dropped
    assert ReviewSession(out / "proposed.json", sample_paths().images).order("suspicion")[0] == next(iter(rows))
    assert rows[9002]["rank"] is None and set(list(rows)[-3:]) == {9002, 9003, 9005}  # unjudged rows come last
    page = (out / "report.html").read_text()
    assert "Near duplicates (1)" in page and "Not judged (3)" in page


def test_a_run_that_trained_on_the_file_scores_in_sample(tmp_path, capsys):
    paths = sample_paths()
    run = tmp_path / "run"
    args = ["--ann", str(paths.annotations), "--images", str(paths.images), "--max-images", "4"]
    assert main(["train", *args, "--out", str(run), "--epochs", "1"]) == 0
    assert main(["audit", *args, "--out", str(tmp_path / "a"), "--run", str(run)]) == 0
    assert "not out of fold" in capsys.readouterr().out
    rows = json.loads((tmp_path / "a" / "audit.json").read_text())["boxes"]
    assert {r["scored"] for r in rows} == {"in sample"}  # the sample has train and val images, no test ones
    coco = json.loads(paths.annotations.read_text())
    coco["annotations"][0]["bbox"][0] += 1  # the labels changed since the run trained: what it saw is not known
    (tmp_path / "edited.json").write_text(json.dumps(coco))
    edited = ["--ann", str(tmp_path / "edited.json"), *args[2:]]
    assert main(["audit", *edited, "--out", str(tmp_path / "b"), "--run", str(run / "best.pt")]) == 0
    rows = json.loads((tmp_path / "b" / "audit.json").read_text())["boxes"]
    assert {r["scored"] for r in rows} == {"unknown"}
    assert main(["audit", *args, "--out", str(tmp_path / "c"), "--run", str(run), "--folds", "5"]) == 2
    assert "--run judges with a trained refiner" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_yolo_and_voc_datasets_are_audited_like_their_coco_file(tmp_path, fmt):
    ann, _ = spoilt_sample(tmp_path)
    coco = json.loads(ann.read_text())
    coco["images"] = coco["images"][:6]
    first = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in first]
    (tmp_path / "six.json").write_text(json.dumps(coco))
    images, folder = sample_paths().images, tmp_path / fmt
    folder.mkdir()
    write_yolo(coco, folder, images) if fmt == "yolo" else write_voc(coco, folder)
    judged = {}
    for name, source, extra in (("coco", tmp_path / "six.json", ["--images", str(images)]), (fmt, folder, [])):
        extra += ["--images", str(images)] if name == "voc" else []  # VOC folders written from COCO hold no images
        out = tmp_path / f"audit_{name}"
        assert main(["audit", "--ann", str(source), *extra, "--out", str(out), "--run", str(prior_path())]) == 0
        rows = json.loads((out / "audit.json").read_text())["boxes"]
        judged[name] = sorted((r["file_name"], *(round(v) for v in r["given"]), r["suspicion"]) for r in rows)
        assert json.loads((out / "proposed.json").read_text())["annotations"]
    assert len(judged[fmt]) == len(judged["coco"]) == len(coco["annotations"])
    for a, b in zip(judged["coco"], judged[fmt]):  # the same box, the same judgement, whatever the format
        assert a[:5] == b[:5] and abs(a[5] - b[5]) < 0.01, (a, b)


def test_the_audit_refuses_to_write_into_the_input_or_over_other_files(tmp_path, capsys):
    paths = sample_paths()
    base = ["audit", "--ann", str(paths.annotations), "--images", str(paths.images), "--run", str(prior_path())]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for out, error in (
        (paths.images / "audit", "lies inside the input"),
        (tmp_path / "mine", "holds files an audit did not write (notes.txt"),
    ):
        assert main([*base, "--out", str(out)]) == 2
        assert error in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (paths.images / "audit").exists()
    assert main([*base[:-2], "--out", str(tmp_path / "a"), "--folds", "1"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err


def test_the_report_renders_offline_in_headless_chromium(spoilt_audit):
    out = spoilt_audit[0]
    driver = docs.chromium()
    try:
        driver.get((out / "report.html").as_uri())
        page = driver.execute_script(docs.PAGE_REPORT)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert page["title"] == "boxrefine audit" and page["figures"] == 6  # every thumbnail decoded
    assert all(not r.startswith(("http:", "https:")) for r in page["resources"]), page["resources"]
    assert "The 6 most suspicious of 109 judged boxes" in page["text"] and not errors
    rows = json.loads((out / "audit.json").read_text())["boxes"]
    assert all(f"#{r['rank']} annotation {r['annotation_id']}" in page["text"] for r in rows[:6])
