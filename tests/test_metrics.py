"Metrics on hand cases and random boxes, COCO AP against pycocotools directly, and the noisy baseline on BCCD test."

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxrefine.data import ImageBoxes, NoiseConfig, load_coco, load_sample
from boxrefine.metrics import (
    METRIC_KEYS,
    TABLE_COLUMNS,
    box_metrics,
    coco_ap,
    edge_errors,
    evaluate_boxes,
    metrics_table,
    noisy_baseline,
    size_buckets,
)


@pytest.fixture(scope="module")
def bccd_test(bccd_annotations):
    return load_coco(bccd_annotations, bccd_annotations.parent / "images", split="test", verbose=False).records


def test_hand_computed_pairs():
    true = torch.tensor([[0.0, 0, 100, 100], [0, 0, 20, 20], [0, 0, 40, 40], [10, 10, 20, 20]])
    pred = torch.tensor([[0.0, 0, 100, 90], [0, 0, 20, 10], [0, 0, 40, 40], [30, 30, 40, 40]])
    m = box_metrics(pred, true)  # IoUs 0.9, 0.5, 1, 0
    assert m["n_boxes"] == 4
    assert m["mean_iou"] == pytest.approx(2.4 / 4, abs=1e-6) and m["median_iou"] == pytest.approx(0.7, abs=1e-6)
    assert (m["iou_ge_0.5"], m["iou_ge_0.75"], m["iou_ge_0.9"]) == (0.75, 0.5, 0.5)
    assert m["edge_px"] == pytest.approx((10 + 10 + 0 + 80) / 16)
    assert m["edge_frac"] == pytest.approx((0.1 + 0.5 + 0 + 8) / 16)
    assert {k: v["n_boxes"] for k, v in m["by_size"].items()} == {"small": 2, "medium": 1, "large": 1}
    assert m["by_size"]["small"]["mean_iou"] == pytest.approx(0.25, abs=1e-6)
    assert m["by_size"]["large"]["edge_px"] == pytest.approx(2.5)
    json.dumps(m, allow_nan=False)  # JSON as it is, without NaN


def test_size_bucket_bounds_follow_coco():
    areas = torch.tensor([0.0, 1023, 1024, 9216, 9217]).sqrt()
    boxes = torch.stack([torch.zeros(5), torch.zeros(5), areas, areas], 1)
    assert {k: v.tolist() for k, v in size_buckets(boxes).items()} == {
        "small": [True, True, False, False, False],
        "medium": [False, False, True, True, False],
        "large": [False] * 4 + [True],
    }


def test_edge_error_of_a_degenerate_true_box_is_finite():
    out = edge_errors(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 0, 0]]))
    assert out == {"edge_px": 1.0, "edge_frac": 1.0}


box = st.tuples(st.integers(0, 400), st.integers(0, 400), st.integers(1, 200), st.integers(1, 200)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(box, box), min_size=1, max_size=20), st.integers(1, 5))
def test_box_metrics_are_consistent_and_scale_free(pairs, k):
    pred, true = (torch.tensor([p[i] for p in pairs], dtype=torch.float32) for i in (0, 1))
    m, scaled = box_metrics(pred, true), box_metrics(pred * k, true * k)
    assert 0 <= m["iou_ge_0.9"] <= m["iou_ge_0.75"] <= m["iou_ge_0.5"] <= 1 and 0 <= m["mean_iou"] <= 1
    assert sum(v["n_boxes"] for v in m["by_size"].values()) == len(pairs)
    assert scaled["mean_iou"] == pytest.approx(m["mean_iou"], abs=1e-5) and scaled["edge_frac"] == pytest.approx(
        m["edge_frac"], rel=1e-5
    )
    assert scaled["edge_px"] == pytest.approx(k * m["edge_px"], rel=1e-5)
    assert box_metrics(true, true)["mean_iou"] == 1.0 and box_metrics(true, true)["edge_px"] == 0.0


def test_ground_truth_against_itself_scores_one(bccd_test):
    assert coco_ap(bccd_test, [r.boxes for r in bccd_test]) == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
    m = evaluate_boxes(bccd_test, [r.boxes for r in bccd_test])
    assert all(m[k] == 1.0 for k in METRIC_KEYS)


def test_crowded_images_are_scored_on_all_their_boxes():
    "COCO keeps 100 boxes per image; we raise the limit so a refined crowded image is scored on every box."
    xy = torch.arange(150, dtype=torch.float32)[:, None] * torch.tensor([6.0, 0])
    crowd = ImageBoxes(
        1, "1.jpg", None, (100, 1000), None, torch.cat([xy, xy + 5], 1), torch.ones(150, dtype=torch.int64)
    )
    assert coco_ap([crowd], [crowd.boxes])["ap"] == 1.0


def direct_pycocotools(bccd_annotations, records, pred, scores, tmp_path, capsys):
    "The textbook pycocotools evaluation: the split's COCO file and a results file on disk, COCOeval.summarize()."
    coco = json.loads(bccd_annotations.read_text())
    ids = {r.id for r in records}
    coco["images"] = [im for im in coco["images"] if im["id"] in ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    results = [
        {"image_id": r.id, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
        for r, p, sc in zip(records, pred, scores)
        for (x1, y1, x2, y2), c, s in zip(p.tolist(), r.category_ids, sc)
    ]
    (tmp_path / "dt.json").write_text(json.dumps(results))
    gt = COCO(str(tmp_path / "gt.json"))
    E = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
    E.evaluate(), E.accumulate(), E.summarize()
    assert "Average Precision" in capsys.readouterr().out
    return E.stats[:3].tolist()


def test_our_ap_is_pycocotools_ap_on_bccd_test(bccd_annotations, bccd_test, tmp_path, capsys):
    noise = NoiseConfig(r=0.2, seed=1)
    pred = [noise.noisy(r) for r in bccd_test]
    g = torch.Generator().manual_seed(0)
    for scores in ([torch.rand(len(p), generator=g) for p in pred], [torch.ones(len(p)) for p in pred]):
        ours = coco_ap(bccd_test, pred, scores)
        assert capsys.readouterr().out == ""  # pycocotools' printing is silenced
        direct = direct_pycocotools(bccd_annotations, bccd_test, pred, scores, tmp_path, capsys)
        assert [ours["ap"], ours["ap50"], ours["ap75"]] == pytest.approx(direct, abs=1e-12)
        assert 0.05 < ours["ap"] < ours["ap50"] < 1


def test_noisy_baseline_on_bccd_test(bccd_test):
    "The noisy-input baseline on BCCD's test split: mean IoU where the noise model puts it (OA-MIL: 0.81/0.66/0.55)."
    rows = {f"r = {r}": noisy_baseline(bccd_test, NoiseConfig(r=r)) for r in (0.1, 0.2, 0.3)}
    n = rows["r = 0.2"]["n_boxes"]
    print(
        f"\nnoisy baseline on BCCD test ({len(bccd_test)} images, {n} boxes), score 1.0:\n"
        + metrics_table(rows, label="noise")
    )
    assert n == sum(len(r.boxes) for r in bccd_test) and len(bccd_test) == 72
    assert abs(rows["r = 0.2"]["mean_iou"] - 0.66) < 0.03
    assert abs(rows["r = 0.1"]["mean_iou"] - 0.81) < 0.03 and abs(rows["r = 0.3"]["mean_iou"] - 0.55) < 0.03
    for key in ("mean_iou", "iou_ge_0.75", "ap", "ap50", "ap75"):
        assert rows["r = 0.1"][key] > rows["r = 0.2"][key] > rows["r = 0.3"][key], key
    for m in rows.values():
        assert set(METRIC_KEYS) <= set(m) and all(0 <= m[k] <= 1 for k in METRIC_KEYS)
        json.dumps(m, allow_nan=False)
    assert noisy_baseline(bccd_test, NoiseConfig(r=0.2)) == rows["r = 0.2"]  # fixed by the seed


def test_baseline_on_the_sample_matches_the_notebook():
    records = load_sample().records
    m = noisy_baseline(records, NoiseConfig(r=0.2))
    assert m["n_boxes"] == 463 and m["mean_iou"] == pytest.approx(0.677, abs=5e-4)


def test_pairing_errors_name_the_image():
    records = load_sample().records[:2]
    with pytest.raises(ValueError, match="pred holds boxes for 1 images but there are 2 records"):
        evaluate_boxes(records, [records[0].boxes])
    with pytest.raises(ValueError, match=f"pred of image {records[1].id} has 1 boxes"):
        evaluate_boxes(records, [records[0].boxes, records[1].boxes[:1]])
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate_boxes([], [])


def test_metrics_table_lists_every_column():
    table = metrics_table({"a": {k: 0.5 for k in TABLE_COLUMNS}})
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|") == len(TABLE_COLUMNS) + 2
    assert row == "| a | " + " | ".join(["0.500"] * len(TABLE_COLUMNS)) + " |"
