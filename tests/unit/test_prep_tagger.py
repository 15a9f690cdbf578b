"""WD14 tagger against tiny ONNX models with the real WD14 signature, built in tmp_path.

The model: input NHWC float32 [batch, 448, 448, 3] (BGR, 0-255) -> Div 255 -> ReduceMean over
H, W -> m = [mean B, mean G, mean R] in 0..1 -> MatMul W [3, T] + b -> Sigmoid -> [batch, T].
Solid colours give exact means, so every score is known: black -> sigmoid(b), pure red
(BGR m = [0, 0, 1]) -> sigmoid(b + W[2]), pure blue -> sigmoid(b + W[0]); W and b are built
from the probabilities wanted for those colours.
"""

import csv
import math
import sys
import types
import warnings

import pytest
from PIL import Image

from lora_trainer.errors import UserError
from lora_trainer.prep import tagger as tg
from lora_trainer.prep.captioning import Captioner, caption_images, caption_images_sequential, undo_captions
from lora_trainer.prep.tagger import (KAOMOJI, TagOptions, WD14Tagger, choose_providers, display_name,
                                      mcut_threshold, prepare_image)
from lora_trainer.prep.tagger_models import DEFAULT_MODEL, MODELS, load_labels, resolve_model

np = pytest.importorskip("numpy")

LABELS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("long_hair", 0), ("^_^", 0), ("white_shirt", 0), ("shirt", 0), ("smile", 0),
    ("hatsune_miku", 4), ("kagamine_rin", 4),
]
NAMES = [n for n, _ in LABELS]
#                  gen   sens  ques  expl  1girl long  ^_^   wshirt shirt smile miku  rin
P_BLACK = np.array([.90, .05, .03, .02, .95, .60, .50, .40, .30, .20, .90, .10])
P_RED = np.array([.05, .10, .20, .80, .10, .70, .45, .99, .97, .36, .05, .95])
P_BLUE = P_BLACK.copy()
P_BLUE[NAMES.index("smile")] = .90


def logit(p):
    return np.log(p / (1 - p))


B = logit(P_BLACK)
W = np.stack([logit(P_BLUE) - B, np.zeros_like(B), logit(P_RED) - B])  # rows: B, G, R channel


def expected_probs(m_bgr):
    return 1 / (1 + np.exp(-(B + np.asarray(m_bgr, dtype=np.float64) @ W)))


def build_model(folder, batch, size=448):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    t = len(LABELS)
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, size, size, 3])
    y = helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, t])
    nodes = [
        helper.make_node("Div", ["input_1", "c255"], ["x01"]),
        helper.make_node("ReduceMean", ["x01"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["wm"]),
        helper.make_node("Add", ["wm", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    inits = [numpy_helper.from_array(np.array([255], np.float32), "c255"),
             numpy_helper.from_array(W.astype(np.float32), "W"),
             numpy_helper.from_array(B.astype(np.float32), "b")]
    model = helper.make_model(helper.make_graph(nodes, "tiny_wd14", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fp:
        w = csv.writer(fp)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(LABELS):
            w.writerow([1000 + i, name, cat, 100 - i])
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("models")
    return {"dynamic": build_model(root / "dynamic", "batch"), "fixed": build_model(root / "fixed", 1)}


@pytest.fixture(scope="module")
def tagger(models):
    return WD14Tagger(models["dynamic"], providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fixed_tagger(models):
    return WD14Tagger(models["fixed"], providers=["CPUExecutionProvider"])


def solid(color, size=(448, 448), mode="RGB"):
    return Image.new(mode, size, color)


RED, BLUE, BLACK = (255, 0, 0), (0, 0, 255), (0, 0, 0)
RED_TAGS = ["kagamine rin", "white shirt", "shirt", "long hair", "^_^", "smile"]
BLACK_TAGS = ["hatsune miku", "1girl", "long hair", "^_^", "white shirt"]
BLUE_TAGS = ["hatsune miku", "1girl", "smile", "long hair", "^_^", "white shirt"]


class Counting:
    """Session proxy counting run() calls and the batch sizes sent."""

    def __init__(self, session):
        self._session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self._session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


# ---------------------------------------------------------------- model list, resolve_model

def test_model_list_has_v3_and_v2_hub_ids():
    assert MODELS["wd-swinv2-tagger-v3"].repo_id == "SmilingWolf/wd-swinv2-tagger-v3"
    assert MODELS["wd-eva02-large-tagger-v3"].repo_id == "SmilingWolf/wd-eva02-large-tagger-v3"
    assert MODELS["wd-v1-4-moat-tagger-v2"].repo_id == "SmilingWolf/wd-v1-4-moat-tagger-v2"
    assert MODELS["wd-v1-4-vit-tagger-v2"].fixed_batch and not MODELS["wd-vit-tagger-v3"].fixed_batch
    assert all(m.repo_id.startswith("SmilingWolf/") for m in MODELS.values())
    assert DEFAULT_MODEL in MODELS


def test_resolve_local_folder(models, tmp_path):
    assert resolve_model(models["dynamic"], tmp_path / "cache") == models["dynamic"]
    assert not (tmp_path / "cache").exists()


def test_resolve_folder_without_csv_is_a_user_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="selected_tags.csv"):
        resolve_model(tmp_path / "m", tmp_path)


def test_resolve_unknown_name(tmp_path):
    with pytest.raises(UserError, match="wd-swinv2-tagger-v3"):
        resolve_model("not a model", tmp_path)


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        path = tg.Path(kwargs["local_dir"]) / filename
        path.write_text("x")
        return str(path)

    module = types.ModuleType("huggingface_hub")
    module.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


def test_resolve_downloads_by_name_once(tmp_path, fake_hub):
    folder = resolve_model("wd-vit-tagger-v3", tmp_path, revision="v2.0")
    assert folder == tmp_path / "SmilingWolf_wd-vit-tagger-v3"
    assert [(r, f) for r, f, _ in fake_hub] == [("SmilingWolf/wd-vit-tagger-v3", "model.onnx"),
                                               ("SmilingWolf/wd-vit-tagger-v3", "selected_tags.csv")]
    assert fake_hub[0][2] == {"local_dir": str(folder), "revision": "v2.0"}
    assert resolve_model("SmilingWolf/wd-vit-tagger-v3", tmp_path) == folder  # already there
    assert len(fake_hub) == 2
    resolve_model("wd-vit-tagger-v3", tmp_path, force_download=True)
    assert len(fake_hub) == 4 and fake_hub[-1][2]["force_download"] is True


def test_resolve_download_failure_is_a_user_error(tmp_path, monkeypatch):
    module = types.ModuleType("huggingface_hub")

    def boom(*a, **k):
        raise OSError("offline")

    module.hf_hub_download = boom
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    with pytest.raises(UserError, match="offline") as info:
        resolve_model("wd-v1-4-vit-tagger-v2", tmp_path)
    assert "huggingface.co/SmilingWolf/wd-v1-4-vit-tagger-v2" in info.value.fix


def test_resolve_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(UserError, match="huggingface_hub"):
        resolve_model("wd-vit-tagger-v3", tmp_path)


# ---------------------------------------------------------------- labels, names, MCut

def test_load_labels_uses_the_csv_module(tmp_path):
    p = tmp_path / "selected_tags.csv"
    p.write_text('tag_id,name,category,count\n1,"a,b",0,5\n2,^_^,0,3\n3,safe,9,1\n', encoding="utf-8")
    assert [(l.name, l.category) for l in load_labels(p)] == [("a,b", 0), ("^_^", 0), ("safe", 9)]
    p.write_text("id,tag\n1,x\n", encoding="utf-8")
    with pytest.raises(UserError, match="header"):
        load_labels(p)


def test_underscores_become_spaces_except_kaomoji():
    assert len(KAOMOJI) == 19
    for k in KAOMOJI:
        assert display_name(k) == k
    assert display_name("long_hair") == "long hair"
    assert display_name("star_(symbol)") == "star (symbol)"
    assert display_name("long_hair", replace_underscores=False) == "long_hair"


def test_mcut_threshold():
    assert mcut_threshold([0.95, 0.6, 0.5, 0.4, 0.3, 0.2]) == pytest.approx(0.775)
    assert mcut_threshold([0.36, 0.97, 0.99, 0.7, 0.45]) == pytest.approx((0.97 + 0.7) / 2)
    assert mcut_threshold([]) == 0.0 and mcut_threshold([0.4]) == 0.0


# ---------------------------------------------------------------- post-processing (exact vectors)

def post(tagger, probs, **opts):
    return tagger.postprocess(np.asarray(probs, dtype=np.float32), TagOptions(**opts))


def test_default_thresholds_order_and_categories(tagger):
    r = post(tagger, P_RED)
    assert r.tags == RED_TAGS  # character first, then general by probability; strict >
    assert list(r.general) == ["white shirt", "shirt", "long hair", "^_^", "smile"]
    assert r.general["smile"] == pytest.approx(0.36)
    assert r.character == {"kagamine rin": pytest.approx(0.95)}
    assert r.rating == {"general": pytest.approx(.05), "sensitive": pytest.approx(.10),
                        "questionable": pytest.approx(.20), "explicit": pytest.approx(.80)}
    assert r.caption == ", ".join(RED_TAGS)


def test_threshold_is_strictly_greater(tagger):
    probs = P_BLACK.copy()
    probs[NAMES.index("long_hair")] = 0.5
    r = post(tagger, probs, general_threshold=0.5, character_threshold=0.9)
    assert r.tags == ["1girl"]  # 0.5 is not > 0.5; miku 0.9 is not > 0.9


def test_model_order_and_general_first(tagger):
    r = post(tagger, P_RED, order="model", character_first=False)
    assert r.tags == ["long hair", "^_^", "white shirt", "shirt", "smile", "kagamine rin"]


def test_mcut(tagger):
    assert post(tagger, P_RED, use_mcut=True).tags == ["kagamine rin", "white shirt", "shirt"]
    assert post(tagger, P_BLACK, use_mcut=True).tags == ["hatsune miku", "1girl"]
    # MCut for general only: characters keep their fixed threshold.
    assert post(tagger, P_BLACK, use_mcut=True, character_mcut=False, character_threshold=0.95).tags == ["1girl"]


def test_character_mcut_is_floored_at_015(tagger):
    probs = P_BLACK.copy()
    probs[NAMES.index("hatsune_miku")], probs[NAMES.index("kagamine_rin")] = 0.12, 0.01
    assert post(tagger, probs, use_mcut=True).character == {}  # MCut 0.065 -> floor 0.15
    assert post(tagger, probs, use_mcut=True, character_mcut_floor=0.1).character == \
        {"hatsune miku": pytest.approx(0.12)}


def test_rating_tag_on_off(tagger):
    assert post(tagger, P_RED, include_rating=True).tags == ["explicit"] + RED_TAGS
    assert post(tagger, P_RED, include_rating=True, rating_position="last").tags == RED_TAGS + ["explicit"]
    assert "explicit" not in post(tagger, P_RED).tags


def test_undesired_tags_either_spelling(tagger):
    r = post(tagger, P_RED, undesired_tags=["long_hair", "White Shirt", "^_^", "kagamine rin"])
    assert r.tags == ["shirt", "smile"]
    assert "long hair" not in r.general and r.character == {}


def test_keep_underscores(tagger):
    r = post(tagger, P_BLACK, replace_underscores=False)
    assert r.tags == ["hatsune_miku", "1girl", "long_hair", "^_^", "white_shirt"]


# ---------------------------------------------------------------- pre-processing

def test_prepare_image_is_bgr_float32_padded_white():
    a = prepare_image(solid(RED, (448, 224)), 448)
    assert a.shape == (448, 448, 3) and a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    assert a[0, 0].tolist() == [255, 255, 255]            # white padding (top band)
    assert a[224, 10].tolist() == [0, 0, 255]             # red in BGR order
    assert a[111, 0].tolist() == [255, 255, 255] and a[112, 0].tolist() == [0, 0, 255]  # centred


def test_prepare_image_transparency_is_white():
    a = prepare_image(solid((10, 20, 30, 0), (64, 64), "RGBA"), 448)
    assert a.shape == (448, 448, 3) and float(a.min()) == 255.0


# ---------------------------------------------------------------- the session

def test_session_io_is_read_from_the_model(tagger, fixed_tagger):
    assert (tagger.input_name, tagger.output_name, tagger.input_size) == ("input_1", "predictions_sigmoid", 448)
    assert tagger.fixed_batch is None and tagger.batched
    assert fixed_tagger.fixed_batch == 1 and not fixed_tagger.batched


def test_images_through_the_model(tagger):
    results = tagger.tag([solid(BLACK), solid(RED), solid(BLUE), solid(RED, (64, 64)),
                          solid(RED, (448, 224))])
    assert [r.tags for r in results[:4]] == [BLACK_TAGS, RED_TAGS, BLUE_TAGS, RED_TAGS]
    for r, m in zip(results[:3], ([0, 0, 0], [0, 0, 1], [1, 0, 0])):
        assert list(r.general.values()) == pytest.approx(
            sorted((p for p, (n, c) in zip(expected_probs(m), LABELS) if c == 0 and p > 0.35), reverse=True),
            abs=1e-5)
    # 448x224 red padded with white: m = [0.5, 0.5, 1] -> smile rises above long hair
    padded = results[4]
    p = expected_probs([0.5, 0.5, 1.0])
    assert padded.tags == ["kagamine rin", "white shirt", "shirt", "smile", "long hair", "^_^"]
    assert padded.general["smile"] == pytest.approx(p[NAMES.index("smile")], abs=1e-5)


def test_fixed_batch_model_runs_one_at_a_time(tagger, fixed_tagger):
    images = [solid(BLACK), solid(RED), solid(BLUE)]
    arrays = [fixed_tagger.prepare(im) for im in images]
    fixed_tagger.session = Counting(fixed_tagger.session)
    tagger.session = Counting(tagger.session)
    try:
        a = fixed_tagger.predict(arrays)
        b = tagger.predict(arrays)
        assert fixed_tagger.session.batches == [1, 1, 1] and tagger.session.batches == [3]
    finally:
        fixed_tagger.session = fixed_tagger.session._session
        tagger.session = tagger.session._session
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- providers

def test_choose_providers_intersects_and_keeps_cpu_last():
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], avail) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers([("CUDAExecutionProvider", {"device_id": 1})], avail) == \
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_cpu_requested_cpu_used(tagger):
    assert tagger.requested_providers == ["CPUExecutionProvider"]
    assert tagger.providers == ["CPUExecutionProvider"] and tagger.provider == "CPUExecutionProvider"
    assert tagger.provider_note is None


def test_cuda_missing_from_the_build_is_reported(models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    t = WD14Tagger(models["dynamic"], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert t.requested_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert t.provider == "CPUExecutionProvider"
    assert "does not have it" in t.provider_note and "onnxruntime-gpu" in t.provider_note


def test_cuda_that_fails_to_load_falls_back_visibly(models, monkeypatch):
    """The build claims CUDA, the session still runs on CPU: onnxruntime's silent fallback."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA")
    real = ort.InferenceSession
    passed = []

    def session(path, sess_options=None, providers=None, **kw):
        passed.append(list(providers))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return real(path, sess_options=sess_options, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    t = WD14Tagger(models["dynamic"], providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert passed == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    assert t.providers == ["CPUExecutionProvider"]
    assert t.chosen_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert t.provider_note.startswith("CUDA is installed but failed to load")


# ---------------------------------------------------------------- caption files

@pytest.fixture
def dataset(tmp_path):
    colours = {"a": BLACK, "b": RED, "c": BLUE, "d": RED, "e": BLACK}
    paths = []
    for name, colour in colours.items():
        p = tmp_path / f"{name}.png"
        solid(colour, (64, 64)).save(p)
        paths.append(p)
    return paths


def read(p):
    return p.read_text(encoding="utf-8")


def test_overwrite_writes_backup_and_undo(tagger, dataset):
    assert isinstance(tagger, Captioner)
    (dataset[0].with_suffix(".txt")).write_text("old, caption\n", encoding="utf-8")
    report = caption_images(dataset, tagger, "overwrite", batch_size=2)
    assert read(dataset[0].with_suffix(".txt")) == ", ".join(BLACK_TAGS) + "\n"
    assert read(dataset[1].with_suffix(".txt")) == ", ".join(RED_TAGS) + "\n"
    bak = dataset[0].with_name("a.txt.bak")
    assert read(bak) == "old, caption\n"
    assert len(report.written) == 5 and report.failed == [] and not report.stopped
    assert report.provider == "CPUExecutionProvider"
    assert [c.previous for c in report.changes] == [b"old, caption\n", None, None, None, None]
    assert report.changes[0].backup_path == str(bak)
    assert not list(dataset[0].parent.glob(".*.tmp"))  # atomic writes leave no temp files
    undo_captions(report.changes)
    assert read(dataset[0].with_suffix(".txt")) == "old, caption\n"
    assert not dataset[1].with_suffix(".txt").exists()


def test_second_run_is_unchanged_and_makes_no_new_backup(tagger, dataset):
    caption_images(dataset, tagger, "overwrite")
    report = caption_images(dataset, tagger, "overwrite")
    assert report.written == [] and len(report.unchanged) == 5
    assert not list(dataset[0].parent.glob("*.bak*"))


def test_append_keeps_existing_tags_and_separator(tagger, dataset):
    dataset[1].with_suffix(".txt").write_text("sks ||| Shirt, beach\n", encoding="utf-8")
    caption_images(dataset[:2], tagger, "append")
    assert read(dataset[1].with_suffix(".txt")) == \
        "sks ||| Shirt, beach, kagamine rin, white shirt, long hair, ^_^, smile\n"
    assert read(dataset[0].with_suffix(".txt")) == ", ".join(BLACK_TAGS) + "\n"


def test_missing_mode_skips_captioned_images(tagger, dataset):
    dataset[2].with_suffix(".txt").write_text("mine\n", encoding="utf-8")
    report = caption_images(dataset, tagger, "missing")
    assert report.skipped == [str(dataset[2])] and str(dataset[2]) not in report.results
    assert read(dataset[2].with_suffix(".txt")) == "mine\n"
    assert len(report.written) == 4


def test_bad_image_is_reported_and_the_rest_written(tagger, dataset):
    bad = dataset[0].with_name("bad.png")
    bad.write_bytes(b"not an image")
    report = caption_images([bad] + dataset, tagger, "overwrite", batch_size=4)
    assert [p for p, _ in report.failed] == [str(bad)] and "bad.png" in report.failed[0][1]
    assert len(report.written) == 5 and not bad.with_suffix(".txt").exists()


def test_stop_and_progress(tagger, dataset):
    calls, seen = [], []

    def should_stop():
        calls.append(1)
        return len(calls) > 1  # stop before the second batch

    report = caption_images(dataset, tagger, "overwrite", batch_size=2, should_stop=should_stop,
                            progress=lambda done, total: seen.append((done, total)))
    assert report.stopped and seen == [(0, 5), (2, 5)]
    assert [p.with_suffix(".txt").exists() for p in dataset] == [True, True, False, False, False]


@pytest.mark.parametrize("which", ["dynamic", "fixed"])
def test_batched_and_one_at_a_time_write_identical_captions(models, tmp_path, which, tagger, fixed_tagger):
    t = tagger if which == "dynamic" else fixed_tagger
    paths = []
    for i, colour in enumerate([BLACK, RED, BLUE, RED, BLACK, BLUE, RED]):
        p = tmp_path / f"{i}.png"
        solid(colour, (96 + i, 64)).save(p)  # not square: exercises pad + resize
        paths.append(p)
    t.session = Counting(t.session)
    try:
        batched = caption_images(paths, t, "overwrite", batch_size=4, backup=False)
        first = {p: read(p.with_suffix(".txt")) for p in paths}
        runs_batched = list(t.session.batches)
        for p in paths:
            p.with_suffix(".txt").unlink()
        single = caption_images_sequential(paths, t, "overwrite", backup=False)
    finally:
        runs_all = list(t.session.batches)
        t.session = t.session._session
    assert {p: read(p.with_suffix(".txt")) for p in paths} == first
    assert [r.tags for r in batched.results.values()] == [r.tags for r in single.results.values()]
    assert runs_batched == ([4, 3] if which == "dynamic" else [1] * 7)
    assert runs_all[len(runs_batched):] == [1] * 7


def test_bad_mode(tagger, dataset):
    with pytest.raises(ValueError):
        caption_images(dataset, tagger, "replace")


def test_parallel_decoding_leaves_the_warning_filters_alone(tagger, tmp_path):
    """Decodes run in parallel threads: nothing may edit the process-wide warning filters."""
    before = list(warnings.filters)
    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        solid((i * 20, 0, 0), (80, 50)).save(p)
        paths.append(p)
    report = caption_images(paths, tagger, "overwrite", batch_size=3, workers=6)
    assert len(report.written) == 12 and warnings.filters == before
