"""The documentation site builds with ``mkdocs build --strict`` and every public name has a docstring.

Strict mode (with the ``validation:`` levels in mkdocs.yml) turns a broken link or anchor, a
docs/*.md page missing from ``nav:``, a missing snippet file and an unresolved ``:::`` API
reference into a failed build. mkdocs does not fail on an *empty* docstring, so that is a
separate test. The broken-site tests build a copy with one defect each, so a build that
passed whatever the pages said would fail them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.fail('mkdocs / mkdocstrings are not installed: pip install -e ".[test]" installs them')
    # no -q: quiet mode drops warnings before strict mode counts them, so nothing would fail
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=root, capture_output=True, text=True, timeout=300, env=env,
    )


def test_mkdocs_build_strict_passes(tmp_path):
    proc = build(ROOT, tmp_path)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # the API page is generated from the docstrings, not left empty
    assert 'id="pysciml_grad.odeint"' in api and "Solve dy/dt = func(t, y)" in api
    assert 'id="pysciml_grad.sensealg.CheckpointAdjoint"' in api and 'id="pysciml_grad.errors.InvalidTimeError"' in api


def site_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("docs", "benchmarks"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("*.json", "__pycache__", "*.py"))
    shutil.copytree(ROOT / "pysciml_grad", root / "pysciml_grad", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    return root


@pytest.mark.parametrize("defect", ["broken link", "page not in nav", "unresolved API reference", "missing snippet"])
def test_mkdocs_build_strict_fails_on_a_defect(tmp_path, defect):
    root = site_copy(tmp_path)
    page = root / "docs" / "getting-started.md"
    if defect == "broken link":
        page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    elif defect == "page not in nav":
        (root / "docs" / "orphan.md").write_text("# An orphan page\n")
    elif defect == "unresolved API reference":
        api = root / "docs" / "api.md"
        api.write_text(api.read_text() + "\n::: pysciml_grad.no_such_function\n")
    else:
        page.write_text(page.read_text() + '\n--8<-- "benchmarks/no_such_table.md"\n')
    proc = build(root, tmp_path)
    assert proc.returncode != 0, f"mkdocs build --strict passed despite a {defect}"


def own_doc(obj) -> str:
    # inspect.getdoc falls back to a base class's docstring: a subclass must have its own
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return (doc or "").strip()


def public_objects():
    import pysciml_grad as psg
    import pysciml_grad.corrected as corrected
    import pysciml_grad.errors as errors
    import pysciml_grad.julia as julia
    import pysciml_grad.sensealg as sensealg
    import pysciml_grad.torchdiffeq as torchdiffeq

    yield "pysciml_grad", psg
    for module in (psg, sensealg, errors, corrected, torchdiffeq, julia):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
                yield f"{module.__name__}.{name}", obj


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in public_objects() if not own_doc(obj)]
    assert not missing, f"public names without a docstring of their own: {missing}"


def api_coverage() -> set:
    """Dotted names the API page renders: each ``::: target``, its ``members:`` list, or,
    for a module referenced without one, every name in the module's ``__all__``."""
    covered = set()
    blocks = re.split(r"^(?=::: )", (ROOT / "docs" / "api.md").read_text(), flags=re.M)
    for block in blocks:
        if not block.startswith("::: "):
            continue
        target = block.split()[1]
        covered.add(target)
        members = re.findall(r"^\s+- (\w+)$", block, flags=re.M)
        if not members:
            module = sys.modules.get(target) or (importlib.import_module(target) if importlib.util.find_spec(target) else None)
            members = getattr(module, "__all__", []) if inspect.ismodule(module) else []
        covered.update(f"{target}.{m}" for m in members)
    return covered


def test_every_public_name_is_on_the_api_page():
    import pysciml_grad

    covered = api_coverage()
    missing = []
    for name, obj in public_objects():
        short = name.rsplit(".", 1)[-1]
        if inspect.ismodule(obj) or name in covered:
            continue
        if getattr(pysciml_grad, short, None) is obj and f"pysciml_grad.{short}" in covered:  # re-exported at the top
            continue
        defined = f"{getattr(obj, '__module__', '')}.{short}"  # e.g. pysciml_grad.sensealg.DirectAD
        if defined in covered:
            continue
        missing.append(name)
    assert not missing, f"public names missing from docs/api.md: {missing}"


def test_readme_links_resolve():
    # README.md is not part of the site, so mkdocs does not check its links
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to no docs page"
    broken = [link for link in local if not (ROOT / link).exists()]
    assert not broken, f"README links to missing files: {broken}"


def test_readme_example_runs_and_reaches_the_parameters():
    import torch

    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    ys, func = scope["ys"], scope["func"]
    assert ys.shape == (11, 512, 2)
    # the lambda closes over func: its parameters get gradients without params=
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in func.parameters())


def test_home_page_table_is_the_readme_table():
    # the site's home page repeats the README's "what is measured" table; links differ only by docs/
    readme = (ROOT / "README.md").read_text().split("## What is measured", 1)[1].split("\n## ", 1)[0]
    index = (ROOT / "docs" / "index.md").read_text().split("## What is measured", 1)[1].split("\n## ", 1)[0]
    assert index.strip() == readme.replace("](docs/", "](").strip()
