"""Without Julia (or offline), ``backend="julia"`` fails fast with an install hint.

Each scenario runs in a fresh Python process with an environment in which no Julia
can be found (empty PATH, fresh juliapkg project and depot) and Julia's servers are
unreachable (``JULIA_PKG_SERVER`` points at a closed local port), so the outcome is
the same on machines with or without Julia, online or not. Nothing is mocked: the real
``psg.odeint`` -> runtime probe -> error path runs, and juliacall is never imported.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from pysciml_grad.backends.julia import availability, runtime

HINT = "python -m pysciml_grad julia install"

SCRIPT = r"""
import json, sys, time
import torch
import pysciml_grad as psg
from pysciml_grad.errors import BackendUnavailableError
from pysciml_grad.backends.julia import availability
y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
start = time.monotonic()
result = {"available": availability()}
try:
    psg.odeint(lambda t, y: -y, y0, t, backend="julia", method="tsit5", sensealg=psg.InterpolatingAdjoint())
    result["error"] = None
except BackendUnavailableError as exc:
    result["error"] = str(exc)
    result["is_import_error"] = isinstance(exc, ImportError)
result["seconds"] = time.monotonic() - start
result["juliacall_imported"] = "juliacall" in sys.modules
print(json.dumps(result))
"""


def run_without_julia(tmp_path, **extra_env):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_JULIACALL_", "PYTHON_JULIAPKG_", "JULIA"))}
    env.update(
        PATH=str(empty_bin),  # no julia, no juliaup
        PYTHON_JULIAPKG_PROJECT=str(tmp_path / "julia_env"),  # nothing resolved, nothing installed
        JULIA_DEPOT_PATH=str(tmp_path / "depot"),
        JULIA_PKG_SERVER="http://127.0.0.1:9",  # the discard port: connection refused
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    env.update(extra_env)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def test_no_julia_fails_fast_with_install_hint(tmp_path):
    # Julia itself is never downloaded implicitly, online or not: only install() does.
    result, wall = run_without_julia(tmp_path)
    assert result["error"] is not None and result["is_import_error"]
    assert "no Julia installation was found" in result["error"]
    assert HINT in result["error"]
    assert result["seconds"] < 2.0, result
    assert not result["juliacall_imported"]
    ok, reason = result["available"]
    assert ok is False and HINT in reason


def fake_julia(tmp_path):
    """A `julia` on PATH that is found by name; the probe never runs it."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    exe = fake / "julia"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)


def test_julia_without_packages_and_offline_fails_fast(tmp_path):
    fake_julia(tmp_path)
    result, _ = run_without_julia(tmp_path)
    assert "Julia was found" in result["error"] and "not installed" in result["error"]
    assert "no connection to 127.0.0.1:9" in result["error"]  # it looked, briefly, and says why it stopped
    assert HINT in result["error"]
    assert result["seconds"] < 10.0, result  # the probe's budget is 3 s
    assert not result["juliacall_imported"]


def test_autoinstall_disabled_fails_without_touching_the_network(tmp_path):
    fake_julia(tmp_path)
    result, _ = run_without_julia(tmp_path, PYSCIML_GRAD_JULIA_AUTOINSTALL="no")
    assert "PYSCIML_GRAD_JULIA_AUTOINSTALL=no" in result["error"] and HINT in result["error"]
    assert result["seconds"] < 2.0, result
    assert not result["juliacall_imported"]


def test_juliapkg_offline_mode_is_respected(tmp_path):
    fake_julia(tmp_path)
    result, _ = run_without_julia(tmp_path, PYTHON_JULIAPKG_OFFLINE="yes")
    assert "PYTHON_JULIAPKG_OFFLINE=yes" in result["error"]
    assert not result["juliacall_imported"]


def test_only_one_of_the_juliacall_overrides_is_a_configuration_error(tmp_path):
    result, _ = run_without_julia(tmp_path, PYTHON_JULIACALL_EXE="/nonexistent/julia")
    assert "must be set together" in result["error"]
    assert not result["juliacall_imported"]


# --- runtime helpers, in process --------------------------------------------------------


def test_availability_is_a_bool_and_a_reason():
    ok, reason = availability()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason


def test_unreachable_respects_its_time_budget():
    start = time.monotonic()
    down = runtime.unreachable([("127.0.0.1", 9), ("10.255.255.1", 443)], timeout=1.0)
    assert time.monotonic() - start < 3.0
    assert "127.0.0.1:9" in down


def test_servers_follow_julia_pkg_server(monkeypatch):
    monkeypatch.setenv("JULIA_PKG_SERVER", "http://mirror.example:8080")
    assert runtime.servers_for("packages") == (("mirror.example", 8080),)
    monkeypatch.setenv("JULIA_PKG_SERVER", "pkg.example.org")
    assert runtime.servers_for("julia") == (("pkg.example.org", 443), ("julialang-s3.julialang.org", 443))
    monkeypatch.delenv("JULIA_PKG_SERVER")
    assert runtime.servers_for("packages") == (("pkg.julialang.org", 443),)


@pytest.mark.parametrize("value, allowed", [("no", False), ("0", False), ("false", False), ("yes", True), (None, True)])
def test_autoinstall_switch(monkeypatch, value, allowed):
    monkeypatch.delenv("PYTHON_JULIAPKG_OFFLINE", raising=False)
    if value is None:
        monkeypatch.delenv(runtime.ENV_AUTOINSTALL, raising=False)
    else:
        monkeypatch.setenv(runtime.ENV_AUTOINSTALL, value)
    assert runtime.autoinstall_allowed()[0] is allowed


def test_wanted_dependencies_point_at_the_julia_package():
    deps = runtime.wanted_dependencies()
    ours = deps[runtime.JULIA_PACKAGE]
    assert os.path.isabs(ours["path"]) and os.path.isfile(os.path.join(ours["path"], "Project.toml"))
    assert ours["dev"] is True
    with open(os.path.join(ours["path"], "Project.toml")) as fh:
        assert f'uuid = "{ours["uuid"]}"' in fh.read()
    assert "CUDA" not in deps and "CUDA" in runtime.wanted_dependencies(cuda=True)


def test_protocol_versions_agree():
    with open(os.path.join(runtime.package_path(), "src", "PySciMLGrad.jl")) as fh:
        assert f"const PROTOCOL_VERSION = {runtime.PROTOCOL_VERSION}" in fh.read()


def test_registration_into_juliapkg_is_recognised(tmp_path):
    # Pure juliapkg bookkeeping (no Julia): after register_dependencies the probe must
    # see our packages as registered, else it would ask for an install forever.
    code = (
        "import json\n"
        "from pysciml_grad.backends.julia import runtime\n"
        "before = runtime.dependencies_registered()\n"
        "runtime.register_dependencies()\n"
        "after = runtime.dependencies_registered()\n"
        "import juliapkg.deps\n"
        "print(json.dumps([before, after, juliapkg.deps.load_cur_deps()]))\n"
    )
    env = dict(os.environ, PYTHON_JULIAPKG_PROJECT=str(tmp_path / "julia_env"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, after, deps = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before is False and after is True
    assert deps["julia"] and deps["packages"]["PySciMLGrad"]["dev"] is True
    assert os.path.isabs(deps["packages"]["PySciMLGrad"]["path"])


def test_check_prints_the_whole_reason_for_an_absent_julia_engine(tmp_path):
    # Issue 8 section 7: the Julia row of `python -m pysciml_grad check` was cut at 160
    # characters, mid-sentence, before the install command. The real CLI, without Julia.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_JULIACALL_", "PYTHON_JULIAPKG_", "JULIA"))}
    env.update(PATH=str(empty_bin), PYTHON_JULIAPKG_PROJECT=str(tmp_path / "julia_env"),
               JULIA_DEPOT_PATH=str(tmp_path / "depot"), JULIA_PKG_SERVER="http://127.0.0.1:9",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-m", "pysciml_grad", "check", "--backend", "julia"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "julia * * not run:" in flat
    assert "no Julia installation was found" in flat
    # The hint's last sentence, in full: nothing of the reason is cut off.
    assert " ".join(runtime.INSTALL_HINT.split()) in flat
    assert all(len(line) <= 110 for line in proc.stdout.splitlines()[2:]), proc.stdout


@pytest.mark.parametrize(
    "environ, added",
    [
        ({}, {"PYTHON_JULIACALL_THREADS": "1"}),
        # A user's JULIA_NUM_THREADS would start multi-threaded Julia without signal handling.
        ({"JULIA_NUM_THREADS": "8"}, {"PYTHON_JULIACALL_THREADS": "1"}),
        ({"PYTHON_JULIACALL_THREADS": "4"}, {"PYTHON_JULIACALL_HANDLE_SIGNALS": "yes"}),
        ({"PYTHON_JULIACALL_THREADS": "4", "PYTHON_JULIACALL_HANDLE_SIGNALS": "no"}, {}),
        ({"PYTHON_JULIACALL_THREADS": "1"}, {}),
    ],
)
def test_juliacall_starts_single_threaded_unless_asked(environ, added):
    assert runtime.juliacall_defaults(environ) == added
