"""End-to-end: dataset preparation through /lora-trainer/v1/datasets in the real WebUI (tiny SD1.5).

A corpus of bad and odd files goes import -> hygiene -> tag -> edit -> organise, and the result
is scanned and trained by the trainer; regularization images come from the loaded model and
upscaling from the WebUI's own upscaler.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..unit.test_prep_project import build_corpus
from ..unit.test_prep_tagger import BLACK_TAGS, RED_TAGS, build_model

API = "/lora-trainer/v1"


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    pytest.importorskip("onnx")
    return build_model(tmp_path_factory.mktemp("wd14") / "tiny-wd14", "batch")


def project_dir(webui, name) -> Path:
    return Path(webui.get(f"{API}/datasets/{name}")["images_dir"])


def test_corpus_import_hygiene_tag_organise_train(webui, tagger, tmp_path):
    src = tmp_path / "corpus"
    build_corpus(src)
    Image.new("RGB", (448, 448), (255, 0, 0)).save(src / "red_square.png")
    Image.new("RGB", (448, 448), (0, 0, 0)).save(src / "black_square.png")
    before = digest(src)

    created = webui.post(f"{API}/datasets", {"name": "corpus"})
    assert created["name"] == "corpus" and created["count"] == 0
    status, body = webui.request("POST", f"{API}/datasets", {"name": "corpus"})
    assert status == 422 and "already exists" in body["detail"]["message"]
    status, body = webui.request("POST", f"{API}/datasets", {"name": "../escape"})
    assert status == 422
    assert {"name": "corpus", "images": 0} in webui.get(f"{API}/datasets")

    job = webui.dataset_job(f"{API}/datasets/corpus/import", {"source": str(src)})
    assert job["state"] == "finished", (job["error"], job)
    report = job["result"]
    skipped = {Path(p["path"]).name: p for p in report["skipped"]}
    for name in ("truncated.png", "truncated.jpg", "empty.png", "text_renamed.png", "bomb.png"):
        assert name in skipped and skipped[name]["fix"], name
    assert report["counts"]["imported"] == 22 and job["done"] == job["total"] > 0
    images = project_dir(webui, "corpus")

    job = webui.dataset_job(f"{API}/datasets/corpus/hygiene", {"resolution": 512, "train_batch_size": 4})
    assert job["state"] == "finished", (job["error"], job)
    hygiene = job["result"]
    assert hygiene["checked"] == 22 and hygiene["problems"] == []
    assert "tiny.png" in {s["path"] for s in hygiene["small"]} and hygiene["buckets"]["short_buckets"]

    job = webui.dataset_job(f"{API}/datasets/corpus/tag", {"model": str(tagger), "mode": "overwrite"})
    assert job["state"] == "finished", (job["error"], job)
    tagged = job["result"]
    assert tagged["provider"] == "CPUExecutionProvider" and not tagged["failed"]
    assert (images / "red_square.txt").read_text("utf-8") == ", ".join(RED_TAGS) + "\n"
    assert (images / "black_square.txt").read_text("utf-8") == ", ".join(BLACK_TAGS) + "\n"
    assert len(tagged["written"]) == 22

    table = webui.get(f"{API}/datasets/corpus/tags")
    assert table["frequency"]["long hair"] == 22
    shown = webui.post(f"{API}/datasets/corpus/tags/filter", {"tags": ["kagamine rin"]})["images"]
    assert "red_square.png" in shown and "black_square.png" not in shown
    edit = webui.post(f"{API}/datasets/corpus/tags/edit",
                      {"action": "add", "triggers": ["sks"], "add_separator": True, "images": shown})
    assert sorted(edit["changed"]) == sorted(shown)
    assert (images / "red_square.txt").read_text("utf-8").startswith("sks ||| kagamine rin")
    assert not (images / "black_square.txt").read_text("utf-8").startswith("sks")
    status, body = webui.request("POST", f"{API}/datasets/corpus/tags/edit", {"action": "remove", "tag": "x"})
    assert status == 422 and body["detail"]["key"] == "tag"
    undone = webui.post(f"{API}/datasets/corpus/undo", {})
    assert undone["operation"] == edit["operation"]
    assert (images / "red_square.txt").read_text("utf-8") == ", ".join(RED_TAGS) + "\n"

    status, _ = webui.request("PUT", f"{API}/datasets/corpus/captions/black_square.png",
                              {"caption": "sks ||| a black square"})
    assert status == 200
    assert webui.get(f"{API}/datasets/corpus/captions")["black_square.png"] == "sks ||| a black square"
    status, body = webui.request("PUT", f"{API}/datasets/corpus/captions/..%2F..%2Fproject.json", {"caption": "x"})
    assert status in (404, 422)

    built = webui.post(f"{API}/datasets/corpus/organise",
                       {"concepts": [{"name": "sks square", "repeats": 2}]})
    assert built["images"] == 22
    scan = webui.post(f"{API}/scan", {"train_data_dir": built["train_data_dir"], "resolution": "64",
                                      "min_bucket_reso": 64, "max_bucket_reso": 128})
    assert scan["ok"] and scan["num_images"] == 22 and scan["folders"][0]["captions_found"] == 22
    trained = webui.train({"train_data_dir": built["train_data_dir"], "resolution": "64", "min_bucket_reso": 64,
                           "max_bucket_reso": 128, "max_train_steps": 3, "network_dim": 2, "network_alpha": 1,
                           "output_name": "from_dataset_tab"})
    assert trained["state"] == "finished", trained
    assert digest(src) == before


def test_upload_reg_images_upscale_and_three_captions(webui, tmp_path):
    webui.post(f"{API}/datasets", {"name": "uploads"})
    files = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 48), colour).save(buffer, "PNG")
        files.append({"name": f"sq{i}.png", "data": base64.b64encode(buffer.getvalue()).decode()})
        files.append({"name": f"sq{i}.txt", "data": base64.b64encode(f"sks, square {i}".encode()).decode()})
    job = webui.dataset_job(f"{API}/datasets/uploads/import", {"files": files})
    assert job["state"] == "finished" and job["result"]["counts"]["imported"] == 2, job
    images = project_dir(webui, "uploads")
    assert (images / "sq1.txt").read_text("utf-8") == "sks, square 1"
    # a zip upload, with a zip-slip entry that must be refused
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        png = io.BytesIO()
        Image.new("RGB", (48, 48), (0, 200, 0)).save(png, "PNG")
        zf.writestr("set/green.png", png.getvalue())
        zf.writestr("set/green.txt", "sks, square green")
        zf.writestr("../../escape.png", png.getvalue())
    job = webui.dataset_job(f"{API}/datasets/uploads/import",
                            {"zip": base64.b64encode(buffer.getvalue()).decode(), "zip_name": "set.zip"})
    assert job["state"] == "finished" and job["result"]["counts"]["imported"] == 1, job
    assert any("escape.png" in p["path"] for p in job["result"]["skipped"])
    assert (images / "green.txt").read_text("utf-8") == "sks, square green"
    assert not (images.parent.parent / "escape.png").exists()
    webui.post(f"{API}/datasets/uploads/trash", {"images": ["green.png"]})
    assert not (images / "green.png").exists() and not (images / "green.txt").exists()
    assert webui.post(f"{API}/datasets/uploads/empty-trash", {})["freed_bytes"] > 0
    assert webui.post(f"{API}/datasets/uploads/undo", {})["message"] == "Nothing to undo."
    assert not (images / "green.png").exists() and (images / "sq1.png").exists()

    status, body = webui.request("POST", f"{API}/datasets/uploads/upscale", {"upscaler": "Lanczos", "resolutoin": 64})
    assert status == 422 and body["detail"]["key"] == "resolutoin"
    job = webui.dataset_job(f"{API}/datasets/uploads/upscale", {"upscaler": "Lanczos", "resolution": 64,
                                                                "min_bucket_reso": 64, "max_bucket_reso": 128})
    assert job["state"] == "finished", (job["error"], job)
    assert [u["to"] for u in job["result"]["upscaled"]] == [[64, 64], [64, 64]]
    assert Image.open(images / "sq0.png").size == (64, 64)

    ref = webui.txt2img(prompt="square 0", seed=5, steps=3, size=64)
    job = webui.dataset_job(f"{API}/datasets/uploads/reg-images",
                            {"count": 3, "triggers": ["sks"], "class_name": "square", "width": 64, "height": 64,
                             "steps": 3, "seed": 5})
    assert job["state"] == "finished", (job["error"], job)
    reg = Path(job["result"]["folder"])
    assert reg.name == "1_square" and job["result"]["reg_data_dir"] == str(reg.parent)
    assert sorted(p.name for p in reg.glob("*.png")) == ["reg_00000.png", "reg_00001.png", "reg_00002.png"]
    assert [(reg / f"reg_0000{i}.txt").read_text("utf-8") for i in range(3)] == \
        ["square 0\n", "square 1\n", "square 0\n"]
    assert all(Image.open(p).size == (64, 64) for p in reg.glob("*.png"))
    # the same prompt and seed as txt2img gives a picture of the loaded model (not a blank)
    generated = Image.open(reg / "reg_00000.png").convert("RGB")
    assert len(np.unique(np.asarray(generated).reshape(-1, 3), axis=0)) > 10
    assert webui.txt2img(prompt="square 0", seed=5, steps=3, size=64) == ref   # the model is untouched

    # train with them: kohya's reg_data_dir + prior_loss_weight
    built = webui.post(f"{API}/datasets/uploads/organise", {"concepts": [{"name": "sks square", "repeats": 2}]})
    tiny = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 2}
    scan = webui.post(f"{API}/scan", {"train_data_dir": built["train_data_dir"],
                                      "reg_data_dir": job["result"]["reg_data_dir"], **tiny})
    assert scan["num_train_images"] == 4 and scan["steps_per_epoch"] == 8
    assert scan["num_reg_images"] == 3 and scan["reg_samples_per_epoch"] == 4   # kohya's count, before balancing
    trained = webui.train({"train_data_dir": built["train_data_dir"], "reg_data_dir": job["result"]["reg_data_dir"],
                           "prior_loss_weight": 0.5, "max_train_steps": 3, "output_name": "with_reg", **tiny})
    assert trained["state"] == "finished", trained
    from safetensors import safe_open
    with safe_open(str(webui.lora_dir / "with_reg.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_reg_images"] == "3" and meta["ss_prior_loss_weight"] == "0.5"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_square": {"n_repeats": 1, "img_count": 3}}

    for i in range(2):
        webui.request("PUT", f"{API}/datasets/uploads/captions/sq{i}.png",
                      {"caption": f"a photo of square {i}", "caption_extension": ".caption"})
    three = webui.post(f"{API}/datasets/uploads/three-captions", {"repeats": 3})
    root = Path(three["train_data_dir"])
    for name in ("empty", "tags", "sentences"):
        assert sorted(p.name for p in (root / f"3_{name}").iterdir()) == ["sq0.png", "sq0.txt", "sq1.png", "sq1.txt"]
    assert (root / "3_empty/sq0.txt").read_text() == "\n"
    assert (root / "3_sentences/sq1.txt").read_text() == "a photo of square 1\n"
    assert (root / "3_tags/sq1.txt").read_text() == "sks, square 1\n"


def test_dataset_jobs_report_unknown_projects_and_ids(webui):
    status, body = webui.request("POST", f"{API}/datasets/nope/import", {"source": "/tmp"})
    assert status == 422 and body["detail"]["path"].endswith("nope")
    status, _ = webui.request("GET", f"{API}/dataset-jobs/ds-0-0")
    assert status == 404
    tools = webui.get(f"{API}/dataset-tools")
    assert "Lanczos" in tools["upscalers"] and "wd-swinv2-tagger-v3" in tools["taggers"]


def test_sentence_captions_in_the_webui_process(webui, tmp_path):
    """BLIP through the WebUI's own transformers 4.30.2: a tiny random model saved with save_pretrained,
    loaded by the real loader from its folder; captions land on disk and the same run twice is identical."""
    pytest.importorskip("transformers")
    from ..unit.test_prep_sentences import build_blip
    (tmp_path / "tok").mkdir()
    model = build_blip(tmp_path / "tiny-blip", tmp_path / "tok")
    webui.post(f"{API}/datasets", {"name": "sentences"})
    src = tmp_path / "src"
    src.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 40), colour).save(src / f"c{i}.png")
    assert webui.dataset_job(f"{API}/datasets/sentences/import", {"source": str(src)})["state"] == "finished"
    body = {"model": str(model), "device": "cpu", "caption_extension": ".caption", "prefix": "sks"}
    job = webui.dataset_job(f"{API}/datasets/sentences/caption", body)
    assert job["state"] == "finished", (job["error"], job)
    result = job["result"]
    assert result["provider"] == "cpu" and sorted(result["written"]) == ["c0.caption", "c1.caption"]
    images = project_dir(webui, "sentences")
    first = {i: (images / f"c{i}.caption").read_text("utf-8") for i in range(2)}
    assert all(text.startswith("sks, ") and len(text) > len("sks, \n") for text in first.values())
    assert first[0] == "sks, " + result["captions"]["c0.png"] + "\n"
    again = webui.dataset_job(f"{API}/datasets/sentences/caption", body)["result"]
    assert again["captions"] == result["captions"] and sorted(again["unchanged"]) == ["c0.png", "c1.png"]
    assert again["operation"] is None          # nothing changed: Undo still reverses the first run
    undone = webui.post(f"{API}/datasets/sentences/undo", {})
    assert undone["operation"] == result["operation"] and not list(images.glob("*.caption"))
