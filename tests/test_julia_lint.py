"""The Julia package passes `fatou format --check` and `fatou lint` (fatou is on PyPI, needs no Julia).

Run from pytest rather than from the shell so the check finds the fatou binary next to
this interpreter even where its scripts folder is not on PATH (pyenv without a rehash).
"""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

JULIA_DIR = Path(__file__).resolve().parent.parent / "julia"


def fatou_executable() -> str:
    beside = Path(sysconfig.get_path("scripts")) / "fatou"
    if beside.exists():
        return str(beside)
    found = shutil.which("fatou")
    if found is None:
        pytest.fail("fatou is not installed: pip install -e '.[test]' installs it")
    return found


@pytest.mark.parametrize("args", [["format", "--check"], ["lint"]], ids=["format", "lint"])
def test_julia_package_is_formatted_and_lint_clean(args):
    proc = subprocess.run([fatou_executable(), *args, str(JULIA_DIR)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, f"fatou {' '.join(args)} julia failed:\n{proc.stdout}\n{proc.stderr}"
