"""The gradient audit itself: every torch sensealg within tolerance of its oracle."""


from pysciml_grad import check


def test_audit_torch_rows_are_accurate():
    rows = check.audit(backends=("torch",), rtol=1e-7)
    assert len(rows) == 2 * len(check.TORCH_SENSEALGS)
    for row in rows:
        assert "skipped" not in row, row
        # closed form / float64 FD; the solve is at rtol 1e-7
        assert row["rel_error"] < 1e-5, row
        assert row["nfe"] > 0


def test_audit_reports_missing_julia_instead_of_failing():
    from pysciml_grad.backends.julia import availability

    ok, _ = availability()
    rows = check.audit(backends=("julia",), rtol=1e-6)
    if not ok:
        assert len(rows) == 1 and "not available" in rows[0]["skipped"]
    assert check.format_table(rows)
