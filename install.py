"""Installs the packages sd-webui-lora-trainer needs that the WebUI lacks.

A1111 runs this file as a subprocess at every launch (PYTHONPATH = webui root, so
`import launch` works). It must therefore be a fast no-op when everything is present,
and it must never move a package the WebUI already has: every pip call carries a
constraints file pinning the currently installed version of every distribution.

Environment:
  LORA_TRAINER_INSTALL_LOG=<file>  append one line per pip invocation (used by tests).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
import tempfile
from typing import Iterable, List, NamedTuple, Optional, Tuple

DESC_SUFFIX = "for sd-webui-lora-trainer"
PRODIGY = "prodigyopt"
LYCORIS = "lycoris-lora"
PRODIGY_SPEC = "prodigyopt>=1.1,<2"
# lycoris-lora >= 4.1 runs torch.library.custom_op at import time: that needs torch >= 2.4.
LYCORIS_SPEC_NEW = "lycoris-lora>=4.1,<5"
LYCORIS_SPEC_OLD = "lycoris-lora>=3.3,<4.0"  # a 3.x release: no kernels layer at all
TORCH_CUSTOM_OP = (2, 4)
LYCORIS_CUSTOM_OP = (4, 1)
# Dataset preparation: the WD14 tagger (v3 models need onnxruntime >= 1.17) and near-duplicate hashes.
ONNXRUNTIME_SPEC = "onnxruntime>=1.17,<2"
ONNXRUNTIME_GPU_SPEC = "onnxruntime-gpu>=1.17,<2"
IMAGEHASH = "imagehash"
IMAGEHASH_SPEC = "imagehash>=4.3,<5"
# Every build ships the same `onnxruntime` package and they overwrite each other's files: any one
# of them counts as present, and we never add a second.
ONNXRUNTIME_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-silicon",
                     "onnxruntime-openvino", "onnxruntime-rocm", "onnxruntime-training")

# PEP 440, loosely: a constraint line pip cannot parse would fail the whole install.
_PEP440 = re.compile(
    r"^v?(\d+!)?\d+(\.\d+)*"
    r"([-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?\d*)?"
    r"(-\d+|[-_.]?(post|rev|r)[-_.]?\d*)?"
    r"([-_.]?dev[-_.]?\d*)?"
    r"(\+[a-z0-9]+([-_.][a-z0-9]+)*)?$",
    re.IGNORECASE,
)


class Install(NamedTuple):
    spec: str
    replaces: Optional[str] = None  # installed dist this install may replace (left out of the constraints)


def normalize(name: str) -> str:
    """PEP 503 name, so 'Lycoris_Lora' and 'lycoris-lora' compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: Optional[str]) -> Tuple[int, ...]:
    """Leading numeric release of a version: '2.13.0+cpu' -> (2, 13, 0); () if none.

    Tuples, not strings: '2.13' < '2.4' as strings.
    """
    m = re.match(r"\s*v?(?:\d+!)?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def torch_has_custom_op(torch_version: str) -> bool:
    # An unparsable torch version counts as old: lycoris 3.x works on old and new torch.
    return release(torch_version) >= TORCH_CUSTOM_OP


def lycoris_spec(torch_version: str) -> str:
    return LYCORIS_SPEC_NEW if torch_has_custom_op(torch_version) else LYCORIS_SPEC_OLD


def lycoris_can_work(lycoris_version: str, torch_version: str) -> bool:
    """Only lycoris >= 4.1 on torch < 2.4 is known broken; any other installed version is left alone."""
    return release(lycoris_version) < LYCORIS_CUSTOM_OP or torch_has_custom_op(torch_version)


def plan(torch: Optional[str], prodigy: Optional[str], lycoris: Optional[str]) -> List[Install]:
    """Installed versions (None = missing) -> what to install. Pure: no I/O."""
    todo = []
    if prodigy is None:
        todo.append(Install(PRODIGY_SPEC))
    # Without torch, pip would pull torch itself (GBs, maybe the wrong build): leave lycoris to the user.
    if torch is not None:
        if lycoris is None:
            todo.append(Install(lycoris_spec(torch)))
        elif not lycoris_can_work(lycoris, torch):
            todo.append(Install(lycoris_spec(torch), replaces=LYCORIS))
    return todo


def onnxruntime_spec(torch_cuda: bool) -> str:
    return ONNXRUNTIME_GPU_SPEC if torch_cuda else ONNXRUNTIME_SPEC


def plan_prep(onnxruntime: Optional[str], imagehash: Optional[str], torch_cuda: bool) -> List[Install]:
    """Installed onnxruntime build (a dist name, None = none) and imagehash version -> what to install.

    Pure: no I/O. torch_cuda: the WebUI's torch is a CUDA (not ROCm) build, so the GPU build is wanted.
    """
    todo = []
    if onnxruntime is None:
        todo.append(Install(onnxruntime_spec(torch_cuda)))
    if imagehash is None:
        todo.append(Install(IMAGEHASH_SPEC))
    return todo


def torch_is_cuda_build(cuda: Optional[str], hip: Optional[str]) -> bool:
    """torch.version.cuda / .hip -> True for an NVIDIA build (a ROCm build is not one)."""
    return bool(cuda) and not hip


def torch_build_field(version_py: str, name: str) -> Optional[str]:
    """`cuda = '12.1'` (or `cuda: Optional[str] = None`) in torch/version.py's text -> '12.1' / None."""
    m = re.search(rf"^{name}\s*(?::[^=\n]*)?=\s*['\"]([^'\"]*)['\"]", version_py, re.MULTILINE)
    return m.group(1) if m else None


def torch_cuda_build(torch_version: Optional[str]) -> bool:
    """Whether the installed torch is a CUDA build, from torch/version.py read as text.

    Not `import torch` (seconds); only called when onnxruntime is missing. Without the file, the
    local version tag decides ('+cu121'); anything unknown counts as CPU (that build always works).
    """
    try:
        text = md.distribution("torch").locate_file("torch/version.py").read_text(encoding="utf-8")
    except (md.PackageNotFoundError, OSError, UnicodeDecodeError):
        local = (torch_version or "").partition("+")[2].lower()
        return local.startswith("cu")
    return torch_is_cuda_build(torch_build_field(text, "cuda"), torch_build_field(text, "hip"))


def installed_onnxruntime() -> Optional[str]:
    """The first onnxruntime build installed (a dist name), or None."""
    return next((n for n in ONNXRUNTIME_DISTS if installed_version(n) is not None), None)


def installed_version(name: str) -> Optional[str]:
    """Version from the installed metadata only; importing torch would cost seconds at every launch."""
    for candidate in dict.fromkeys((name, name.replace("-", "_"))):
        try:
            return md.version(candidate)
        except md.PackageNotFoundError:
            pass
    return None


def constraint_lines(dists: Iterable[Tuple[Optional[str], Optional[str]]], exclude: Iterable[str] = ()) -> List[str]:
    """(name, version) of installed dists -> 'name==version' lines, first one on sys.path wins."""
    skip = {normalize(n) for n in exclude}
    seen, lines = set(), []
    for name, version in dists:
        if not name or not version or not _PEP440.match(version.strip()):
            continue
        key = normalize(name)
        if key in seen or key in skip:
            continue
        seen.add(key)
        lines.append(f"{key}=={version.strip()}")
    return lines


def installed_dists() -> List[Tuple[Optional[str], Optional[str]]]:
    return [(d.metadata["Name"], d.version) for d in md.distributions()]


def pip_args(spec: str, constraints_path: str) -> List[str]:
    # Never -U/--upgrade: with the constraints, pip fails rather than move an installed package.
    return ["install", spec, "-c", constraints_path]


def shell_join(args: Iterable[str]) -> str:
    """launch.run_pip runs a shell command; '<' and '>' in specs must be quoted (double quotes: sh and cmd)."""
    return " ".join(f'"{a}"' if re.search(r"[^\w@%+=:,./-]", a) else a for a in args)


def log_pip_call(args: List[str]) -> None:
    path = os.environ.get("LORA_TRAINER_INSTALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write("pip " + shell_join(args) + "\n")


def webui_launch():
    """A1111's launch module (honours --skip-install and INDEX_URL), or None outside the WebUI."""
    try:
        import launch  # noqa: PLC0415 - only importable with PYTHONPATH=webui root
    except ImportError:
        return None
    return launch if callable(getattr(launch, "run_pip", None)) else None


def run_pip(args: List[str], desc: str) -> None:
    """Runs pip like launch.run_pip (prints one line, output only on failure); raises RuntimeError on failure."""
    log_pip_call(args)
    launch = webui_launch()
    if launch is not None:
        launch.run_pip(shell_join(args), desc)
        return
    import subprocess  # noqa: PLC0415 - not needed on the no-op path

    cmd = [sys.executable, "-m", "pip", *args, "--prefer-binary"]
    if os.environ.get("INDEX_URL"):
        cmd += ["--index-url", os.environ["INDEX_URL"]]
    print(f"Installing {desc}", flush=True)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"Couldn't install {desc}: {' '.join(cmd)} exited {result.returncode}\n{result.stdout}")


def install(item: Install, workdir: str) -> None:
    # Built per install, from what is installed now, so that an earlier install is pinned too.
    path = os.path.join(workdir, "constraints.txt")
    lines = constraint_lines(installed_dists(), exclude=[item.replaces] if item.replaces else [])
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    run_pip(pip_args(item.spec, path), f"{item.spec} {DESC_SUFFIX}")


def main() -> int:
    torch, lycoris = installed_version("torch"), installed_version(LYCORIS)
    todo = plan(torch, installed_version(PRODIGY), lycoris)
    onnxruntime = installed_onnxruntime()
    torch_cuda = onnxruntime is None and torch is not None and torch_cuda_build(torch)
    todo += plan_prep(onnxruntime, installed_version(IMAGEHASH), torch_cuda)
    if torch is None and lycoris is None:
        print(f"torch is not installed: not installing {LYCORIS} {DESC_SUFFIX}")
    if not todo:
        return 0
    failed = 0
    # Temp dir, not the extension dir: the file is per run and must not land in the user's checkout.
    with tempfile.TemporaryDirectory(prefix="lora-trainer-install-") as workdir:
        for item in todo:
            try:
                install(item, workdir)
            except RuntimeError as e:
                failed += 1
                # Usually pip refusing to move a pinned (installed) package: report it, keep the WebUI booting.
                print(f"{e}\nsd-webui-lora-trainer: {item.spec} was not installed (installed packages are pinned "
                      "to their current versions, so pip fails rather than change one).", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
