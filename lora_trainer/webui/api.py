"""REST routes under /lora-trainer/v1 (mounted at app start; honour --api-auth)."""

from secrets import compare_digest

from ..config import TrainConfig
from ..errors import UserError

PREFIX = "/lora-trainer/v1"


def auth_dependencies():
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials
    from modules import shared
    if not shared.cmd_opts.api_auth:
        return []
    creds = dict(c.split(":", 1) for c in shared.cmd_opts.api_auth.split(",") if ":" in c)

    def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        expected = creds.get(credentials.username)
        if expected is not None and compare_digest(credentials.password, expected):
            return True
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
    return [Depends(check)]


def _user_error(e: UserError):
    from fastapi import HTTPException
    return HTTPException(422, detail=e.as_dict())


def _config(body: dict, require_dir=True) -> TrainConfig:
    try:
        return TrainConfig.from_dict(body)
    except UserError as e:
        raise _user_error(e) from None


def scan(body: dict):
    from modules import call_queue, shared
    from ..dataset.scan import scan_dataset
    from .models.common import precision_report
    cfg = _config(body)
    try:
        summary = scan_dataset(cfg).summary()
    except UserError as e:
        raise _user_error(e) from None
    if shared.sd_model is not None:
        with call_queue.queue_lock:     # reads the model's dtypes: not while it is being swapped
            summary["precision"] = precision_report(cfg, shared.sd_model)
    return summary


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


def found(job, job_id: str, what: str = "job") -> dict:
    """The job as JSON, or a 404 naming the id (training and dataset jobs alike)."""
    from fastapi import HTTPException
    if job is None:
        raise HTTPException(404, detail=f"no {what} {job_id}")
    return job.as_dict()


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
        raise _user_error(e) from None


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


def mount(app) -> None:
    from .dataset_api import ROUTES as DATASET_ROUTES
    deps = auth_dependencies()
    routes = [
        ("/scan", scan, ["POST"]),
        ("/jobs", create_job, ["POST"]),
        ("/jobs", list_jobs, ["GET"]),
        ("/jobs/{job_id}", get_job, ["GET"]),
        ("/jobs/{job_id}/stop", stop_job, ["POST"]),
        ("/verify", verify, ["POST"]),
        ("/model", model_info, ["GET"]),
        ("/vae-roundtrip", vae_roundtrip, ["POST"]),
    ] + DATASET_ROUTES
    for path, fn, methods in routes:
        app.add_api_route(PREFIX + path, _endpoint(fn), methods=methods, dependencies=deps)


def _endpoint(fn):
    """fn itself, with its `body: dict` parameter read from the JSON body (default {})."""
    import functools
    import inspect
    from fastapi import Body
    sig = inspect.signature(fn)
    if "body" not in sig.parameters:
        return fn
    params = [p.replace(default=Body(default={})) if name == "body" else p
              for name, p in sig.parameters.items()]

    @functools.wraps(fn)
    def endpoint(*args, **kwargs):
        return fn(*args, **kwargs)
    endpoint.__signature__ = sig.replace(parameters=params)
    return endpoint
