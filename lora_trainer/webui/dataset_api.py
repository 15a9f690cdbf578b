"""REST routes for dataset preparation under /lora-trainer/v1/datasets (same auth as the rest).

Quick operations answer at once; long ones (import, hygiene, tag, caption, upscale,
reg-images) answer {"id": …} and report through GET /lora-trainer/v1/dataset-jobs/{id}.
"""
import base64
import binascii
import os
import shutil
import tempfile

from ..errors import UserError
from .http import answer, found, user_error_response


def _ws():
    from .generation import workspace
    return workspace()


def _body(body) -> dict:
    return dict(body or {})


_INTERNAL = {"progress", "should_stop", "self"}


def _check(method, body: dict, extra=()) -> dict:
    """Refuse unknown keys with a 422 naming the key (instead of a TypeError deep in a job)."""
    import inspect
    params = inspect.signature(method).parameters
    allowed = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY} - _INTERNAL | set(extra)
    for key in body:
        if key not in allowed:
            raise user_error_response(UserError(f"Unknown option {key!r}.", key=key,
                                                fix="Options here: " + ", ".join(sorted(allowed))))
    return body


def _bucket_keys():
    from dataclasses import fields
    from ..prep.hygiene import BucketParams
    return [f.name for f in fields(BucketParams)] + ["train_batch_size"]


def _job(kind: str, name: str, work) -> dict:
    from .prep_jobs import PREP_JOBS
    answer(_ws().open, name)                 # a missing project is a 422 now, not a failed job later
    job = PREP_JOBS.submit(kind, name, work)
    return {"id": job.id, "state": job.state}


# ---------------------------------------------------------------- projects

def list_datasets():
    return answer(_ws().list)


def create_dataset(body: dict):
    return answer(_ws().create, _body(body).get("name", ""))


def get_dataset(name: str):
    return answer(_ws().describe, name)


def dataset_tools():
    """What the operations can use: tagger and captioner names, the WebUI's upscalers."""
    from ..prep.tagger_models import DEFAULT_MODEL, MODELS
    from .generation import upscaler_names
    from ..prep import sentences
    ws = _ws()
    local = [p.name for p in (ws.models_dir / "taggers").glob("*") if p.is_dir()] \
        if (ws.models_dir / "taggers").is_dir() else []
    return {"taggers": list(MODELS), "default_tagger": DEFAULT_MODEL, "local_taggers": local,
            "captioners": list(sentences.MODELS), "upscalers": upscaler_names(),
            "projects_root": str(ws.projects_root), "models_dir": str(ws.models_dir)}


# ---------------------------------------------------------------- import (a job)

def _decode(data, what: str) -> bytes:
    try:
        return base64.b64decode(str(data).split(",", 1)[-1], validate=False)
    except (binascii.Error, ValueError):
        raise user_error_response(UserError(f"{what} is not base64.", key=what,
                                            fix="Send the file's bytes base64-encoded.")) from None


def import_dataset(name: str, body: dict):
    """{"source": folder} | {"files": [{"name", "data"}]} | {"zip": base64, "zip_name"}; "recursive", "frames"."""
    body = _check(lambda *, source=None, files=None, zip=None, zip_name=None, recursive=True, frames="first": 0,
                  _body(body))
    options = {"recursive": bool(body.get("recursive", True)), "frames": body.get("frames", "first")}
    staging = None
    if body.get("files") or body.get("zip"):
        staging = tempfile.mkdtemp(prefix="lora-trainer-upload-")
        if body.get("zip"):
            path = os.path.join(staging, "upload.zip")
            with open(path, "wb") as fp:
                fp.write(_decode(body["zip"], "zip"))
            options["files"] = [(path, str(body.get("zip_name") or "upload.zip"))]
        else:
            pairs = []
            for i, f in enumerate(body["files"]):
                shown = os.path.basename(str((f or {}).get("name") or f"file{i}"))
                path = os.path.join(staging, f"{i:05d}{os.path.splitext(shown)[1]}")
                with open(path, "wb") as fp:
                    fp.write(_decode((f or {}).get("data", ""), "files"))
                pairs.append((path, shown))
            options["files"] = pairs
    else:
        options["source"] = body.get("source")

    def work(progress, should_stop):
        try:
            return _ws().import_images(name, progress=progress, should_stop=should_stop, **options)
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
    return _job("import", name, work)


# ---------------------------------------------------------------- hygiene, tagging, captions (jobs)

def hygiene(name: str, body: dict):
    from ..prep.workspace import Workspace
    body = _check(Workspace.hygiene, _body(body), _bucket_keys())
    return _job("hygiene", name, lambda progress, should_stop: _ws().hygiene(
        name, progress=progress, should_stop=should_stop, **body))


def tag(name: str, body: dict):
    from dataclasses import fields
    from ..prep.tagger import TagOptions
    from ..prep.workspace import KOHYA_TAGGER_ARGS, Workspace
    kohya = ["thresh", "use_rating_tags", "use_rating_tags_as_last_tag", *KOHYA_TAGGER_ARGS]
    body = _check(Workspace.tag, _body(body), [f.name for f in fields(TagOptions)] + kohya)
    return _job("tag", name, lambda progress, should_stop: _ws().tag(
        name, progress=progress, should_stop=should_stop, **body))


def caption(name: str, body: dict):
    from ..prep.workspace import Workspace
    body = _check(Workspace.caption_sentences, _body(body))
    return _job("caption", name, lambda progress, should_stop: _ws().caption_sentences(
        name, progress=progress, should_stop=should_stop, **body))


def upscale(name: str, body: dict):
    from ..prep.workspace import Workspace
    from .generation import upscale_image
    body = _check(Workspace.upscale, _body(body), _bucket_keys())
    return _job("upscale", name, lambda progress, should_stop: _ws().upscale(
        name, upscale_image, progress=progress, should_stop=should_stop, **body))


def reg_images(name: str, body: dict):
    from ..prep.workspace import Workspace
    from .generation import txt2img
    body = _check(Workspace.reg_images, _body(body))
    return _job("reg-images", name, lambda progress, should_stop: _ws().reg_images(
        name, txt2img, progress=progress, should_stop=should_stop, **body))


# ---------------------------------------------------------------- quick edits

def trash(name: str, body: dict):
    return answer(_ws().trash, name, _body(body).get("images", []))


def undo(name: str, body: dict):
    return answer(_ws().undo, name)


def empty_trash(name: str, body: dict):
    return answer(_ws().empty_trash, name)


def captions(name: str, caption_extension: str = ".txt"):
    return answer(_ws().captions, name, caption_extension)


def set_caption(name: str, image: str, body: dict):
    body = _body(body)
    return answer(_ws().set_caption, name, image, body.get("caption", ""), body.get("caption_extension", ".txt"))


def tag_table(name: str, caption_extension: str = ".txt"):
    return answer(_ws().tag_table, name, None, caption_extension)


def filter_images(name: str, body: dict):
    body = _body(body)
    return {"images": answer(_ws().filter, name, body.get("tags", []), body.get("mode", "all"),
                            body.get("caption_extension", ".txt"))}


def edit_tags(name: str, body: dict):
    body = _body(body)
    action = body.pop("action", "")
    return answer(_ws().edit_tags, name, action, **body)


def organise(name: str, body: dict):
    from ..prep.workspace import Workspace
    return answer(_ws().organise, name, **_check(Workspace.organise, _body(body)))


def three_captions(name: str, body: dict):
    from ..prep.workspace import Workspace
    return answer(_ws().three_captions, name, **_check(Workspace.three_captions, _body(body)))


# ---------------------------------------------------------------- jobs

def get_job(job_id: str):
    from .prep_jobs import PREP_JOBS
    return found(PREP_JOBS.get(job_id), job_id, "dataset job")


def stop_job(job_id: str):
    from .prep_jobs import PREP_JOBS
    return found(PREP_JOBS.stop(job_id), job_id, "dataset job")


ROUTES = [
    ("/datasets", list_datasets, ["GET"]),
    ("/datasets", create_dataset, ["POST"]),
    ("/dataset-tools", dataset_tools, ["GET"]),
    ("/dataset-jobs/{job_id}", get_job, ["GET"]),
    ("/dataset-jobs/{job_id}/stop", stop_job, ["POST"]),
    ("/datasets/{name}", get_dataset, ["GET"]),
    ("/datasets/{name}/import", import_dataset, ["POST"]),
    ("/datasets/{name}/hygiene", hygiene, ["POST"]),
    ("/datasets/{name}/tag", tag, ["POST"]),
    ("/datasets/{name}/caption", caption, ["POST"]),
    ("/datasets/{name}/upscale", upscale, ["POST"]),
    ("/datasets/{name}/reg-images", reg_images, ["POST"]),
    ("/datasets/{name}/trash", trash, ["POST"]),
    ("/datasets/{name}/undo", undo, ["POST"]),
    ("/datasets/{name}/empty-trash", empty_trash, ["POST"]),
    ("/datasets/{name}/captions", captions, ["GET"]),
    ("/datasets/{name}/captions/{image}", set_caption, ["PUT"]),
    ("/datasets/{name}/tags", tag_table, ["GET"]),
    ("/datasets/{name}/tags/filter", filter_images, ["POST"]),
    ("/datasets/{name}/tags/edit", edit_tags, ["POST"]),
    ("/datasets/{name}/organise", organise, ["POST"]),
    ("/datasets/{name}/three-captions", three_captions, ["POST"]),
]
