"The box loss: agreement with torchvision, gradients on hard cases, properties over random boxes, strict input."

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchvision.ops import generalized_box_iou_loss

from boxrefine.boxes import BoxError
from boxrefine.loss import LossConfig, box_loss, giou_loss

HW = (480, 640)


def random_boxes(n, generator, size=640.0):
    xy = torch.rand(n, 2, generator=generator) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * size / 2 + 1], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_giou_part_equals_torchvision(dtype):
    g = torch.Generator().manual_seed(0)
    pred, target = random_boxes(2000, g).to(dtype), random_boxes(2000, g).to(dtype)
    ours = giou_loss(pred, target)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, generalized_box_iou_loss(pred, target), atol=1e-5, rtol=0)
    parts = box_loss(pred, target, HW)
    assert parts.total.dtype == torch.float32
    torch.testing.assert_close(parts.giou, generalized_box_iou_loss(pred, target, reduction="mean"), atol=1e-5, rtol=0)


def test_half_inputs_give_the_fp32_loss_of_the_same_values():
    g = torch.Generator().manual_seed(3)
    pred, target = random_boxes(500, g).bfloat16(), random_boxes(500, g).bfloat16()
    torch.testing.assert_close(box_loss(pred, target, HW).total, box_loss(pred.float(), target.float(), HW).total)


def test_parts_and_weights():
    t = torch.tensor([[100.0, 100, 200, 150]])
    p = torch.tensor([[100.0, 100, 210, 150]])
    parts = box_loss(p, t, HW, LossConfig(l1_weight=1.0, giou_weight=3.0))
    assert parts.l1.item() == pytest.approx(10 / 640)
    assert parts.giou.item() == pytest.approx(1 - 100 / 110)
    assert parts.total.item() == pytest.approx(10 / 640 + 3 * (1 - 100 / 110))


def test_loss_is_resolution_free():
    g = torch.Generator().manual_seed(5)
    pred, target = random_boxes(100, g, 400), random_boxes(100, g, 400)
    small, large = box_loss(pred, target, HW).total, box_loss(pred * 8, target * 8, (HW[0] * 8, HW[1] * 8)).total
    torch.testing.assert_close(small, large, atol=1e-5, rtol=1e-5)
    assert 0 <= small.item() < 5 * 4 + 2 * 2


CASES = {  # (pred, target): the shapes of trouble for IoU-family losses
    "disjoint": ([10.0, 10, 20, 20], [100.0, 100, 130, 120]),
    "nested": ([10.0, 10, 90, 90], [30.0, 30, 50, 60]),
    "identical": ([10.0, 10, 90, 90], [10.0, 10, 90, 90]),
    "touching": ([0.0, 0, 10, 10], [10.0, 0, 20, 10]),
    "zero-area point": ([5.0, 5, 5, 5], [0.0, 0, 10, 10]),
    "zero-area line vs line": ([0.0, 5, 10, 5], [2.0, 5, 12, 5]),
    "identical points": ([5.0, 5, 5, 5], [5.0, 5, 5, 5]),
    "point vs other point on a line": ([5.0, 5, 5, 5], [8.0, 5, 8, 5]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_finite_and_nonzero_where_pred_differs(name):
    p, t = CASES[name]
    pred = torch.tensor([p], requires_grad=True)
    target = torch.tensor([t])
    loss = box_loss(pred, target, HW).total
    loss.backward()
    grad = pred.grad[0]
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), (name, loss, grad)
    differs = pred[0].detach() != target[0]
    assert (grad[differs] != 0).all(), (name, grad)
    if not differs.any():
        assert loss.item() == 0.0


quarter_px = st.integers(0, 2400).map(lambda v: v / 4)


@st.composite
def box_pairs(draw):
    n = draw(st.integers(1, 6))

    def box():
        x1, x2 = sorted((draw(quarter_px), draw(quarter_px)))
        y1, y2 = sorted((draw(quarter_px), draw(quarter_px)))
        return [x1, y1, x2, y2]

    pred = [box() for _ in range(n)]
    target = [p if draw(st.booleans()) else box() for p in pred]  # many equal pairs, so "zero iff equal" is exercised
    return torch.tensor(pred), torch.tensor(target)


@settings(max_examples=400, deadline=None)
@given(box_pairs(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_loss_is_finite_nonnegative_and_zero_iff_equal(pair, dtype):
    pred, target = (b.to(dtype) for b in pair)
    parts = box_loss(pred, target, (600, 600))
    for v in parts:
        assert torch.isfinite(v) and v.item() >= 0
    per_box_giou = giou_loss(pred, target)
    assert ((per_box_giou >= 0) & (per_box_giou <= 2)).all()
    assert (parts.total.item() == 0) == torch.equal(pred, target)


@settings(max_examples=200, deadline=None)
@given(box_pairs())
def test_gradient_finite_for_any_valid_boxes(pair):
    pred, target = pair
    pred.requires_grad_()
    box_loss(pred, target, (600, 600)).total.backward()
    assert torch.isfinite(pred.grad).all()


OK = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (OK, OK[:1], "pred has 2 boxes but target has 1"),
        (OK[:1], OK, "pred has 1 boxes but target has 2"),
        (OK[0], OK[0], "pred must have shape (N, 4)"),
        (OK, OK.T, "target must have shape (N, 4), got (4, 2)"),
        (OK, torch.tensor([[0.0, 0, 10, 10], [5, 5, float("nan"), 20]]), "target[1] = [5, 5, nan, 20] is not finite"),
        (torch.tensor([[0.0, 0, 10, 10], [20, 5, 5, 20]]), OK, "pred[1] = [20, 5, 5, 20] is inverted"),
        (OK, OK.to("meta"), "pred is on cpu but target is on meta"),
        (OK[:0], OK[:0], "no boxes"),
        (OK.int(), OK.int(), "floating-point"),
    ],
)
def test_invalid_input_raises_box_error(pred, target, message):
    with pytest.raises(BoxError) as e:
        box_loss(pred, target, HW)
    assert message in str(e.value)


def test_bad_image_sizes_and_config():
    with pytest.raises(BoxError, match="finite and positive"):
        box_loss(OK, OK, (0, 640))
    with pytest.raises(BoxError, match=r"image_hw must be \(height, width\) or \(2, 2\)"):
        box_loss(OK, OK, torch.ones(3, 2))
    with pytest.raises(ValueError, match="giou_weight must be a finite number >= 0"):
        LossConfig(giou_weight=-1)
    with pytest.raises(ValueError, match="eps must be"):
        LossConfig(eps=float("inf"))
