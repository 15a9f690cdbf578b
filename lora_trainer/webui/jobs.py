"""Training jobs: an in-memory queue whose runs are real WebUI jobs.

Each run holds the WebUI's queue_lock (so txt2img waits for it and no checkpoint/VAE switch
can happen mid-run) and drives shared.state (so the progress bar, ETA and Interrupt work).
Only this module knows shared.state.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from ..errors import TrainingStopped, UserError


def eta_seconds(started_at: float | None, done: int, total: int) -> float | None:
    """Seconds left at the average pace so far (training steps or dataset files alike)."""
    if not done or not total or not started_at:
        return None
    return round((time.time() - started_at) / done * (total - done), 1)


@dataclass
class Job:
    id: str
    config: object
    task_id: str
    state: str = "queued"            # queued | running | finished | stopped | failed
    phase: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    losses: list = field(default_factory=list)
    files: list = field(default_factory=list)
    error: str | None = None
    problems: list = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stop_mode: str | None = None     # "save" (Stop & Save) | "abort"
    fail_at_step: int | None = None  # test hooks, honoured only with LORA_TRAINER_ALLOW_DEBUG=1:
    keep_merged_loras: bool = False  # skip the restore of a merged Lora (proves the hand-back test can fail)
    eval_loss_start: float | None = None   # loss on fixed noise/timesteps before and after training
    eval_loss_end: float | None = None
    step_seconds: list = field(default_factory=list)
    mixed_precision: str | None = None     # what ran: no | fp16 | bf16
    skipped_steps: int = 0                 # fp16 steps the loss scaler skipped

    @property
    def eta_s(self) -> float | None:
        return eta_seconds(self.started_at, self.step, self.total_steps) if self.state == "running" else None

    def as_dict(self) -> dict:
        return {"id": self.id, "state": self.state, "phase": self.phase, "step": self.step,
                "total_steps": self.total_steps, "epoch": self.epoch, "loss": self.loss, "eta_s": self.eta_s,
                "files": list(self.files), "error": self.error, "problems": self.problems,
                "output_name": getattr(self.config, "output_name", ""), "losses": self.losses[-500:],
                "eval_loss_start": self.eval_loss_start, "eval_loss_end": self.eval_loss_end,
                "step_seconds": [round(s, 4) for s in self.step_seconds[-500:]],
                "mixed_precision": self.mixed_precision, "skipped_steps": self.skipped_steps,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at}


class JobQueue:
    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self._pending: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.current: Job | None = None
        self._closing = False

    # -- public
    def submit(self, config, debug=None, task_id=None) -> Job:
        job = self._new_job(config, task_id)
        debug = debug or {}
        if debug and os.environ.get("LORA_TRAINER_ALLOW_DEBUG") == "1":
            job.fail_at_step = None if debug.get("fail_at_step") is None else int(debug["fail_at_step"])
            job.keep_merged_loras = bool(debug.get("keep_merged_loras"))
        self._pending.put(job)
        self._ensure_worker()
        return job

    def run_here(self, config, task_id) -> Job:
        """For the tab's Start: the caller (wrap_gradio_gpu_call) already holds queue_lock."""
        job = self._new_job(config, task_id)
        self._execute(job)
        return job

    def get(self, job_id) -> Job | None:
        return self.jobs.get(job_id)

    def stop(self, job_id, mode="save") -> Job | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state == "queued":
            job.state, job.finished_at = "stopped", time.time()
        elif job.state == "running":
            job.stop_mode = mode
        return job

    def stop_current(self, mode="save") -> Job | None:
        return self.stop(self.current.id, mode) if self.current else None

    def shutdown(self, timeout=30.0) -> None:
        """on_script_unloaded: Reload UI does not wait for us, so stop and join here."""
        self._closing = True
        for job in list(self.jobs.values()):
            self.stop(job.id, mode="abort")
        self._pending.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        # the module outlives a Reload UI: be ready for the next app's jobs
        self._worker, self._closing = None, False

    # -- internals
    def _new_job(self, config, task_id) -> Job:
        with self._lock:
            n = next(self._ids)
            job_id = f"lt-{int(time.time())}-{n}"
            job = Job(id=job_id, config=config, task_id=task_id or f"task({job_id})")
            self.jobs[job_id] = job
        return job

    def _ensure_worker(self):
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="lora-trainer-jobs", daemon=True)
                self._worker.start()

    def _work(self):
        from modules import call_queue, progress, shared
        while not self._closing:
            job = self._pending.get()
            if job is None:
                return
            if job.state != "queued":
                continue
            progress.add_task_to_queue(job.task_id)
            with call_queue.queue_lock:
                shared.state.begin(job=job.task_id)
                progress.start_task(job.task_id)
                try:
                    self._execute(job)
                finally:
                    progress.finish_task(job.task_id)
                    shared.state.end()
                    shared.state.interrupted = False
                    shared.state.skipped = False
                    shared.state.job_count = 0

    def _execute(self, job: Job) -> None:
        """Runs one job; the caller holds queue_lock and has called shared.state.begin()."""
        from modules import shared
        from ..run import run_training
        from .models import adapter_for
        from .session import borrowed_model, refresh_lora_list, release_memory
        if job.state != "queued":
            return
        self.current = job
        job.state, job.started_at = "running", time.time()
        shared.state.job = "LoRA training"
        shared.state.textinfo = "LoRA trainer: preparing"

        def on_progress(step, total_steps, epoch, loss, phase):
            job.step, job.total_steps, job.epoch, job.phase = step, total_steps, epoch, phase
            if loss is not None:
                job.loss = loss
                if not job.losses or job.losses[-1][0] != step:
                    job.losses.append([step, round(float(loss), 6)])
            shared.state.job_count = max(1, total_steps)
            shared.state.job_no = step
            shared.state.sampling_steps = 0
            loss_text = f" · loss {loss:.4f}" if loss is not None else ""
            shared.state.textinfo = f"LoRA trainer: {phase} · step {step}/{total_steps} · epoch {epoch}{loss_text}"

        def stop_requested():
            if shared.state.interrupted:
                return "abort"
            return job.stop_mode

        state, error = "failed", None
        try:
            with borrowed_model(job.config.train_text_encoder, restore_merged=not job.keep_merged_loras) as sd_model:
                model = adapter_for(sd_model, job.config.clip_skip)
                result = run_training(job.config, model, shared.cmd_opts.lora_dir, on_progress, stop_requested,
                                      on_file=job.files.append, fail_at_step=job.fail_at_step,
                                      on_problems=lambda p: job.problems.extend(p))
                result.network = None      # saved already: let the hand-back free its memory
            state = result.state
            job.eval_loss_start, job.eval_loss_end = result.eval_loss_start, result.eval_loss_end
            job.step_seconds = result.step_seconds
            job.mixed_precision, job.skipped_steps = result.mixed_precision, result.skipped_steps
        except TrainingStopped:
            state = "stopped"
        except UserError as e:
            error = e.text()
        except Exception as e:  # a bug: keep the traceback in the log, the message in the job
            traceback.print_exc()
            error = f"{type(e).__name__}: {e}"
        finally:
            self.current = None
            try:
                refresh_lora_list()
            except Exception:  # the list refreshes again on the Lora tab's button; the run's outcome stands
                traceback.print_exc()
            release_memory()   # again: after a failure the traceback held the run's tensors until here
            # the end state last: a client that sees it finds the new files in /sdapi/v1/loras
            job.error, job.finished_at, job.state = error, time.time(), state


JOBS = JobQueue()
