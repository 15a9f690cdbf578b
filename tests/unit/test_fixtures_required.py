"""Tests that compare with the shared kohya fixtures fail, never skip, when the fixtures are missing."""
import os
import subprocess
import sys

from .kohya_fixtures import REPO

FIXTURE_TESTS = [
    "tests/unit/test_naming.py::test_selection_matches_kohya_exactly",
    "tests/unit/test_naming.py::test_lora_shapes_match_kohya",
    "tests/unit/test_output.py::test_metadata_has_exactly_kohyas_keys_and_values",
    "tests/unit/test_output.py::test_metadata_value_types_match_kohyas_with_other_settings",
    "tests/unit/test_output.py::test_hashes_reproduce_kohya_fixture_files",
]


def test_missing_kohya_fixtures_fail_with_a_clear_message(tmp_path):
    missing = tmp_path / "no-fixtures-here"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *FIXTURE_TESTS],
                          cwd=REPO, env={**os.environ, "KOHYA_FIXTURES": str(missing)},
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    assert "skipped" not in summary and "passed" not in summary, summary
    assert "failed" in summary and proc.returncode == 1, out[-3000:]
    # 2 + 2 parametrised naming runs, 4 + 1 + 4 output runs
    assert summary.startswith("13 failed"), summary
    assert f"kohya fixture {missing}" in out and "must not be skipped" in out and "KOHYA_FIXTURES" in out
