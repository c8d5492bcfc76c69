"""The examples' training bar (examples/loss_bar.py) shows iterations done and the current loss,
with tqdm or, without it, as text lines; fed by a training loop or by psg.fit_lbfgs's callback."""

import io
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import loss_bar  # noqa: E402

import pysciml_grad as psg  # noqa: E402


def test_text_bar_shows_the_loss_every_tenth(monkeypatch):
    monkeypatch.setattr(loss_bar, "_tqdm", lambda: None)
    out = io.StringIO()
    losses = [1.0 / (k + 1) for k in range(20)]
    with loss_bar.LossBar(20, "adam", file=out) as bar:
        for v in losses:
            bar.step(v)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 2 of the 20 iterations
    assert lines[-1] == f"adam: 20/20  loss={losses[-1]:.4g}"
    assert [int(re.search(r"(\d+)/20", l)[1]) for l in lines] == list(range(2, 21, 2))


def quadratic_fit(bar):
    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    return psg.fit_lbfgs([x], lambda: ((x - 1.0) ** 2).sum() + 0.1 * (x ** 4).sum(), max_iter=30, chunk=3, callback=bar.at)


def test_text_bar_follows_fit_lbfgs(monkeypatch):
    monkeypatch.setattr(loss_bar, "_tqdm", lambda: None)
    out = io.StringIO()
    with loss_bar.LossBar(30, "lbfgs", file=out) as bar:
        res = quadratic_fit(bar)
    assert bar.done == res["iterations"] and bar.loss == res["final_loss"]
    assert out.getvalue().splitlines()[-1] == f"lbfgs: {res['iterations']}/30  loss={res['final_loss']:.4g}"


def test_tqdm_bar_shows_the_loss():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    with loss_bar.LossBar(30, "lbfgs", file=out) as bar:
        res = quadratic_fit(bar)
    text = out.getvalue()
    assert f"loss={res['final_loss']:.4g}" in text and f"{res['iterations']}/30" in text
