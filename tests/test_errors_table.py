"""benchmarks/errors_table.py writes its measured table into the errors page of the docs site
(docs/errors.md, between its markers), leaves the rest of the page alone, and every class the
table names is a real class of pysciml_grad.errors that the call raised."""

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import errors_table  # noqa: E402

import pysciml_grad.errors as errors  # noqa: E402


def test_errors_table_targets_the_docs_page():
    assert errors_table.DOC == ROOT / "docs" / "errors.md"
    text = errors_table.DOC.read_text()
    assert errors_table.START in text and errors_table.END in text


def test_errors_table_rewrites_only_its_block(tmp_path):
    doc, out = tmp_path / "errors.md", tmp_path / "errors_table.md"
    shutil.copy(errors_table.DOC, doc)
    before = doc.read_text()
    start, end = errors_table.START, errors_table.END
    doc.write_text(before.replace(start + "\n", start + "\nSTALE ROW\n", 1))
    threads = torch.get_num_threads()
    try:
        errors_table.main(doc=doc, out=out)
    finally:
        torch.set_num_threads(threads)  # main() pins one thread for its timings
    after = doc.read_text()
    assert "STALE ROW" not in after
    assert after.split(start)[0] == before.split(start)[0] and after.split(end)[1] == before.split(end)[1]
    rows = [line for line in after.split(start)[1].split(end)[0].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) - 1 == len(errors_table.CASES)  # one header row
    for row in rows[1:]:
        raised = row.split(" | ")[1]
        if raised == "nothing (solves)":
            continue
        name = re.fullmatch(r"`(\w+)`", raised).group(1)
        assert isinstance(getattr(errors, name, None), type) and issubclass(getattr(errors, name), Exception), row


def test_errors_table_refuses_a_page_without_markers(tmp_path):
    doc = tmp_path / "errors.md"
    doc.write_text("# Errors\n\nno markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        errors_table.write_block(doc, "| a | b |\n")
    assert doc.read_text() == "# Errors\n\nno markers here\n"
