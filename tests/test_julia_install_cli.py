"""``python -m pysciml_grad julia install`` when it cannot work (issue 8 section 7).

Before: offline, it printed an 88-line traceback, blamed pkg.julialang.org when it was
Julia's download server that was missing, and left a partial ``julia_env/`` behind.
Each scenario runs the real CLI in a fresh process with its own juliapkg project and
depot, a fake Julia that can never run, and servers that are a closed local port or a
local listening socket, so nothing can be downloaded, online or not.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

from pysciml_grad.backends.julia import runtime


def fake_julia(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "julia"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return exe


def run_install(tmp_path: Path, **extra_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_JULIACALL_", "PYTHON_JULIAPKG_", "JULIA"))}
    env.update(
        PATH=str(tmp_path / "bin"),
        PYTHON_JULIAPKG_PROJECT=str(tmp_path / "julia_env"),
        JULIA_DEPOT_PATH=str(tmp_path / "depot"),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "pysciml_grad", "julia", "install"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)


def test_offline_install_is_one_short_error_naming_the_host_and_changes_nothing(tmp_path):
    fake_julia(tmp_path)
    proc = run_install(tmp_path, JULIA_PKG_SERVER="http://127.0.0.1:9")  # the discard port: refused
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) <= 2, out
    assert "no connection to 127.0.0.1:9 (Julia's package server" in out
    assert "Nothing was changed" in out
    assert not (tmp_path / "julia_env").exists(), "a partial juliapkg environment was left behind"


def test_a_failed_install_removes_the_environment_it_created(tmp_path):
    # The server answers (a local listening socket), so the install starts; the Julia it
    # is told to use cannot run, so juliapkg fails inside the child process.
    exe = fake_julia(tmp_path)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        proc = run_install(tmp_path, JULIA_PKG_SERVER=f"http://127.0.0.1:{port}", PYTHON_JULIAPKG_EXE=str(exe))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "installing the Julia engine failed" in out and "not a Julia executable" in out, out
    assert "was removed" in out
    assert not (tmp_path / "julia_env").exists()


def test_juliapkg_offline_mode_refuses_the_install_at_once(tmp_path):
    fake_julia(tmp_path)
    proc = run_install(tmp_path, PYTHON_JULIAPKG_OFFLINE="yes", JULIA_PKG_SERVER="http://127.0.0.1:9")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "PYTHON_JULIAPKG_OFFLINE=yes" in out and "Traceback" not in out
    assert not (tmp_path / "julia_env").exists()


def test_without_julia_the_download_server_is_named():
    # No Julia found: juliapkg downloads one from julialang-s3.julialang.org
    # (install_julia.py `_julia_versions_url`, UPSTREAM.md), so that host is probed and named.
    hosts = runtime.servers_for("julia")
    assert ("julialang-s3.julialang.org", 443) in hosts
    assert "where juliapkg downloads Julia" in runtime._host_description("julialang-s3.julialang.org:443")
    assert "package server" in runtime._host_description("pkg.julialang.org:443")
