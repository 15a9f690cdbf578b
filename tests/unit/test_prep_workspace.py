"""The dataset operations by project name (what the API routes and the tab call), end to end
on disk: import -> tag -> edit -> organise -> the trainer's own scan, with undo at each step."""

import hashlib

import pytest
from PIL import Image

from lora_trainer.config import TrainConfig
from lora_trainer.dataset.scan import scan_dataset
from lora_trainer.errors import UserError
from lora_trainer.prep.workspace import Workspace, strip_triggers

from .test_prep_tagger import BLACK_TAGS, RED_TAGS, build_model


@pytest.fixture()
def ws(tmp_path):
    return Workspace(tmp_path / "projects", tmp_path / "models")


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return build_model(tmp_path_factory.mktemp("tagger") / "tiny-wd14", "batch")


def source_folder(root, n_red=2, n_black=1):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_red):
        Image.new("RGB", (448 + 64 * i, 448), (255, 0, 0)).save(root / f"red{i}.png")
    for i in range(n_black):
        Image.new("RGB", (448, 448), (0, 0, 0)).save(root / f"black{i}.jpg", quality=95)
    return root


def tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_create_list_describe_and_bad_names(ws):
    info = ws.create("my dog")
    assert info["name"] == "my dog" and info["count"] == 0 and info["train_data_dir"] is None
    assert ws.list() == [{"name": "my dog", "images": 0}]
    with pytest.raises(UserError) as e:
        ws.create("my dog")
    assert "already exists" in e.value.message
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(UserError):
            ws.create(bad)
    with pytest.raises(UserError):
        ws.describe("missing")


def test_import_tag_edit_organise_then_the_trainer_scans_it(ws, tmp_path, tagger_dir):
    src = source_folder(tmp_path / "src")
    before = tree_digest(src)
    ws.create("dog")
    report = ws.import_images("dog", source=str(src))
    assert report["counts"]["imported"] == 3 and not report["skipped"]

    seen = []
    tagged = ws.tag("dog", model=str(tagger_dir), progress=lambda d, t, m: seen.append((d, t)))
    assert tagged["provider"] == "CPUExecutionProvider" and not tagged["failed"]
    assert tagged["tags"]["red0.png"] == RED_TAGS and tagged["tags"]["black0.jpg"] == BLACK_TAGS
    assert seen[-1] == (3, 3)
    caps = ws.captions("dog")
    assert caps["red0.png"] == ", ".join(RED_TAGS)

    # undo of the tagging removes the captions it created
    ws.undo("dog")
    assert ws.captions("dog") == {"black0.jpg": None, "red0.png": None, "red1.png": None}
    ws.tag("dog", model=str(tagger_dir))

    table = ws.tag_table("dog")
    assert table["frequency"]["long hair"] == 3 and table["frequency"]["kagamine rin"] == 2
    assert {"generic": "shirt", "specific": "white shirt", "images": 2} in table["redundant"]
    assert ws.filter("dog", ["kagamine rin"]) == ["red0.png", "red1.png"]

    edit = ws.edit_tags("dog", "add", triggers=["sks"], add_separator=True)
    assert sorted(edit["changed"]) == ["black0.jpg", "red0.png", "red1.png"]
    assert ws.captions("dog")["red0.png"].startswith("sks ||| kagamine rin, white shirt")
    ws.edit_tags("dog", "consolidate", images=["red0.png"])
    def tags_of(image):
        return [t.strip() for t in ws.captions("dog")[image].replace("|||", ",").split(",")]
    assert "shirt" not in tags_of("red0.png") and "white shirt" in tags_of("red0.png")
    assert "shirt" in tags_of("red1.png")       # only the selected image changed
    ws.undo("dog")
    assert "shirt" in tags_of("red0.png")
    ws.set_caption("dog", "black0.jpg", "sks ||| a black square")
    assert ws.captions("dog")["black0.jpg"] == "sks ||| a black square"

    built = ws.organise("dog", concepts=[{"name": "sks square", "repeats": 5}])
    assert built["images"] == 3 and built["repeats"] == {"sks square": 5}
    assert ws.describe("dog")["train_data_dir"] == built["train_data_dir"]
    scan = scan_dataset(TrainConfig.from_dict({"train_data_dir": built["train_data_dir"]}))
    summary = scan.summary()
    assert summary["ok"] and summary["num_images"] == 3 and summary["steps_per_epoch"] == 15
    assert summary["folders"][0]["captions_found"] == 3 and not summary["problems"]
    assert tree_digest(src) == before                 # originals never change


def test_suggested_repeats_balance_concepts(ws, tmp_path):
    src = source_folder(tmp_path / "src", n_red=3, n_black=1)
    ws.create("two")
    ws.import_images("two", source=str(src))
    built = ws.organise("two", target_per_epoch=30, concepts=[
        {"name": "red", "images": ["red0.png", "red1.png", "red2.png"]},
        {"name": "black", "images": ["black0.jpg"]}])
    assert built["repeats"] == {"red": 10, "black": 30}
    with pytest.raises(UserError) as e:
        ws.organise("two", concepts=[{"name": "x", "images": ["../../etc/passwd"]}])
    assert "not in the project" in e.value.message
    with pytest.raises(UserError) as e:
        ws.organise("two", out_dir=str(tmp_path / "elsewhere"))
    assert e.value.key == "out_dir" and not (tmp_path / "elsewhere").exists()
    inside = ws.organise("two", out_dir=str(tmp_path / "projects" / "shared-training"))
    assert inside["train_data_dir"] == str(tmp_path / "projects" / "shared-training")


def test_three_caption_layout_and_blank_captions_train_empty(ws, tmp_path, tagger_dir):
    src = source_folder(tmp_path / "src")
    ws.create("three")
    ws.import_images("three", source=str(src))
    with pytest.raises(UserError) as e:
        ws.three_captions("three")
    assert "lack" in e.value.message and e.value.fix
    ws.tag("three", model=str(tagger_dir))
    for image in ("red0.png", "red1.png", "black0.jpg"):
        ws.set_caption("three", image, f"a photo of {image[:-4]}", caption_extension=".caption")
    built = ws.three_captions("three", repeats=2)
    folders = {name: sorted(p.name for p in (tmp_path / "projects/three/training" / f"2_{name}").iterdir())
               for name in ("empty", "tags", "sentences")}
    assert folders["empty"] == folders["tags"] == folders["sentences"]
    assert len(folders["empty"]) == 6 and built["images"] == 9
    scan = scan_dataset(TrainConfig.from_dict({"train_data_dir": built["train_data_dir"]}))
    captions = {}
    for item in scan.items:
        captions.setdefault(item.subset_dir.rsplit("_", 1)[-1], set()).add(item.caption)
    assert captions["empty"] == {""} and not scan.summary()["problems"]
    assert captions["sentences"] == {"a photo of red0", "a photo of red1", "a photo of black0"}


def test_reg_images_use_captions_without_triggers(ws, tmp_path):
    src = source_folder(tmp_path / "src", n_red=2, n_black=0)
    ws.create("reg")
    ws.import_images("reg", source=str(src))
    ws.set_caption("reg", "red0.png", "sks, red square, sks style art")
    ws.set_caption("reg", "red1.png", "sks ||| a photo of sks on white")
    calls = []

    def generate(prompt, negative, seed, width, height, steps):
        calls.append((prompt, seed, width, height, steps))
        return Image.new("RGB", (width, height), (seed % 255, 0, 0))

    out = ws.reg_images("reg", generate, count=3, triggers="sks", class_name="square", seed=7,
                        width=64, height=64, steps=5)
    assert [c[0] for c in calls] == ["red square, style art", "a photo of on white", "red square, style art"]
    assert [c[1] for c in calls] == [7, 8, 9]
    folder = tmp_path / "projects/reg/reg/1_square"
    assert out["reg_data_dir"] == str(folder.parent)
    assert sorted(p.name for p in folder.iterdir()) == [
        "reg_00000.png", "reg_00000.txt", "reg_00001.png", "reg_00001.txt", "reg_00002.png", "reg_00002.txt"]
    assert (folder / "reg_00001.txt").read_text() == "a photo of on white\n"
    stopped = ws.reg_images("reg", generate, count=5, triggers="sks", class_name="square",
                            should_stop=lambda: len(calls) >= 4)
    assert stopped["stopped"] and [i["image"] for i in stopped["images"]] == ["reg_00003.png"]


def test_strip_triggers():
    assert strip_triggers("sks, 1girl ||| smile", ["sks"]) == "1girl, smile"
    assert strip_triggers("a photo of SKS dog", ["sks"]) == "a photo of dog"
    assert strip_triggers("sksdog, sks", ["sks"]) == "sksdog"


def test_upscale_small_images_with_undo(ws, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (128, 128), (0, 128, 0)).save(src / "tiny.jpg")
    Image.new("RGB", (512, 512), (0, 0, 128)).save(src / "big.png")
    ws.create("up")
    ws.import_images("up", source=str(src))
    factors = []

    def upscale(img, scale, name):
        factors.append((scale, name))
        return img.resize((int(img.width * scale), int(img.height * scale)))

    out = ws.upscale("up", upscale, upscaler="Lanczos", resolution=512)
    assert factors == [(4.0, "Lanczos")]
    assert out["upscaled"] == [{"image": "tiny.png", "from": [128, 128], "to": [512, 512], "scale": 4.0}]
    images = {i["name"]: i["size"] for i in ws.describe("up")["images"]}
    assert images == {"big.png": [512, 512], "tiny.png": [512, 512]}
    ws.undo("up")
    assert {i["name"]: i["size"] for i in ws.describe("up")["images"]} == {"big.png": [512, 512],
                                                                           "tiny.jpg": [128, 128]}


def test_hygiene_reports_plain_image_names(ws, tmp_path):
    src = source_folder(tmp_path / "src", n_red=1, n_black=0)
    (src / "copy.png").write_bytes((src / "red0.png").read_bytes())
    ws.create("h")
    ws.import_images("h", source=str(src))
    report = ws.hygiene("h", resolution=512)
    assert report["exact"] and sorted(report["exact"][0]["paths"]) == ["copy.png", "red0.png"]
    assert {e["path"] for e in report["buckets"]["entries"]} == {"copy.png", "red0.png"}


def test_bad_options_name_the_key(ws, tmp_path, tagger_dir):
    ws.create("o")
    with pytest.raises(UserError) as e:
        ws.tag("o", model=str(tagger_dir), general_treshold=0.3)
    assert e.value.key == "general_treshold"
    with pytest.raises(UserError) as e:
        ws.edit_tags("o", "explode")
    assert e.value.key == "action"
    with pytest.raises(UserError) as e:
        ws.edit_tags("o", "remove", tag="x")
    assert e.value.key == "tag"


def test_corpus_goes_import_hygiene_tag_organise_without_crash(ws, tmp_path, tagger_dir):
    from .test_prep_project import build_corpus
    src = tmp_path / "corpus"
    build_corpus(src)
    before = tree_digest(src)
    ws.create("corpus")
    report = ws.import_images("corpus", source=str(src))
    assert report["counts"]["imported"] == 20
    assert all(p["path"] and p["message"] and p["fix"] for p in report["skipped"] + report["warnings"])
    checked = ws.hygiene("corpus", resolution=512)
    assert checked["checked"] == 20 and checked["problems"] == []
    tagged = ws.tag("corpus", model=str(tagger_dir), mode="missing")
    # the corpus brought 5 captions along; "missing" leaves them alone and tags the other 15
    assert sorted(tagged["skipped"]) == ["cafe.png", "deepest.png", "good.png", "notepad.png", "photo.jpg"]
    assert len(tagged["written"]) == 15 and not tagged["failed"]
    built = ws.organise("corpus", concepts=[{"name": "odd things", "repeats": 1}])
    scan = scan_dataset(TrainConfig.from_dict({"train_data_dir": built["train_data_dir"]})).summary()
    assert scan["ok"] and scan["num_images"] == 20 and scan["folders"][0]["captions_missing"] == 0
    assert tree_digest(src) == before


def test_kohya_tagger_arguments_are_understood(ws, tmp_path, tagger_dir):
    src = source_folder(tmp_path / "src", n_red=1, n_black=0)
    ws.create("k")
    ws.import_images("k", source=str(src))
    # kohya: --thresh is both thresholds' fallback; --use_rating_tags_as_last_tag; --remove_underscore false
    out = ws.tag("k", repo_id=str(tagger_dir), thresh=0.9, use_rating_tags_as_last_tag=True,
                 remove_underscore=False, character_tags_first=True)
    assert out["tags"]["red0.png"] == ["kagamine_rin", "white_shirt", "shirt", "explicit"]
    # --append_tags keeps what is there
    ws.set_caption("k", "red0.png", "sks")
    out = ws.tag("k", model=str(tagger_dir), append_tags=True, thresh=0.9)
    assert ws.captions("k")["red0.png"] == "sks, kagamine rin, white shirt, shirt"
