"Loading COCO datasets (all of BCCD, files with each kind of defect), reading images upright, dataset, collate."

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from boxrefine.data import (
    DROP_REASONS,
    CocoError,
    ImageBoxes,
    ImageReadError,
    NoiseConfig,
    NoisyBoxDataset,
    collate_boxes,
    load_coco,
    load_sample,
    read_image,
)


def write_coco(
    folder: Path, images, annotations, categories=({"id": 1, "name": "cell"}, {"id": 2, "name": "dust"})
) -> Path:
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": list(images), "annotations": list(annotations), "categories": list(categories)})
    )
    return path


def ann(i, bbox, image_id=1, category_id=1, **more):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, **more}


def image(i, name, h=20, w=40, **more):
    return {"id": i, "file_name": name, "height": h, "width": w, **more}


@pytest.fixture(scope="module")
def bccd(bccd_annotations):
    return load_coco(bccd_annotations, bccd_annotations.parent / "images", verbose=False)


def test_bccd_loads_whole_with_its_splits(bccd, bccd_annotations, capsys):
    assert (len(bccd.records), sum(len(r.boxes) for r in bccd.records)) == (364, 4886)
    assert bccd.categories == {1: "RBC", 2: "WBC", 3: "Platelets"}
    assert bccd.report.counts()["boxes_in_file"] == 4886 and not any(bccd.report.dropped.values())
    assert bccd.report.missing_images == [] and bccd.report.clipped == []
    splits = {
        s: len(load_coco(bccd_annotations, bccd_annotations.parent / "images", split=s, verbose=s == "test").records)
        for s in ("train", "val", "test")
    }
    assert splits == {"train": 205, "val": 87, "test": 72}
    assert "instances.json: kept 72 of 364 images" in capsys.readouterr().out
    for r in bccd.records:
        assert r.path.is_file() and r.image_hw == (480, 640) and r.boxes.dtype == torch.float32
        assert (r.boxes[:, 2:] > r.boxes[:, :2]).all() and (r.boxes[:, 2] <= 640).all() and (r.boxes[:, 3] <= 480).all()


def test_bccd_decoded_images_match_their_records(bccd_annotations):
    "Decoding checks every image (EXIF applied) against its record's size; BCCD's 72 test images all pass."
    data = load_coco(
        bccd_annotations, bccd_annotations.parent / "images", split="test", decode_images=True, verbose=False
    )
    assert data.report.unreadable_images == [] and data.report.size_mismatches == [] and len(data.records) == 72


def test_each_defect_is_counted_under_its_reason(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 20)).save(tmp_path / name)
    images = [image(1, "a.png", split="train"), image(2, "gone.png", split="train"), image(3, "b.png", split="val")]
    anns = [
        ann(1, [2, 2, 10, 10]),
        ann(2, [35, 2, 10, 10]),
        ann(3, [-5, -5, 10, 10]),
        ann(4, [50, 2, 5, 5]),
        ann(5, [5, 5, 0, 5]),
        ann(6, [5, 5, 5, 0]),
        ann(7, [2, 2, 10, 10], iscrowd=1),
        ann(8, [20, 10, 3, 3]),
        ann(9, [2, 2, 10, 10], image_id=2),
        ann(10, [2, 2, 10, 10], category_id=2),
        ann(11, [1, 1, 5, 5], image_id=3),
        ann(12, [2, 2, 10, 10], score=0.2),  # a detection below min_score
        ann(13, [2, 2, 10, 10], score=0.5),
    ]
    data = load_coco(
        write_coco(tmp_path, images, anns), tmp_path, split="train", categories=["cell"], min_size=4, min_score=0.5
    )
    report = data.report
    assert report.dropped == {
        "not_selected": [11],
        "crowd": [7],
        "category": [10],
        "low_score": [12],
        "bad_image": [9],
        "zero_area": [5, 6],
        "outside": [4],
        "too_small": [8],
    }
    assert report.clipped == [2, 3] and report.missing_images == ["gone.png"]
    assert (report.images, report.boxes, report.images_not_selected, report.images_in_file, report.boxes_in_file) == (
        1,
        4,
        1,
        3,
        13,
    )
    assert report.boxes + sum(map(len, report.dropped.values())) == report.boxes_in_file
    torch.testing.assert_close(
        data.records[0].boxes, torch.tensor([[2.0, 2, 12, 12], [35, 2, 40, 12], [0, 0, 5, 5], [2, 2, 12, 12]])
    )
    out = capsys.readouterr().out
    assert "kept 1 of 3 images and 4 of 13 boxes" in out and "dropped boxes of zero width or height: 2" in out
    assert "missing images (1): gone.png" in out
    # without the filters, the crowd, "dust" and 3-pixel boxes and image 3 are kept too
    everything = load_coco(write_coco(tmp_path, images, anns), tmp_path, skip_crowd=False, verbose=False)
    assert [r.id for r in everything.records] == [1, 3] and everything.report.boxes == 9


@pytest.mark.parametrize(
    "images, anns, message",
    [
        ([image(1, "a.png"), image(1, "b.png")], [], "images[1] (id 1, 'b.png') has the same id as images[0]"),
        (
            [image(1, "a.png")],
            [ann(7, [0, 0, 1, 1], image_id=5)],
            "annotations[0] (id 7) points at image id 5, which is not in",
        ),
        ([image(1, "a.png")], [ann(7, [0, 0, 1, 1], category_id=9)], "annotations[0] (id 7) has category_id 9"),
        ([image(1, "a.png")], [ann(7, [0, 0, 1])], "annotations[0] (id 7) has bbox [0, 0, 1]"),
        ([image(1, "a.png")], [ann(7, [0, 0, 1, -2])], "has bbox [0, 0, 1, -2]: expected [x, y, width, height]"),
        ([image(1, "a.png")], [ann(7, [0, 0, 1, None])], "has bbox [0, 0, 1, None]"),
        ([image(1, "a.png", h=0)], [], "images[0] (id 1, 'a.png') has height 0 and width 40"),
        ([{"id": 1, "file_name": "a.png", "width": 4}], [], "images[0] (id 1, 'a.png') has no 'height' field"),
        (
            [image(1, "a.png")],
            [{"id": 7, "image_id": 1, "bbox": [0, 0, 1, 1]}],
            "annotations[0] (id 7) has no 'category_id' field",
        ),
    ],
)
def test_format_errors_name_the_file_and_the_record(tmp_path, images, anns, message):
    path = write_coco(tmp_path, images, anns)
    with pytest.raises(CocoError) as e:
        load_coco(path, tmp_path, verbose=False)
    assert str(e.value).startswith(str(path)) and message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_selections_and_files_are_errors(tmp_path):
    path = write_coco(tmp_path, [image(1, "a.png", split="train")], [])
    with pytest.raises(CocoError, match=r"no image has split == 'test'; the file's values: \['train'\]"):
        load_coco(path, tmp_path, split="test")
    with pytest.raises(CocoError, match=r"image ids \[2\] are not in the file"):
        load_coco(path, tmp_path, image_ids=[1, 2])
    with pytest.raises(CocoError, match=r"categories \['dog'\] are not in the file"):
        load_coco(path, tmp_path, categories=["dog"])
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CocoError, match=r"x.json: not a JSON file"):
        load_coco(tmp_path / "x.json", tmp_path)


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def quadrants(h=32, w=48) -> np.ndarray:
    "Four flat colours, one per quadrant, so that any rotation or mirror is visible."
    px = np.zeros((h, w, 3), np.uint8)
    px[: h // 2, : w // 2], px[: h // 2, w // 2 :] = (255, 0, 0), (0, 255, 0)
    px[h // 2 :, : w // 2], px[h // 2 :, w // 2 :] = (0, 0, 255), (255, 255, 255)
    return px


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (1, lambda p: p),
        (3, lambda p: np.rot90(p, 2)),
        (6, lambda p: np.rot90(p, -1)),
        (8, lambda p: np.rot90(p, 1)),
        (2, lambda p: p[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = quadrants()
    save_with_orientation(tmp_path / "x.jpg", stored, orientation)
    got = read_image(tmp_path / "x.jpg")
    want = upright(stored)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).mean() < 6  # JPEG noise only: no quadrant is out of place


def test_records_of_exif_turned_images_use_the_upright_size(tmp_path):
    "The COCO convention: width and height of a 90-degree EXIF image are those of the displayed image."
    save_with_orientation(
        tmp_path / "x.jpg", quadrants(32, 48), 6
    )  # stored 48 wide, 32 high; displayed 32 wide, 48 high
    images = [image(1, "x.jpg", h=48, w=32), image(2, "x.jpg", h=32, w=48)]
    red = [16, 0, 16, 24]  # the stored top-left quadrant is displayed top right
    data = load_coco(
        write_coco(tmp_path, images, [ann(1, red), ann(2, red, image_id=2)]),
        tmp_path,
        decode_images=True,
        verbose=False,
    )
    assert [r.id for r in data.records] == [1] and data.report.size_mismatches == [("x.jpg", (32, 48), (48, 32))]
    assert data.report.dropped["bad_image"] == [2]
    ((x1, y1, x2, y2),) = data.records[0].boxes.int().tolist()
    inside = read_image(data.records[0].path)[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].mean((0, 1))
    assert np.abs(inside - [255, 0, 0]).max() < 12


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_every_mode_comes_out_rgb(tmp_path, mode):
    im = Image.fromarray(quadrants()).convert(mode)
    im.save(tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png"))
    got = read_image(next(tmp_path.iterdir()))
    assert got.shape == (32, 48, 3) and got.dtype == np.uint8


def test_unreadable_images_are_errors_naming_the_file_and_listed_by_the_loader(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.fromarray(quadrants()).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:300])
    for name in ("bad.jpg", "cut.jpg", "none.jpg"):
        with pytest.raises(ImageReadError, match=f"{name}: cannot read image"):
            read_image(tmp_path / name)
    images = [image(1, "bad.jpg"), image(2, "cut.jpg"), image(3, "none.jpg")]
    report = load_coco(write_coco(tmp_path, images, []), tmp_path, decode_images=True, verbose=False).report
    assert [f for f, _ in report.unreadable_images] == ["bad.jpg", "cut.jpg"] and report.missing_images == ["none.jpg"]
    assert report.images == 0


def test_sample_loads_through_the_same_path(tmp_path):
    sample = load_sample()
    assert sample.report.annotations.name == "instances.json" and sample.report.boxes == 463
    assert all(r.path.parent == sample.records[0].path.parent for r in sample.records)


def bccd_split(bccd, split):
    return [r for r in bccd.records if r.split == split]


def test_training_noise_is_fresh_each_epoch_and_validation_noise_fixed(bccd):
    noise = NoiseConfig(r=0.2, seed=3)
    train, valid = (
        NoisyBoxDataset(bccd_split(bccd, "train"), noise),
        NoisyBoxDataset(bccd_split(bccd, "val"), noise, train=False),
    )
    epoch0 = [train[i]["noisy"] for i in range(5)]
    valid0 = [valid[i]["noisy"] for i in range(5)]
    train.set_epoch(1), valid.set_epoch(1)
    for i in range(5):
        assert not torch.equal(train[i]["noisy"], epoch0[i])
        assert torch.equal(valid[i]["noisy"], valid0[i])
        assert torch.equal(
            NoisyBoxDataset(valid.records, noise, train=False)[i]["noisy"], valid0[i]
        )  # a new dataset: same noise
    train.set_epoch(0)
    assert all(torch.equal(train[i]["noisy"], epoch0[i]) for i in range(5))
    other_seed = NoisyBoxDataset(valid.records, NoiseConfig(r=0.2, seed=4), train=False)
    assert not torch.equal(other_seed[0]["noisy"], valid0[0])


def test_features_hook_is_called_per_record_and_stacked(bccd):
    seen = []

    def features(record):
        seen.append(record.id)
        return {"embedding": torch.full((2, 3), float(record.id)), "name": record.file_name}

    ds = NoisyBoxDataset(bccd.records[:3], features=features)
    batch = collate_boxes([ds[i] for i in range(3)])
    assert seen == [r.id for r in bccd.records[:3]]
    assert (
        batch["features"]["embedding"].shape == (3, 2, 3)
        and batch["features"]["embedding"][1, 0, 0] == bccd.records[1].id
    )
    assert batch["features"]["name"] == [r.file_name for r in bccd.records[:3]]


def record(i, n):
    boxes = torch.arange(n, dtype=torch.float32)[:, None] + torch.tensor([0.0, 0, 5, 5])
    return ImageBoxes(i, f"{i}.jpg", Path(f"{i}.jpg"), (50, 60), None, boxes, torch.arange(n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 12), min_size=1, max_size=5), st.integers(1, 8), st.integers(0, 1000), st.integers(0, 3))
def test_collate_caps_each_image_and_is_seeded(counts, cap, seed, epoch):
    ds = NoisyBoxDataset([record(i, n) for i, n in enumerate(counts)], NoiseConfig(r=0.1))
    ds.set_epoch(epoch)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_boxes(items, max_boxes=cap, seed=seed)
    assert batch["image_index"].bincount(minlength=len(counts)).tolist() == [min(n, cap) for n in counts]
    for i, it in enumerate(items):
        chosen = batch["box_index"][batch["image_index"] == i]
        assert chosen.unique().tolist() == chosen.tolist()  # distinct, in order
        assert torch.equal(batch["boxes"][batch["image_index"] == i], it["boxes"][chosen])
        assert torch.equal(batch["noisy"][batch["image_index"] == i], it["noisy"][chosen])
        assert torch.equal(batch["category_ids"][batch["image_index"] == i], it["category_ids"][chosen])
    again = collate_boxes(items[::-1], max_boxes=cap, seed=seed)  # another batch order: the same boxes per image
    for i in range(len(items)):
        j = len(items) - 1 - i
        assert torch.equal(again["box_index"][again["image_index"] == j], batch["box_index"][batch["image_index"] == i])


def test_collate_choice_changes_with_seed_and_epoch():
    ds = NoisyBoxDataset([record(0, 30)])
    choice = lambda seed: collate_boxes([ds[0]], max_boxes=5, seed=seed)["box_index"].tolist()
    first = choice(0)
    assert choice(0) == first and choice(1) != first
    ds.set_epoch(1)
    assert choice(0) != first
    assert collate_boxes([ds[0]])["box_index"].tolist() == list(range(30))
    with pytest.raises(ValueError, match="max_boxes must be at least 1"):
        collate_boxes([ds[0]], max_boxes=0)


@st.composite
def coco_with_defects(draw):
    "An image and boxes anywhere around it, some of zero size."
    h, w = draw(st.integers(4, 60)), draw(st.integers(4, 60))
    coord = st.integers(-20, 80).map(float)
    size = st.sampled_from([0.0, 1.0, 3.0, 10.0, 40.0])
    boxes = draw(st.lists(st.tuples(coord, coord, size, size), max_size=12))
    return (h, w), [list(b) for b in boxes]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(coco_with_defects(), st.sampled_from([0.0, 2.0, 5.0]))
def test_loader_accounts_for_every_box(tmp_path, case, min_size):
    (h, w), boxes = case
    Image.new("RGB", (w, h)).save(tmp_path / "a.png")
    anns = [ann(i + 1, b) for i, b in enumerate(boxes)]
    data = load_coco(
        write_coco(tmp_path, [image(1, "a.png", h=h, w=w)], anns), tmp_path, min_size=min_size, verbose=False
    )
    report, kept = data.report, data.records[0].boxes
    assert report.boxes + sum(map(len, report.dropped.values())) == len(boxes) == report.boxes_in_file
    assert len(kept) == report.boxes and set(report.dropped) == set(DROP_REASONS)
    assert (kept[:, :2] >= 0).all() and (kept[:, 2] <= w).all() and (kept[:, 3] <= h).all()
    assert ((kept[:, 2:] - kept[:, :2]) >= max(min_size, 1e-9)).all()
    inside = {
        i + 1
        for i, (x, y, bw, bh) in enumerate(boxes)
        if min(bw, bh) >= max(min_size, 1) and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
    }
    kept_ids = {a["id"] for a in anns} - {i for ids in report.dropped.values() for i in ids}
    assert inside <= kept_ids and not inside & set(report.clipped)


def _coco_file(tmp_path, images=None, annotations=None):
    import json as _json
    from boxrefine.data import sample_paths

    coco = _json.loads(sample_paths().annotations.read_text())
    if images is not None:
        coco["images"] = images(coco["images"])
    if annotations is not None:
        coco["annotations"] = annotations(coco["annotations"])
    path = tmp_path / "instances.json"
    path.write_text(_json.dumps(coco))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(annotations=lambda a: a + [dict(a[0])]), "annotation ids must be unique"),
        (dict(annotations=lambda a: [{**a[0], "iscrowd": "0"}] + a[1:]), "has iscrowd '0'"),
        (dict(images=lambda im: [{**im[0], "file_name": "/etc/passwd"}] + im[1:]), "file_name must be relative"),
        (dict(images=lambda im: [{**im[0], "file_name": "../outside.jpg"}] + im[1:]), "file_name must be relative"),
        (dict(images=lambda im: [{**im[0], "file_name": 7}] + im[1:]), "file_name must be a non-empty string"),
        (
            dict(annotations=lambda a: [{**a[0], "id": [1, 2]}] + a[1:]),
            "an annotation id must be an integer or a string",
        ),
    ],
)
def test_coco_records_that_would_give_wrong_boxes_are_refused(tmp_path, change, message):
    from boxrefine.data import CocoError, load_coco, sample_paths

    path = _coco_file(tmp_path, **change)
    with pytest.raises(CocoError, match=message) as e:
        load_coco(path, sample_paths().images, verbose=False)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_iscrowd_accepts_numbers_and_booleans(tmp_path):
    from boxrefine.data import load_coco, sample_paths

    path = _coco_file(tmp_path, annotations=lambda a: [{**a[0], "iscrowd": False}, {**a[1], "iscrowd": True}] + a[2:])
    data = load_coco(path, sample_paths().images, verbose=False)
    second = json.loads(path.read_text())["annotations"][1]["id"]
    assert data.report.dropped["crowd"] == [second]  # true is a crowd box (dropped as such), false is not


def test_16_bit_and_float_images_are_stretched_to_8_bits_not_saturated(tmp_path):
    from boxrefine.data import read_image

    ramp = (np.arange(64 * 32).reshape(32, 64) * 2).astype(np.uint16)  # 0 .. 4094: all of it above 255
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = read_image(tmp_path / "deep.png")
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8 and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and (np.diff(rgb[..., 0].ravel().astype(int)) >= 0).all()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "flat.tiff")
    assert (read_image(tmp_path / "flat.tiff") == 0).all()
