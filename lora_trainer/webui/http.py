"""What the REST modules share (api.py: training, dataset_api.py: dataset preparation): the
prefix, --api-auth, a UserError as a 422, a missing job as a 404, `body: dict` read from the
JSON body, and mounting a route table. Neither route module imports the other.

No `from __future__ import annotations` here: FastAPI reads the annotations of the endpoints and
of auth_dependencies' `check`, and it cannot resolve a string naming a name imported inside a function.
"""
from secrets import compare_digest

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


def user_error_response(e: UserError):
    """The HTTPException to raise for a UserError: 422 with its message, key, path and fix."""
    from fastapi import HTTPException
    return HTTPException(422, detail=e.as_dict())


def answer(fn, *args, **kwargs):
    """fn(*args, **kwargs), a UserError raised as a 422."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        raise user_error_response(e) from None


def found(job, job_id: str, what: str = "job") -> dict:
    """The job as JSON, or a 404 naming the id (training and dataset jobs alike)."""
    from fastapi import HTTPException
    if job is None:
        raise HTTPException(404, detail=f"no {what} {job_id}")
    return job.as_dict()


def endpoint(fn):
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
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs)
    wrapped.__signature__ = sig.replace(parameters=params)
    return wrapped


def mount(app, routes) -> None:
    """Add (path, fn, methods) routes under PREFIX, each behind --api-auth."""
    deps = auth_dependencies()
    for path, fn, methods in routes:
        app.add_api_route(PREFIX + path, endpoint(fn), methods=methods, dependencies=deps)
