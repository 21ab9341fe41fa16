"The feature cache, against real BCCD images and small generated ones, in one process and several."

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from boxrefine.cache import FeatureCache, read_entry, write_entry
from boxrefine.data import ImageReadError
from boxrefine.encoder import Encoder, EncoderConfig, RandomWeightsWarning


def make_encoder(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return Encoder(EncoderConfig(**kw))


@pytest.fixture(scope="module")
def encoder():
    return make_encoder()


@pytest.fixture(scope="module")
def bccd_images(bccd_annotations):
    "Four real BCCD images from its val split."
    images = [im for im in json.loads(bccd_annotations.read_text())["images"] if im["split"] == "val"][:4]
    return [bccd_annotations.parent / "images" / im["file_name"] for im in images]


def generated_images(folder, n, seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_second_pass_hits_everything_bit_identical_without_the_encoder(encoder, bccd_images, tmp_path):
    first = FeatureCache(encoder, tmp_path).get_many(bccd_images)
    calls = encoder.calls
    cache = FeatureCache(encoder, tmp_path)
    second = cache.get_many(bccd_images)
    assert encoder.calls == calls  # the encoder never ran
    assert (cache.stats.hits, cache.stats.misses, cache.stats.corrupt, cache.stats.hit_rate) == (4, 0, 0, 1.0)
    assert cache.stats.bytes_read > 4 * 3 * 2**20 and cache.stats.seconds_saved > 0
    for f, s in zip(first, second):
        for k in ("image_embedding", "interm_embedding"):
            assert torch.equal(f[k].half().float(), s[k])  # identical after the fp16 storage round trip
    stored = cache.get_many(bccd_images[:1], dtype=None)[0]
    assert stored["image_embedding"].dtype == torch.float16 and stored["original_hw"] == (480, 640)


def test_what_misses_and_what_hits(encoder, bccd_images, tmp_path):
    FeatureCache(encoder, tmp_path).get_many(bccd_images[:2])
    cache = FeatureCache(encoder, tmp_path)
    renamed = tmp_path / "renamed_copy.jpg"
    renamed.write_bytes(bccd_images[0].read_bytes())
    resaved = tmp_path / "resaved.png"
    Image.open(bccd_images[1]).save(resaved)
    cache.get_many([renamed, resaved])
    assert (cache.stats.hits, cache.stats.misses) == (2, 0)
    edited = np.array(Image.open(bccd_images[0]))
    edited[0, 0, 0] ^= 1
    cache.get(edited)
    assert cache.stats.misses == 1
    for changed in (make_encoder(seed=1), make_encoder(storage_dtype="fp32")):
        other = FeatureCache(changed, tmp_path)
        other.get(bccd_images[0])
        assert (other.stats.hits, other.stats.misses) == (0, 1), changed.config
    # the other precision has other keys (not encoded here: bf16 on a CPU without native bf16 takes a minute an image)
    other_precision = "bf16" if encoder.config.autocast == "fp32" else "fp32"
    assert FeatureCache(make_encoder(autocast=other_precision), tmp_path).key(bccd_images[0]) != cache.key(
        bccd_images[0]
    )
    assert FeatureCache(make_encoder(autocast=encoder.config.autocast), tmp_path).key(bccd_images[0]) == cache.key(
        bccd_images[0]
    )
    fp32 = FeatureCache(make_encoder(storage_dtype="fp32"), tmp_path).get(bccd_images[0], dtype=None)
    assert fp32["image_embedding"].dtype == torch.float32


def damage(path, how, fingerprint):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif how in ("wrong shapes", "wrong dtype"):
        channels, dtype = (768, torch.float16) if how == "wrong shapes" else (160, torch.float32)
        features = dict(
            image_embedding=torch.zeros(256, 64, 64),
            interm_embedding=torch.zeros(64, 64, channels),
            original_hw=(480, 640),
            input_hw=(768, 1024),
        )
        write_entry(path, features, fingerprint, dtype, 0.0)
    elif how == "wrong fingerprint":
        write_entry(
            path,
            dict(
                image_embedding=torch.zeros(256, 64, 64),
                interm_embedding=torch.zeros(64, 64, 160),
                original_hw=(480, 640),
                input_hw=(768, 1024),
            ),
            "vit_tiny-0000000000000000",
            torch.float16,
            0.0,
        )


@pytest.mark.parametrize(
    "how", ["truncated", "empty", "random bytes", "wrong shapes", "wrong dtype", "wrong fingerprint"]
)
def test_corrupt_entries_are_counted_removed_and_recomputed(encoder, bccd_images, tmp_path, how):
    image = bccd_images[0]
    good = FeatureCache(encoder, tmp_path).get(image)
    cache = FeatureCache(encoder, tmp_path)
    damage(cache.path(cache.key(image)), how, encoder.fingerprint)
    feats = cache.get(image)
    assert (cache.stats.corrupt, cache.stats.misses, cache.stats.hits) == (1, 1, 0)
    assert torch.equal(feats["image_embedding"], good["image_embedding"])
    check = FeatureCache(encoder, tmp_path)
    check.get(image)
    assert (check.stats.hits, check.stats.corrupt) == (1, 0)  # the recomputed entry is whole


def test_grayscale_rgba_and_unreadable_images(encoder, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64).astype(np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(rgba)
    feats = FeatureCache(encoder, tmp_path / "c").get_many([gray, rgba])
    assert feats[0]["original_hw"] == (48, 64) and feats[1]["original_hw"] == (30, 40)
    assert all(torch.isfinite(f["image_embedding"]).all() for f in feats)
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    with pytest.raises(ImageReadError, match="not_an_image.jpg: cannot read image"):
        FeatureCache(encoder, tmp_path / "c").get(bad)


def test_memory_layer_and_disk_limit(encoder, tmp_path):
    images = generated_images(tmp_path, 3)
    cache = FeatureCache(encoder, tmp_path / "c", memory_bytes=8 * 2**20)
    cache.get_many(images)
    cache.get_many(images[1:])
    assert cache.stats.memory_hits == 2 and cache.stats.bytes_read == 0
    entry = cache.disk_usage()["bytes"] // 3
    limited = FeatureCache(encoder, tmp_path / "c", max_disk_bytes=2 * entry)
    limited.get_many(images[:1])  # a hit refreshes the entry: it survives the next eviction
    limited.get_many(generated_images(tmp_path, 1, seed=9))
    assert limited.stats.evicted == 2 and limited.disk_usage()["entries"] == 2
    assert limited.path(limited.key(images[0])).exists()


WARM = """
import sys, warnings
warnings.simplefilter("ignore")
from boxrefine.cache import FeatureCache
from boxrefine.encoder import Encoder, EncoderConfig
root, *images = sys.argv[1:]
cache = FeatureCache(Encoder(EncoderConfig(batch_size=1)), root)
cache.warm(images, progress=False)
print(cache.stats.hits, cache.stats.misses, cache.stats.corrupt)
"""


def warm_process(root, images):
    return subprocess.Popen(
        [sys.executable, "-c", WARM, str(root), *map(str, images)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_warming_the_same_cache(encoder, tmp_path):
    images = generated_images(tmp_path, 3)
    root = tmp_path / "shared-cache"
    procs = [warm_process(root, images), warm_process(root, images)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        hits, misses, corrupt = map(int, out.split())
        assert hits + misses == 3 and corrupt == 0
    cache = FeatureCache(encoder, root)
    assert len(cache.entries()) == 3
    for path in cache.entries():
        read_entry(path, encoder.fingerprint, 160, torch.float16)
    assert not list(root.rglob(".tmp-*"))
    cache.get_many(images)
    assert cache.stats.hits == 3


def test_killed_writer_never_leaves_a_corrupt_entry(encoder, tmp_path):
    images = generated_images(tmp_path, 4, seed=3)
    root = tmp_path / "cache"
    proc = warm_process(root, images)
    deadline = time.time() + 240

    def whole():
        return [p for p in root.rglob("*.safetensors") if not p.name.startswith(".tmp-")]  # renamed into place

    while len(whole()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = FeatureCache(encoder, root)
    written = cache.entries()
    assert 2 <= len(written) < 4
    for path in written:
        read_entry(path, encoder.fingerprint, 160, torch.float16)  # every named entry is whole
    cache.warm(images, progress=False)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.corrupt) == (len(written), 4 - len(written), 0)
    cache.remove_stale_temporaries(max_age_s=0)
    assert not list(root.rglob(".tmp-*"))


def test_clear_removes_only_the_cache_layout(encoder, tmp_path):
    keep = tmp_path / "my-notes.txt"
    keep.write_text("mine")
    cache = FeatureCache(encoder, tmp_path)
    cache.get_many(generated_images(tmp_path, 1))
    assert cache.clear() == 1 and cache.disk_usage() == {"entries": 0, "bytes": 0}
    assert keep.read_text() == "mine"


@pytest.mark.parametrize(
    "header",
    [
        b"[1, 2]",
        b'{"image_embedding": 7}',
        b'{"__metadata__": "x"}',
        b'{"image_embedding": {"dtype": "F16", "data_offsets": [0, 2]}}',
    ],
)
def test_a_garbled_but_parseable_header_is_a_corrupt_entry(encoder, tmp_path, header):
    "JSON of the wrong shape in an entry's header is corrupt and recomputed, never an AttributeError or KeyError."
    cache = FeatureCache(encoder, tmp_path)
    image = generated_images(tmp_path, 1)[0]
    cache.get(image)
    path = cache.path(cache.key(image))
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    again = FeatureCache(encoder, tmp_path)
    assert tuple(again.get(image)["image_embedding"].shape) == (256, 64, 64)
    assert (again.stats.corrupt, again.stats.misses) == (1, 1)


def test_an_entry_removed_while_reading_is_a_miss(encoder, tmp_path):
    cache = FeatureCache(encoder, tmp_path)
    image = generated_images(tmp_path, 1)[0]
    cache.get(image)
    FeatureCache(None, tmp_path).clear()  # another process clears the cache
    again = FeatureCache(encoder, tmp_path)
    again.get(image)
    assert (again.stats.hits, again.stats.misses, again.stats.corrupt) == (0, 1, 0)
    assert again.disk_usage()["entries"] == 1
