"""Butcher tableaux as data: one table per method, nothing else.

An explicit s-stage Runge-Kutta method advances y_n -> y_{n+1} by

    k_i = f(t_n + c_i h, y_n + h * sum_{j<i} a_ij k_j),   i = 1..s
    y_{n+1} = y_n + h * sum_i b_i k_i

An embedded pair adds a second weight vector b_hat of lower order; the local error
estimate is  err = h * sum_i (b_i - b_hat_i) k_i  (``b_err`` below).  A dense-output
(continuous extension) table gives  y(t_n + theta h) = y_n + h * sum_i b_i(theta) k_i
with  b_i(theta) = sum_p dense[i][p] * theta^(p+1).  Methods without one use cubic
Hermite interpolation between (y_n, f_n) and (y_{n+1}, f_{n+1}).

Sources: Hairer, Norsett, Wanner, *Solving ODEs I* (classical tables and Dormand-Prince
5(4) with its 4th-order dense output, as in SciPy's ``RK45``); Bogacki & Shampine
(1989) for bosh3; Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only
the first column simplifying assumption", for tsit5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

Row = Tuple[float, ...]


@dataclass(frozen=True)
class ButcherTableau:
    """One explicit Runge-Kutta method (see module docstring for the formulas).

    ``order`` is the order of the propagated solution; ``error_order`` the order of
    the embedded estimate (None for fixed-step methods). ``fsal``: the last stage is
    evaluated at y_{n+1}, so it is the next step's first stage ("first same as last").
    """

    name: str
    order: int
    c: Row
    a: Tuple[Row, ...]  # a[i] holds row i+1 of the strictly lower-triangular matrix
    b: Row
    b_err: Optional[Row] = None
    error_order: Optional[int] = None
    fsal: bool = False
    dense: Optional[Tuple[Row, ...]] = None

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None


def _err(b: Row, b_hat: Row) -> Row:
    return tuple(bi - bhi for bi, bhi in zip(b, b_hat))


EULER = ButcherTableau("euler", 1, c=(0.0,), a=(), b=(1.0,))

MIDPOINT = ButcherTableau("midpoint", 2, c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0))

HEUN = ButcherTableau("heun", 2, c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5))

RALSTON = ButcherTableau("ralston", 2, c=(0.0, 2 / 3), a=((2 / 3,),), b=(0.25, 0.75))

RK4 = ButcherTableau(
    "rk4",
    4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)

HEUN_EULER = ButcherTableau(
    "heun_euler",
    2,
    c=(0.0, 1.0),
    a=((1.0,),),
    b=(0.5, 0.5),
    b_err=_err((0.5, 0.5), (1.0, 0.0)),
    error_order=1,
)

BOSH3 = ButcherTableau(
    "bosh3",
    3,
    c=(0.0, 0.5, 0.75, 1.0),
    a=((0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_err=_err((2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
    error_order=2,
    fsal=True,
)

_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5 = ButcherTableau(
    "dopri5",
    5,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    b_err=_err(
        _DOPRI5_B,
        (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    ),
    error_order=4,
    fsal=True,
    # Shampine's 4th-order continuous extension (SciPy RK45.P); columns theta^1..theta^4.
    dense=(
        (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
        (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
        (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
        (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
        (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
    ),
)

_TSIT5_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
TSIT5 = ButcherTableau(
    "tsit5",
    5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    # b - b_hat as tabulated by Tsitouras (2011) / OrdinaryDiffEq's btilde.
    b_err=(
        -0.00178001105222577714,
        -0.0008164344596567469,
        0.007880878010261995,
        -0.1447110071732629,
        0.5823571654525552,
        -0.45808210592918697,
        0.015151515151515152,
    ),
    error_order=4,
    fsal=True,
    # Tsitouras' 4th-order continuous extension, expanded in powers theta^1..theta^4.
    dense=(
        (1.0, -2.763706197274826, 2.9132554618219126, -1.0530884977290216),
        (0.0, 0.13169999999999998, -0.2234, 0.1017),
        (0.0, 3.9302962368947516, -5.941033872131505, 2.490627285651253),
        (0.0, -12.411077166933676, 30.33818863028232, -16.548102889244902),
        (0.0, 37.50931341651104, -88.1789048947664, 47.37952196281928),
        (0.0, -27.896526289197286, 65.09189467479366, -34.87065786149661),
        (0.0, 1.5, -4.0, 2.5),
    ),
)

TABLEAUS = {
    tab.name: tab
    for tab in (EULER, MIDPOINT, HEUN, RALSTON, RK4, HEUN_EULER, BOSH3, DOPRI5, TSIT5)
}
