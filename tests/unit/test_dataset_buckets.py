"""Bucketing against kohya sd-scripts' rules, with hand-computed expectations."""

import random

import pytest

from lora_trainer.dataset.buckets import (
    BucketManager,
    bucket_manager_for,
    crop_offsets,
    make_bucket_resolutions,
    validate_bucket_settings,
)
from lora_trainer.errors import UserError

# dataset-prep.md §5.1: 512², 256–1024, step 64 -> these 17 buckets.
BUCKETS_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024),
    (320, 704), (320, 768),
    (384, 640),
    (448, 576),
    (512, 512),
    (576, 448),
    (640, 384),
    (704, 320),
    (768, 320),
    (832, 256), (896, 256), (960, 256), (1024, 256),
]


def test_512_buckets_are_the_17_of_kohya():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == BUCKETS_512


def test_1024_with_max_2048_gives_19_buckets_between_ar_0_4_and_2_5():
    buckets = make_bucket_resolutions((1024, 1024), 640, 2048, 64)
    assert len(buckets) == 19
    assert (640, 1536) in buckets and (1536, 640) in buckets and (1024, 1024) in buckets
    assert (832, 1216) in buckets and (896, 1152) in buckets
    ratios = [w / h for w, h in buckets]
    assert min(ratios) == pytest.approx(0.4, abs=0.02) and max(ratios) == pytest.approx(2.5, abs=0.1)


def test_1024_with_default_max_1024_is_capped_per_side():
    buckets = make_bucket_resolutions((1024, 1024), 256, 1024, 64)
    assert len(buckets) == 25
    assert all(max(b) <= 1024 for b in buckets)
    assert (256, 1024) in buckets and (512, 1024) in buckets


def test_square_is_always_present_even_outside_min_max():
    assert (512, 512) in make_bucket_resolutions((512, 512), 768, 1024, 64)


# (image w, h) -> (bucket, resized) for 512², 256–1024, step 64, upscaling allowed.
UPSCALE_CASES = [
    ((512, 512), (512, 512), (512, 512)),      # exact bucket
    ((640, 384), (640, 384), (640, 384)),      # exact non-square bucket
    ((1024, 1024), (512, 512), (512, 512)),    # AR 1 -> square, scale 0.5
    ((1000, 600), (640, 384), (640, 384)),     # AR 5/3 == 640/384
    ((800, 600), (576, 448), (597, 448)),      # AR 1.333: 576x448 (1.286) closest; wider -> match height
    ((600, 800), (448, 576), (448, 597)),      # AR 0.75: 448x576 (0.778); taller -> match width
    ((300, 1000), (256, 832), (256, 853)),     # AR 0.3: 256x832 (0.3077) closest
    ((2000, 100), (1024, 256), (5120, 256)),   # AR 20: widest bucket, scale 2.56
    ((256, 256), (512, 512), (512, 512)),      # small image is upscaled
]


@pytest.mark.parametrize("size, bucket, resized", UPSCALE_CASES)
def test_select_bucket_with_upscaling(size, bucket, resized):
    manager = BucketManager(False, (512, 512), 256, 1024, 64)
    got_bucket, got_resized, ar_error = manager.select_bucket(*size)
    assert (got_bucket, got_resized) == (bucket, resized)
    assert ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])
    # cover: the resized image is never smaller than the bucket
    assert got_resized[0] >= got_bucket[0] and got_resized[1] >= got_bucket[1]


# (image w, h) -> (bucket, resized) for no_upscale at 512² (max area 262144), step 64.
NO_UPSCALE_CASES = [
    ((300, 200), (256, 192), (300, 200)),      # under max area: kept, bucket floored to 64
    ((512, 512), (512, 512), (512, 512)),      # exactly max area
    ((1024, 768), (512, 384), (512, 384)),     # height rounding wins (AR error 0 vs 0.167)
    ((2000, 1000), (640, 320), (640, 320)),    # height rounding wins (AR 2.0 vs 2.2)
    ((1000, 3000), (256, 768), (256, 768)),    # width rounding wins (AR 1/3 vs 0.3077)
]


@pytest.mark.parametrize("size, bucket, resized", NO_UPSCALE_CASES)
def test_select_bucket_without_upscaling(size, bucket, resized):
    manager = BucketManager(True, (512, 512), 256, 1024, 64)
    got_bucket, got_resized, ar_error = manager.select_bucket(*size)
    assert (got_bucket, got_resized) == (bucket, resized)
    assert ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])
    assert got_resized[0] * got_resized[1] <= 512 * 512 or size == got_resized


def test_no_upscale_tiny_image_gets_an_empty_bucket_side():
    bucket, resized, _ = BucketManager(True, (512, 512), 256, 1024, 64).select_bucket(50, 40)
    assert resized == (50, 40) and bucket == (0, 0)


def test_round_to_steps_is_half_up_then_floor():
    manager = BucketManager(True, (512, 512), 256, 1024, 64)
    assert manager.round_to_steps(591.2) == 576
    assert manager.round_to_steps(639.5) == 640
    assert manager.round_to_steps(63.4) == 0


def test_fixed_bucket_without_enable_bucket_covers_then_crops():
    manager = bucket_manager_for((512, 512), enable_bucket=False)
    assert manager.select_bucket(1024, 768)[:2] == ((512, 512), (683, 512))
    assert manager.select_bucket(768, 1024)[:2] == ((512, 512), (512, 683))
    assert manager.select_bucket(256, 256)[:2] == ((512, 512), (512, 512))
    assert crop_offsets((683, 512), (512, 512)) == (85, 0)


def test_fixed_bucket_ignores_invalid_bucket_settings():
    # min/max are not used without bucketing (kohya ignores them too)
    manager = bucket_manager_for((512, 768), False, 300, 100, 64)
    assert manager.select_bucket(512, 768)[:2] == ((512, 768), (512, 768))


def test_crop_offsets_centre_and_random():
    assert crop_offsets((597, 448), (576, 448)) == (10, 0)
    assert crop_offsets((448, 597), (448, 576)) == (0, 10)
    assert crop_offsets((512, 512), (512, 512), random_crop=True) == (0, 0)
    rng = random.Random(1)
    seen = {crop_offsets((600, 500), (512, 448), True, rng) for _ in range(200)}
    assert all(0 <= left <= 88 and 0 <= top <= 52 for left, top in seen)
    assert len(seen) > 50
    assert crop_offsets((600, 500), (512, 448), True, random.Random(5)) == \
        crop_offsets((600, 500), (512, 448), True, random.Random(5))


@pytest.mark.parametrize("resolution, lo, hi, step, key", [
    ((512, 512), 300, 1024, 64, "min_bucket_reso"),
    ((512, 512), 256, 1000, 64, "max_bucket_reso"),
    ((1024, 1024), 256, 768, 64, "max_bucket_reso"),
    ((512, 768), 256, 640, 64, "max_bucket_reso"),
    ((512, 512), 768, 640, 64, "max_bucket_reso"),
    ((512, 512), 256, 1024, 0, "bucket_reso_steps"),
])
def test_invalid_bucket_settings_name_the_key(resolution, lo, hi, step, key):
    with pytest.raises(UserError) as info:
        validate_bucket_settings(resolution, lo, hi, step)
    assert info.value.key == key
    assert info.value.fix
    with pytest.raises(UserError):
        bucket_manager_for(resolution, True, lo, hi, step)


def test_valid_settings_pass():
    validate_bucket_settings((1024, 1024), 256, 2048, 64)
    validate_bucket_settings((1024, 1024), 256, 2048, 32)
    manager = bucket_manager_for((512, 512), True, 256, 1024, 64)
    assert manager.predefined == BUCKETS_512
