"""Pure parts of the WebUI layer that need no WebUI: file resolution for /verify, the job record."""
import os

import pytest

from lora_trainer.errors import UserError
from lora_trainer.webui.jobs import Job, JobQueue
from lora_trainer.webui.verify import resolve_lora_file


def test_verify_only_reads_files_inside_models_lora(tmp_path):
    lora = tmp_path / "Lora"
    lora.mkdir()
    (lora / "ok.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    assert resolve_lora_file(str(lora), "ok") == os.path.realpath(lora / "ok.safetensors")
    for bad in ("../secret.safetensors", "/etc/passwd", "", "missing.safetensors"):
        with pytest.raises(UserError):
            resolve_lora_file(str(lora), bad)
    os.symlink(tmp_path / "secret.safetensors", lora / "link.safetensors")
    with pytest.raises(UserError):
        resolve_lora_file(str(lora), "link.safetensors")


def test_queued_job_can_be_stopped_before_it_runs():
    q = JobQueue()
    job = q._new_job(config=object(), task_id=None)
    assert job.state == "queued" and job.task_id.startswith("task(")
    q.stop(job.id)
    assert job.state == "stopped" and job.as_dict()["state"] == "stopped"


def test_job_record_has_the_documented_fields():
    d = Job(id="x", config=object(), task_id="task(x)").as_dict()
    assert {"state", "step", "total_steps", "epoch", "loss", "eta_s", "files", "error"} <= set(d)


def test_dataset_jobs_report_progress_results_and_user_errors():
    import time
    from lora_trainer.webui.prep_jobs import PrepJobs

    jobs = PrepJobs()

    def work(progress, should_stop):
        for i in range(3):
            progress(i + 1, 3, "checking")
        return {"checked": 3}

    def bad(progress, should_stop):
        raise UserError("The folder to import from does not exist.", path="/nope", fix="Check the path.")

    ok, failed = jobs.submit("hygiene", "set", work), jobs.submit("import", "set", bad)
    deadline = time.time() + 10
    while time.time() < deadline and {ok.state, failed.state} & {"queued", "running"}:
        time.sleep(0.02)
    assert ok.as_dict()["state"] == "finished" and ok.result == {"checked": 3} and (ok.done, ok.total) == (3, 3)
    assert failed.state == "failed" and failed.error_detail["path"] == "/nope" and "Check the path" in failed.error
    jobs.shutdown()


def test_training_layout_makes_transformer_outputs_contiguous_and_leaves_no_hook(monkeypatch):
    """While training on CPU every SpatialTransformer output is plain NCHW (no per-call conv weight
    re-layout); afterwards the model has no hook left and gives channels-last views again."""
    import sys
    import types
    import torch
    from lora_trainer.webui.session import contiguous_transformer_outputs

    class SpatialTransformer(torch.nn.Module):          # returns a channels-last view, like A1111's patch
        def forward(self, x):
            return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)

    unet = torch.nn.Sequential(SpatialTransformer(), torch.nn.Conv2d(4, 4, 3, padding=1), SpatialTransformer())
    sd_model = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet))
    for device, contiguous in (("cpu", True), ("cuda", False)):
        monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(
            devices=types.SimpleNamespace(device=torch.device(device))))
        monkeypatch.setitem(sys.modules, "modules.devices", sys.modules["modules"].devices)
        x = torch.randn(1, 4, 6, 6)
        with contiguous_transformer_outputs(sd_model):
            assert unet[0](x).is_contiguous() is contiguous
            assert torch.equal(unet(x), unet[2](unet[1](unet[0](x))))
        assert not unet[0](x).is_contiguous()
        assert all(not m._forward_hooks for m in unet.modules())


@pytest.mark.parametrize("attrs, family", [({"is_sd2": True}, "SD2"), ({"is_sdxl": True}, "SDXL"),
                                           ({"conditioner": object()}, "SDXL"), ({"is_sd3": True}, "SD3")])
def test_families_without_an_adapter_are_refused_with_a_fix(attrs, family):
    from lora_trainer.webui.models import ADAPTERS, adapter_for
    from lora_trainer.webui.models.sd1 import SD1Model
    assert ADAPTERS == {"sd1": SD1Model}
    with pytest.raises(UserError, match=f"is {family}; this version trains SD1.x models only") as info:
        adapter_for(type("Loaded", (), attrs)())
    assert "SD1.x checkpoint" in info.value.fix
