"Every format through the command line, on real files: read, refine with an identity refiner, write, read back."

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli as run

from boxrefine.boxes import noisy_boxes
from boxrefine.encoder import EncoderConfig
from boxrefine.formats import SIDECAR, read_dataset
from boxrefine.refiner import BoxRefiner, BoxRefinerNet, RefinerConfig

PLATES = Path(__file__).resolve().parents[2] / "shared" / "data" / "license_plates"


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> Path:
    "A refiner file that moves no box (a regression head starts at zero deltas) and takes every answer (margin -1)."
    path = tmp_path_factory.mktemp("identity") / "identity.safetensors"
    net = BoxRefinerNet(RefinerConfig(sam="off", head="regression", iterations=1))
    BoxRefiner(net, EncoderConfig(), None, min_gain=-1.0).save(path, trained_on="nothing: the identity")
    return path


@pytest.fixture(scope="module")
def plates() -> dict:
    "Ten real test images of the license-plate set with their boxes, as COCO."
    coco = json.loads((PLATES / "instances.json").read_text())
    images = [im for im in coco["images"] if im["split"] == "test"][:10]
    ids = {im["id"] for im in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def boxes_by_image(ds) -> dict:
    "Image file name -> its (category name, box rounded to 0.01 px) pairs, in order."
    names = {im["id"]: Path(im["file_name"]).name for im in ds.coco["images"]}
    cats = {c["id"]: c["name"] for c in ds.coco["categories"]}
    out = {n: [] for n in names.values()}
    for a in ds.coco["annotations"]:
        out[names[a["image_id"]]].append((cats[a["category_id"]], [round(v, 2) for v in a["bbox"]]))
    return out


def yolo_tree(root: Path, coco: dict) -> None:
    "An Ultralytics-style YOLO dataset of `coco`'s images: images/test, labels/test (numpy, not boxrefine), a YAML."
    names = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(names)}
    for part in ("images", "labels"):
        (root / part / "test").mkdir(parents=True)
    for im in coco["images"]:
        shutil.copy(PLATES / "images" / im["file_name"], root / "images" / "test" / Path(im["file_name"]).name)
        rows = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        xywh = np.array([a["bbox"] for a in rows], float).reshape(-1, 4)
        norm = np.c_[xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]] / np.tile([im["width"], im["height"]], 2)
        text = "".join(
            f"{index[a['category_id']]} " + " ".join(f"{v:.6f}" for v in b) + "\n" for a, b in zip(rows, norm)
        )
        (root / "labels" / "test" / Path(im["file_name"]).with_suffix(".txt").name).write_text(text)
    listed = ", ".join(c["name"] for c in names)
    (root / "data.yaml").write_text(f"path: {root}\ntest: images/test\nnames: [{listed}]\n")


def voc_tree(root: Path, coco: dict) -> None:
    "A Pascal VOC dataset of `coco`'s images: Annotations/ (LabelImg's tags) and JPEGImages/."
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    for part in ("Annotations", "JPEGImages"):
        (root / part).mkdir(parents=True)
    for im in coco["images"]:
        shutil.copy(PLATES / "images" / im["file_name"], root / "JPEGImages" / Path(im["file_name"]).name)
        objects = "".join(
            f"<object><name>{cats[a['category_id']]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{k % 2}</difficult><bndbox><xmin>{x:g}</xmin><ymin>{y:g}</ymin><xmax>{x + w:g}</xmax>"
            f"<ymax>{y + h:g}</ymax></bndbox></object>"
            for k, a in enumerate(a for a in coco["annotations"] if a["image_id"] == im["id"])
            for x, y, w, h in [a["bbox"]]
        )
        (root / "Annotations" / Path(im["file_name"]).with_suffix(".xml").name).write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{Path(im['file_name']).name}</filename>"
            f"<source><database>Unknown</database></source><size><width>{im['width']}</width>"
            f"<height>{im['height']}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>"
        )


def test_yolo_round_trip_keeps_everything_but_the_boxes(tmp_path, identity, plates):
    yolo_tree(tmp_path / "yolo", plates)
    source = read_dataset(tmp_path / "yolo" / "data.yaml")
    done = run("refine", "--run", str(identity), "--ann", str(tmp_path / "yolo"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "wrote yolo" in done.stdout
    back = read_dataset(tmp_path / "out")
    assert boxes_by_image(back) == boxes_by_image(source) and len(source.coco["annotations"]) > 10
    assert [im["split"] for im in back.coco["images"]] == ["test"] * 10
    side = json.loads((tmp_path / "out" / SIDECAR).read_text())
    assert len(side["boxes"]) == len(source.coco["annotations"]) and all(b["moved"] for b in side["boxes"])
    for label in (tmp_path / "yolo" / "labels" / "test").iterdir():  # the same lines, to the 6th decimal
        assert label.read_text() == (tmp_path / "out" / "labels" / "test" / label.name).read_text()


def test_voc_round_trip_keeps_tags_difficult_and_truncated(tmp_path, identity, plates):
    voc_tree(tmp_path / "voc", plates)
    source = read_dataset(tmp_path / "voc")
    done = run("refine", "--run", str(identity), "--ann", str(tmp_path / "voc"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    back = read_dataset(tmp_path / "out", tmp_path / "voc" / "JPEGImages")
    assert boxes_by_image(back) == boxes_by_image(source)
    keep = ("difficult", "truncated", "pose")
    assert [{k: a[k] for k in keep} for a in back.coco["annotations"]] == [
        {k: a[k] for k in keep} for a in source.coco["annotations"]
    ]
    first = sorted((tmp_path / "out").glob("*.xml"))[0]
    assert ET.parse(first).getroot().find("source/database").text == "Unknown"


def test_coco_results_round_trip_and_min_score(tmp_path, identity, plates):
    (tmp_path / "gt.json").write_text(json.dumps(plates))
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.3 + 0.1 * (i % 7)}
        for i, a in enumerate(plates["annotations"])
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    args = ["--ann", str(tmp_path / "dets.json"), "--images", str(PLATES / "images")]
    args += ["--images-from", str(tmp_path / "gt.json"), "--run", str(identity), "--min-score", "0.5"]
    done = run("refine", *args, "--out", str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert [{k: a[k] for k in d} for a, d in zip(out, dets)] == dets  # every field kept, boxes unchanged
    assert [("quality" in a) for a in out] == [d["score"] >= 0.5 for d in dets]  # only those scored >= 0.5
    coco = run("refine", *args, "--out", str(tmp_path / "as_coco.json"), "--to", "coco")
    assert coco.returncode == 0, coco.stderr
    assert len(json.loads((tmp_path / "as_coco.json").read_text())["annotations"]) == len(dets)


def test_malformed_files_fail_in_one_line_naming_file_and_line(tmp_path, identity, plates):
    yolo_tree(tmp_path / "yolo", plates)
    label = sorted((tmp_path / "yolo" / "labels" / "test").iterdir())[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.2\n")
    n = len(label.read_text().splitlines())
    bad = run("refine", "--run", str(identity), "--ann", str(tmp_path / "yolo"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and f"{label}: line {n}: expected 'class cx cy w h" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    voc_tree(tmp_path / "voc", plates)
    xml = sorted((tmp_path / "voc" / "Annotations").iterdir())[0]
    xml.write_text(xml.read_text()[:-20])
    bad = run("refine", "--run", str(identity), "--ann", str(tmp_path / "voc"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and f"{xml}: not an XML file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_refine_never_writes_into_the_input(tmp_path, identity, plates):
    yolo_tree(tmp_path / "yolo", plates)
    before = {p: p.read_bytes() for p in (tmp_path / "yolo").rglob("*") if p.is_file()}
    for out in (tmp_path / "yolo", tmp_path / "yolo" / "labels", tmp_path):
        bad = run("refine", "--run", str(identity), "--ann", str(tmp_path / "yolo"), "--out", str(out))
        assert bad.returncode == 2 and "refine never" in bad.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    args = ["--run", str(identity), "--ann", str(tmp_path / "yolo"), "--out", str(tmp_path / "mine"), "--overwrite"]
    bad = run("refine", *args)
    assert bad.returncode == 2 and "did not write" in bad.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "yolo").rglob("*") if p.is_file()} == before


def test_eval_detections_reports_ap_before_and_after(tmp_path, plates):
    "Jittered boxes of real plates as a detector's results: the gated prior harms none; ungated it raises AP75."
    (tmp_path / "gt.json").write_text(json.dumps(plates))
    dets = []
    for im in plates["images"]:
        anns = [a for a in plates["annotations"] if a["image_id"] == im["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        noisy = noisy_boxes(xyxy, (im["height"], im["width"]), 0.2, 0, im["id"])
        for a, b in zip(anns, noisy.tolist()):
            box = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            dets.append({"image_id": im["id"], "category_id": a["category_id"], "bbox": box, "score": 0.9})
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    args = ["--ann", str(tmp_path / "gt.json"), "--images", str(PLATES / "images"), "--no-sam"]
    args += ["--detections", str(tmp_path / "dets.json"), "--json", str(tmp_path / "e.json"), "--overwrite"]
    done = run("eval", *args)
    assert done.returncode == 0, done.stderr
    assert "| given |" in done.stdout and "| refined |" in done.stdout and "AP75" in done.stdout
    gated = json.loads((tmp_path / "e.json").read_text())
    assert gated["detections"] == len(dets) and gated["matched"] > 0.5 * len(dets)
    assert set(gated["given"]) >= {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "matched_mean_iou"}
    assert gated["refined"]["matched_mean_iou"] >= gated["given"]["matched_mean_iou"]  # the gate does no harm
    assert run("eval", *args, "--min-gain", "-1").returncode == 0  # every proposal taken
    every = json.loads((tmp_path / "e.json").read_text())
    assert every["refined"]["matched_mean_iou"] > every["given"]["matched_mean_iou"] + 0.03
    assert every["refined"]["ap75"] > every["given"]["ap75"] and every["refined"]["ap"] > every["given"]["ap"]
