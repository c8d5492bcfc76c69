"""Command line: ``python -m pysciml_grad {demo,check,audit,info,julia install}``."""

from __future__ import annotations

import argparse
import platform
import sys


def _info() -> int:
    import torch

    from . import __version__

    print(f"pysciml_grad {__version__}, Python {platform.python_version()}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"torch engine: available (CPU{', CUDA: ' + torch.cuda.get_device_name(0) if cuda else '; CUDA not available'})")
    try:
        from .backends.julia import availability

        ok, reason = availability()
    except Exception as exc:  # the CLI must report, not crash
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    print(f"julia engine: {'available' if ok else 'not available'} ({reason})")
    return 0


def _julia(args) -> int:
    from .backends.julia import install
    from .errors import BackendUnavailableError

    if args.action == "install":
        try:
            install(progress=True, cuda=args.cuda)
        except BackendUnavailableError as exc:
            # A message the user acts on, not a traceback through juliapkg.
            print(f"pysciml_grad julia install: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pysciml_grad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit a small neural ODE on the torch engine, with a gradient check")
    demo.add_argument("--iterations", type=int, default=300)
    sub.add_parser("info", help="which engines and devices are available, and why not")
    check = sub.add_parser("check", help="audit every sensealg x backend against closed-form / finite-difference gradients")
    check.add_argument("--json", default=None, help="also write the rows to this JSON file")
    check.add_argument("--rtol", type=float, default=1e-6)
    check.add_argument("--backend", choices=["torch", "julia", "all"], default="all")
    aud = sub.add_parser("audit", help="every sensealg on the problem a script defines (func, y0, t, loss) vs a float64 reference")
    aud.add_argument("script", help="a Python file defining func, y0, t, loss (optionally params, method, rtol, atol, options, sensealgs)")
    aud.add_argument("--rtol", type=float, default=None, help="override the script's rtol (default 1e-6)")
    aud.add_argument("--atol", type=float, default=None)
    aud.add_argument("--method", default=None)
    aud.add_argument("--json", default=None, help="also write the report to this JSON file")
    julia = sub.add_parser("julia", help="manage the Julia engine")
    julia.add_argument("action", choices=["install"], help="resolve and precompile the Julia packages (needs network)")
    julia.add_argument("--cuda", action="store_true", help="also install CUDA.jl and DLPack.jl for GPU solves")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(iterations=args.iterations)
        return 0
    if args.command == "info":
        return _info()
    if args.command == "check":
        from .check import main as check_main

        backends = ("torch", "julia") if args.backend == "all" else (args.backend,)
        check_main(args.json, args.rtol, backends)
        return 0
    if args.command == "audit":
        from .gradaudit import audit_script

        audit_script(args.script, json_path=args.json, rtol=args.rtol, atol=args.atol, method=args.method)
        return 0
    return _julia(args)


if __name__ == "__main__":
    sys.exit(main())
