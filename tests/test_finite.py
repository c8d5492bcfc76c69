"""all_finite (pysciml_grad/finite.py) against torch.isfinite, the definition it replaces."""

import pytest
import torch

from pysciml_grad.finite import all_finite

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BAD = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 16, 33, 1000])
def test_one_bad_element_anywhere_is_found(device, dtype, n):
    # Every position of short tensors (the vectorised reductions' heads, bodies and tails),
    # with finite values of both signs and magnitudes near the dtype's largest around it.
    big = torch.finfo(dtype).max
    base = (torch.linspace(-1, 1, n, dtype=torch.float64) * big).to(dtype).to(device)
    assert all_finite(base) is True
    for k in range(n):
        for bad in BAD:
            x = base.clone()
            x[k] = bad
            assert all_finite(x) is bool(torch.isfinite(x).all()) is False, (k, bad)


@pytest.mark.parametrize("device", DEVICES)
def test_large_and_shaped_and_strided_tensors(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 257, dtype=torch.float64, generator=gen).to(device)
    assert all_finite(x) and all_finite(x.t()) and all_finite(x[:, ::3])
    for idx in [(0, 0), (299, 256), (150, 128), (17, 255)]:
        for bad in BAD:
            z = x.clone()
            z[idx] = bad
            assert not all_finite(z) and not all_finite(z.t()), (idx, bad)
    z = x.clone()
    z[4, 1] = float("nan")
    assert all_finite(z[:, ::3]) is True  # column 1 is not in the view: 1 % 3 != 0
    z = x.clone()
    z[4, 3] = float("nan")
    assert all_finite(z[:, ::3]) is False


def test_other_dtypes_and_empty_and_grad():
    assert all_finite(torch.tensor([1.0, float("nan")], dtype=torch.float16)) is False
    assert all_finite(torch.tensor([1.0, 2.0], dtype=torch.bfloat16)) is True
    assert all_finite(torch.tensor([1 + 1j, complex("inf")])) is False
    assert all_finite(torch.tensor([1, 2])) is True
    assert all_finite(torch.empty(0)) is True
    assert all_finite(torch.tensor(float("-inf"))) is False
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    assert all_finite(w * 2) is True  # no graph built or needed
