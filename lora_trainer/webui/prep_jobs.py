"""Dataset-preparation jobs: long Workspace operations run one at a time on a worker thread.

A job reports done/total/message like a training job reports steps. Operations that use the
WebUI's model or upscalers (upscale, regularization images, sentence captions) hold the
WebUI's queue_lock and drive shared.state, so txt2img waits for them and the progress bar
and Interrupt work; the others (import, hygiene, tagging) run beside generation.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from ..errors import UserError
from .jobs import eta_seconds

USES_MODEL = {"upscale", "reg-images", "caption"}


@dataclass
class PrepJob:
    id: str
    kind: str
    dataset: str
    work: object                      # callable(progress, should_stop) -> dict
    state: str = "queued"             # queued | running | finished | stopped | failed
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict | None = None
    error: str | None = None
    error_detail: dict | None = None
    stop_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def eta_s(self) -> float | None:
        return eta_seconds(self.started_at, self.done, self.total) if self.state == "running" else None

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "dataset": self.dataset, "state": self.state,
                "done": self.done, "total": self.total, "message": self.message, "eta_s": self.eta_s,
                "result": self.result, "error": self.error, "error_detail": self.error_detail,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at}


class PrepJobs:
    def __init__(self):
        self.jobs: dict[str, PrepJob] = {}
        self._pending: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, kind: str, dataset: str, work) -> PrepJob:
        with self._lock:
            job = PrepJob(id=f"ds-{int(time.time())}-{next(self._ids)}", kind=kind, dataset=dataset, work=work)
            self.jobs[job.id] = job
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="lora-trainer-prep", daemon=True)
                self._worker.start()
        self._pending.put(job)
        return job

    def get(self, job_id) -> PrepJob | None:
        return self.jobs.get(job_id)

    def stop(self, job_id) -> PrepJob | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.stop_requested = True
            if job.state == "queued":
                job.state, job.finished_at = "stopped", time.time()
        return job

    def shutdown(self, timeout=30.0) -> None:
        for job in list(self.jobs.values()):
            self.stop(job.id)
        self._pending.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        self._worker = None

    def _work(self):
        while True:
            job = self._pending.get()
            if job is None:
                return
            if job.state == "queued":
                self._run(job)

    def _run(self, job: PrepJob) -> None:
        if job.kind in USES_MODEL:
            from modules import call_queue, shared
            with call_queue.queue_lock:
                shared.state.begin(job=f"lora-trainer {job.kind}")
                try:
                    self._execute(job, shared.state)
                finally:
                    shared.state.end()
                    shared.state.interrupted = False
        else:
            self._execute(job, None)

    @staticmethod
    def _execute(job: PrepJob, state) -> None:
        def progress(done, total, message=""):
            job.done, job.total, job.message = int(done), int(total), str(message)
            if state is not None:
                state.textinfo = f"LoRA trainer: {message} {done}/{total}"

        def should_stop():
            return job.stop_requested or bool(state is not None and state.interrupted)

        job.state, job.started_at = "running", time.time()
        try:
            job.result = job.work(progress, should_stop)
            stopped = job.stop_requested or bool(job.result and job.result.get("stopped"))
            job.state = "stopped" if stopped else "finished"
        except UserError as exc:
            job.state, job.error, job.error_detail = "failed", exc.text(), exc.as_dict()
        except Exception as exc:  # a bug: traceback to the log, message to the job
            traceback.print_exc()
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()


PREP_JOBS = PrepJobs()
