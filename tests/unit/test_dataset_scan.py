"""Dataset scan and image decoding against bad inputs built in tmp_path."""

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lora_trainer.dataset import images
from lora_trainer.dataset.images import check_image, image_size, open_image
from lora_trainer.dataset.scan import count_steps, parse_subset_name, scan_dataset
from lora_trainer.errors import UserError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers

def noise(size, mode="RGB", seed=0):
    channels = len(mode)
    data = random.Random(seed).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, data)


def save(path, size=(64, 64), fmt=None, color=(200, 30, 30), **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt, **kw)
    return path


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width, height):
    """A tiny file whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b""))


def cfg(root, **overrides):
    values = dict(train_data_dir=str(root), caption_extension=".txt", resolution=(512, 512),
                  resolution_wh=(512, 512), enable_bucket=True, min_bucket_reso=256,
                  max_bucket_reso=1024, bucket_reso_steps=64, bucket_no_upscale=False,
                  train_batch_size=1, max_train_epochs=1, max_train_steps=None, flip_aug=False,
                  keep_tokens_separator="|||", shuffle_caption=False, keep_tokens=0)
    values.update(overrides)
    return SimpleNamespace(**values)


def snapshot(root):
    """Every path under root with its bytes and mtime (directories: mtime only)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            stat = path.stat()
            state[str(path.relative_to(root))] = (
                path.read_bytes() if path.is_file() else None, stat.st_mtime_ns)
    state["."] = (None, Path(root).stat().st_mtime_ns)
    return state


def problems_for(scan, name):
    return [p for p in scan.problems if name in p.message]


# ---------------------------------------------------------------- images.py

def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(b"")
    for read in (open_image, image_size, check_image):
        with pytest.raises(UserError) as info:
            read(path)
        assert "empty" in info.value.message and info.value.path == str(path) and info.value.fix


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not an image")
    with pytest.raises(UserError) as info:
        open_image(path)
    assert "not an image" in info.value.message and info.value.path == str(path)


@pytest.mark.parametrize("fmt, name", [("PNG", "cut.png"), ("JPEG", "cut.jpg")])
def test_truncated_images_are_caught_by_a_full_decode(tmp_path, fmt, name):
    data = encoded(noise((128, 128)), fmt, quality=90) if fmt == "JPEG" else encoded(noise((128, 128)), fmt)
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert image_size(path) == (128, 128)  # the header alone looks fine
    for read in (check_image, open_image):
        with pytest.raises(UserError) as info:
            read(path)
        assert "truncated" in info.value.message and info.value.path == str(path)
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("width, height", [(10000, 10000), (20000, 20000)])  # warning / error range
def test_decompression_bomb_is_an_error_without_touching_the_global(tmp_path, width, height):
    limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    for read in (image_size, check_image, open_image):
        with pytest.raises(UserError) as info:
            read(path)
        assert "too large" in info.value.message
    assert Image.MAX_IMAGE_PIXELS == limit


def test_exif_orientation_is_baked_and_sizes_swap(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (40, 20), (10, 200, 10)).save(path, exif=exif.tobytes())
    assert image_size(path) == (20, 40)
    assert check_image(path) == (20, 40)
    assert open_image(path).size == (20, 40)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    img = open_image(tmp_path / "rgba.png")
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255) and img.getpixel((0, 0)) == (255, 0, 0)

    la = Image.new("LA", (4, 4), (0, 0))
    la.save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    img = open_image(tmp_path / "p.png")
    assert img.getpixel((2, 2)) == (255, 255, 255) and img.getpixel((0, 0)) == (255, 0, 0)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    img = Image.new("I;16", (4, 1))
    for x, value in enumerate([0, 256, 32768, 65535]):
        img.putpixel((x, 0), value)
    img.save(tmp_path / "deep.png")
    out = open_image(tmp_path / "deep.png")
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = open_image(tmp_path / "cmyk.jpg")
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_open_image_is_detached_from_the_file(tmp_path):
    save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png")
    (tmp_path / "a.png").unlink()
    assert img.getpixel((0, 0)) == (200, 30, 30)


def test_extensions_are_case_insensitive():
    assert images.is_image_file("a.Jpg") and images.is_image_file("b.PNG") and images.is_image_file("c.webp")
    assert not images.is_image_file("d.gif") and images.is_unsupported_image_file("d.GIF")
    assert images.IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---------------------------------------------------------------- scan: layout

def test_parse_subset_name():
    assert parse_subset_name("10_sks dog") == (10, "sks dog")
    assert parse_subset_name("10_my_char") == (10, "my_char")
    assert parse_subset_name("3") == (3, "")
    assert parse_subset_name("abc_name") == (None, "")


def test_bad_inputs_are_reported_and_nothing_changes(tmp_path):
    root = tmp_path / "train"
    sub = root / "10_sks dog"
    save(sub / "good.png")
    (sub / "good.txt").write_text("sks dog, sitting", encoding="utf-8")
    save(sub / "upper.JPG", fmt="JPEG")
    (sub / "upper.txt").write_text("upper case extension")
    corrupt = bytearray(encoded(noise((64, 64)), "PNG"))
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = bytes(64)
    (sub / "corrupt.png").write_bytes(bytes(corrupt))
    (sub / "zero.png").write_bytes(b"")
    (sub / "text.png").write_text("not an image")
    png = encoded(noise((96, 96), seed=1), "PNG")
    (sub / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = encoded(noise((96, 96), seed=2), "JPEG", quality=90)
    (sub / "trunc.jpg").write_bytes(jpg[: int(len(jpg) * 0.6)])
    (sub / "bomb.png").write_bytes(bomb_png(10000, 10000))
    Image.new("P", (16, 16)).save(sub / "anim.gif")
    Image.new("RGB", (16, 16)).save(sub / "scan.tif")
    save(sub / "cp1252.png")
    (sub / "cp1252.txt").write_bytes("café, naïve".encode("cp1252"))
    save(sub / "bom.png")
    (sub / "bom.txt").write_bytes("\ufeffbom caption, tag".encode("utf-8"))
    save(sub / "nocap.png")
    (root / "3_empty").mkdir()
    save(root / "abc_name" / "x.png")
    save(root / "0_zero" / "y.png")
    save(root / "loose.png")
    (root / "notes.md").write_text("readme")

    before = snapshot(root)
    scan = scan_dataset(cfg(root))
    assert snapshot(root) == before

    for name in ["corrupt.png", "zero.png", "text.png", "trunc.png", "trunc.jpg", "bomb.png",
                 "anim.gif", "scan.tif", "cp1252.txt", "nocap.png", "3_empty", "abc_name",
                 "0_zero", "loose.png", "notes.md"]:
        found = problems_for(scan, name)
        assert found, f"no problem names {name}: {[p.message for p in scan.problems]}"
        assert all(p.fix for p in found)

    assert "10_abc_name" in problems_for(scan, "abc_name")[0].fix
    assert "truncated" in problems_for(scan, "trunc.jpg")[0].message
    assert "png" in problems_for(scan, "anim.gif")[0].fix
    assert "UTF-8" in problems_for(scan, "cp1252.txt")[0].fix
    assert not problems_for(scan, "good.png") and not problems_for(scan, "upper.JPG")
    assert not problems_for(scan, "bom.")
    assert all(p.severity == "warning" for p in scan.problems)
    assert scan.ok

    by_name = {Path(i.path).name: i for i in scan.items}
    assert sorted(by_name) == ["bom.png", "cp1252.png", "good.png", "nocap.png", "upper.JPG"]
    assert by_name["bom.png"].caption == "bom caption, tag" and by_name["bom.png"].caption_source == "file"
    assert by_name["cp1252.png"].caption == "sks dog" and by_name["cp1252.png"].caption_source == "folder"
    assert by_name["nocap.png"].caption == "sks dog"
    assert sorted(Path(p).name for p in scan.images_without_caption) == ["cp1252.png", "nocap.png"]
    assert [s.name for s in scan.subsets] == ["sks dog", "empty"]  # sorted by folder name
    subset = scan.subsets[0]
    assert (subset.repeats, subset.image_count, subset.captions_found, subset.captions_missing) == (10, 5, 3, 2)
    assert scan.num_train_images == 50

    summary = scan.summary()
    json.dumps(summary)
    assert summary["ok"] and summary["num_images"] == 5
    assert {"path", "message", "fix", "severity"} <= set(summary["problems"][0])
    assert len(summary["images_without_caption"]) == 2
    folders = {f["folder"]: f for f in summary["folders"]}
    assert folders["10_sks dog"]["images"] == 5 and folders["10_sks dog"]["captions_missing"] == 2


def test_scan_order_is_deterministic(tmp_path):
    root = tmp_path / "train"
    for name in ["b.png", "a.png", "c.jpg"]:
        save(root / "2_x" / name)
    save(root / "1_y" / "z.png")
    first = scan_dataset(cfg(root))
    assert [Path(i.path).name for i in first.items] == ["z.png", "a.png", "b.png", "c.jpg"]
    assert first.summary() == scan_dataset(cfg(root)).summary()


def test_train_data_dir_pointing_at_an_image_folder(tmp_path):
    folder = tmp_path / "10_sks dog"
    save(folder / "a.png")
    scan = scan_dataset(cfg(folder))
    assert not scan.ok
    errors = [p for p in scan.problems if p.severity == "error"]
    assert len(errors) == 1 and "parent" in errors[0].fix and str(tmp_path) in errors[0].fix


@pytest.mark.parametrize("make", ["missing", "file", "unset"])
def test_train_data_dir_missing_or_not_a_dir(tmp_path, make):
    path = tmp_path / "nowhere"
    if make == "file":
        path.write_text("x")
    scan = scan_dataset(cfg("" if make == "unset" else path))
    assert not scan.ok and scan.items == []
    assert [p.key for p in scan.problems if p.severity == "error"] == ["train_data_dir"]
    json.dumps(scan.summary())


def test_no_usable_images_is_an_error(tmp_path):
    root = tmp_path / "train"
    (root / "10_a").mkdir(parents=True)
    (root / "10_a" / "bad.png").write_bytes(b"")
    scan = scan_dataset(cfg(root))
    assert not scan.ok
    assert any(p.severity == "error" and "No training images found in" in p.message for p in scan.problems)


def test_grandparent_folder_hint(tmp_path):
    save(tmp_path / "dataset" / "img" / "10_x" / "a.png")
    scan = scan_dataset(cfg(tmp_path / "dataset"))
    hint = problems_for(scan, "img")[0]
    assert "train_data_dir" in hint.fix and str(tmp_path / "dataset" / "img") in hint.fix


def test_caption_extension_fallback_is_one_warning_per_folder(tmp_path):
    root = tmp_path / "train"
    for name in "abc":
        save(root / "5_x" / f"{name}.png")
        (root / "5_x" / f"{name}.txt").write_text(f"caption {name}")
    scan = scan_dataset(cfg(root, caption_extension=".caption"))
    assert [i.caption for i in scan.items] == ["caption a", "caption b", "caption c"]
    assert all(i.caption_source == "file" for i in scan.items)
    assert len(scan.problems) == 1 and ".txt" in scan.problems[0].fix
    assert scan.ok and scan.images_without_caption == []


def test_bad_bucket_settings_block_training_with_the_key(tmp_path):
    save(tmp_path / "train" / "1_x" / "a.png")
    scan = scan_dataset(cfg(tmp_path / "train", min_bucket_reso=300))
    assert not scan.ok
    assert [p.key for p in scan.problems if p.severity == "error"] == ["min_bucket_reso"]
    assert len(scan.items) == 1  # files were still checked


def test_no_upscale_too_small_image_is_skipped(tmp_path):
    save(tmp_path / "t" / "1_x" / "tiny.png", size=(40, 40))
    save(tmp_path / "t" / "1_x" / "ok.png", size=(300, 200))
    scan = scan_dataset(cfg(tmp_path / "t", bucket_no_upscale=True))
    assert [Path(i.path).name for i in scan.items] == ["ok.png"]
    assert scan.items[0].bucket == (256, 192) and scan.items[0].resized == (300, 200)
    assert "bucket_no_upscale" in problems_for(scan, "tiny.png")[0].message


def test_exif_rotated_image_is_bucketed_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "t" / "1_x" / "phone.jpg"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (800, 600)).save(path, exif=exif.tobytes())
    item = scan_dataset(cfg(tmp_path / "t")).items[0]
    assert item.size == (600, 800) and item.bucket == (448, 576)


# ---------------------------------------------------------------- scan: counting

def test_step_counting_with_repeats_buckets_and_batch_size(tmp_path):
    root = tmp_path / "train"
    save(root / "10_sks dog" / "a.png", size=(512, 512))
    (root / "10_sks dog" / "a.txt").write_text("sks dog, sitting")
    save(root / "10_sks dog" / "b.png", size=(1024, 1024))
    (root / "10_sks dog" / "b.txt").write_text("sks dog ||| grass, Sitting")
    save(root / "10_sks dog" / "c.jpg", size=(768, 512), fmt="JPEG")  # AR 1.5 -> 640x384
    save(root / "5_cat" / "d.png", size=(512, 768))                   # AR 0.667 -> 384x640

    scan = scan_dataset(cfg(root, train_batch_size=4, max_train_epochs=3))
    assert scan.buckets == {(384, 640): 5, (512, 512): 20, (640, 384): 10}
    assert scan.num_train_images == 35
    assert scan.batches_per_epoch == 5 + 3 + 2
    assert (scan.steps_per_epoch, scan.epochs, scan.total_steps) == (10, 3, 30)
    assert scan.tag_frequency == {
        "10_sks dog": {"sks dog": 3, "sitting": 2, "grass": 1},
        "5_cat": {"cat": 1},
    }
    assert scan.mean_ar_error == pytest.approx((0 + 0 + abs(640 / 384 - 1.5) + abs(384 / 640 - 512 / 768)) / 4)
    buckets = scan.summary()["buckets"]
    assert buckets[1] == {"resolution": [512, 512], "count": 20, "batches": 5}

    accum = scan_dataset(cfg(root, train_batch_size=4, max_train_epochs=3, gradient_accumulation_steps=3))
    assert (accum.steps_per_epoch, accum.total_steps) == (4, 12)

    by_steps = scan_dataset(cfg(root, train_batch_size=4, max_train_epochs=None, max_train_steps=25))
    assert (by_steps.steps_per_epoch, by_steps.epochs, by_steps.total_steps) == (10, 3, 25)

    fixed = scan_dataset(cfg(root, train_batch_size=4, enable_bucket=False))
    assert fixed.buckets == {(512, 512): 35} and fixed.steps_per_epoch == 9


def test_count_steps_edge_cases():
    assert count_steps({}, 4, 1, 10, None) == (0, 0, 0, 0)
    assert count_steps({(512, 512): 1}, 4, 1, None, None) == (1, 1, 1600, 1600)
    assert count_steps({(512, 512): 7, (640, 384): 1}, 2, 2, 2, None) == (5, 3, 2, 6)


def test_scan_needs_only_pillow():
    # latents.py is imported too: it must import torch only inside its functions.
    code = ("import sys; import lora_trainer.dataset.scan, lora_trainer.dataset.batches, "
            "lora_trainer.dataset.latents; "
            "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_captions_are_one_warning_per_folder(tmp_path):
    for i in range(7):
        save(tmp_path / "t" / "2_sks dog" / f"{i}.png")
    scan = scan_dataset(cfg(tmp_path / "t"))
    assert len(scan.problems) == 1
    warning = scan.problems[0]
    assert warning.severity == "warning" and "0.png" in warning.message and "and 2 more" in warning.message
    assert "sks dog" in warning.message
    assert len(scan.images_without_caption) == 7 and scan.ok


# ---------------------------------------------------------------- regularization images (kohya's reg_data_dir)

def reg_cfg(train, reg, **kw):
    from lora_trainer.config import TrainConfig
    return TrainConfig.from_dict({"train_data_dir": str(train), "reg_data_dir": str(reg), "resolution": "64",
                                  "min_bucket_reso": 64, "max_bucket_reso": 128, "max_train_epochs": 1, **kw})


def test_reg_images_are_balanced_to_the_train_samples_like_kohya(tmp_path):
    for i in range(2):
        save(tmp_path / "train/10_sks dog" / f"d{i}.png")
    for i in range(3):
        save(tmp_path / "reg/1_dog" / f"r{i}.png", color=(0, 0, 200))
    scan = scan_dataset(reg_cfg(tmp_path / "train", tmp_path / "reg"))
    reg = [i for i in scan.items if i.is_reg]
    # first pass 1+1+1, then one more each round-robin until 20 (= 2 images x 10 repeats)
    assert [i.repeats for i in reg] == [7, 7, 6] and scan.reg_samples_per_epoch == 20
    assert scan.num_reg_images == 3                      # kohya's count: before balancing (3 images x 1)
    assert scan.num_train_images == 20 and scan.steps_per_epoch == 40
    s = scan.summary()
    assert s["reg_samples_per_epoch"] == 20 and s["num_reg_images"] == 3
    assert s["reg_folders"][0]["folder"] == "1_dog" and s["ok"]
    assert all(i.caption == "dog" for i in reg)          # folder caption, as kohya's class tokens


def test_surplus_reg_images_are_left_out_with_a_note(tmp_path):
    for i in range(2):
        save(tmp_path / "train/1_sks" / f"d{i}.png")
    for i in range(5):
        save(tmp_path / "reg/1_person" / f"r{i}.png")
    scan = scan_dataset(reg_cfg(tmp_path / "train", tmp_path / "reg"))
    assert [i.repeats for i in scan.items if i.is_reg] == [1, 1]
    assert any("Only 2 of 5 regularization images" in p.message for p in scan.problems)


def test_missing_reg_folder_is_an_error_naming_the_key(tmp_path):
    save(tmp_path / "train/1_sks/a.png")
    scan = scan_dataset(reg_cfg(tmp_path / "train", tmp_path / "nope"))
    assert not scan.ok and any(p.key == "reg_data_dir" and p.severity == "error" for p in scan.problems)


def test_prior_loss_weight_scales_reg_samples():
    import torch
    from lora_trainer.training.loss import diffusion_loss
    pred, target = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    t, ac = torch.tensor([10, 20]), torch.linspace(0.99, 0.01, 1000)
    assert float(diffusion_loss(pred, target, t, ac, weights=torch.tensor([1.0, 0.0]))) == 0.5
    assert float(diffusion_loss(pred, target, t, ac)) == 1.0
