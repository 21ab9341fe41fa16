"Box validation, conversions, overlaps and the noise model, on hand cases, random boxes and all of BCCD."

import pytest
import torch
from hypothesis import given, settings, strategies as st

from boxrefine.boxes import (
    BoxError,
    box_iou,
    check_box_pair,
    check_boxes,
    clip_boxes,
    convert_boxes,
    elementwise_giou,
    elementwise_iou,
    generalized_box_iou,
    noise_draws,
    noisy_boxes,
    normalize_boxes,
)
from boxrefine.data import load_coco

GOOD = torch.tensor([[10.0, 20, 50, 80], [0, 0, 0, 0], [5, 5, 6, 9]])


@pytest.mark.parametrize(
    "boxes, message",
    [
        (GOOD[0], "boxes must have shape (N, 4), got (4,)"),
        (GOOD[None], "boxes must have shape (N, 4), got (1, 3, 4)"),
        (GOOD[:, :3], "boxes must have shape (N, 4), got (3, 3)"),
        (GOOD.long(), "boxes must be a floating-point tensor, got torch.int64"),
        (GOOD.tolist(), "boxes must be a torch.Tensor, got list"),
        (torch.tensor([[0.0, 0, 1, 1], [0, 0, float("inf"), 1]]), "boxes[1] = [0, 0, inf, 1] is not finite"),
        (
            torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, float("nan"), 1, 1]]),
            "boxes[2] = [0, nan, 1, 1] is not finite",
        ),
        (torch.tensor([[0.0, 0, 1, 1], [4, 0, 3, 1]]), "boxes[1] = [4, 0, 3, 1] is inverted: x2 < x1"),
        (torch.tensor([[0.0, 7, 1, 6]]), "boxes[0] = [0, 7, 1, 6] is inverted"),
    ],
)
def test_check_boxes_names_problem_index_and_value(boxes, message):
    with pytest.raises(BoxError) as e:
        check_boxes(boxes)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_pairs_are_never_truncated_or_moved():
    with pytest.raises(BoxError, match="pred has 3 boxes but target has 2"):
        check_box_pair(GOOD, GOOD[:2])
    with pytest.raises(BoxError, match="pred is on cpu but target is on meta"):
        check_box_pair(GOOD, GOOD.to("meta"))
    with pytest.raises(BoxError, match="boxes2 has 2"):
        elementwise_iou(GOOD, GOOD[:2])
    with pytest.raises(BoxError, match="image_hw is on meta"):
        normalize_boxes(GOOD, torch.tensor([480, 640], device="meta"))


def test_formats_round_trip_and_reject_negative_sizes():
    xyxy = torch.tensor([[1.0, 2, 11, 22], [0, 0, 0, 0]])
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(convert_boxes(convert_boxes(xyxy, "xyxy", fmt), fmt, "xyxy"), xyxy)
    with pytest.raises(BoxError, match="negative width or height"):
        convert_boxes(torch.tensor([[0.0, 0, 2, -1]]), "cxcywh", "xyxy")
    with pytest.raises(ValueError, match="unknown box format"):
        convert_boxes(xyxy, "xyxy", "ltrb")


def test_overlaps_match_torchvision_pairwise_diagonal():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(200, 2, generator=g) * 100
    a = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 50 + 1], 1)
    xy = torch.rand(200, 2, generator=g) * 100
    b = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 50 + 1], 1)
    torch.testing.assert_close(elementwise_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6, rtol=0)
    torch.testing.assert_close(elementwise_giou(a, b), generalized_box_iou(a, b).diagonal(), atol=1e-6, rtol=0)


def test_clip_with_per_box_image_sizes():
    boxes = torch.tensor([[-5.0, -5, 700, 500], [-5, -5, 700, 500]])
    sizes = torch.tensor([[480, 640], [1000, 1000]])
    torch.testing.assert_close(clip_boxes(boxes, sizes), torch.tensor([[0.0, 0, 640, 480], [0, 0, 700, 500]]))


def test_noise_is_per_image_box_and_epoch():
    boxes = GOOD[[0, 2]]
    one_by_one = torch.cat(
        [noisy_boxes(boxes, (480, 640), 0.3, seed=4, image_id="x", epoch=2)[i : i + 1] for i in range(2)]
    )
    torch.testing.assert_close(noisy_boxes(boxes, (480, 640), 0.3, seed=4, image_id="x", epoch=2), one_by_one)
    torch.testing.assert_close(noisy_boxes(boxes[:1], (480, 640), 0.3, seed=4, image_id="x", epoch=2), one_by_one[:1])
    assert not torch.equal(noise_draws(2, 4, "x", 2), noise_draws(2, 4, "x", 3))
    assert not torch.equal(noise_draws(2, 4, "x", 2), noise_draws(2, 5, "x", 2))
    # the same numbers on every machine: the draws come from NumPy's PCG64 seeded by blake2b, not Python's hash
    torch.testing.assert_close(noise_draws(1, 0, 1, 0), noise_draws(1, 0, 1, 0))


coord = st.integers(0, 2000).map(lambda v: v / 4)


@st.composite
def boxes_in_image(draw, n=st.integers(1, 8)):
    h, w = draw(st.integers(1, 600)), draw(st.integers(1, 600))
    rows = []
    for _ in range(draw(n)):
        x1, x2 = sorted(draw(st.tuples(st.integers(0, 4 * w), st.integers(0, 4 * w))))
        y1, y2 = sorted(draw(st.tuples(st.integers(0, 4 * h), st.integers(0, 4 * h))))
        rows.append([x1 / 4, y1 / 4, x2 / 4, y2 / 4])
    return torch.tensor(rows), (h, w)


@settings(max_examples=300, deadline=None)
@given(boxes_in_image(), st.floats(0, 0.99), st.integers(0, 2**31), st.integers(0, 50))
def test_noisy_boxes_are_valid_inside_the_image_and_at_least_min_size(case, r, seed, epoch):
    boxes, (h, w) = case
    noisy = noisy_boxes(boxes, (h, w), r, seed=seed, image_id=seed, epoch=epoch)
    check_boxes(noisy)
    assert (
        (noisy[:, 0] >= 0).all() and (noisy[:, 1] >= 0).all() and (noisy[:, 2] <= w).all() and (noisy[:, 3] <= h).all()
    )
    min_w, min_h = min(1.0, w), min(1.0, h)
    assert ((noisy[:, 2] - noisy[:, 0]) >= min_w - 1e-4).all() and ((noisy[:, 3] - noisy[:, 1]) >= min_h - 1e-4).all()


def test_noise_table_on_all_of_bccd(bccd_annotations):
    "Mean IoU of noisy to true boxes over BCCD's 4,886 boxes sits where OA-MIL's noise model puts it."
    records = load_coco(bccd_annotations, bccd_annotations.parent / "images", verbose=False).records
    assert (len(records), sum(len(r.boxes) for r in records)) == (364, 4886)
    expected = {0.1: 0.81, 0.2: 0.66, 0.3: 0.55, 0.4: 0.45}
    measured = {}
    for r in expected:
        ious = torch.cat(
            [elementwise_iou(noisy_boxes(rec.boxes, rec.image_hw, r, 0, rec.id), rec.boxes) for rec in records]
        )
        measured[r] = ious.mean().item()
    print("mean IoU of noisy to true boxes on BCCD:", {r: round(v, 3) for r, v in measured.items()})
    for r, v in expected.items():
        assert abs(measured[r] - v) < 0.03, (r, measured[r])
    assert measured[0.1] > measured[0.2] > measured[0.3] > measured[0.4]
