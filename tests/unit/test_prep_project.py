"""Dataset prep projects: import a corpus of bad and odd inputs, trash, undo, zip safety.

Everything is built in tmp_path. The corpus test hashes every source file before and
after, and checks nothing is written outside the project.
"""

import hashlib
import io
import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from lora_trainer.dataset.images import check_image
from lora_trainer.errors import UserError
from lora_trainer.prep import hygiene
from lora_trainer.prep.project import (
    Project, ZipLimits, clean_stem, create_project, list_projects, open_project,
    validate_project_name,
)

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt",
                                    reason="symlinks need POSIX here")


# ---------------------------------------------------------------- helpers

def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pattern(size, seed=0):
    """A small RGB image with structure (not flat), deterministic."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([((x * 7 + seed * 40) % 256, (y * 5 + seed * 90) % 256, ((x + y) * 3) % 256)
                 for y in range(h) for x in range(w)])
    return img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=20000, height=20000) -> bytes:
    """A valid-looking PNG header claiming width x height, with a tiny IDAT (never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                out[str(path)] = "link->" + os.readlink(path)
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def all_files(root: Path) -> set[str]:
    return {str(Path(f) / n) for f, _d, files in os.walk(root) for n in files}


def build_corpus(src: Path) -> None:
    """>= 20 bad or odd inputs (plus a few good ones)."""
    src.mkdir(parents=True, exist_ok=True)
    good = pattern((64, 48))
    good.save(src / "good.png")
    (src / "good.txt").write_text("a red thing, masterpiece", encoding="utf-8")
    (src / "photo.jpg").write_bytes(encoded(pattern((80, 60), 1), "JPEG", quality=90))
    (src / "photo.txt").write_bytes(b"\xef\xbb\xbfphoto caption with bom")
    # broken files
    full_png = encoded(pattern((64, 64), 2), "PNG")
    (src / "truncated.png").write_bytes(full_png[: len(full_png) // 2])
    full_jpg = encoded(pattern((128, 128), 3), "JPEG", quality=95)
    (src / "truncated.jpg").write_bytes(full_jpg[: len(full_jpg) // 2])
    (src / "empty.png").write_bytes(b"")
    (src / "text_renamed.png").write_text("this is not a png\n")
    (src / "bomb.png").write_bytes(bomb_png())
    (src / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    # odd but valid images
    Image.new("RGB", (1, 1), (10, 20, 30)).save(src / "tiny.png")
    ramp = Image.new("I;16", (256, 4))
    ramp.putdata([x * 257 for _ in range(4) for x in range(256)])
    ramp.save(src / "deep16.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(src / "cmyk.jpg", "JPEG")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    pal.putpixel((0, 0), 1)
    pal.save(src / "palette.png", transparency=0)
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(src / "alpha.png")
    frames = [pattern((24, 24), s) for s in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], duration=50,
                   lossless=True)
    (src / "rotated.jpg").write_bytes(
        encoded(pattern((40, 20), 4), "JPEG", exif=exif_with_orientation(6)))
    pattern((30, 30), 5).save(src / "scan.tif")
    pattern((30, 30), 6).save(src / "paint.bmp")
    (src / "actually_jpeg.png").write_bytes(encoded(pattern((16, 16), 7), "JPEG"))
    # captions
    pattern((16, 16), 8).save(src / "cafe.png")
    (src / "cafe.txt").write_bytes("caf\u00e9 au lait".encode("cp1252"))
    pattern((16, 16), 9).save(src / "notepad.png")
    (src / "notepad.txt").write_bytes("unicode \u00fc".encode("utf-16"))  # BOM + UTF-16LE
    (src / "lonely.txt").write_text("caption without image")
    # names
    pattern((16, 16), 10).save(src / "dup.png")
    pattern((16, 16), 11).save(src / "DUP.PNG")
    (src / "notes.json").write_text("{}")
    (src / "._good.png").write_bytes(b"\x00\x05\x16\x07 apple double")
    (src / "Thumbs.db").write_bytes(b"\x00" * 10)
    # nested folders
    (src / "nested" / "deeper").mkdir(parents=True)
    pattern((20, 20), 12).save(src / "nested" / "inner.png")
    pattern((20, 20), 13).save(src / "nested" / "deeper" / "deepest.png")
    (src / "nested" / "deeper" / "deepest.txt").write_text("deep caption")
    pattern((20, 20), 14).save(src / "nested" / "good.png")  # same name as the top-level one
    (src / ".git").mkdir()
    pattern((8, 8), 15).save(src / ".git" / "hidden.png")
    if hasattr(os, "symlink") and os.name != "nt":
        os.symlink(src, src / "loop")                          # folder link loop
        os.symlink(src / "nowhere.png", src / "dangling.png")  # broken link


# ---------------------------------------------------------------- names and projects

def test_clean_stem_makes_portable_names():
    assert clean_stem("a:b*c?") == "a_b_c_"
    assert clean_stem("CON") == "CON_"
    assert clean_stem("nul.tar") == "nul.tar_"
    assert clean_stem(".hidden") == "hidden"
    assert clean_stem("  trailing. ") == "trailing"
    assert clean_stem("") == "image"
    assert clean_stem("e\u0301") == "\u00e9"  # NFD -> NFC
    long = clean_stem("\u00e9" * 300)
    assert len(long.encode("utf-8")) <= 150 and long


def test_project_names_are_validated():
    assert validate_project_name("  my char  ") == "my char"
    for bad in ("", "a/b", "..", ".hidden", "CON", "x" * 200, "a\\b", "tab\there"):
        with pytest.raises(UserError) as info:
            validate_project_name(bad)
        assert info.value.key == "project name" and info.value.fix


def test_create_open_list_projects(tmp_path):
    root = tmp_path / "projects"
    project = create_project(root, "alpha")
    assert project.images_dir.is_dir() and project.manifest_path.is_file()
    assert json.loads(project.manifest_path.read_text())["format"] == 1
    create_project(root, "beta")
    (root / "not_a_project").mkdir()
    assert list_projects(root) == ["alpha", "beta"]
    assert open_project(root, "alpha").root == project.root
    with pytest.raises(UserError):
        create_project(root, "alpha")
    with pytest.raises(UserError):
        open_project(root, "not_a_project")
    assert list_projects(tmp_path / "missing") == []


def test_broken_manifest_is_recovered(tmp_path):
    project = Project(tmp_path / "p")
    pattern((8, 8)).save(project.images_dir / "x.png")
    project.manifest_path.write_text("{not json")
    again = Project(tmp_path / "p")
    assert again.image_names() == ["x.png"]
    assert again.warnings and again.warnings[0].kind == "manifest_broken"
    assert list((tmp_path / "p").glob("project.json.broken-*"))


# ---------------------------------------------------------------- the corpus

def test_corpus_import_then_hygiene(tmp_path):
    src = tmp_path / "src"
    build_corpus(src)
    before = tree_hashes(src)
    outside_before = all_files(tmp_path)
    flags = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)

    project = Project(tmp_path / "projects" / "corpus")
    report = project.import_folder(src)

    # originals untouched, nothing written outside the project
    assert tree_hashes(src) == before
    new_outside = {f for f in all_files(tmp_path) - outside_before
                   if not f.startswith(str(project.root) + os.sep)}
    assert new_outside == set()
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == flags
    json.dumps(report.as_dict())

    skipped = {Path(p.path).name: p for p in report.skipped}
    for name in ("truncated.png", "truncated.jpg", "empty.png", "text_renamed.png", "bomb.png",
                 "phone.heic"):
        problem = skipped[name]
        assert problem.severity == "error" and problem.fix, name
        assert name in problem.text()
    assert "truncat" in skipped["truncated.png"].message.lower()
    assert "empty" in skipped["empty.png"].message.lower()
    assert "too large" in skipped["bomb.png"].message.lower()
    assert "pillow-heif" in skipped["phone.heic"].fix
    assert skipped["lonely.txt"].kind == "caption_without_image"
    assert skipped["notes.json"].kind == "not_image"
    assert skipped["._good.png"].kind == "hidden"
    assert skipped["Thumbs.db"].kind == "ignored"
    assert skipped[".git"].kind == "hidden"
    if "loop" in os.listdir(src):
        assert skipped["loop"].kind == "link_loop"
        assert skipped["dangling.png"].kind == "broken_link"
    for problem in report.skipped + report.warnings:   # every one names its file and the fix
        assert problem.path and problem.message and problem.fix, problem

    by_source = {}
    for item in report.imported:
        by_source.setdefault(Path(item.source).relative_to(src).as_posix(), []).append(item)
    # every source imported once, even through the loop link
    assert all(len(v) == 1 for v in by_source.values())
    expected = {"good.png", "photo.jpg", "tiny.png", "deep16.png", "cmyk.jpg", "palette.png",
                "alpha.png", "anim.gif", "anim.webp", "rotated.jpg", "scan.tif", "paint.bmp",
                "actually_jpeg.png", "cafe.png", "notepad.png", "dup.png", "DUP.PNG",
                "nested/inner.png", "nested/deeper/deepest.png", "nested/good.png"}
    assert set(by_source) == expected
    names = {k: v[0].name for k, v in by_source.items()}

    # names: flat, unique case-insensitively, lower-case extensions, kohya-readable only
    on_disk = project.image_names()
    assert len({n.lower() for n in on_disk}) == len(on_disk) == len(expected)
    assert all(Path(n).suffix in (".png", ".jpg", ".jpeg") for n in on_disk)
    assert names["dup.png"] == "dup.png" and names["DUP.PNG"].lower() == "dup_1.png"
    assert names["good.png"] == "good.png" and names["nested/good.png"] == "good_1.png"
    assert names["actually_jpeg.png"] == "actually_jpeg.jpg"
    assert by_source["good.png"][0].copied and by_source["photo.jpg"][0].copied
    for source in ("anim.gif", "anim.webp", "scan.tif", "paint.bmp", "rotated.jpg", "cmyk.jpg",
                   "alpha.png", "palette.png", "deep16.png"):
        assert names[source].endswith(".png") and not by_source[source][0].copied, source
    for name in on_disk:
        check_image(project.images_dir / name)  # every written file decodes fully
        with Image.open(project.images_dir / name) as im:
            assert im.mode in ("RGB", "L"), name

    # pixels
    img = project.images_dir
    assert (good := Image.open(img / "good.png")).size == (64, 48)
    with Image.open(img / names["rotated.jpg"]) as im:
        assert im.size == (20, 40) and not im.getexif().get(0x0112)
    with Image.open(img / names["palette.png"]) as im:
        assert im.convert("RGB").getpixel((5, 5)) == (255, 255, 255)   # transparent -> white
        assert im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    with Image.open(img / names["alpha.png"]) as im:
        assert im.convert("RGB").getpixel((3, 3)) == (255, 255, 255)
    with Image.open(img / names["deep16.png"]) as im:
        grey = im.convert("L")
        assert grey.getpixel((0, 0)) < 5 and 120 < grey.getpixel((128, 0)) < 136   # not clipped
    with Image.open(img / names["cmyk.jpg"]) as im:
        r, g, b = im.convert("RGB").getpixel((5, 5))
        assert r > 200 and g < 60 and b < 60
    with Image.open(img / names["anim.gif"]) as im:
        assert getattr(im, "n_frames", 1) == 1 and im.size == (24, 24)
    assert "EXIF orientation 6 baked in" in by_source["rotated.jpg"][0].changes
    good.close()

    # captions: copied, BOM stripped, cp1252 decoded with a warning, UTF-16 converted
    assert (img / "good.txt").read_text("utf-8") == "a red thing, masterpiece"
    assert (img / "photo.txt").read_bytes() == b"photo caption with bom"
    assert (img / "cafe.txt").read_text("utf-8") == "caf\u00e9 au lait"
    assert (img / "notepad.txt").read_text("utf-8") == "unicode \u00fc"
    assert (img / "deepest.txt").read_text("utf-8") == "deep caption"
    warned = {Path(w.path).name: w for w in report.warnings}
    assert warned["cafe.txt"].kind == "caption_not_utf8" and "cp1252" in warned["cafe.txt"].message
    assert "notepad.txt" not in warned

    # manifest: provenance for every image
    manifest = json.loads(project.manifest_path.read_text("utf-8"))
    assert set(manifest["images"]) == set(on_disk)
    assert manifest["images"]["good.png"]["source"] == str(src / "good.png")

    # importing the same folder again adds nothing
    again = project.import_folder(src)
    assert again.imported == [] and again.operation is None
    assert sum(p.kind == "already_imported" for p in again.skipped) == len(expected)
    assert tree_hashes(src) == before

    # hygiene over the project: every image readable; small images and short buckets listed
    checked = hygiene.check_images(project.image_paths(), resolution=512, batch_size=4)
    assert checked.problems == [] and checked.checked == len(on_disk)
    assert names["tiny.png"] in {Path(s.path).name for s in checked.small}
    assert checked.buckets.short_buckets
    json.dumps(checked.as_dict())

    # hygiene over the raw sources: the bad files are reported by name, nothing raises
    raw = sorted(p for p in src.iterdir() if p.is_file() and not p.is_symlink())
    raw_report = hygiene.check_images(raw, resolution=512)
    bad = {Path(p.path).name for p in raw_report.problems}
    assert {"truncated.png", "truncated.jpg", "empty.png", "text_renamed.png", "bomb.png"} <= bad
    assert all(p.fix for p in raw_report.problems)
    json.dumps(raw_report.as_dict())
    assert tree_hashes(src) == before
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == flags


def test_all_frames_of_animations(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = [pattern((24, 24), s) for s in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    (src / "anim.txt").write_text("animated")
    project = Project(tmp_path / "p")
    report = project.import_folder(src, frames="all")
    names = sorted(i.name for i in report.imported)
    assert len(names) == 6 and len(set(names)) == 6
    gif = sorted((i for i in report.imported if i.source.endswith(".gif")), key=lambda i: i.frame)
    assert [i.frame for i in gif] == [0, 1, 2]
    assert [i.name for i in gif] == ["anim_f000.png", "anim_f001.png", "anim_f002.png"]
    webp = sorted((i for i in report.imported if i.source.endswith(".webp")), key=lambda i: i.frame)
    assert [i.frame for i in webp] == [0, 1, 2]
    pixels = {Image.open(project.images_dir / i.name).convert("RGB").tobytes() for i in webp}
    assert len(pixels) == 3                    # three different frames, not one repeated
    lossless = Image.open(project.images_dir / webp[2].name).convert("RGB")
    assert lossless.tobytes() == frames[2].tobytes()
    for item in gif + webp:                    # the caption goes with every frame
        assert (project.images_dir / (Path(item.name).stem + ".txt")).read_text() == "animated"
    with pytest.raises(UserError):
        project.import_folder(src, frames="some")


def test_frame_limit_is_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = [pattern((8, 8), s) for s in range(5)]
    frames[0].save(src / "many.gif", save_all=True, append_images=frames[1:])
    report = Project(tmp_path / "p").import_folder(src, frames="all", max_frames=2)
    assert len(report.imported) == 2
    assert report.warnings[0].kind == "too_many_frames" and "many.gif" in report.warnings[0].text()


def test_captions_pair_case_insensitively_and_non_recursive(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    pattern((8, 8)).save(src / "Pic.PNG")
    (src / "pic.txt").write_text("found")
    pattern((8, 8), 1).save(src / "sub" / "x.png")
    project = Project(tmp_path / "p")
    report = project.import_folder(src, recursive=False)
    assert [i.name for i in report.imported] == ["Pic.png"]
    assert (project.images_dir / "Pic.txt").read_text() == "found"
    assert {p.kind for p in report.skipped} == {"subfolder"}


def test_refuses_to_import_the_project_into_itself(tmp_path):
    project = Project(tmp_path / "p")
    with pytest.raises(UserError):
        project.import_folder(project.images_dir)
    with pytest.raises(UserError):
        project.import_folder(tmp_path / "missing")
    # a source folder that contains the project skips the project folder
    pattern((8, 8)).save(tmp_path / "top.png")
    report = project.import_folder(tmp_path)
    assert [i.name for i in report.imported] == ["top.png"]
    assert any(p.kind == "inside_project" for p in report.skipped)


def test_progress_and_stop(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        pattern((8, 8), i).save(src / f"{i}.png")
    calls = []
    report = Project(tmp_path / "p").import_folder(
        src, progress=lambda done, total, name: calls.append((done, total)),
        should_stop=lambda: len(calls) >= 2)
    assert report.stopped and len(report.imported) == 2
    assert calls == [(0, 5), (1, 5)]


# ---------------------------------------------------------------- trash and undo

def test_trash_and_undo_restore_files_and_captions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pattern((8, 8)).save(src / "a.png")
    (src / "a.txt").write_text("cap a")
    pattern((8, 8), 1).save(src / "b.png")
    project = Project(tmp_path / "p")
    project.import_folder(src)
    originals = {n: (project.images_dir / n).read_bytes() for n in os.listdir(project.images_dir)}

    report = project.trash(["a.png", "missing.png", str(tmp_path / "elsewhere.png")])
    assert report.names == ["a.png"] and len(report.problems) == 2
    assert sorted(os.listdir(project.images_dir)) == ["b.png"]      # the caption went along
    assert "a.png" not in project.manifest["images"]
    assert (project.trash_dir / report.operation).is_dir()
    json.dumps(report.as_dict())

    undo = project.undo_last()
    assert sorted(undo.names) == ["a.png", "a.txt"]
    assert {n: (project.images_dir / n).read_bytes() for n in os.listdir(project.images_dir)} == originals
    assert "a.png" in project.manifest["images"]

    undo = project.undo_last()          # the import itself
    assert sorted(undo.removed) == ["a.png", "a.txt", "b.png"]
    assert os.listdir(project.images_dir) == []
    assert project.undo_last().message == "Nothing to undo."
    assert (src / "a.png").exists()     # undoing an import never touches the source


def test_operation_keeps_overwritten_files(tmp_path):
    project = Project(tmp_path / "p")
    path = project.images_dir / "x.png"
    pattern((8, 8)).save(path)
    before = path.read_bytes()
    with project.operation("reencode", "test re-encode") as op:
        op.before_change("x.png")
        pattern((8, 8), 5).save(path)
        op.before_change("x.png")       # kept once
    assert path.read_bytes() != before
    assert project.history()[-1]["counts"] == {"changed": 1}
    project.undo_last()
    assert path.read_bytes() == before
    with project.operation("noop"):
        pass
    assert project.history() == []      # empty operations leave nothing behind


def test_undo_does_not_overwrite_a_new_file_with_the_same_name(tmp_path):
    project = Project(tmp_path / "p")
    pattern((8, 8)).save(project.images_dir / "x.png")
    project.trash(["x.png"])
    pattern((8, 8), 3).save(project.images_dir / "x.png")
    report = project.undo_last()
    assert report.names == ["x_restored.png"] and report.problems[0].kind == "undo_renamed"
    assert sorted(project.image_names()) == ["x.png", "x_restored.png"]


def test_empty_trash(tmp_path):
    project = Project(tmp_path / "p")
    pattern((8, 8)).save(project.images_dir / "x.png")
    project.trash(["x.png"])
    assert project.empty_trash() > 0
    assert not project.trash_dir.exists() and project.undo_last().message == "Nothing to undo."


# ---------------------------------------------------------------- zip and uploads

def _zip_with_evil_entries(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/inside.png", encoded(pattern((16, 16)), "PNG"))
        zf.writestr("ok/inside.txt", "zip caption")
        zf.writestr("top.jpg", encoded(pattern((16, 16), 1), "JPEG"))
        zf.writestr("../evil.png", encoded(pattern((16, 16), 2), "PNG"))
        zf.writestr("ok/../../evil2.png", encoded(pattern((16, 16), 3), "PNG"))
        zf.writestr("..\\evil3.png", encoded(pattern((16, 16), 4), "PNG"))
        zf.writestr("/abs_evil.png", encoded(pattern((16, 16), 5), "PNG"))
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("__MACOSX/ok/._inside.png", b"junk")
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\nnope")


def test_zip_import_is_safe(tmp_path):
    archive = tmp_path / "upload" / "data.zip"
    archive.parent.mkdir()
    _zip_with_evil_entries(archive)
    archive_hash = hashlib.sha256(archive.read_bytes()).hexdigest()
    outside_before = all_files(tmp_path)
    project = Project(tmp_path / "projects" / "z")
    report = project.import_zip(archive)

    assert hashlib.sha256(archive.read_bytes()).hexdigest() == archive_hash
    new_outside = {f for f in all_files(tmp_path) - outside_before
                   if not f.startswith(str(project.root) + os.sep)}
    assert new_outside == set()
    assert not list(tmp_path.rglob("evil*.png")) and not Path("/abs_evil.png").exists()
    assert sorted(project.image_names()) == ["inside.png", "top.jpg"]
    assert (project.images_dir / "inside.txt").read_text() == "zip caption"
    kinds = {p.path.split("data.zip/", 1)[1]: p.kind for p in report.skipped}
    assert kinds["../evil.png"] == kinds["ok/../../evil2.png"] == "zip_unsafe_path"
    assert kinds["..\\evil3.png"] == kinds["/abs_evil.png"] == "zip_unsafe_path"
    assert kinds["link.png"] == "zip_link" and kinds["broken.png"] == "bad_image"
    assert all(p.fix for p in report.skipped if p.severity == "error")
    assert not (project.root / ".staging").exists()
    inside = next(i for i in report.imported if i.name == "inside.png")
    assert inside.source == f"{archive}/ok/inside.png"
    json.dumps(report.as_dict())


def test_zip_limits_and_bad_archives(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.png", encoded(pattern((8, 8)), "PNG"))
        zf.writestr("big.png", b"\x00" * 50_000)
    project = Project(tmp_path / "p")
    report = project.import_zip(archive, limits=ZipLimits(max_member_bytes=10_000))
    assert project.image_names() == ["small.png"]
    assert [p.kind for p in report.skipped] == ["zip_too_large"]
    with pytest.raises(UserError):
        project.import_zip(archive, limits=ZipLimits(max_total_bytes=1000))
    with pytest.raises(UserError):
        project.import_zip(archive, limits=ZipLimits(max_members=1))
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"PK not really")
    with pytest.raises(UserError) as info:
        project.import_zip(not_zip)
    assert "fake.zip" in info.value.text()


def test_import_uploaded_files(tmp_path):
    up = tmp_path / "gradio_tmp"
    up.mkdir()
    pattern((8, 8)).save(up / "tmp123.png")
    (up / "tmp456.txt").write_text("uploaded caption")
    (up / "tmp789.zip").write_bytes(b"")
    archive = up / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("z.png", encoded(pattern((8, 8), 1), "PNG"))
    project = Project(tmp_path / "p")
    report = project.import_files(
        [up / "tmp123.png", up / "tmp456.txt", up / "tmp789.zip", archive],
        names=["cat.png", "cat.txt", "broken.zip", "pack.zip"])
    assert sorted(project.image_names()) == ["cat.png", "z.png"]
    assert (project.images_dir / "cat.txt").read_text() == "uploaded caption"
    assert [p.path for p in report.skipped] == ["broken.zip"]
    assert report.operation and project.undo_last().removed


@needs_symlinks
def test_project_folders_that_are_links_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "p"
    Project(root)
    os.symlink(outside, root / ".trash")
    with pytest.raises(UserError):
        Project(root)
    os.unlink(root / ".trash")
    os.symlink(outside, root / ".staging")
    Project(root)                         # a staging link is removed, never written through
    assert not (root / ".staging").exists() and outside.is_dir()


@needs_symlinks
def test_write_guard_rejects_unsafe_names(tmp_path):
    project = Project(tmp_path / "p")
    for bad in ("../x.png", "sub/x.png", ".hidden.png", ""):
        with pytest.raises(ValueError):
            project._write_new(bad, data=b"x")
    os.symlink(tmp_path / "target.png", project.images_dir / "link.png")
    with pytest.raises(FileExistsError):
        project._write_new("link.png", data=b"x")   # never writes through a link
    assert not (tmp_path / "target.png").exists()
