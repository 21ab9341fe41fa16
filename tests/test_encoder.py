"The HQ-SAM encoder: safe checkpoint loading, exact preprocessing, batching, fingerprints, the box-prompted decoder."

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from boxrefine.data import sample_paths
from boxrefine.encoder import (
    CheckpointError,
    Encoder,
    EncoderConfig,
    ImageTransform,
    RandomWeightsWarning,
    box_masks,
    build_sam,
    encoder_fingerprint,
    load_rgb,
    preprocess,
)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def sam():
    return quiet(build_sam, EncoderConfig())


@pytest.fixture(scope="module")
def image_path():
    return sorted(sample_paths().images.glob("*.jpg"))[0]


def test_random_weights_warn_loudly_and_are_deterministic(sam):
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights .* will not reflect HQ-SAM quality"):
        again = build_sam(EncoderConfig())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in sam.state_dict().items())
    state = torch.random.get_rng_state()
    quiet(build_sam, EncoderConfig(seed=3))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_preprocessing_equals_sam_predictor(sam, image_path):
    from segment_anything_hq import SamPredictor

    predictor = SamPredictor(sam)
    rgb = np.array(Image.open(image_path).convert("RGB"))
    captured = {}
    predictor.set_torch_image = lambda x, hw: captured.update(x=sam.preprocess(x.float()), hw=hw)
    predictor.set_image(rgb)
    ours, transform = preprocess(sam, image_path)
    assert torch.equal(ours, captured["x"][0])
    assert transform.original_hw == tuple(captured["hw"]) and transform.input_hw == (768, 1024)


@pytest.mark.parametrize("hw", [(480, 640), (333, 1000), (1000, 333), (1024, 1024), (17, 2000)])
def test_transform_matches_resize_longest_side(hw):
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    rls = ResizeLongestSide(1024)
    t = ImageTransform.for_image(hw)
    assert t.input_hw == rls.get_preprocess_shape(*hw, 1024)
    boxes = torch.tensor([[0.0, 0, hw[1], hw[0]], [3, 5, 7, 11]])
    torch.testing.assert_close(t.to_input(boxes), torch.tensor(rls.apply_boxes(boxes.numpy(), hw), dtype=torch.float32))
    torch.testing.assert_close(t.to_original(t.to_input(boxes)), boxes)


def test_image_kinds_become_rgb(tmp_path):
    gray, rgba = np.zeros((5, 6), np.uint8), np.zeros((5, 6, 4), np.uint8)
    assert load_rgb(gray).shape == load_rgb(rgba).shape == (5, 6, 3)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 6x4 stored image shows as 4 wide, 6 high
    stored = Image.new("RGB", (6, 4), (255, 0, 0))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").shape == (6, 4, 3)


def test_checkpoints_load_safely_and_refuse_mismatches(sam, tmp_path, image_path, monkeypatch):
    good = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(sam.state_dict(), good)
    # a model built from another seed, loaded, gives exactly the saved model's output (TinyViT's bias cache refreshed)
    loaded = build_sam(EncoderConfig(checkpoint=str(good), seed=7))
    x = preprocess(sam, image_path)[0][None]
    with torch.inference_mode():
        torch.testing.assert_close(loaded.image_encoder(x)[0], sam.image_encoder(x)[0], rtol=0, atol=0)
    monkeypatch.setenv("BOXREFINE_CHECKPOINT", str(good))
    assert EncoderConfig().resolved_checkpoint() == good
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", RandomWeightsWarning
        )  # a checkpoint from the environment: no random-weights warning
        build_sam(EncoderConfig())
    monkeypatch.delenv("BOXREFINE_CHECKPOINT")
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (tmp_path / "text.pth").write_text("hello")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    cases = {
        "missing.pth": "does not exist",
        "cut.pth": r"cannot be read \(truncated",
        "text.pth": "cannot be read",
        "other.pth": "does not fit vit_tiny",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as e:
            build_sam(EncoderConfig(checkpoint=str(tmp_path / name)))
        assert name in str(e.value) and "sam_hq_vit_tiny.pth" in str(e.value)
    with pytest.raises(CheckpointError, match="does not fit vit_b: .* shape mismatches"):
        build_sam(EncoderConfig(model_type="vit_b", checkpoint=str(good)))


def test_fingerprint_changes_with_every_setting():
    base = EncoderConfig(autocast="bf16")
    prints = {
        encoder_fingerprint(c, "tensors:abc")
        for c in [
            base,
            EncoderConfig(autocast="fp32"),
            EncoderConfig(storage_dtype="bf16"),
            EncoderConfig(model_type="vit_b"),
        ]
    }
    prints.add(encoder_fingerprint(base, "tensors:abd"))
    assert len(prints) == 5
    assert encoder_fingerprint(base, "tensors:abc") == encoder_fingerprint(
        EncoderConfig(autocast="bf16", batch_size=7, device="cpu"), "tensors:abc"
    )  # not feature-changing
    assert quiet(Encoder).fingerprint == quiet(Encoder).fingerprint


def test_encode_batches_and_box_masks(image_path):
    encoder = quiet(Encoder, EncoderConfig(batch_size=2))
    images = [image_path, np.array(Image.open(image_path))[:300, :200], Image.open(image_path).convert("L")]
    feats = encoder.encode(images)
    assert (encoder.calls, encoder.images) == (2, 3)
    assert [f["original_hw"] for f in feats] == [(480, 640), (300, 200), (480, 640)]
    assert all(
        f["image_embedding"].shape == (256, 64, 64) and f["interm_embedding"].shape == (64, 64, 160) for f in feats
    )
    assert all(f["image_embedding"].dtype == torch.float32 and not f["image_embedding"].is_inference() for f in feats)
    logits, iou = box_masks(encoder.sam, feats[1], torch.tensor([[10.0, 10, 100, 120], [0, 0, 200, 300]]))
    assert logits.shape == (2, 300, 200) and iou.shape == (2,) and torch.isfinite(logits).all()


def test_auto_precision_is_resolved_into_the_fingerprint():
    "auto becomes this machine's choice: the same fingerprint as asking for that precision, never the word auto."
    from boxrefine.machine import choose_precision

    auto = quiet(Encoder)
    assert auto.config.autocast == choose_precision("auto", "cpu").precision
    assert auto.fingerprint == quiet(Encoder, EncoderConfig(autocast=auto.config.autocast)).fingerprint
