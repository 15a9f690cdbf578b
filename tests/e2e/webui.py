"""Boot the assembled A1111 WebUI (see README: contributors assemble it) with this extension.

Each server gets a throw-away --data-dir holding the extension (a link to this checkout),
the tiny checkpoint and an empty models/Lora. It binds 127.0.0.1 only.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))


def default_dest() -> Path:
    """The torch 2.13 harness: $WEBUI_DEST, $DEST, or ~/.cache/sd-webui-harness."""
    for var in ("WEBUI_DEST", "DEST"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return _cache() / "sd-webui-harness"


def torch21_dest() -> Path:
    """The one with A1111's own pins (torch 2.1.2): $WEBUI_DEST_TORCH21 or ~/.cache/sd-webui-harness-torch21."""
    return Path(os.environ.get("WEBUI_DEST_TORCH21") or _cache() / "sd-webui-harness-torch21")


_ACTIVE: list[Path] = []


def harness_dest() -> Path:
    """The environment the e2e tier is running on now (conftest switches it per environment)."""
    return _ACTIVE[-1] if _ACTIVE else default_dest()


def activate(dest: Path) -> None:
    _ACTIVE[:] = [dest]


def missing_reason(dest: Path | None = None) -> str | None:
    dest = dest or harness_dest()
    for rel in ("venv/bin/python", "stable-diffusion-webui/launch.py",
                "stable-diffusion-webui/models/Stable-diffusion/tiny-sd15.safetensors"):
        if not (dest / rel).exists():
            return f"e2e tier skipped: no assembled WebUI at {dest} ({rel} missing; see README 'Assembling the WebUI')"
    return None


def environments() -> dict[str, Path]:
    """Every assembled WebUI the e2e tier runs on, by a name that says its torch."""
    found = {}
    for name, dest in (("torch2.13", default_dest()), ("torch2.1.2", torch21_dest())):
        if missing_reason(dest) is None and dest.resolve() not in {d.resolve() for d in found.values()}:
            found[name] = dest
    return found


_INSTALLER_RAN: set = set()


def run_extension_installer(dest: Path) -> None:
    """What A1111's launch does for an extension (skipped here by --skip-prepare-environment):
    run our install.py with the WebUI's Python, once per environment and session. A no-op when all is there."""
    if dest in _INSTALLER_RAN:
        return
    webui_dir = dest / "stable-diffusion-webui"
    env = dict(os.environ, PYTHONPATH=str(webui_dir))
    done = subprocess.run([str(dest / "venv/bin/python"), str(REPO / "install.py")], cwd=webui_dir, env=env,
                          capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"install.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    _INSTALLER_RAN.add(dest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUI:
    def __init__(self, data_dir: Path, *, ui: bool = False, extra_args=(), model="tiny-sd15", env=None, cpu=True):
        self.dest = harness_dest()
        self.webui_dir = self.dest / "stable-diffusion-webui"
        self.data_dir = Path(data_dir)
        self.ui = ui
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "webui.log"
        self.model = model
        self.extra_args = list(extra_args)
        self.cpu = cpu                     # False: A1111's GPU defaults (fp16 weights), for bench/gpu.py
        self.env = dict(env or {})
        self.auth = None
        self.proc = None
        self._log_lines: list[str] = []

    @property
    def lora_dir(self) -> Path:
        return self.data_dir / "models" / "Lora"

    def prepare(self):
        models = self.data_dir / "models"
        (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        src = self.webui_dir / "models" / "Stable-diffusion"
        for ext in (".safetensors", ".yaml"):
            target = models / "Stable-diffusion" / f"{self.model}{ext}"
            if not target.exists():
                target.symlink_to(src / f"{self.model}{ext}")
        exts = self.data_dir / "extensions"
        exts.mkdir(exist_ok=True)
        link = exts / "sd-webui-lora-trainer"
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        config = self.data_dir / "config.json"
        if not config.exists():
            config.write_text(json.dumps({"show_progress_type": "Approx cheap"}))

    def start(self, timeout=180):
        run_extension_installer(self.dest)
        self.prepare()
        args = [str(self.dest / "venv/bin/python"), "launch.py",
                "--skip-prepare-environment", "--skip-install", "--skip-python-version-check",
                "--skip-torch-cuda-test", "--skip-version-check"]
        if self.cpu:
            args += ["--use-cpu", "all", "--no-half", "--precision", "full"]
        args += ["--api", "--port", str(self.port), "--server-name", "127.0.0.1",
                "--no-download-sd-model", "--do-not-download-clip", "--no-prompt-history",
                "--data-dir", str(self.data_dir),
                "--ckpt", str(self.data_dir / "models/Stable-diffusion" / f"{self.model}.safetensors")]
        if not self.ui:
            args.append("--nowebui")
        args += self.extra_args
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   GRADIO_ANALYTICS_ENABLED="False", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1",
                   HF_HOME=str(self.dest / "hf-home"), LORA_TRAINER_ALLOW_DEBUG="1")
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=self.webui_dir, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self._log_lines.append(line)
                if "Startup time:" in line:
                    ready.set()
            log.close()
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        # UI mode: send nothing before "Startup time:" (A1111's middleware race, harness P6)
        while not ready.is_set():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"WebUI did not start; log: {self.log_path}\n" + "".join(self._log_lines[-40:]))
            time.sleep(0.2)
        while True:
            try:
                self.get("/sdapi/v1/sd-models")
                # the model loads in the background: a tiny txt2img proves it is there
                self.txt2img(steps=1)
                return self
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"WebUI API not ready; log: {self.log_path}\n" + "".join(self._log_lines[-40:]))
                time.sleep(0.5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_text(self) -> str:
        return "".join(self._log_lines)

    # -- http
    def request(self, method, path, body=None, timeout=600, auth=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        auth = auth or self.auth
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, json.loads(payload)
            except ValueError:
                return e.code, payload.decode(errors="replace")

    def get(self, path, **kw):
        status, body = self.request("GET", path, **kw)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def post(self, path, body=None, **kw):
        status, data = self.request("POST", path, body or {}, **kw)
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {data}")
        return data

    def txt2img(self, prompt="a photo of a cat", seed=1234, steps=4, size=64, **extra) -> bytes:
        body = {"prompt": prompt, "seed": seed, "steps": steps, "width": size, "height": size,
                "sampler_name": "Euler", "scheduler": "Automatic", "cfg_scale": 7, "batch_size": 1, **extra}
        out = self.post("/sdapi/v1/txt2img", body)
        return base64.b64decode(out["images"][0])

    def train(self, config: dict, debug=None, timeout=900) -> dict:
        body = dict(config)
        if debug:
            body["debug"] = debug
        job = self.post("/lora-trainer/v1/jobs", body)
        return self.wait_job(job["id"], timeout)

    def wait_job(self, job_id, timeout=900, until=("finished", "stopped", "failed")) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.get(f"/lora-trainer/v1/jobs/{job_id}")
            if job["state"] in until:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not end")


    def dataset_job(self, path, body=None, timeout=900) -> dict:
        """POST a long dataset operation and wait for its job to end."""
        job = self.post(path, body or {})
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.get(f"/lora-trainer/v1/dataset-jobs/{job['id']}")
            if state["state"] in ("finished", "stopped", "failed"):
                return state
            time.sleep(0.2)
        raise TimeoutError(f"dataset job {job['id']} did not end")


def pixels_of(png: bytes):
    import io
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
