"""Epoch batches (kohya bucket shuffling) and the pixel/latent pipeline."""

import math
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lora_trainer.dataset.batches import batches_per_epoch, epoch_batches
from lora_trainer.dataset.scan import ImageItem
from lora_trainer.errors import TrainingStopped


def item(name, bucket=(512, 512), repeats=1, size=None, resized=None, path=None):
    size = size or bucket
    return ImageItem(path=str(path or name), subset_dir="10_x", repeats=repeats, caption=name,
                     caption_source="file", size=size, bucket=bucket, resized=resized or bucket)


ITEMS = ([item(f"sq{i}", (512, 512), repeats=3) for i in range(5)]
         + [item(f"wide{i}", (640, 384), repeats=2) for i in range(3)]
         + [item("tall", (384, 640), repeats=1)])


def flat(batches):
    return [sample for batch in batches for sample in batch]


@pytest.mark.parametrize("batch_size", [1, 2, 4, 7])
def test_no_batch_mixes_buckets_and_counts_match_kohya(batch_size):
    batches = epoch_batches(ITEMS, batch_size, seed=42, epoch=0)
    for batch in batches:
        assert len({it.bucket for it, _ in batch}) == 1
        assert 1 <= len(batch) <= batch_size
    expected = math.ceil(15 / batch_size) + math.ceil(6 / batch_size) + math.ceil(1 / batch_size)
    assert len(batches) == expected == batches_per_epoch(ITEMS, batch_size)


def test_every_sample_appears_repeats_times_per_epoch():
    for epoch in range(3):
        counts = Counter(it.path for it, _ in flat(epoch_batches(ITEMS, 4, seed=1, epoch=epoch)))
        assert counts == {it.path: it.repeats for it in ITEMS}


def test_deterministic_for_a_seed_and_epoch():
    first = epoch_batches(ITEMS, 3, seed=123, epoch=2, flip_aug=True)
    again = epoch_batches(list(ITEMS), 3, seed=123, epoch=2, flip_aug=True)
    assert first == again
    orders = {tuple(it.path for it, _ in flat(epoch_batches(ITEMS, 3, seed=123, epoch=e))) for e in range(5)}
    assert len(orders) > 1  # a new shuffle each epoch
    assert epoch_batches(ITEMS, 3, seed=5, epoch=1) == epoch_batches(ITEMS, 3, seed=4, epoch=2)  # seed + epoch


def test_flip_only_with_flip_aug_and_about_half():
    assert not any(flip for _, flip in flat(epoch_batches(ITEMS, 2, seed=0, epoch=0)))
    many = [item(f"i{i}", repeats=10) for i in range(50)]
    flips = [flip for _, flip in flat(epoch_batches(many, 8, seed=0, epoch=0, flip_aug=True))]
    assert 0.4 < sum(flips) / len(flips) < 0.6


def test_input_is_not_modified():
    items = list(ITEMS)
    epoch_batches(items, 2, seed=0, epoch=0)
    assert items == ITEMS


# ---------------------------------------------------------------- pixels and latents

def gradient_image(path, size):
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // max(1, size[0] - 1), y * 255 // max(1, size[1] - 1), 0)
                 for y in range(size[1]) for x in range(size[0])])
    img.save(path)
    return path


def test_prepare_pixels_resizes_crops_and_flips(tmp_path):
    torch = pytest.importorskip("torch")
    from lora_trainer.dataset.latents import prepare_pixels

    path = gradient_image(tmp_path / "g.png", (160, 120))
    it = item("g", bucket=(64, 48), size=(160, 120), resized=(72, 54), path=path)
    pixels = prepare_pixels(it, flip=False)
    assert pixels.shape == (3, 48, 64) and pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    assert float(pixels[0, :, -1].mean()) > float(pixels[0, :, 0].mean())  # red grows to the right
    flipped = prepare_pixels(it, flip=True)
    assert torch.equal(flipped, torch.flip(pixels, dims=[-1]))

    up = item("g", bucket=(320, 256), size=(160, 120), resized=(341, 256), path=path)
    assert prepare_pixels(up, False).shape == (3, 256, 320)


def test_latent_cache_encodes_each_image_once_per_flip(tmp_path):
    torch = pytest.importorskip("torch")
    from lora_trainer.dataset.latents import LatentCache

    items = []
    for i, size in enumerate([(64, 64), (64, 64), (64, 64), (96, 64), (64, 96)]):
        path = gradient_image(tmp_path / f"{i}.png", size)
        items.append(item(f"{i}", bucket=size, size=size, repeats=3, path=path))
    calls = []

    def encode(pixels):
        assert pixels.dim() == 4 and pixels.shape[1] == 3
        calls.append(pixels.shape)
        return torch.nn.functional.avg_pool2d(pixels, 8).to(torch.float16)

    progress = []
    cache = LatentCache.build(items + items[:2], encode, flip_aug=True, batch_size=2,
                              progress=lambda done, total: progress.append((done, total)))
    assert len(cache) == 10  # 5 images x (plain, flipped)
    assert sum(shape[0] for shape in calls) == 10
    assert all(len({tuple(s[2:])}) == 1 for s in calls)  # one bucket per encode call
    assert progress[-1] == (5, 5)
    latent = cache.get(items[3], False)
    assert latent.shape == (3, 8, 12) and latent.dtype == torch.float32 and latent.device.type == "cpu"
    assert torch.allclose(cache.get(items[3], True), torch.flip(latent, dims=[-1]), atol=1e-2)

    plain = LatentCache.build(items, encode, flip_aug=False)
    assert len(plain) == 5 and (items[0], False) in plain
    with pytest.raises(KeyError, match="flip_aug"):
        plain.get(items[0], True)


def test_latent_cache_can_be_stopped(tmp_path):
    pytest.importorskip("torch")
    from lora_trainer.dataset.latents import LatentCache

    path = gradient_image(tmp_path / "a.png", (64, 64))
    with pytest.raises(TrainingStopped):
        LatentCache.build([item("a", path=path)], lambda px: px, flip_aug=False, should_stop=lambda: True)
