"""REST routes for training under /lora-trainer/v1 (register.app_started mounts them with
http.mount, beside dataset_api's; --api-auth is honoured there)."""

from ..config import TrainConfig
from ..errors import UserError
from .http import found, user_error_response


def _config(body: dict, require_dir=True) -> TrainConfig:
    try:
        return TrainConfig.from_dict(body)
    except UserError as e:
        raise user_error_response(e) from None


def scan(body: dict):
    from .models.common import scan_summary
    cfg = _config(body)
    try:
        return scan_summary(cfg)
    except UserError as e:
        raise user_error_response(e) from None


def create_job(body: dict):
    from .jobs import JOBS
    body = dict(body or {})
    debug = body.pop("debug", None) or {}
    cfg = _config(body)
    job = JOBS.submit(cfg, debug=debug)
    return {"id": job.id, "state": job.state}


def list_jobs():
    from .jobs import JOBS
    return [job.as_dict() for job in JOBS.jobs.values()]


def get_job(job_id: str):
    from .jobs import JOBS
    return found(JOBS.get(job_id), job_id)


def stop_job(job_id: str):
    from .jobs import JOBS
    return found(JOBS.stop(job_id, mode="save"), job_id)


def verify(body: dict):
    from modules import call_queue, shared
    from .verify import verify_file
    try:
        with call_queue.queue_lock:     # uses the model: wait for training/generation
            return verify_file(shared.cmd_opts.lora_dir, str((body or {}).get("file", "")),
                               prompt=str((body or {}).get("prompt", "a photo of sks")))
    except UserError as e:
        raise user_error_response(e) from None


def model_info(weights_hash: bool = False):
    """The loaded checkpoint; with weights_hash=true also a sha256 over its whole state dict."""
    from modules import call_queue, shared
    from .models.common import model_family
    from .session import state_dict_sha256
    with call_queue.queue_lock:
        m = shared.sd_model
        info = getattr(m, "sd_checkpoint_info", None)
        out = {"checkpoint": getattr(info, "name", None), "hash": getattr(m, "sd_model_hash", None),
               "family": model_family(m) if m is not None else None}
        if weights_hash and m is not None:
            out["state_dict_sha256"] = state_dict_sha256(m)
    return out


def vae_roundtrip(body: dict):
    """What training sees of an image: encoded to latents exactly as the trainer caches them, then decoded."""
    import base64
    import io
    from fastapi import HTTPException
    from modules import call_queue, shared
    from PIL import Image
    from .models import adapter_for
    try:
        image = Image.open(io.BytesIO(base64.b64decode(str((body or {}).get("image", "")).split(",")[-1]))).convert("RGB")
    except Exception:
        raise HTTPException(422, detail={"message": "image is not a base64 PNG/JPEG.", "key": "image"}) from None
    with call_queue.queue_lock:
        png, stats = adapter_for(shared.sd_model).roundtrip(image)
    return {"image": base64.b64encode(png).decode(), **stats}


ROUTES = [
    ("/scan", scan, ["POST"]),
    ("/jobs", create_job, ["POST"]),
    ("/jobs", list_jobs, ["GET"]),
    ("/jobs/{job_id}", get_job, ["GET"]),
    ("/jobs/{job_id}/stop", stop_job, ["POST"]),
    ("/verify", verify, ["POST"]),
    ("/model", model_info, ["GET"]),
    ("/vae-roundtrip", vae_roundtrip, ["POST"]),
]
