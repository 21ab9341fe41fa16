"The training monitor and the review widget, driven headlessly, with what they draw read back from matplotlib."

import json

import pytest
import torch

from boxrefine.inference import refine_records, refined_coco
from boxrefine.data import sample_paths, load_sample
from boxrefine.config import DataConfig, load_config
from boxrefine.train import split_records, train_refiner
from boxrefine.widgets import ReviewSession, ReviewWidget, TrainingMonitor, drawn_boxes


@pytest.fixture(scope="module")
def trained():
    train, val = split_records(load_sample(verbose=False).records, DataConfig())
    monitor = TrainingMonitor(n_images=2, live=True, budget=None)
    learn = train_refiner(
        load_config(overrides=["training.epochs=2", "data.batch_size=4"]),
        train[:4],
        val[:4],
        progress=False,
        cbs=[monitor],
    )
    return learn, monitor, val[:4]


def test_monitor_draws_the_logged_values_and_the_boxes(trained):
    learn, monitor, _ = trained
    assert monitor.refreshes == 3  # two validation epochs and the final state
    curves, boxes = monitor.last_figures
    assert list(curves.axes[1].lines[0].get_ydata()) == [h["val_mean_iou"] for h in learn.history]
    assert list(curves.axes[1].lines[1].get_ydata()) == [h["noisy_mean_iou"] for h in learn.history]
    assert list(curves.axes[0].lines[0].get_ydata()) == learn.step_losses
    item = learn.valid_dl.dataset[0]
    for kind, expected in (("true", item["boxes"]), ("noisy", item["noisy"]), ("pred", monitor.preds[0])):
        assert torch.allclose(drawn_boxes(boxes.axes[0], kind), expected, atol=1e-4), kind
    assert not torch.equal(monitor.preds[0], item["noisy"])  # a trained refiner moved the boxes


def test_monitor_pages_and_toggles(trained):
    learn, monitor, _ = trained
    monitor.set_page(1)
    assert monitor.last_figures[1].axes[0].get_title() == f"image {learn.valid_dl.dataset[2]['image_id']}"
    monitor.kind_boxes["pred"].value = False  # the checkbox, as a user clicks it
    assert len(drawn_boxes(monitor.last_figures[1].axes[0], "pred")) == 0 and "pred" not in monitor.kinds
    monitor.set_kind("pred", True)
    assert len(drawn_boxes(monitor.last_figures[1].axes[0], "pred")) > 0 and monitor.kind_boxes["pred"].value
    monitor.set_page(99)  # clamped to the last page
    assert monitor.page == monitor.n_pages - 1 == 1 and monitor.page_slider.value == 2
    with pytest.raises(ValueError, match="kind must be one of"):
        monitor.set_kind("gt", True)


def test_monitor_outside_jupyter_is_silent_or_saves_pngs(trained, tmp_path):
    _, _, val = trained
    quiet, saving = TrainingMonitor(), TrainingMonitor(save_dir=tmp_path)
    assert not quiet.live and not quiet.active
    train_refiner(
        load_config(overrides=["training.epochs=1", "data.batch_size=4"]),
        val[:2],
        val[2:],
        progress=False,
        cbs=[quiet, saving],
    )
    assert (quiet.refreshes, quiet.seconds) == (0, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor-boxes.png", "monitor-curves.png"]


@pytest.fixture
def refined_file(trained, tmp_path):
    learn, _, val = trained
    recs = val[:2]
    refined = refine_records(learn.refiner, recs, [r.boxes for r in recs], progress=False, min_gain=-1.0)
    coco = json.loads(sample_paths().annotations.read_text())
    path = tmp_path / "refined.json"
    path.write_text(json.dumps(refined_coco(coco, recs, refined, "run")[0]))
    return path


def test_review_accept_reject_nudge_write_and_resume(refined_file, tmp_path):
    before = refined_file.read_bytes()
    review = ReviewWidget(ReviewSession(refined_file, sample_paths().images, out=tmp_path / "reviewed.json"))
    ids = review.session.order("moved")
    moved = [review.session.moved(i) for i in ids]
    assert moved == sorted(moved, reverse=True)
    quality = [review.session.anns[i]["quality"] for i in review.session.order("quality")]
    assert quality == sorted(quality)
    review.list.value = ids[0]
    review.click("accept")
    review.list.value = ids[1]
    review.click("reject")
    review.list.value = ids[2]
    review.click("left ←")
    review.click("left ←")
    review.click("bottom ↓")
    assert review.session.decisions[ids[2]] == {"action": "nudge", "delta": [-2.0, 0.0, 0.0, 1.0]}
    again = ReviewSession(refined_file, sample_paths().images, out=tmp_path / "reviewed.json")  # a restart
    assert again.decisions == review.session.decisions
    out = json.loads(again.write().read_text())
    anns = {a["id"]: a for a in out["annotations"]}
    src = {a["id"]: a for a in json.loads(before)["annotations"]}
    assert anns[ids[0]]["bbox"] == src[ids[0]]["bbox"] and anns[ids[0]]["review"] == "accept"
    assert anns[ids[1]]["bbox"] == src[ids[1]]["bbox_input"] and anns[ids[1]]["review"] == "reject"
    x, y, w, h = src[ids[2]]["bbox"]
    assert (
        anns[ids[2]]["bbox"] == pytest.approx([x - 2, y, w + 2, h + 1], abs=0.02) and anns[ids[2]]["review"] == "nudge"
    )
    assert all(
        a["review"] == "pending" for i, a in anns.items() if i in src and "bbox_input" in src[i] and i not in ids[:3]
    )
    assert refined_file.read_bytes() == before  # the input is never touched
    assert anns[ids[2]]["area"] == pytest.approx(anns[ids[2]]["bbox"][2] * anns[ids[2]]["bbox"][3], abs=0.02)
    with pytest.raises(ValueError, match="is the input file"):
        ReviewSession(refined_file, sample_paths().images, out=refined_file)
    with pytest.raises(ValueError, match="is not a review of"):
        ReviewSession(refined_file, sample_paths().images, out=sample_paths().annotations)
    coco = json.loads(before)
    coco["annotations"][0]["bbox"][0] += 1  # refined again: the old decisions do not apply to the new boxes
    refined_file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="holds decisions about another version"):
        ReviewSession(refined_file, sample_paths().images, out=tmp_path / "reviewed.json")


def test_review_decisions_round_trip_any_kind_of_id(tmp_path):
    "String ids, ids that look like numbers, and annotations without ids keep their decisions across a restart."
    from boxrefine.data import sample_paths
    from boxrefine.widgets import ReviewSession

    coco = json.loads(sample_paths().annotations.read_text())
    image = coco["images"][0]["id"]

    def ann(box, **extra):
        return {
            "image_id": image,
            "category_id": 1,
            "bbox": box,
            "bbox_input": [10, 10, 50, 50],
            "quality": 0.5,
            "area": 100,
            "iscrowd": 0,
            **extra,
        }

    coco["annotations"] = [
        ann([12, 12, 46, 46], id=5),
        ann([11, 11, 48, 48], id="5"),
        ann([13, 13, 44, 44], id="a-7"),
        ann([14, 14, 42, 42]),
    ]
    refined = tmp_path / "refined.json"
    refined.write_text(json.dumps(coco))
    session = ReviewSession(refined, sample_paths().images)
    assert set(session.anns) == {5, "5", "a-7", ("annotations", 3)}
    session.decide(5, "accept")
    session.decide("5", "reject")
    session.decide(("annotations", 3), "nudge", [1, 0, 0, 0])
    again = ReviewSession(refined, sample_paths().images)
    assert again.decisions == session.decisions and again.decisions["5"] == {"action": "reject"}
    out = json.loads(again.write().read_text())["annotations"]
    assert [a["review"] for a in out] == ["accept", "reject", "pending", "nudge"]
    assert out[1]["bbox"] == [10, 10, 50, 50] and out[3]["bbox"][0] == 15
