"""Finding, installing and starting the Julia engine, without ever hanging.

``import juliacall`` starts Julia, and if juliapkg finds no resolved environment it
first *downloads* Julia and the packages. Done blindly inside ``odeint`` that would
hang an offline machine. So nothing here imports juliacall until
:func:`probe` has established, from files and environment variables alone, that
Julia and the packages are already in place; otherwise the caller gets a
``BackendUnavailableError`` saying how to install, within seconds.

The one exception is the first-use install of the *packages*: when a Julia
installation is found, Julia's package server answers (a 3-second TCP probe) and
``PYSCIML_GRAD_JULIA_AUTOINSTALL`` is not ``no``, ``ensure_ready`` runs :func:`install`,
with progress printed, before the first solve. Julia itself is never downloaded
implicitly: without a Julia installation the answer is always the error plus the
install command (:func:`install` may download Julia, because the user asked for it).

juliapkg discovers ``juliapkg.json`` files only directly inside ``sys.path`` entries
and one directory below, so ours (``backends/julia/juliapkg.json``) is registered
explicitly into the environment's own deps file by :func:`register_dependencies`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import BackendUnavailableError

HERE = os.path.dirname(os.path.abspath(__file__))
JULIAPKG_JSON = os.path.join(HERE, "juliapkg.json")
JULIA_PACKAGE = "PySciMLGrad"
#: Bumped whenever the Python <-> Julia calling convention changes; the Julia package
#: exports the same number, and a mismatch means a stale install.
PROTOCOL_VERSION = 2

ENV_AUTOINSTALL = "PYSCIML_GRAD_JULIA_AUTOINSTALL"
INSTALL_COMMAND = "python -m pysciml_grad julia install"
INSTALL_HINT = (
    f"Install the Julia engine once with `{INSTALL_COMMAND}` (needs internet: downloads Julia if "
    "none is found, then OrdinaryDiffEq/SciMLSensitivity; expect 10-30 minutes the first time). "
    "To use a Julia you already have, set PYTHON_JULIAPKG_EXE=/path/to/julia before installing."
)
CUDA_HINT = f"For CUDA tensors install the GPU packages once with `{INSTALL_COMMAND} --cuda` (CUDA.jl, DLPack.jl)."

# Optional GPU packages, added to the environment only by install(cuda=True).
CUDA_PACKAGES = {
    "CUDA": {"uuid": "052768ef-5323-5732-b1bb-66c8b64840ba", "version": "5"},
    "DLPack": {"uuid": "53c2dc0f-f7d5-43fd-8906-6c0220547083", "version": "0.3.1"},
}


@dataclass(frozen=True)
class Probe:
    """What is known without starting Julia.

    ``missing``: "" (ready), "juliacall", "julia" (no executable found), "packages"
    (Julia found, our packages not installed/resolved), or "config" (inconsistent env).
    """

    ok: bool
    reason: str
    missing: str = ""
    julia_exe: Optional[str] = None


# ---------------------------------------------------------------------------------------
# Reading the state of juliapkg (no Julia started)
# ---------------------------------------------------------------------------------------


def _juliacall_installed() -> bool:
    return importlib.util.find_spec("juliacall") is not None


def _juliacall_started() -> bool:
    mod = sys.modules.get("juliacall")
    return bool(mod is not None and getattr(mod, "CONFIG", {}).get("inited"))


def package_path() -> str:
    """The Julia package directory: shipped inside the Python package, or the repo's."""
    candidates = [
        os.path.join(HERE, JULIA_PACKAGE),
        os.path.normpath(os.path.join(HERE, "..", "..", "..", "julia", JULIA_PACKAGE)),
    ]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "Project.toml")):
            return c
    raise BackendUnavailableError(
        f"the Julia package {JULIA_PACKAGE} is missing (looked in {candidates}); reinstall pysciml_grad"
    )


def wanted_dependencies(cuda: bool = False) -> Dict[str, Dict[str, Any]]:
    """Our ``juliapkg.json`` packages, with the dev path made absolute (juliapkg resolves
    relative paths against the file they are written in, which will be another file)."""
    with open(JULIAPKG_JSON) as fh:
        spec = json.load(fh)
    pkgs = {name: dict(entry) for name, entry in spec["packages"].items()}
    pkgs[JULIA_PACKAGE]["path"] = package_path()
    if cuda:
        pkgs.update({k: dict(v) for k, v in CUDA_PACKAGES.items()})
    return pkgs


def _registered_dependencies() -> Dict[str, Any]:
    import juliapkg.deps  # pure Python; starts nothing

    return juliapkg.deps.load_cur_deps().get("packages", {})


def dependencies_registered() -> bool:
    try:
        have = _registered_dependencies()
    except Exception:  # noqa: BLE001 - juliapkg internals moved: treat as not registered
        return False
    return all(have.get(name) == entry for name, entry in wanted_dependencies().items())


def _resolved() -> bool:
    """Whether juliapkg would start Julia without resolving (downloading) anything."""
    import juliapkg.deps

    try:
        return bool(juliapkg.deps.can_skip_resolve())
    except AttributeError:  # older/newer juliapkg: the public dry run (takes a file lock)
        return bool(juliapkg.resolve(dry_run=True))


def find_julia_executable() -> Optional[str]:
    """A Julia that juliapkg would use without installing one, or None."""
    exe = os.environ.get("PYTHON_JULIAPKG_EXE")
    if exe:
        return shutil.which(exe) or (exe if os.path.isfile(exe) else None)
    for name in ("julia", "juliaup"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import juliapkg.state

        prefix_exe = os.path.join(juliapkg.state.STATE["install"], "bin", "julia")
        if os.path.isfile(prefix_exe):
            return prefix_exe
    except Exception:  # noqa: BLE001
        pass
    return None


def probe() -> Probe:
    """Can the Julia engine start right now without downloading anything?

    Reads files and environment variables only (plus ``julia --version`` through
    juliapkg when an environment was resolved before); never starts Julia.
    """
    if not _juliacall_installed():
        return Probe(False, "juliacall is not installed: pip install juliacall juliapkg (or, in a checkout of pysciml_grad, pip install -e '.[julia]')", "juliacall")
    if _juliacall_started():
        return Probe(True, "Julia is already running in this process (juliacall)")
    exe, project = os.environ.get("PYTHON_JULIACALL_EXE"), os.environ.get("PYTHON_JULIACALL_PROJECT")
    if exe or project:
        if not (exe and project):
            return Probe(False, "PYTHON_JULIACALL_EXE and PYTHON_JULIACALL_PROJECT must be set together", "config")
        if not (shutil.which(exe) or os.path.isfile(exe)):
            return Probe(False, f"PYTHON_JULIACALL_EXE={exe} is not an executable", "julia")
        if not os.path.isdir(project):
            return Probe(False, f"PYTHON_JULIACALL_PROJECT={project} is not a directory", "config")
        return Probe(True, f"Julia {exe} with project {project} (from PYTHON_JULIACALL_EXE/PROJECT)", julia_exe=exe)
    julia = find_julia_executable()
    try:
        ready = dependencies_registered() and _resolved()
    except Exception as exc:  # noqa: BLE001
        return Probe(False, f"could not read juliapkg's state ({exc})", "packages" if julia else "julia", julia)
    if ready:
        return Probe(True, "Julia and the SciML packages are installed (juliapkg environment resolved)", julia_exe=julia)
    if julia is None:
        return Probe(False, "no Julia installation was found (not on PATH, no PYTHON_JULIAPKG_EXE, none installed by juliapkg)", "julia")
    return Probe(False, f"Julia was found ({julia}) but the Julia packages of pysciml_grad are not installed", "packages", julia)


def availability() -> Tuple[bool, str]:
    """``(usable, reason)`` for ``python -m pysciml_grad info``; starts nothing."""
    p = probe()
    return p.ok, p.reason if p.ok else f"{p.reason}. {INSTALL_HINT}"


# ---------------------------------------------------------------------------------------
# Network probe for the first-use install
# ---------------------------------------------------------------------------------------


def unreachable(hosts: Sequence[Tuple[str, int]], timeout: float = 3.0) -> List[str]:
    """The ``host:port`` entries that accept no TCP connection within ``timeout`` seconds.

    getaddrinfo ignores socket timeouts, so each attempt runs in a daemon thread and all
    are abandoned together after ``timeout``: DNS that hangs cannot hang us.
    """
    results: Dict[Tuple[str, int], bool] = {}

    def attempt(host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                results[(host, port)] = True
        except OSError:
            results[(host, port)] = False

    threads = [threading.Thread(target=attempt, args=hp, daemon=True) for hp in hosts]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    return [f"{h}:{port}" for h, port in hosts if not results.get((h, port), False)]


def servers_for(missing: str) -> Tuple[Tuple[str, int], ...]:
    """The hosts an install would contact: Julia's package server (``JULIA_PKG_SERVER``
    if set, as Pkg does) and, when Julia itself is missing, its download server."""
    url = os.environ.get("JULIA_PKG_SERVER", "https://pkg.julialang.org")
    if "://" not in url:
        url = "https://" + url
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    hosts = [(parsed.hostname or "pkg.julialang.org", port)]
    if missing == "julia":
        hosts.append(("julialang-s3.julialang.org", 443))
    return tuple(hosts)


def autoinstall_allowed() -> Tuple[bool, str]:
    value = os.environ.get(ENV_AUTOINSTALL, "yes").strip().lower()
    if value in ("no", "0", "false", "off"):
        return False, f"{ENV_AUTOINSTALL}={value}"
    if os.environ.get("PYTHON_JULIAPKG_OFFLINE", "").strip().lower() == "yes":
        return False, "PYTHON_JULIAPKG_OFFLINE=yes"
    return True, ""


# ---------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------


def register_dependencies(cuda: bool = False) -> None:
    """Write our packages into juliapkg's environment deps file (idempotent)."""
    import juliapkg

    have = {}
    try:
        have = _registered_dependencies()
    except Exception:  # noqa: BLE001
        pass
    for name, entry in wanted_dependencies(cuda).items():
        if have.get(name) == entry:
            continue
        kw = {k: v for k, v in entry.items() if k in ("version", "dev", "path")}
        juliapkg.add(name, entry["uuid"], **kw)
    with open(JULIAPKG_JSON) as fh:
        julia_compat = json.load(fh).get("julia")
    if julia_compat:
        juliapkg.require_julia(julia_compat)


# The child installs and precompiles; it imports only juliapkg/juliacall (not torch,
# which juliacall warns should come after it). A failure prints one line, not a
# traceback through juliapkg's internals: the parent turns it into the error.
_CHILD = r"""
import sys
try:
    import juliapkg
    juliapkg.resolve()
    import juliacall
    jl = juliacall.newmodule("PySciMLGradInstall")
    jl.seval("import {pkg}")
    {cuda_load}
    print("pysciml_grad: Julia", jl.seval("string(VERSION)"), "with {pkg} protocol", jl.seval("{pkg}.PROTOCOL_VERSION"))
except BaseException as exc:
    text = str(exc).strip().splitlines()
    print("{marker}" + type(exc).__name__ + ": " + (text[0] if text else ""), flush=True)
    sys.exit(1)
"""
_FAILED_MARKER = "pysciml_grad-install-failed: "

#: What each host an install contacts is for (juliapkg's Julia download,
#: src/juliapkg/install_julia.py; Pkg's default server, Pkg.jl src/Pkg.jl ``pkg_server``).
_HOST_ROLES = {
    "julialang-s3.julialang.org": "where juliapkg downloads Julia",
}


def _juliapkg_project() -> Optional[str]:
    """The directory juliapkg keeps its environment in (``julia_env`` beside the venv)."""
    try:
        import juliapkg.state

        return juliapkg.state.STATE["project"]
    except Exception:  # noqa: BLE001 - juliapkg internals moved: nothing to clean up then
        return None


class _EnvironmentGuard:
    """Undo what a failed install wrote into juliapkg's environment: remove the
    environment directory if this install created it, else restore the deps file."""

    def __init__(self) -> None:
        self.project = _juliapkg_project()
        self.existed = bool(self.project and os.path.exists(self.project))
        self.deps_file = None
        self.deps_before: Optional[bytes] = None
        try:
            import juliapkg.deps

            self.deps_file = juliapkg.deps.cur_deps_file()
            if os.path.isfile(self.deps_file):
                with open(self.deps_file, "rb") as fh:
                    self.deps_before = fh.read()
        except Exception:  # noqa: BLE001
            self.deps_file = None

    def rollback(self) -> str:
        if self.project and not self.existed and os.path.isdir(self.project):
            shutil.rmtree(self.project, ignore_errors=True)
            return f" The partial Julia environment {self.project} was removed."
        if self.deps_file:
            try:
                if self.deps_before is None:
                    if os.path.isfile(self.deps_file):
                        os.remove(self.deps_file)
                else:
                    with open(self.deps_file, "wb") as fh:
                        fh.write(self.deps_before)
            except OSError:
                return ""
        return ""


def _host_description(entry: str) -> str:
    host = entry.rsplit(":", 1)[0]
    role = _HOST_ROLES.get(host, "Julia's package server (JULIA_PKG_SERVER, default pkg.julialang.org)")
    return f"{entry} ({role})"


def install(progress: bool = True, cuda: bool = False) -> None:
    """Install Julia (if none is found), the SciML packages and ``PySciMLGrad``, and
    precompile them, once. Needs internet. Runs in a child Python process so this
    process's juliacall state is untouched and the output can be shown or captured.

    Fails within seconds, changing nothing, when the hosts it needs do not answer
    (3-second TCP probe): Julia's download server when no Julia is found, the package
    server otherwise. A failure later on removes the juliapkg environment it created.

    ``cuda=True`` also installs CUDA.jl and DLPack.jl for CUDA tensors.
    """
    if not _juliacall_installed():
        raise BackendUnavailableError("juliacall is not installed: pip install juliacall, then run the install again")
    if os.environ.get("PYTHON_JULIAPKG_OFFLINE", "").strip().lower() == "yes":
        raise BackendUnavailableError(
            "cannot install the Julia engine: PYTHON_JULIAPKG_OFFLINE=yes forbids juliapkg to download. "
            "Unset it and run the install again with a network connection."
        )
    missing = "julia" if find_julia_executable() is None else "packages"
    down = unreachable(servers_for(missing))
    if down:
        raise BackendUnavailableError(
            "cannot install the Julia engine: no connection to "
            + ", ".join(_host_description(d) for d in down)
            + " within 3 s. Nothing was changed. Connect to the internet (behind a proxy set "
            "JULIA_PKG_SERVER to a mirror); to use a Julia you already have, set PYTHON_JULIAPKG_EXE=/path/to/julia."
        )
    guard = _EnvironmentGuard()
    code = _CHILD.format(
        pkg=JULIA_PACKAGE,
        cuda_load='jl.seval("import CUDA, DLPack")' if cuda else "",
        marker=_FAILED_MARKER,
    )
    if progress:
        print("pysciml_grad: installing the Julia engine (juliapkg + Pkg; first time 10-30 min) ...", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    tail: List[str] = []
    try:
        register_dependencies(cuda=cuda)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(_FAILED_MARKER):
                tail.append(line[len(_FAILED_MARKER):].rstrip())
                continue
            if progress:
                print(line, end="", file=sys.stderr, flush=True)
        returncode = proc.wait()
    except BaseException:
        guard.rollback()
        raise
    if returncode != 0:
        cleaned = guard.rollback()
        reason = tail[-1] if tail else f"exit code {returncode}"
        raise BackendUnavailableError(f"installing the Julia engine failed: {reason}.{cleaned}")
    if progress:
        print("pysciml_grad: Julia engine installed.", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Starting Julia
# ---------------------------------------------------------------------------------------


class Session:
    """The started engine: the ``PySciMLGrad`` Julia module plus the thread that owns it."""

    def __init__(self, module: Any, host: Any, juliacall: Any) -> None:
        self.jl = module
        self.host = host
        self.juliacall = juliacall
        self.thread = threading.get_ident()
        self.cuda_loaded = False

    def load_cuda(self) -> None:
        """Load CUDA.jl and DLPack.jl; PySciMLGrad's CUDA extension then activates."""
        if self.cuda_loaded:
            return
        try:
            self.host.seval("import CUDA, DLPack")
            ok = bool(self.jl.cuda_ready())
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailableError(f"CUDA.jl/DLPack.jl could not be loaded ({first_line(exc)}). {CUDA_HINT}") from exc
        if not ok:
            raise BackendUnavailableError(f"PySciMLGrad's CUDA extension did not load. {CUDA_HINT}")
        self.cuda_loaded = True


_SESSION: Optional[Session] = None
_LOCK = threading.Lock()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def juliacall_defaults(environ: Dict[str, str]) -> Dict[str, str]:
    """Environment variables to add before ``import juliacall`` starts Julia.

    juliacall takes its thread count from ``PYTHON_JULIACALL_THREADS``, else from
    ``JULIA_NUM_THREADS``, and leaves Julia's signal handling off unless
    ``PYTHON_JULIACALL_HANDLE_SIGNALS`` says otherwise (pysrc/juliacall/__init__.py,
    UPSTREAM.md); multi-threaded Julia without its signal handler can segfault. So: one
    thread unless the user asked juliacall for more, and signal handling on whenever
    they did. Nothing the user set is overridden.
    """
    extra: Dict[str, str] = {}
    threads = environ.get("PYTHON_JULIACALL_THREADS")
    if threads is None:
        extra["PYTHON_JULIACALL_THREADS"] = "1"
    elif threads.strip() != "1" and "PYTHON_JULIACALL_HANDLE_SIGNALS" not in environ:
        extra["PYTHON_JULIACALL_HANDLE_SIGNALS"] = "yes"
    return extra


def _start() -> Session:
    os.environ.update(juliacall_defaults(dict(os.environ)))
    try:
        import juliacall  # starts Julia (probe() said nothing needs downloading)
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailableError(f"juliacall could not start Julia: {first_line(exc)}. {INSTALL_HINT}") from exc
    try:
        host = juliacall.newmodule("PySciMLGradHost")
        host.seval(f"import {JULIA_PACKAGE}")
        module = host.seval(JULIA_PACKAGE)
        version = int(module.PROTOCOL_VERSION)
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailableError(
            f"the Julia package {JULIA_PACKAGE} could not be loaded: {first_line(exc)}. {INSTALL_HINT}"
        ) from exc
    if version != PROTOCOL_VERSION:
        raise BackendUnavailableError(
            f"the installed {JULIA_PACKAGE} speaks protocol {version}, this pysciml_grad speaks "
            f"{PROTOCOL_VERSION}: re-run `{INSTALL_COMMAND}`"
        )
    return Session(module, host, juliacall)


def ensure_ready(cuda: bool = False) -> Session:
    """The running engine, started on first use; raises ``BackendUnavailableError``
    (never hangs) when Julia or the packages are missing and cannot be installed now."""
    global _SESSION
    with _LOCK:
        if _SESSION is None:
            p = probe()
            if not p.ok and p.missing == "packages":
                allowed, why = autoinstall_allowed()
                if allowed:
                    down = unreachable(servers_for(p.missing))
                    if down:
                        allowed, why = False, f"no connection to {', '.join(down)} (offline?)"
                if allowed:
                    print(
                        f"pysciml_grad: backend='julia' is used for the first time ({p.reason}); installing now.",
                        file=sys.stderr,
                        flush=True,
                    )
                    install(progress=True)
                    p = probe()
                else:
                    raise BackendUnavailableError(
                        f"backend='julia' is not available: {p.reason}; not installing automatically "
                        f"because {why}. {INSTALL_HINT}"
                    )
            if not p.ok:
                raise BackendUnavailableError(f"backend='julia' is not available: {p.reason}. {INSTALL_HINT}")
            _SESSION = _start()
        session = _SESSION
    if cuda:
        session.load_cuda()
    return session


if __name__ == "__main__":  # pragma: no cover - convenience: python -m ...runtime
    ok, reason = availability()
    print(("available: " if ok else "unavailable: ") + reason)
