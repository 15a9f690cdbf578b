"""Building kohya N_name training folders (copies, captions, refusals)."""

from types import SimpleNamespace

import pytest
from PIL import Image

from lora_trainer.dataset.scan import parse_subset_name, scan_dataset
from lora_trainer.errors import UserError
from lora_trainer.prep.organise import (build_three_caption_layout, build_training_folder, clean_name,
                                        folder_name, suggest_repeats)


def image(path, color=(200, 10, 10), size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "raw"
    return [image(d / "one.png"), image(d / "two.PNG"), image(d / "sub" / "one.jpg")]


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- names and repeats

def test_names_are_stripped_and_checked():
    assert clean_name(" sks dog \n") == "sks dog"
    assert clean_name("sks\ndog\r\n") == "sks dog"
    assert clean_name("my char...") == "my char"
    assert folder_name(10, "sks dog\n") == "10_sks dog"
    assert parse_subset_name(folder_name(3, "my_char")) == (3, "my_char")
    for bad in ("", " \n ", "a/b", "what?", 'say "hi"'):
        with pytest.raises(UserError):
            clean_name(bad)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(UserError):
            folder_name(bad, "x")


def test_suggest_repeats_balances_concepts():
    assert suggest_repeats({"a": 20, "b": 100, "c": 7, "d": 1000}, target_per_epoch=200) == \
        {"a": 10, "b": 2, "c": 29, "d": 1}
    assert suggest_repeats({"a": 80}, target_per_epoch=200) == {"a": 3}   # 2.5 rounds up
    assert suggest_repeats({"a": 3}, target_per_epoch=200, max_repeats=20) == {"a": 20}
    assert suggest_repeats({"a": 30}) == {"a": 10}                        # default target 300
    with pytest.raises(UserError):
        suggest_repeats({"a": 0})


# ---------------------------------------------------------------- build_training_folder

def test_build_copies_images_and_writes_captions(tmp_path, src):
    (src[0].with_suffix(".txt")).write_text("existing caption\n", encoding="utf-8")
    out = tmp_path / "train"
    report = build_training_folder(out, {
        " sks dog\n": (10, src[:2], None),
        "my_char": (2, src, {str(src[0]): ["sks", "|||", "smile"], src[1]: "a photo\nsecond", src[2]: ""}),
    })
    assert report.train_data_dir == str(out)
    assert listing(out) == ["10_sks dog", "2_my_char"]
    # copies, extension lower-cased; existing caption copied, none invented
    assert listing(out / "10_sks dog") == ["one.png", "one.txt", "two.png"]
    assert (out / "10_sks dog" / "one.txt").read_text() == "existing caption\n"
    # two sources with stem "one" must not share one caption file
    assert listing(out / "2_my_char") == ["one.png", "one.txt", "one_2.jpg", "one_2.txt", "two.png", "two.txt"]
    assert (out / "2_my_char" / "one.txt").read_text() == "sks ||| smile\n"
    assert (out / "2_my_char" / "two.txt").read_text() == "a photo\n"
    assert (out / "2_my_char" / "one_2.txt").read_text() == "\n"
    assert all(p.exists() for p in src)  # never moved
    assert (out / "10_sks dog" / "one.png").read_bytes() == src[0].read_bytes()
    assert report.folders == {"sks dog": str(out / "10_sks dog"), "my_char": str(out / "2_my_char")}
    assert [c.caption is not None for c in report.images[:2]] == [True, False]

    scan = scan_dataset(SimpleNamespace(train_data_dir=str(out), caption_extension=".txt", resolution=64,
                                        enable_bucket=False, train_batch_size=1, max_train_epochs=1,
                                        max_train_steps=None, gradient_accumulation_steps=1))
    assert sorted((s.name, s.repeats, s.image_count) for s in scan.subsets) == [("my_char", 2, 3), ("sks dog", 10, 2)]


def test_refuses_output_inside_a_source_folder(tmp_path, src):
    for out in (src[0].parent, src[0].parent / "train", src[2].parent):
        with pytest.raises(UserError, match="inside a folder the images come from"):
            build_training_folder(out, {"x": (1, src, None)})
    assert not (src[0].parent / "train").exists() and not (src[0].parent / "1_x").exists()


def test_refuses_writing_into_the_source_folder_itself(tmp_path):
    pic = image(tmp_path / "data" / "5_x" / "a.png")
    with pytest.raises(UserError):
        build_training_folder(tmp_path / "data", {"x": (5, [pic], None)}, exist_ok=True)


def test_checks_everything_before_writing(tmp_path, src):
    gif = tmp_path / "raw" / "anim.gif"
    Image.new("P", (8, 8)).save(gif)
    out = tmp_path / "train"
    with pytest.raises(UserError, match=r"\.gif"):
        build_training_folder(out, {"a": (1, src, None), "b": (1, [gif], None)})
    with pytest.raises(UserError, match="does not exist"):
        build_training_folder(out, {"a": (1, src, None), "b": (1, [tmp_path / "nope.png"], None)})
    with pytest.raises(UserError, match="both named"):
        build_training_folder(out, {"a": (1, src, None), "a \n": (2, src, None)})
    with pytest.raises(UserError, match="3 images but 1 captions"):
        build_training_folder(out, {"a": (1, src, ["x"])})
    assert not out.exists()


def test_existing_folders(tmp_path, src):
    out = tmp_path / "train"
    build_training_folder(out, {"dog": (10, src[:1], None)})
    with pytest.raises(UserError, match="not empty"):
        build_training_folder(out, {"dog": (10, src[1:2], None)})
    with pytest.raises(UserError, match="kohya would train both"):
        build_training_folder(out, {"dog": (5, src[1:2], None)})
    report = build_training_folder(out, {"dog": (10, src[1:2], None)}, exist_ok=True)
    assert listing(out / "10_dog") == ["one.png", "two.png"] and report.warnings == []
    report = build_training_folder(out, {"dog": (5, src[1:2], None)}, exist_ok=True)
    assert len(report.warnings) == 1 and "10_dog" in report.warnings[0]


# ---------------------------------------------------------------- three-caption layout

def test_three_caption_layout(tmp_path, src):
    tags = {str(p): f"tag{i}, smile" for i, p in enumerate(src)}
    sentences = ["a red photo.", "another red photo.", "a third one."]
    out = tmp_path / "three"
    report = build_three_caption_layout(src, tags, sentences, out, 4)
    assert listing(out) == ["4_empty", "4_sentences", "4_tags"]
    names = listing(out / "4_empty")
    assert names == listing(out / "4_tags") == listing(out / "4_sentences")
    assert names == ["one.png", "one.txt", "one_2.jpg", "one_2.txt", "two.png", "two.txt"]
    assert (out / "4_empty" / "two.txt").read_text() == "\n"  # kohya trains it with ""
    assert (out / "4_tags" / "two.txt").read_text() == "tag1, smile\n"
    assert (out / "4_sentences" / "one_2.txt").read_text() == "a third one.\n"
    assert len(report.images) == 9

    report = build_three_caption_layout(src, tags, sentences, tmp_path / "other", (1, 2, 3))
    assert listing(tmp_path / "other") == ["1_empty", "2_tags", "3_sentences"]


def test_three_caption_layout_needs_every_caption(tmp_path, src):
    with pytest.raises(UserError, match="lack a tag or sentence caption: two.PNG"):
        build_three_caption_layout(src, {str(src[0]): "a", str(src[2]): "b"}, ["x", "y", "z"],
                                   tmp_path / "o", 1)
    assert not (tmp_path / "o").exists()
