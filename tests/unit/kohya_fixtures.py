"""The kohya sd-scripts reference files (real kohya runs) that the naming and metadata tests compare with.

They live outside this repository, in the project's shared folder next to it
(../shared/fixtures/kohya, i.e. /work/shared/fixtures/kohya), or where KOHYA_FIXTURES points.
A missing file is a test FAILURE, never a skip: without them these tests would prove nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KOHYA = Path(os.environ.get("KOHYA_FIXTURES") or REPO.parent / "shared" / "fixtures" / "kohya")


def kohya_fixture(name: str) -> Path:
    path = KOHYA / name
    assert path.is_file(), (
        f"kohya fixture {path} is missing. These tests compare with real kohya sd-scripts files and must not "
        f"be skipped: provide the shared fixtures at {REPO.parent / 'shared' / 'fixtures' / 'kohya'} "
        f"(see its README.md) or set KOHYA_FIXTURES to a folder holding them.")
    return path
