"""Every sensealg against the closed-form gradient of ACA's toy problem.

dz/dt = a z, z(0) = z0, L = z(T)^2 for T = 1..5 and rtol = 1e-3..1e-9 (atol = 1e-3 rtol):
the relative errors of dL/da and dL/dz0 must shrink with the tolerance. The table is
printed (``pytest -s``) and copied into docs/readme_adjoints.md.
"""

import pytest

from adjoint_cases import SENSEALGS, TOY_A, TOY_Z0, toy_errors

RTOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
TS = [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.fixture(scope="module")
def table():
    return {name: {(rtol, T): max(toy_errors(sa, T, rtol)) for rtol in RTOLS for T in TS} for name, sa in SENSEALGS.items()}


def test_print_toy_table(table):
    lines = [
        f"ACA toy dz/dt = a z, a = {TOY_A}, z0 = {TOY_Z0}, L = z(T)^2, dopri5, atol = 1e-3 rtol: "
        "max relative error of (dL/da, dL/dz0)",
        "| sensealg | rtol | " + " | ".join(f"T={T:g}" for T in TS) + " |",
        "|---|---|" + "---|" * len(TS),
    ]
    for name in table:
        for rtol in RTOLS:
            lines.append(f"| {name} | {rtol:.0e} | " + " | ".join(f"{table[name][(rtol, T)]:.1e}" for T in TS) + " |")
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize("name", list(SENSEALGS))
def test_converges_as_tolerances_tighten(name, table):
    errors = table[name]
    for T in TS:
        loose, tight = errors[(1e-3, T)], errors[(1e-9, T)]
        assert tight < 2e-8, (T, tight)
        assert tight < loose / 1e3, (T, loose, tight)
        # Within a modest factor of the tolerance at every rtol (global error ~ rtol).
        for rtol in RTOLS:
            assert errors[(rtol, T)] < 10 * rtol, (T, rtol, errors[(rtol, T)])
