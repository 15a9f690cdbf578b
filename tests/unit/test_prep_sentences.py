"""Natural-language captions against tiny random BLIP and GIT models built in tmp_path.

The models are real transformers 4.30.2 classes with tiny configs (hidden 32, one layer, 32 px
images, a 35-word BertTokenizer), saved with save_pretrained and loaded through the same
resolve_captioner -> SentenceCaptioner path a downloaded checkpoint takes. Their words are
random; what is checked is the plumbing: dispatch, determinism, batching, writing, undo, stop,
failures, unloading. initializer_range 0.2 makes the image matter, so captions differ per image.
"""

import gc
import json
import shutil
import weakref

import pytest

from lora_trainer.errors import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
np = pytest.importorskip("numpy")

from PIL import Image  # noqa: E402

from lora_trainer.prep.captioning import Captioner, caption_images_with_sentences, undo_captions  # noqa: E402
from lora_trainer.prep.sentences import SentenceCaptioner, resolve_captioner  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4: pad, -, bos, eos/sep, -
WORDS = ("a photo of dog cat on the couch red blue sitting with hat grass in field tree man woman car "
         "street sky white black small large two standing next to").split()
VOCAB = len(SPECIALS) + len(WORDS)
SIZE = 32
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            initializer_range=0.2)
VISION = dict(TINY, image_size=SIZE, patch_size=8)
TOKENS = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
GEN = dict(max_length=16, min_length=3)


def _tokenizer(folder):
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    return transformers.BertTokenizer(str(vocab))


def build_blip(folder, tok_dir):
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config=dict(TINY, vocab_size=VOCAB, encoder_hidden_size=32, max_position_embeddings=64,
                         sep_token_id=3, **TOKENS),
        vision_config=VISION)
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    processor = transformers.BlipProcessor(
        transformers.BlipImageProcessor(size={"height": SIZE, "width": SIZE}), _tokenizer(tok_dir))
    processor.save_pretrained(folder)
    return folder


def build_git(folder, tok_dir):
    torch.manual_seed(0)
    config = transformers.GitConfig(vision_config=VISION, vocab_size=VOCAB, max_position_embeddings=64,
                                    **TINY, **TOKENS)
    transformers.GitForCausalLM(config).save_pretrained(folder)  # pytorch_model.bin: the other format
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                      crop_size={"height": SIZE, "width": SIZE})
    transformers.GitProcessor(image_processor, _tokenizer(tok_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    (root / "tok").mkdir()
    return {"blip": build_blip(root / "tiny-blip", root / "tok"),
            "git": build_git(root / "tiny-git", root / "tok")}


@pytest.fixture(scope="module")
def captioners(models, tmp_path_factory):
    """The loading code users run: resolve_captioner on a folder, then SentenceCaptioner."""
    models_dir = tmp_path_factory.mktemp("models")
    out = {k: SentenceCaptioner(resolve_captioner(v, models_dir), device="cpu", **GEN) for k, v in models.items()}
    yield out
    for c in out.values():
        c.unload()


def noise_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "10_sks dog"
    folder.mkdir()
    paths = []
    for i, im in enumerate(noise_images(5, seed=1)):
        path = folder / f"img{i}.png"
        im.save(path)
        paths.append(path)
    return paths


def read(path):
    return path.with_suffix(".txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("kind, cls", [("blip", "BlipForConditionalGeneration"), ("git", "GitForCausalLM")])
def test_model_type_picks_the_classes(captioners, models, kind, cls):
    c = captioners[kind]
    assert c.model_type == kind
    assert type(c.model).__name__ == cls
    assert not c.model.training
    assert c.device == "cpu" and c.dtype == torch.float32
    assert c.model_dir == models[kind]
    assert isinstance(c, Captioner) and (c.provider, c.provider_note) == (c.device, c.device_note)


def test_auto_device_and_precision(models):
    with SentenceCaptioner(models["blip"], dtype="fp16", **GEN) as c:
        if torch.cuda.is_available():
            assert c.device == "cuda" and c.dtype == torch.float16
        else:  # fp16 is CUDA-only: the CPU runs fp32, and the report says why
            assert c.device == "cpu" and c.dtype == torch.float32
            assert "CPU" in c.device_note and "float16" in c.device_note
            assert next(c.model.parameters()).dtype == torch.float32


def test_bad_device_is_a_user_error(models):
    with pytest.raises(UserError, match="Unknown device"):
        SentenceCaptioner(models["blip"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            SentenceCaptioner(models["blip"], device="cuda")


def test_unknown_model_type_names_the_folder(models, tmp_path):
    other = tmp_path / "not-a-captioner"
    shutil.copytree(models["blip"], other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "blip-2"
    (other / "config.json").write_text(json.dumps(config))
    folder = resolve_captioner(other, tmp_path / "models")  # a folder with config.json is taken as is
    with pytest.raises(UserError) as err:
        SentenceCaptioner(folder)
    assert str(other) in err.value.text()
    assert "'blip-2'" in err.value.message and "BLIP and GIT" in err.value.message


def test_missing_model_without_download_names_folder_and_fix(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(UserError) as err:
        resolve_captioner("BLIP base", tmp_path / "models", download=False)
    folder = tmp_path / "models" / "Salesforce--blip-image-captioning-base"
    assert err.value.path == str(folder)
    assert "https://huggingface.co/Salesforce/blip-image-captioning-base" in err.value.fix
    with pytest.raises(UserError, match="neither a captioner folder nor a known"):
        resolve_captioner("no such model", tmp_path / "models")
    with pytest.raises(UserError, match="no config.json"):
        resolve_captioner(tmp_path, tmp_path / "models")


def test_download_goes_into_the_models_folder(models, tmp_path, monkeypatch):
    """The download branch with the hub faked: one weights format, then no second download."""
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, *, local_dir, allow_patterns, **kwargs):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(models["blip"], local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None: ["config.json", "model.safetensors",
                                                              "pytorch_model.bin", "tf_model.h5"])
    got = resolve_captioner("blip base", tmp_path / "models")
    assert got == tmp_path / "models" / "Salesforce--blip-image-captioning-base"
    assert calls == [("Salesforce/blip-image-captioning-base", ["*.json", "*.txt", "*.model", "*.safetensors"])]
    assert resolve_captioner("Salesforce/blip-image-captioning-base", tmp_path / "models") == got
    assert len(calls) == 1
    with SentenceCaptioner(got, device="cpu") as c:
        assert c.model_type == "blip"


# ---------------------------------------------------------------- captions

@pytest.mark.parametrize("kind", ["blip", "git"])
@pytest.mark.parametrize("beams", [1, 2])
def test_captions_are_deterministic_and_batch_independent(captioners, kind, beams):
    c = captioners[kind]
    c.num_beams = beams
    try:
        images = noise_images(4)
        batched = c.caption(images)
        assert c.caption(images) == batched
        assert [c.caption([im])[0] for im in images] == batched
        assert len(set(batched)) > 1  # the image reaches the text: the comparison means something
        assert all(t and t == " ".join(t.split()) for t in batched)
        assert set(" ".join(batched).split()) <= set(WORDS)  # special tokens are not in the text
    finally:
        c.num_beams = 1


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_prompt_is_continued_and_can_be_stripped(models, kind):
    images = noise_images(2)
    with SentenceCaptioner(models[kind], device="cpu", prompt="A  Photo of", **GEN) as c:
        echoed = c.caption(images)
    with SentenceCaptioner(models[kind], device="cpu", prompt="a photo of", strip_prompt=True, **GEN) as c:
        stripped = c.caption(images)
    assert all(t.startswith("a photo of ") for t in echoed)
    assert stripped == [t[len("a photo of "):] for t in echoed]


def test_unload_releases_the_model(models):
    c = SentenceCaptioner(models["git"], device="cpu", **GEN)
    ref = weakref.ref(c.model)
    c.unload()
    gc.collect()
    assert c.model is None and c.processor is None and not c.loaded
    assert ref() is None
    with pytest.raises(UserError, match="unloaded"):
        c.caption(noise_images(1))
    c.unload()  # twice is harmless
    with SentenceCaptioner(models["blip"], device="cpu") as c2:
        assert c2.loaded
    assert c2.model is None


# ---------------------------------------------------------------- writing caption files

def test_overwrite_writes_prefix_and_sentence_and_undo_restores(captioners, dataset):
    c = captioners["blip"]
    want = c.caption(dataset)
    old = {1: b"old caption\n", 3: b"\xef\xbb\xbfsks, kept\r\n"}
    for i, data in old.items():
        dataset[i].with_suffix(".txt").write_bytes(data)
    seen = []
    report = caption_images_with_sentences(dataset, c, "overwrite", prefix=" sks dog, ", batch_size=2,
                                           progress=lambda d, t: seen.append((d, t)))
    assert [read(p) for p in dataset] == [f"sks dog, {w}\n" for w in want]
    assert report.results == {str(p): w for p, w in zip(dataset, want)}
    assert report.provider == "cpu" and not report.failed and not report.stopped
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert len(report.written) == 5
    for i, data in old.items():  # replaced captions were backed up first
        assert dataset[i].with_suffix(".txt.bak").read_bytes() == data
    undo_captions(report.changes)
    for i, p in enumerate(dataset):
        txt = p.with_suffix(".txt")
        assert txt.read_bytes() == old[i] if i in old else not txt.exists()


def test_append_adds_the_sentence_once(captioners, dataset):
    c = captioners["git"]
    want = c.caption(dataset)
    files = [p.with_suffix(".txt") for p in dataset]
    files[1].write_text("1girl, smile\n", encoding="utf-8")
    files[2].write_text(f"sks, {want[2]}, smile\n", encoding="utf-8")       # already there
    files[3].write_text("sks ||| red hat,\n", encoding="utf-8")
    files[4].write_text("\n", encoding="utf-8")                            # deliberately empty
    report = caption_images_with_sentences(dataset, c, "append", backup=False)
    assert [read(p) for p in dataset] == [
        f"{want[0]}\n", f"1girl, smile, {want[1]}\n", f"sks, {want[2]}, smile\n",
        f"sks ||| red hat, {want[3]}\n", f"{want[4]}\n"]
    assert report.unchanged == [str(dataset[2])]
    assert not list(dataset[0].parent.glob("*.bak"))

    # With a prefix: put in front unless the caption already starts with it.
    report = caption_images_with_sentences(dataset[:4], c, "append", prefix="sks", backup=False)
    assert [read(p) for p in dataset[:4]] == [
        f"sks, {want[0]}\n", f"sks, 1girl, smile, {want[1]}\n", f"sks, {want[2]}, smile\n",
        f"sks ||| red hat, {want[3]}\n"]
    assert report.unchanged == [str(dataset[2]), str(dataset[3])]


def test_missing_only_captions_images_without_a_file(captioners, dataset):
    c = captioners["blip"]
    want = c.caption(dataset)
    dataset[0].with_suffix(".txt").write_bytes(b"mine\n")
    dataset[3].with_suffix(".txt").write_bytes(b"")
    report = caption_images_with_sentences(dataset, c, "missing", prefix="sks")
    assert read(dataset[0]) == "mine\n" and dataset[3].with_suffix(".txt").read_bytes() == b""
    assert report.skipped == [str(dataset[0]), str(dataset[3])]
    assert [read(dataset[i]) for i in (1, 2, 4)] == [f"sks, {want[i]}\n" for i in (1, 2, 4)]
    assert set(report.results) == {str(dataset[i]) for i in (1, 2, 4)}


def test_a_corrupt_image_is_reported_and_the_rest_written(captioners, dataset):
    c = captioners["git"]
    bad = dataset[0].parent / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = dataset[:2] + [bad] + dataset[2:]
    report = caption_images_with_sentences(paths, c, batch_size=2)
    assert [f[0] for f in report.failed] == [str(bad)]
    assert "broken.png" in report.failed[0][1]
    assert not bad.with_suffix(".txt").exists()
    assert [read(p) for p in dataset] == [f"{w}\n" for w in c.caption(dataset)]


def test_stop_is_checked_between_batches(captioners, dataset):
    c = captioners["blip"]
    seen = []
    report = caption_images_with_sentences(dataset, c, batch_size=2, progress=lambda d, t: seen.append(d),
                                           should_stop=lambda: bool(seen) and seen[-1] >= 2)
    assert report.stopped
    assert seen == [0, 2]
    assert [p.with_suffix(".txt").exists() for p in dataset] == [True, True, False, False, False]


def test_bad_mode_is_refused(captioners, dataset):
    with pytest.raises(ValueError, match="mode must be one of"):
        caption_images_with_sentences(dataset, captioners["blip"], "replace")


def test_sentence_text_rules(tmp_path):
    image = tmp_path / "a.png"
    from lora_trainer.prep.captioning import _sentence_text

    assert _sentence_text(image, "  a dog ,  on grass ", "overwrite", ".txt") == ("a dog , on grass\n", None)
    assert _sentence_text(image, "   ", "overwrite", ".txt")[0] is None
    assert _sentence_text(image, "a dog", "overwrite", ".txt", prefix="sks |||") == ("sks ||| a dog\n", None)
    (tmp_path / "a.txt").write_text("A Dog,  On grass, sks\n", encoding="utf-8")
    # a sentence holding commas counts as present only as whole parts, case/space-insensitively
    assert _sentence_text(image, "a dog, on grass", "append", ".txt") == ("A Dog,  On grass, sks\n", None)
    assert _sentence_text(image, "a dog", "append", ".txt") == ("A Dog,  On grass, sks\n", None)
    assert _sentence_text(image, "a do", "append", ".txt") == ("A Dog,  On grass, sks, a do\n", None)
    (tmp_path / "a.txt").write_bytes(b"\xff\xff bad")
    text, problem = _sentence_text(image, "a dog", "append", ".txt")
    assert text is None and "Not changed" in problem
