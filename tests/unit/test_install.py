"""install.py: the decision logic as pure functions, and real runs in a fresh venv holding torch and WebUI pins."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_PY = ROOT / "install.py"


def load_install():
    # A unique module name: install.py is a script, not part of the lora_trainer package.
    spec = importlib.util.spec_from_file_location("lora_trainer_install_py", INSTALL_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


inst = load_install()
NEW, OLD = inst.LYCORIS_SPEC_NEW, inst.LYCORIS_SPEC_OLD


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("version, expected", [
    ("2.13.0+cpu", (2, 13, 0)),
    ("2.1.2+cu121", (2, 1, 2)),
    ("2.4.0a0+git3bcc3cd", (2, 4, 0)),
    ("3.2.0.post2", (3, 2, 0)),
    ("1!2.0", (2, 0)),
    ("", ()),
    (None, ()),
    ("garbage", ()),
])
def test_release(version, expected):
    assert inst.release(version) == expected


@pytest.mark.parametrize("torch, spec", [
    ("2.13.0+cpu", NEW),
    ("2.10.0", NEW),  # '2.10' < '2.4' as strings: must compare numerically
    ("2.4.0", NEW),
    ("2.4.0a0+git3bcc3cd", NEW),
    ("2.3.1", OLD),  # Forge
    ("2.1.2+cu121", OLD),  # A1111 1.10 default
    ("1.13.1", OLD),
    ("garbage", OLD),  # unknown: lycoris 3.x works everywhere
])
def test_lycoris_spec_gated_on_torch(torch, spec):
    assert inst.lycoris_spec(torch) == spec


def test_specs_are_the_documented_ranges():
    assert inst.PRODIGY_SPEC == "prodigyopt>=1.1,<2"
    assert NEW == "lycoris-lora>=4.1,<5"
    assert OLD == "lycoris-lora>=3.3,<4.0"


P = inst.Install(inst.PRODIGY_SPEC)
L_NEW, L_OLD = inst.Install(NEW), inst.Install(OLD)
L_OLD_REPLACING = inst.Install(OLD, replaces="lycoris-lora")


@pytest.mark.parametrize("torch, prodigy, lycoris, expected", [
    # everything present: nothing to do
    ("2.13.0+cpu", "1.1.2", "4.1.3", []),
    ("2.1.2+cu121", "1.1.2", "3.4.0", []),
    # missing -> installed, lycoris by the torch gate
    ("2.13.0+cpu", None, None, [P, L_NEW]),
    ("2.1.2+cu121", None, None, [P, L_OLD]),
    ("2.13.0+cpu", None, "4.1.3", [P]),
    ("2.13.0+cpu", "1.1.2", None, [L_NEW]),
    # outside the gate but working: left alone (never replace what works)
    ("2.13.0+cpu", "1.1.2", "3.4.0", []),
    ("2.13.0+cpu", "1.1.2", "2.2.0", []),
    ("2.1.2", "1.1.2", "4.0.0", []),
    ("2.13.0", "1.0", "4.1.3", []),  # old prodigyopt still works
    ("2.13.0", "2.0", "5.0.0", []),  # newer majors: leave them
    # cannot work (custom_op on torch < 2.4): replaced by the 3.x range
    ("2.1.2+cu121", "1.1.2", "4.1.3", [L_OLD_REPLACING]),
    ("2.3.1", None, "4.1.0", [P, L_OLD_REPLACING]),
    ("2.3.1", "1.1.2", "5.0.0", [L_OLD_REPLACING]),
    # no torch: pip would pull torch itself, so no lycoris
    (None, None, None, [P]),
    (None, "1.1.2", "4.1.3", []),
])
def test_plan(torch, prodigy, lycoris, expected):
    assert inst.plan(torch, prodigy, lycoris) == expected


ORT, ORT_GPU, IH = (inst.Install(inst.ONNXRUNTIME_SPEC), inst.Install(inst.ONNXRUNTIME_GPU_SPEC),
                   inst.Install(inst.IMAGEHASH_SPEC))


@pytest.mark.parametrize("onnxruntime, imagehash, torch_cuda, expected", [
    # any one build of onnxruntime counts: a second one would overwrite its files
    ("onnxruntime", "4.3.1", False, []),
    ("onnxruntime-gpu", "4.3.1", False, []),
    ("onnxruntime-directml", "4.3.1", True, []),
    ("onnxruntime-silicon", "4.3.1", False, []),
    ("onnxruntime-openvino", "4.3.1", True, []),
    ("onnxruntime", "3.0", False, []),  # an old imagehash still works: left alone
    # none at all: the build follows torch
    (None, "4.3.1", True, [ORT_GPU]),
    (None, "4.3.1", False, [ORT]),
    (None, None, False, [ORT, IH]),
    (None, None, True, [ORT_GPU, IH]),
    ("onnxruntime-gpu", None, True, [IH]),
])
def test_plan_prep(onnxruntime, imagehash, torch_cuda, expected):
    assert inst.plan_prep(onnxruntime, imagehash, torch_cuda) == expected


def test_prep_specs():
    assert inst.ONNXRUNTIME_SPEC == "onnxruntime>=1.17,<2"  # v3 taggers need >= 1.17
    assert inst.ONNXRUNTIME_GPU_SPEC == "onnxruntime-gpu>=1.17,<2"
    assert inst.IMAGEHASH_SPEC == "imagehash>=4.3,<5"
    assert {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-silicon",
            "onnxruntime-openvino"} <= set(inst.ONNXRUNTIME_DISTS)


@pytest.mark.parametrize("cuda, hip, expected", [
    ("12.1", None, True),
    ("11.8", "", True),
    (None, None, False),      # CPU build
    (None, "6.0.32830", False),  # ROCm
    ("12.1", "6.0", False),   # ROCm, whatever cuda says
    ("", None, False),
])
def test_torch_is_cuda_build(cuda, hip, expected):
    assert inst.torch_is_cuda_build(cuda, hip) is expected


VERSION_PY_CUDA = """from typing import Optional

__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']
__version__ = '2.1.2+cu121'
debug = False
cuda: Optional[str] = '12.1'
git_version = 'a8e7c98cb95ff97bb30a728c6b2a1ce6bff946eb'
hip: Optional[str] = None
"""
VERSION_PY_ROCM = "__version__ = '2.3.1+rocm6.0'\ncuda = None\nhip = '6.0.32830-d62f6a171'\n"


def test_torch_build_field_reads_version_py_as_text():
    assert inst.torch_build_field(VERSION_PY_CUDA, "cuda") == "12.1"
    assert inst.torch_build_field(VERSION_PY_CUDA, "hip") is None
    assert inst.torch_build_field(VERSION_PY_CUDA, "xpu") is None  # absent
    assert inst.torch_build_field(VERSION_PY_ROCM, "cuda") is None
    assert inst.torch_build_field(VERSION_PY_ROCM, "hip") == "6.0.32830-d62f6a171"
    assert "__all__" in VERSION_PY_CUDA and inst.torch_build_field(VERSION_PY_CUDA, "debug") is None


def test_torch_cuda_build_of_this_environment_matches_torch_version():
    torch = inst.installed_version("torch")
    if torch is None:
        pytest.skip("torch is not installed in the test venv")
    expected = subprocess.run([sys.executable, "-c", "import torch; print(bool(torch.version.cuda) and "
                               "not getattr(torch.version, 'hip', None))"],
                              capture_output=True, text=True, timeout=300).stdout.strip()
    assert str(inst.torch_cuda_build(torch)) == expected


def test_installed_onnxruntime_finds_any_build(monkeypatch):
    table = {"onnxruntime-directml": "1.17.3"}
    monkeypatch.setattr(inst, "installed_version", table.get)
    assert inst.installed_onnxruntime() == "onnxruntime-directml"
    table.clear()
    assert inst.installed_onnxruntime() is None


def test_constraint_lines_pin_everything_installed():
    dists = [
        ("torch", "2.13.0+cpu"),
        ("Pillow", "9.5.0"),
        ("Torch", "2.1.2"),  # shadowed by the first one on sys.path
        ("pytorch_lightning", "1.9.4"),
        ("lycoris_lora", "4.1.3"),
        (None, "1.0"),  # broken metadata
        ("weird", "not a version"),  # pip could not parse it
        ("noversion", None),
        ("torchvision", "0.28.0"),
        ("setuptools", "80.10.2"),
    ]
    assert inst.constraint_lines(dists) == [
        "torch==2.13.0+cpu", "pillow==9.5.0", "pytorch-lightning==1.9.4", "lycoris-lora==4.1.3",
        "torchvision==0.28.0", "setuptools==80.10.2",
    ]
    # the package being replaced must not be pinned, or pip could never resolve the new range
    assert "lycoris-lora==4.1.3" not in inst.constraint_lines(dists, exclude=["lycoris-lora"])


def test_constraint_lines_of_this_environment_include_torch():
    lines = inst.constraint_lines(inst.installed_dists())
    torch = inst.installed_version("torch")
    if torch is None:
        pytest.skip("torch is not installed in the test venv")
    assert f"torch=={torch}" in lines  # local version (+cpu, +cu121) included


def test_pip_args_never_upgrade():
    args = inst.pip_args(NEW, "/tmp/x/constraints.txt")
    assert args == ["install", NEW, "-c", "/tmp/x/constraints.txt"]
    assert not {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy"} & set(args)


def test_shell_join_quotes_specs_for_launch_run_pip():
    args = ["install", NEW, "-c", "/tmp/a b/constraints.txt"]
    cmd = inst.shell_join(args)
    assert cmd == 'install "lycoris-lora>=4.1,<5" -c "/tmp/a b/constraints.txt"'
    assert shlex.split(cmd) == args  # what sh -c would see
    assert inst.shell_join(["install", "prodigyopt", "-c", "/tmp/c.txt"]) == "install prodigyopt -c /tmp/c.txt"


def test_installed_version_missing_is_none():
    assert inst.installed_version("no-such-distribution-lora-trainer") is None


# ---------------------------------------------------------------- main() with fakes


def fake_versions(monkeypatch, onnxruntime="onnxruntime", imagehash="4.3.1", torch_cuda=False, **versions):
    """Fake installed versions; the prep packages are present unless a test says None."""
    table = {"torch": versions.get("torch"), "prodigyopt": versions.get("prodigy"),
             "lycoris-lora": versions.get("lycoris"), "imagehash": imagehash}
    table.update({name: "1.20.1" if name == onnxruntime else None for name in inst.ONNXRUNTIME_DISTS})
    monkeypatch.setattr(inst, "installed_version", lambda name: table[name])
    monkeypatch.setattr(inst, "torch_cuda_build", lambda _torch: torch_cuda)


def forbid(*_a, **_k):
    raise AssertionError("must not be called on the no-op path")


def test_main_noop_calls_nothing_and_prints_nothing(monkeypatch, capsys):
    fake_versions(monkeypatch, torch="2.13.0+cpu", prodigy="1.1.2", lycoris="4.1.3")
    for name in ("run_pip", "installed_dists", "webui_launch", "install"):
        monkeypatch.setattr(inst, name, forbid)
    assert inst.main() == 0
    assert capsys.readouterr() == ("", "")


def test_main_installs_missing_with_constraints_in_a_temp_dir(monkeypatch):
    fake_versions(monkeypatch, torch="2.1.2+cu121", prodigy=None, lycoris="4.1.3")
    monkeypatch.setattr(inst, "installed_dists", lambda: [("torch", "2.1.2+cu121"), ("lycoris-lora", "4.1.3"),
                                                          ("numpy", "1.26.2")])
    calls = []

    def record(args, desc):
        path = Path(args[args.index("-c") + 1])
        calls.append((args, desc, path, path.read_text().split()))

    monkeypatch.setattr(inst, "run_pip", record)
    assert inst.main() == 0
    assert [c[0][1] for c in calls] == [inst.PRODIGY_SPEC, OLD]
    for args, desc, path, lines in calls:
        assert ROOT not in path.parents  # never in the extension dir
        assert not path.exists()  # temp dir removed afterwards
        assert "torch==2.1.2+cu121" in lines and "numpy==1.26.2" in lines
        assert desc.startswith(args[1])
    assert "lycoris-lora==4.1.3" in calls[0][3]  # prodigyopt must not move lycoris
    assert "lycoris-lora==4.1.3" not in calls[1][3]  # the one being replaced is free


@pytest.mark.parametrize("torch, torch_cuda, ort_spec", [
    ("2.1.2+cu121", True, inst.ONNXRUNTIME_GPU_SPEC),
    ("2.13.0+cpu", False, inst.ONNXRUNTIME_SPEC),
    (None, True, inst.ONNXRUNTIME_SPEC),  # no torch to follow: the CPU build (it always works)
])
def test_main_installs_one_onnxruntime_and_imagehash(monkeypatch, torch, torch_cuda, ort_spec):
    fake_versions(monkeypatch, torch=torch, prodigy="1.1.2", lycoris="3.4.0", onnxruntime=None,
                  imagehash=None, torch_cuda=torch_cuda)
    monkeypatch.setattr(inst, "installed_dists", lambda: [("numpy", "1.26.2")])
    calls = []
    monkeypatch.setattr(inst, "run_pip", lambda args, desc: calls.append(args))
    assert inst.main() == 0
    assert [a[1] for a in calls] == [ort_spec, inst.IMAGEHASH_SPEC]
    assert all("-c" in a and not {"-U", "--upgrade"} & set(a) for a in calls)


def test_main_with_an_onnxruntime_build_present_installs_no_other(monkeypatch):
    fake_versions(monkeypatch, torch="2.1.2+cu121", prodigy="1.1.2", lycoris="3.4.0",
                  onnxruntime="onnxruntime-directml", torch_cuda=True)
    for name in ("run_pip", "installed_dists", "install"):
        monkeypatch.setattr(inst, name, forbid)
    monkeypatch.setattr(inst, "torch_cuda_build", forbid)  # not even looked at
    assert inst.main() == 0


def test_main_reports_failure_and_continues(monkeypatch, capsys):
    fake_versions(monkeypatch, torch="2.13.0+cpu")
    monkeypatch.setattr(inst, "installed_dists", lambda: [("torch", "2.13.0+cpu")])
    seen = []

    def fail_first(args, desc):
        seen.append(args[1])
        if len(seen) == 1:
            raise RuntimeError("Couldn't install prodigyopt: resolution impossible")

    monkeypatch.setattr(inst, "run_pip", fail_first)
    assert inst.main() == 1
    assert seen == [inst.PRODIGY_SPEC, NEW]
    assert "resolution impossible" in capsys.readouterr().err


def test_main_without_torch_skips_lycoris(monkeypatch, capsys):
    fake_versions(monkeypatch, prodigy="1.1.2")
    monkeypatch.setattr(inst, "run_pip", forbid)
    assert inst.main() == 0
    assert capsys.readouterr().out.count("\n") == 1  # one line saying why


def test_run_pip_uses_webui_launch_when_importable(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("launch")
    fake.run_pip = lambda command, desc: calls.append((command, desc))
    monkeypatch.setitem(sys.modules, "launch", fake)
    log = tmp_path / "pip.log"
    monkeypatch.setenv("LORA_TRAINER_INSTALL_LOG", str(log))
    inst.run_pip(["install", NEW, "-c", "/tmp/c.txt"], "lycoris")
    assert calls == [('install "lycoris-lora>=4.1,<5" -c /tmp/c.txt', "lycoris")]
    assert log.read_text().splitlines() == ['pip install "lycoris-lora>=4.1,<5" -c /tmp/c.txt']


def test_webui_launch_absent_or_unrelated(monkeypatch):
    monkeypatch.setitem(sys.modules, "launch", None)  # makes `import launch` raise ImportError
    assert inst.webui_launch() is None
    monkeypatch.setitem(sys.modules, "launch", types.ModuleType("launch"))  # some other `launch`
    assert inst.webui_launch() is None


# ---------------------------------------------------------------- real run, fresh venv

# A stand-in for the WebUI's venv: torch (the CPU wheel on disk: the machine's pip config finds it for
# `torch==2.13.0`, never the CUDA wheels) and two of A1111 1.10's own pins (requirements_versions.txt).
# numpy 1.26.2 is older than what the newest scipy (imagehash -> scipy) needs (numpy>=1.26.4): an install
# without install.py's constraints upgrades numpy (checked below), so "nothing moved" is a real claim.
TORCH_REQ = "torch==2.13.0"
WEBUI_PINS = {"numpy": "1.26.2", "pillow": "9.5.0"}
HELD_BACK = "numpy"

# A1111's launch_utils.run / run_pip, cut down: one line printed, the pip command run through the shell.
# It also records each command it gets, to show that install.py went through it.
FAKE_LAUNCH_PY = '''\
import os, subprocess, sys

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    if desc is not None:
        print(desc)
    result = subprocess.run(command, shell=True, env=os.environ if custom_env is None else custom_env,
                            encoding="utf8", errors="ignore", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError(f"{errdesc or 'Error running command'}.\\nCommand: {command}\\n"
                           f"Error code: {result.returncode}\\nstdout: {result.stdout}\\nstderr: {result.stderr}")
    return result.stdout or ""


def run_pip(command, desc=None, live=False):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch-calls.log"), "a") as f:
        f.write(command + "\\n")
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}', desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)
'''


def sh(cmd, env, timeout=300, **kw):
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def ok(result):
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def freeze(python, env) -> set:
    """`pip freeze --all` as a set of lines (--all: pip and setuptools too)."""
    return set(ok(sh([python, "-m", "pip", "freeze", "--all"], env)).splitlines())


def pins(lines) -> dict:
    return {inst.normalize(name): version for name, _, version in (line.partition("==") for line in lines)}


@pytest.mark.slow
def test_install_py_in_a_fresh_venv_adds_only_and_holds_the_webui_pins(tmp_path):
    """install.py as A1111 runs it, in a fresh venv holding torch and WebUI pins: the first run only adds
    (the pinned older numpy stays, though an unconstrained install would upgrade it); the second makes no pip call.
    """
    python311 = shutil.which("python3.11")
    if python311 is None:
        pytest.skip("python3.11 not found (torch 2.13.0's wheel is cp311)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    log = tmp_path / "pip-calls.log"
    log.write_text("")
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_CACHE_DIR=str(tmp_path / "pip-cache"),  # nothing cached outside tmp_path
               LORA_TRAINER_INSTALL_LOG=str(log))

    venv = tmp_path / "venv"  # no --system-site-packages: only what this test installs
    ok(sh([python311, "-m", "venv", venv], env))
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip"]
    assert pins(freeze(py, env)).keys() == {"pip", "setuptools"}, "the fresh venv sees other packages"
    if sh([*pip, "index", "versions", "prodigyopt"], env).returncode != 0:
        pytest.skip("no package index reachable (prodigyopt is not on this machine)")

    # The "WebUI": torch + pins, then a webui root with a `launch` module and the extension in extensions/.
    ok(sh([*pip, "install", "-q", TORCH_REQ, *(f"{n}=={v}" for n, v in WEBUI_PINS.items())], env, timeout=1200))
    webui = tmp_path / "webui"
    ext = webui / "extensions" / "sd-webui-lora-trainer"
    ext.mkdir(parents=True)
    shutil.copy(INSTALL_PY, ext / "install.py")
    (webui / "launch.py").write_text(FAKE_LAUNCH_PY)
    launch_log = webui / "launch-calls.log"
    launch_log.write_text("")
    # A1111's run_extension_installer: `"{python}" "{path_installer}"`, PYTHONPATH = webui root, cwd = webui root.
    run_env = {**env, "PYTHONPATH": str(webui)}

    def run_install_py():
        t0 = time.perf_counter()
        result = sh([py, ext / "install.py"], run_env, timeout=1200, cwd=webui)
        return ok(result), result.stderr, time.perf_counter() - t0

    before = freeze(py, env)
    torch = pins(before)["torch"]
    assert torch.startswith("2.13.0") and "+cu" not in torch, torch
    assert {n: pins(before)[n] for n in WEBUI_PINS} == WEBUI_PINS
    specs = [inst.PRODIGY_SPEC, inst.lycoris_spec(torch), inst.ONNXRUNTIME_SPEC, inst.IMAGEHASH_SPEC]
    assert specs[1] == inst.LYCORIS_SPEC_NEW  # torch 2.13 >= 2.4

    # The claim can fail: the same installs without the constraints would upgrade numpy.
    report = tmp_path / "unconstrained.json"
    ok(sh([*pip, "install", "-q", "--dry-run", "--report", report, *specs], env, timeout=900))
    would = {inst.normalize(i["metadata"]["name"]): i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]}
    assert HELD_BACK in would and inst.release(would[HELD_BACK]) > inst.release(WEBUI_PINS[HELD_BACK]), would
    assert freeze(py, env) == before  # a dry run

    # First run: installs what is missing, through launch.run_pip, each call with the constraints.
    out1, err1, t_first = run_install_py()
    calls1 = log.read_text().splitlines()
    assert [shlex.split(c)[2] for c in calls1] == specs, calls1
    for call in calls1:
        words = shlex.split(call)
        assert words[:2] == ["pip", "install"] and "-c" in words and not {"-U", "--upgrade"} & set(words), call
    assert launch_log.read_text().splitlines() == [c[len("pip "):] for c in calls1]  # A1111's path, not the fallback
    assert out1.splitlines() == [f"Installing {s} {inst.DESC_SUFFIX}" for s in specs] and err1 == "", (out1, err1)

    after = freeze(py, env)
    assert not before - after, f"install.py moved or removed installed packages: {sorted(before - after)}"
    added = pins(after - before)
    assert {"prodigyopt", "lycoris-lora", "onnxruntime", "imagehash"} <= added.keys(), sorted(added)
    assert pins(after)[HELD_BACK] == WEBUI_PINS[HELD_BACK]  # held back from would[HELD_BACK]
    assert (4, 1) <= inst.release(added["lycoris-lora"]) < (5,), added["lycoris-lora"]
    assert (1, 1) <= inst.release(added["prodigyopt"]) < (2,)
    assert (1, 17) <= inst.release(added["onnxruntime"]) < (2,)
    assert (4, 3) <= inst.release(added["imagehash"]) < (5,)
    assert len(set(inst.ONNXRUNTIME_DISTS) & set(pins(after))) == 1, "never two onnxruntime builds"
    # No constraints file left in the checkout, no file made by an unquoted '<' or '>' in the shell.
    assert sorted(p.name for p in ext.iterdir() if p.name != "__pycache__") == ["install.py"]
    assert sorted(p.name for p in webui.iterdir() if p.name != "__pycache__") == [
        "extensions", "launch-calls.log", "launch.py"]

    # What was added works with the held-back numpy.
    probe = ("import numpy, prodigyopt, lycoris, onnxruntime, imagehash, PIL.Image as I; "
             "im = I.new('L', (64, 64)); imagehash.phash(im); imagehash.whash(im); print(numpy.__version__)")
    assert ok(sh([py, "-c", probe], env, timeout=600)).split()[-1] == WEBUI_PINS[HELD_BACK]

    # Second run: no pip call at all, nothing printed, nothing moved, fast.
    out2, err2, t_second = run_install_py()
    assert log.read_text().splitlines() == calls1, "the second run called pip"
    assert len(launch_log.read_text().splitlines()) == len(calls1)
    assert (out2, err2) == ("", "")
    assert freeze(py, env) == after
    assert t_second < 5.0, f"second run took {t_second:.2f} s"
    print(f"\ninstall.py: first run {t_first:.1f} s ({len(calls1)} pip calls, added {sorted(added)}), "
          f"{HELD_BACK} held at {WEBUI_PINS[HELD_BACK]} (unconstrained: {would[HELD_BACK]}), "
          f"second run {t_second:.2f} s")
