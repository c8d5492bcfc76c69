"""The Julia package ships in the wheel and the sdist (issue 9 bug 3).

Before, package-data held only ``juliapkg.json``: a non-editable install had no
``PySciMLGrad`` to develop, so ``runtime.package_path()`` failed for everyone who
installed from a wheel. Here a real wheel and sdist are built (setuptools, no build
isolation, no network) from a copy of the checkout in a temp dir and listed, and the
unpacked wheel's ``package_path()`` is asked where the Julia package is.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JL_PKG = ROOT / "julia" / "PySciMLGrad"
IN_WHEEL = "pysciml_grad/backends/julia/PySciMLGrad/"
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "pysciml_grad", "julia")


def julia_files():
    """Files of the Julia package, relative to it (what a user's Pkg.develop needs)."""
    return sorted(str(p.relative_to(JL_PKG)).replace(os.sep, "/") for p in JL_PKG.rglob("*")
                  if p.is_file() and not p.name.startswith("Manifest"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for args in (["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(out), "-q"],
                 ["-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), "."]):
        proc = subprocess.run([sys.executable, *args], cwd=src, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 and "No module named build" in proc.stderr:
            continue  # `build` not installed: the wheel alone is checked
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out


def test_wheel_contains_the_julia_package(built):
    _, out = built
    wheel = next(out.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in julia_files() if IN_WHEEL + f not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert "pysciml_grad/backends/julia/juliapkg.json" in names
    assert not any("Manifest" in n for n in names)


def test_sdist_contains_the_julia_package(built):
    _, out = built
    sdists = list(out.glob("*.tar.gz"))
    if not sdists:
        pytest.skip("the `build` package is not installed, so no sdist was built")
    with tarfile.open(sdists[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [f for f in julia_files() if f"julia/PySciMLGrad/{f}" not in names]
    assert not missing and "setup.py" in names and "MANIFEST.in" in names, missing


def test_installed_wheel_finds_its_julia_package(built):
    tmp, out = built
    site = tmp / "site"
    zipfile.ZipFile(next(out.glob("*.whl"))).extractall(site)
    code = "from pysciml_grad.backends.julia import runtime; print(runtime.package_path())"
    # Only the unpacked wheel on sys.path (cwd is not the checkout).
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path == site / IN_WHEEL.rstrip("/")
    assert (path / "Project.toml").read_text() == (JL_PKG / "Project.toml").read_text()
