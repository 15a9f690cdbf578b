"""mixed_precision in the real WebUI, on each environment's torch (A1111's own 2.1.2 included)."""
from __future__ import annotations

import pytest
from safetensors import safe_open

from .datasets import TINY

TINY = {**TINY, "learning_rate": 1e-2}


def test_scan_reports_the_webuis_dtypes_and_the_precision_that_would_run(webui, dataset):
    report = webui.post("/lora-trainer/v1/scan", {"train_data_dir": str(dataset), **TINY})["precision"]
    assert report["device"] == "cpu" and report["no_half"] is True and report["upcast_sampling"] is False
    assert report["unet_dtype"] == report["vae_dtype"] == report["text_encoder_dtype"] == "float32"
    assert report["fp8_storage"] is False
    assert (report["requested"], report["mixed_precision"], report["error"]) == ("auto", "no", None)
    bf16 = webui.post("/lora-trainer/v1/scan", {"train_data_dir": str(dataset), **TINY, "mixed_precision": "bf16"})
    assert bf16["precision"]["compute_dtype"] == "bfloat16" and bf16["precision"]["master_weights"] == "float32"


def _train_and_verify(webui, dataset, name, **cfg):
    job = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_steps": 30, "save_precision": "float",
                       "output_name": name, "overwrite": True, **cfg})
    if job["state"] != "finished":
        return job, None
    return job, webui.post("/lora-trainer/v1/verify", {"file": f"{name}.safetensors"})


def test_bf16_trains_and_the_webui_applies_the_file_exactly(webui, dataset):
    job, report = _train_and_verify(webui, dataset, "precision_bf16", mixed_precision="bf16")
    assert job["state"] == "finished" and job["mixed_precision"] == "bf16", job
    assert job["eval_loss_end"] < job["eval_loss_start"]
    with safe_open(str(webui.lora_dir / "precision_bf16.safetensors"), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"
    assert report["lora_effect"] > 1e-3 and report["lora_effect_cond"] > 1e-3
    assert report["max_abs_diff"] <= 1e-5 and report["max_abs_diff_cond"] <= 1e-5 and report["unmatched_keys"] == []


def test_full_bf16_trains(webui, dataset):
    job, report = _train_and_verify(webui, dataset, "precision_full_bf16", mixed_precision="bf16", full_bf16=True,
                                    network_train_unet_only=True)
    assert job["state"] == "finished", job
    assert report["lora_effect"] > 1e-3 and report["max_abs_diff"] <= 1e-5


def test_fp16_runs_where_torch_can_autocast_it_on_cpu_and_is_refused_clearly_where_not(webui, dataset,
                                                                                      webui_environment):
    scan = webui.post("/lora-trainer/v1/scan", {"train_data_dir": str(dataset), **TINY, "mixed_precision": "fp16"})
    job, report = _train_and_verify(webui, dataset, "precision_fp16", mixed_precision="fp16")
    if webui_environment == "torch2.1.2":       # CPU autocast is bf16-only there
        assert scan["precision"]["error"]["key"] == "mixed_precision", scan["precision"]
        assert job["state"] == "failed" and "cannot autocast fp16" in job["error"] and "bf16" in job["error"], job
        assert not (webui.lora_dir / "precision_fp16.safetensors").exists()
    else:
        assert scan["precision"]["loss_scaling"] is True
        assert job["state"] == "finished" and job["mixed_precision"] == "fp16", job
        assert report["max_abs_diff"] <= 1e-5 and report["lora_effect"] > 1e-3


def test_full_fp16_is_refused_before_the_run(webui, dataset):
    status, body = webui.request("POST", "/lora-trainer/v1/jobs",
                                 {"train_data_dir": str(dataset), **TINY, "full_fp16": True})
    assert status == 422 and body["detail"]["key"] == "full_fp16" and "full_bf16" in body["detail"]["fix"]
