"""install.py: the decision logic as pure functions, and one real run in a venv layered over the WebUI's."""
from __future__ import annotations

import importlib.util
import os
import shlex
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


# ---------------------------------------------------------------- real run, layered venv


def webui_dest() -> Path:
    env = os.environ
    if env.get("WEBUI_DEST"):
        return Path(env["WEBUI_DEST"])
    if env.get("DEST"):
        return Path(env["DEST"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sd-webui-harness"


def sh(cmd, env, timeout=120, **kw):
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw)


def ok(result):
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def purelib(python, env) -> Path:
    return Path(ok(sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env)).strip())


def freeze(python, env) -> dict:
    # Plain `pip freeze` walks sys.path, so with the .pth it lists both layers; --all keeps pip/setuptools.
    out = ok(sh([python, "-m", "pip", "freeze", "--all"], env))
    pins = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        pins[inst.normalize(name) if sep else line] = version if sep else line
    return pins


@pytest.mark.slow
def test_install_py_twice_in_a_venv_layered_over_the_webui(tmp_path):
    """Only additions, in the tmp layer; the lycoris range matches torch; a second run is a no-op."""
    dest_py = webui_dest() / "venv" / "bin" / "python"
    if not dest_py.exists():
        pytest.skip(f"assembled WebUI venv not found: {dest_py} (set WEBUI_DEST or DEST)")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    log = tmp_path / "pip-calls.log"
    log.write_text("")
    env.update(PYTHONDONTWRITEBYTECODE="1",  # importing the WebUI's packages must not write into its venv
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", LORA_TRAINER_INSTALL_LOG=str(log))

    # The layer: a venv without pip of its own (the WebUI's pip comes in through the .pth). New installs land
    # in sys.prefix = the tmp venv, and pip never uninstalls outside sys.prefix, so the WebUI venv is safe.
    venv = tmp_path / "venv"
    ok(sh([dest_py, "-m", "venv", "--without-pip", venv], env))
    py = venv / "bin" / "python"
    dest_sp, tmp_sp = purelib(dest_py, env), purelib(py, env)
    assert dest_sp != tmp_sp
    (tmp_sp / "_sd_webui_layer.pth").write_text(f"{dest_sp}\n")
    dest_listing = sorted(os.listdir(dest_sp))

    # install.py must take its fallback: no `launch` importable from the extension root
    assert ok(sh([py, "-c", "import importlib.util as u; print(u.find_spec('launch'))"], env, cwd=ROOT)) == "None\n"

    freeze1 = freeze(py, env)
    assert "torch" in freeze1, "the .pth layer did not expose the WebUI's packages"
    missing = [n for n in ("prodigyopt", "lycoris-lora", "imagehash") if n not in freeze1]
    if not set(inst.ONNXRUNTIME_DISTS) & set(freeze1):
        missing.append("onnxruntime")  # or onnxruntime-gpu, by the WebUI's torch

    t0 = time.perf_counter()
    run1 = sh([py, INSTALL_PY], env, timeout=900, cwd=ROOT)
    t_first = time.perf_counter() - t0
    ok(run1)
    calls1 = log.read_text().splitlines()
    assert len(calls1) == len(missing), calls1
    assert run1.stdout.splitlines() == [line for line in run1.stdout.splitlines() if line.startswith("Installing ")]
    assert len(run1.stdout.splitlines()) == len(missing), run1.stdout
    for call in calls1:
        words = shlex.split(call)
        assert "-c" in words and not {"-U", "--upgrade"} & set(words), call

    freeze2 = freeze(py, env)
    changed = {n: (v, freeze2.get(n)) for n, v in freeze1.items() if freeze2.get(n) != v}
    assert not changed, f"install.py moved or removed installed packages: {changed}"
    added = sorted(set(freeze2) - set(freeze1))
    assert {m for m in missing if m != "onnxruntime"} <= set(added)
    assert len(set(inst.ONNXRUNTIME_DISTS) & set(freeze2)) == 1, "never two onnxruntime builds"
    assert sorted(os.listdir(dest_sp)) == dest_listing, "the WebUI venv was modified"
    tmp_listing = " ".join(os.listdir(tmp_sp)).lower().replace("-", "_")
    for name in added:  # every addition sits in the tmp layer
        assert inst.normalize(name).replace("-", "_") in tmp_listing, name

    torch_rel = inst.release(freeze1["torch"])
    lyc_rel = inst.release(freeze2["lycoris-lora"])
    if torch_rel >= (2, 4):
        assert (4, 1) <= lyc_rel < (5,), freeze2["lycoris-lora"]
    else:
        assert (3, 3) <= lyc_rel < (4, 1), freeze2["lycoris-lora"]
    assert (1, 1) <= inst.release(freeze2["prodigyopt"]) < (2,)

    # It imports in the layered venv: lycoris from the tmp layer, torch from the WebUI's.
    # (the e2e tier runs install.py in the WebUI venv itself, as A1111's launch does: then nothing is added)
    where = ok(sh([py, "-c", "import prodigyopt, lycoris, torch; print(lycoris.__file__); print(torch.__file__)"],
                  env, timeout=300)).split()
    lycoris_home = tmp_sp if "lycoris-lora" in added else dest_sp
    assert Path(where[0]).is_relative_to(lycoris_home) and Path(where[1]).is_relative_to(dest_sp), where

    t0 = time.perf_counter()
    run2 = sh([py, INSTALL_PY], env, cwd=ROOT)
    t_second = time.perf_counter() - t0
    ok(run2)
    assert log.read_text().splitlines() == calls1, "the second run called pip"
    assert (run2.stdout, run2.stderr) == ("", "")
    assert t_second < 2.0, f"second run took {t_second:.2f} s"
    print(f"\ninstall.py: first run {t_first:.1f} s ({len(calls1)} pip calls, added {added}), "
          f"second run {t_second:.2f} s")
