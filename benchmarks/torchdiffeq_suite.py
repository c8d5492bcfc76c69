"""Run torchdiffeq's own, unmodified test suite against ``pysciml_grad.torchdiffeq``.

    python benchmarks/torchdiffeq_suite.py                      # 0.2.5 suite, our compat layer
    python benchmarks/torchdiffeq_suite.py --suite master       # the master-branch suite
    python benchmarks/torchdiffeq_suite.py --impl torchdiffeq   # the real package, for calibration
    python benchmarks/torchdiffeq_suite.py --modules api_tests  # one module
    python benchmarks/torchdiffeq_suite.py --write-docs         # refresh docs/from-torchdiffeq.md

The tests are read from ``../shared/peer-tests/torchdiffeq-<suite>/`` (override with
``--tests DIR``); nothing is copied into the project. ``import torchdiffeq`` is made to
resolve to our compat module by a throw-away package in a temporary directory put first
on ``PYTHONPATH``. Each test module runs in its own subprocess (``unittest``, from inside
the test folder, as the suite's README says). A subtest is one ``with self.subTest(...)``
block; a test method without subtests counts as one. Results go to
``benchmarks/torchdiffeq_suite_<suite>.json``; ``--write-docs`` puts the counts and every
failing subtest with its reason into ``docs/from-torchdiffeq.md`` between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "peer-tests"
MODULES = ("api_tests", "event_tests", "gradient_tests", "norm_tests", "odeint_tests")
DOCS = ROOT / "docs" / "from-torchdiffeq.md"

# Executed in the subprocess, inside the test folder: run one module, print JSON.
RUNNER = textwrap.dedent(
    r"""
    import json, sys, time, traceback, unittest, warnings
    mod = __import__(sys.argv[1])
    import torchdiffeq
    records = []
    class Result(unittest.TestResult):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.with_sub = set()
        def _reason(self, err):
            etype, value, tb = err
            first = (str(value).strip().splitlines() or [""])[0]
            return f"{etype.__name__}: {first}"[:300]
        def addSubTest(self, test, subtest, err):
            self.with_sub.add(test.id())
            records.append({"test": test.id(), "sub": subtest._subDescription(),
                            "ok": err is None, "reason": None if err is None else self._reason(err)})
        def addSuccess(self, test):
            if test.id() not in self.with_sub:
                records.append({"test": test.id(), "sub": "", "ok": True, "reason": None})
        def _fail(self, test, err):
            # A failure outside any subTest block: one record (the whole method) if it had
            # no subtests, else an extra record for the code after the subtests.
            records.append({"test": test.id(), "sub": "(outside subTest)" if test.id() in self.with_sub else "",
                            "ok": False, "reason": self._reason(err)})
        addFailure = _fail
        addError = _fail
    suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suite.run(Result())
    print("@@JSON@@" + json.dumps({"records": records, "seconds": time.time() - start,
                                   "torchdiffeq": getattr(torchdiffeq, "__file__", "?")}))
    """
)

SHIM = '"""Test shim: torchdiffeq resolves to pysciml_grad.torchdiffeq."""\nfrom pysciml_grad.torchdiffeq import *  # noqa\nfrom pysciml_grad.torchdiffeq import __version__  # noqa\n'


def run_module(tests: Path, module: str, impl: str, timeout: float) -> dict:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(tests)]
        if impl == "ours":
            shim = Path(tmp) / "torchdiffeq"
            shim.mkdir()
            (shim / "__init__.py").write_text(SHIM)
            paths = [tmp, str(ROOT)] + paths
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
        start = time.time()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", RUNNER, module], cwd=tests, env=env, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"records": [], "seconds": time.time() - start, "crashed": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@JSON@@"):
            return json.loads(line[len("@@JSON@@"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"records": [], "seconds": time.time() - start, "crashed": tail[0][:300]}


def summarise(results: dict) -> dict:
    total = passed = 0
    failing = []
    for module, res in results.items():
        for r in res["records"]:
            total += 1
            passed += r["ok"]
            if not r["ok"]:
                failing.append({"module": module, **r})
    return {"total": total, "passed": passed, "failed": total - passed, "failing": failing}


def docs_block(suite: str, impl: str, results: dict, summary: dict) -> str:
    lines = [
        f"Suite `torchdiffeq-{suite}` (`../shared/peer-tests/torchdiffeq-{suite}/`, unmodified), "
        f"implementation `{impl}`: **{summary['passed']} of {summary['total']} subtests pass**, "
        f"{summary['failed']} fail (`python benchmarks/torchdiffeq_suite.py --suite {suite}`).",
        "",
        "| module | subtests | passed | seconds |",
        "|---|---|---|---|",
    ]
    for module, res in results.items():
        n = len(res["records"])
        ok = sum(r["ok"] for r in res["records"])
        extra = f" ({res['crashed']})" if res.get("crashed") else ""
        lines.append(f"| {module} | {n} | {ok} | {res['seconds']:.0f}{extra} |")
    if summary["failing"]:
        lines += ["", "Failing subtests and the reason each fails:", ""]
        for r in summary["failing"]:
            test = r["test"].split(".", 1)[-1]
            lines.append(f"- `{test}` {r['sub']}: {r['reason']}")
    return "\n".join(lines)


def write_block(begin: str, end: str, block: str, heading: str = "") -> None:
    """Put ``block`` between the ``begin`` and ``end`` markers of DOCS; where they are missing, append
    ``heading`` and the marked block (torchdiffeq_examples.py writes its table the same way)."""
    text = DOCS.read_text() if DOCS.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{block}\n{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{heading}{begin}\n{block}\n{end}\n"
    DOCS.write_text(text)


def write_docs(suite: str, block: str) -> None:
    write_block(f"<!-- suite {suite} begin -->", f"<!-- suite {suite} end -->", block)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="0.2.5", choices=("0.2.5", "master"))
    p.add_argument("--tests", type=Path, default=None, help="folder holding the suite (default: ../shared)")
    p.add_argument("--impl", default="ours", choices=("ours", "torchdiffeq"))
    p.add_argument("--modules", nargs="*", default=list(MODULES))
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per module")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON results file")
    args = p.parse_args(argv)
    tests = args.tests or SHARED / f"torchdiffeq-{args.suite}"
    if not tests.is_dir():
        print(f"no test folder at {tests}", file=sys.stderr)
        return 2
    results = {}
    for module in args.modules:
        res = run_module(tests, module, args.impl, args.timeout)
        results[module] = res
        ok = sum(r["ok"] for r in res["records"])
        print(f"{module:16s} {ok:4d} / {len(res['records']):4d}  {res['seconds']:6.0f} s"
              + (f"  CRASHED: {res['crashed']}" if res.get("crashed") else ""), flush=True)
    summary = summarise(results)
    print(f"total: {summary['passed']} of {summary['total']} subtests pass")
    if not args.quiet:
        for r in summary["failing"]:
            print(f"  FAIL {r['test']} {r['sub']}: {r['reason']}")
    out = ROOT / "benchmarks" / f"torchdiffeq_suite_{args.suite}_{args.impl}.json"
    if not args.no_save:
        out.write_text(json.dumps({"suite": args.suite, "impl": args.impl, "summary": summary,
                               "modules": {m: {k: v for k, v in r.items() if k != "records"} | {
                                   "passed": sum(x["ok"] for x in r["records"]), "total": len(r["records"])}
                                   for m, r in results.items()}}, indent=1))

    if args.write_docs:
        write_docs(args.suite, docs_block(args.suite, args.impl, results, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
