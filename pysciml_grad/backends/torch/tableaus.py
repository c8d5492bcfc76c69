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
the first column simplifying assumption", for tsit5. The tables added for torchdiffeq
parity (heun3, rk38, fehlberg2, dopri8) are read from torchdiffeq 0.2.5's source,
github.com/rtqichen/torchdiffeq at a88aac5, files ``torchdiffeq/_impl/fixed_grid.py``,
``rk_common.py`` (``rk4_alt_step_func``: Kutta's 3/8 rule), ``fehlberg2.py`` and
``dopri8.py``; the classical references are Kutta (1901) for the 3/8 rule, Fehlberg
(1969, NASA TR R-315) for RKF1(2), Prince & Dormand (1981), "High order embedded
Runge-Kutta formulae", for the 8(7) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

# --- Tables added for torchdiffeq parity (provenance in the module docstring) ---------

HEUN3 = ButcherTableau(
    "heun3", 3, c=(0.0, 1 / 3, 2 / 3), a=((1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4)
)

# Kutta's 3/8 rule: torchdiffeq's "rk4" (rk4_alt_step_func), a smaller error constant
# than the classical rk4 for one extra subtraction.
RK38 = ButcherTableau(
    "rk38",
    4,
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
)

# Fehlberg's RKF1(2): the propagated solution is the 2nd-order one (b), the embedded
# 1st-order one is (1/256, 255/256, 0).
_FEHLBERG2_B = (1 / 512, 255 / 256, 1 / 512)
FEHLBERG2 = ButcherTableau(
    "fehlberg2",
    2,
    c=(0.0, 0.5, 1.0),
    a=((0.5,), (1 / 256, 255 / 256)),
    b=_FEHLBERG2_B,
    b_err=_err(_FEHLBERG2_B, (1 / 256, 255 / 256, 0.0)),
    error_order=1,
)

_DOPRI8_C = (
    0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821,
    13 / 20, 1201146811 / 1299019798, 1.0, 1.0, 1.0,
)
_DOPRI8_A = (
    (1 / 18,),
    (1 / 48, 1 / 16),
    (1 / 32, 0.0, 3 / 32),
    (5 / 16, 0.0, -75 / 64, 75 / 64),
    (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
    (29443841 / 614563906, 0.0, 0.0, 77736538 / 692538347, -28693883 / 1125000000, 23124283 / 1800000000),
    (16016141 / 946692911, 0.0, 0.0, 61564180 / 158732637, 22789713 / 633445777, 545815736 / 2771057229,
     -180193667 / 1043307555),
    (39632708 / 573591083, 0.0, 0.0, -433636366 / 683701615, -421739975 / 2616292301, 100302831 / 723423059,
     790204164 / 839813087, 800635310 / 3783071287),
    (246121993 / 1340847787, 0.0, 0.0, -37695042795 / 15268766246, -309121744 / 1061227803,
     -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457, 123872331 / 1001029789),
    (-1028468189 / 846180014, 0.0, 0.0, 8478235783 / 508512852, 1311729495 / 1432422823,
     -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
     -45442868181 / 3398467696, 3065993473 / 597172653),
    (185892177 / 718116043, 0.0, 0.0, -3185094517 / 667107341, -477755414 / 1098053517,
     -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563, -4093664535 / 808688257,
     3962137247 / 1805957418, 65686358 / 487910083),
    (403863854 / 491063109, 0.0, 0.0, -5068492393 / 434740067, -411421997 / 543043805,
     652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034, 3936647629 / 1978049680,
     -160528059 / 685178525, 248638103 / 1413531060, 0.0),
)
_DOPRI8_B = (
    14005451 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493 / 1068277825, 181606767 / 758867731,
    561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299, 118820643 / 751138087,
    -528747749 / 2220607170, 1 / 4, 0.0,
)
# The 7th-order embedded weights (torchdiffeq's C_err = b - b_hat, b_hat[12] = 0).
_DOPRI8_B_HAT = (
    13451932 / 455176623, 0.0, 0.0, 0.0, 0.0, -808719846 / 976000145, 1757004468 / 5645159321,
    656045339 / 265891186, -3867574721 / 1518517206, 465885868 / 322736535, 53011238 / 667516719,
    2 / 45, 0.0, 0.0,
)
# Continuous extension b_i(theta), columns theta^1..theta^6: the polynomials torchdiffeq's
# dopri8.py evaluates at theta = 1/2 for its midpoint ("C_mid"); used here at every theta.
_DOPRI8_DENSE_NONZERO = {
    0: (1.0, -6.6910181737837595697, 19.9990069333683970610, -30.0610568289666450593,
        22.1396504998094068976, -6.3448349392860401388),
    5: (0.0, -7.6142658045872677172, 52.2273532792945524050, -121.4999627731334642623,
        116.4422149550342161651, -39.6107919852202505218),
    6: (0.0, 10.7281392630428866124, -46.8919164181093621583, 83.1721004639847717481,
        -67.1451318825957197185, 20.3761213808791436958),
    7: (0.0, 0.5526637063753648783, -0.1890893225010595467, 9.5724507555993664382,
        -16.5672243527496524646, 7.3347098826795362023),
    8: (0.0, 4.2186562625665153803, -35.7075975946222072821, 87.8406057677205645007,
        -89.9916014847245016028, 32.8801774352459155182),
    9: (0.0, -0.6627209125361597559, 6.2736448083240352160, -17.4152107770762969005,
        22.6237489648532849093, -10.1588990526426760954),
    10: (0.0, -1.2636789001135462218, 10.3160881272450748458, -28.5903289514790976966,
         32.2362340167355370113, -12.5401268098782561200),
    11: (0.0, 5.4106037898590422230, -34.7650769866611817349, 81.6630950584341412934,
         -82.1020315488359848644, 29.5553001484516038033),
    12: (0.0, -7.0321379067945741781, 47.7457971078225540396, -114.9375291377009418170,
         116.2662185791119533462, -41.7923486424390588923),
    13: (0.0, 2.3537586759714983486, -19.0082099341608028453, 50.2558364226176017553,
         -53.9020777466385396792, 20.3006925822100825485),
}
DOPRI8 = ButcherTableau(
    "dopri8",
    8,
    c=_DOPRI8_C,
    a=_DOPRI8_A + (_DOPRI8_B[:13],),
    b=_DOPRI8_B,
    b_err=_err(_DOPRI8_B, _DOPRI8_B_HAT),
    error_order=7,
    fsal=True,
    dense=tuple(_DOPRI8_DENSE_NONZERO.get(i, (0.0,) * 6) for i in range(14)),
)
# The printed 20-digit coefficients sum to b only to ~1e-12 in float64; move that rounding
# into the theta^6 column so the interpolant ends exactly at y_{n+1} (continuity).
DOPRI8 = replace(
    DOPRI8,
    dense=tuple(row[:-1] + (row[-1] + (b - sum(row)),) for row, b in zip(DOPRI8.dense, DOPRI8.b)),
)

TABLEAUS = {
    tab.name: tab
    for tab in (EULER, MIDPOINT, HEUN, RALSTON, RK4, HEUN_EULER, BOSH3, DOPRI5, TSIT5,
                HEUN3, RK38, FEHLBERG2, DOPRI8)
}


# --- Implicit Runge-Kutta tables ---------------------------------------------------------


class FixedStepImplicit:
    """What the integration loops read off a table, as an implicit fixed-step method has it
    (no embedded pair, no FSAL stage, no continuous extension; stages need J): shared by the
    table (:class:`ImplicitTableau`) and the solve-bound method (``implicit.method.ImplicitRK``)."""

    uses_jacobian = True
    adaptive = False
    b_err = None
    error_order = None
    fsal = False
    dense = None


@dataclass(frozen=True)
class ImplicitTableau(FixedStepImplicit):
    """One implicit Runge-Kutta method: the full s x s matrix ``a`` (rows), nodes ``c``
    and weights ``b``; the step solves the stage equations

        K_i = f(t_n + c_i h, y_n + h sum_j a_ij K_j),  i = 1..s,   y_{n+1} = y_n + h sum_i b_i K_i.

    The structure of ``a`` decides how they are solved (no flag): lower triangular
    (diagonally implicit, DIRK) means one stage at a time, each with the Newton matrix
    I - h a_ii J (a zero diagonal entry is an explicit stage); otherwise all s stages are
    coupled (fully implicit) and Newton uses I - h A (x) J.

    Sources: Hairer & Wanner, *Solving ODEs II*, IV.5 (Gauss-Legendre orders 4 and 6,
    Radau IIA orders 3 and 5; Table 5.2, 5.5, 5.6) and IV.6 (SDIRK); the trapezoid rule
    as the 2-stage Lobatto IIIA method; Alexander (1977), "Diagonally implicit Runge-Kutta
    methods for stiff ODEs", for the L-stable 2-stage SDIRK with gamma = 1 - sqrt(2)/2;
    Hosea & Shampine (1996), "Analysis and implementation of TR-BDF2", for TR-BDF2 as an
    ESDIRK with gamma = 2 - sqrt(2) (a_22 = gamma / 2, third row (w, w, gamma/2), w =
    sqrt(2)/4). Cross-checked against torchdiffeq master (github.com/rtqichen/torchdiffeq at
    657943a, ``torchdiffeq/_impl/fixed_grid_implicit.py``): every ``a``, ``b`` agrees;
    its Gauss-Legendre 4 lists the node 1/2 - sqrt(3)/6 twice (``alpha``), where the
    method's second node is 1/2 + sqrt(3)/6 (our ``c``; the order test measures 4 on a
    time-dependent f only with it).
    """

    name: str
    order: int
    c: Row
    a: Tuple[Row, ...]
    b: Row
    #: |R(z)| -> 0 as z -> -inf (the method damps infinitely stiff components).
    l_stable: bool = False

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def diagonally_implicit(self) -> bool:
        return all(self.a[i][j] == 0.0 for i in range(self.stages) for j in range(i + 1, self.stages))

    def explicit_stage(self, i: int) -> bool:
        """Stage i depends only on earlier stages (DIRK with a_ii = 0)."""
        return self.diagonally_implicit and self.a[i][i] == 0.0


_S2, _S3, _S6, _S15 = 2 ** 0.5, 3 ** 0.5, 6 ** 0.5, 15 ** 0.5
_G_SDIRK2 = 1 - _S2 / 2
_G_TRBDF2 = 2 - _S2

IMPLICIT_EULER = ImplicitTableau("implicit_euler", 1, c=(1.0,), a=((1.0,),), b=(1.0,), l_stable=True)
IMPLICIT_MIDPOINT = ImplicitTableau("implicit_midpoint", 2, c=(0.5,), a=((0.5,),), b=(1.0,))
TRAPEZOID = ImplicitTableau("trapezoid", 2, c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5))
RADAU_IIA3 = ImplicitTableau(
    "radauIIA3", 3, c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(3 / 4, 1 / 4), l_stable=True
)
RADAU_IIA5 = ImplicitTableau(
    "radauIIA5",
    5,
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
    a=(
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    ),
    b=((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    l_stable=True,
)
GL4 = ImplicitTableau(
    "gl4",
    4,
    c=(0.5 - _S3 / 6, 0.5 + _S3 / 6),
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)),
    b=(0.5, 0.5),
)
GL6 = ImplicitTableau(
    "gl6",
    6,
    c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    a=(
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
)
SDIRK2 = ImplicitTableau(
    "sdirk2", 2, c=(_G_SDIRK2, 1.0), a=((_G_SDIRK2, 0.0), (1 - _G_SDIRK2, _G_SDIRK2)), b=(1 - _G_SDIRK2, _G_SDIRK2),
    l_stable=True,
)
TRBDF2 = ImplicitTableau(
    "trbdf2",
    2,
    c=(0.0, _G_TRBDF2, 1.0),
    a=((0.0, 0.0, 0.0), (_G_TRBDF2 / 2, _G_TRBDF2 / 2, 0.0), (_S2 / 4, _S2 / 4, _G_TRBDF2 / 2)),
    b=(_S2 / 4, _S2 / 4, _G_TRBDF2 / 2),
    l_stable=True,
)

IMPLICIT_TABLEAUS = {
    tab.name: tab
    for tab in (IMPLICIT_EULER, IMPLICIT_MIDPOINT, TRAPEZOID, RADAU_IIA3, RADAU_IIA5, GL4, GL6, SDIRK2, TRBDF2)
}


# --- Adaptive ESDIRK tables (embedded pairs) -----------------------------------------------


@dataclass(frozen=True)
class EmbeddedImplicitTableau(ImplicitTableau):
    """A singly diagonally implicit RK method with an explicit first stage (ESDIRK) and an
    embedded pair: the stages are those of :class:`ImplicitTableau` (a_11 = 0, c_1 = 0, so
    K_1 = f(t_n, y_n); a_ii = gamma for i > 1), the error estimate is

        err = h sum_i b_err_i K_i,   b_err = b - b_hat,

    ``error_order`` the order of b_hat (the controller's exponent). ``smooth_error=True``:
    the estimate handed to the controller is (I - gamma h J)^{-1} err, the filter of
    Hairer & Wanner, *Solving ODEs II*, IV.8, eq. (8.20) (there for Radau5), which keeps
    err bounded as h lambda -> -inf; OrdinaryDiffEq.jl applies the same W-solve to these
    methods' estimates (``smooth_est = true``). Off here, as in diffrax: on Robertson,
    Van der Pol and HIRES at rtol 1e-6 (benchmarks/stiff.py) the filtered estimate allowed
    ~20% longer steps, across which the cubic Hermite dense output lost up to 10x accuracy
    at the save times (kvaerno5 on HIRES: 2e-4 against 1.3e-5). ``fsal``: the table
    is stiffly accurate (b = last row of a, c_s = 1), so K_s = f(t_n + h, y_{n+1}) up to
    the Newton tolerance and serves as the next step's K_1.

    Dense output: cubic Hermite through (y_n, K_1) and (y_{n+1}, K_s) (``stepping.hermite``),
    as diffrax does for these methods (``ThirdOrderHermitePolynomialInterpolation``).
    """

    b_err: Row = ()
    error_order: int = 0
    fsal: bool = False
    smooth_error: bool = False

    adaptive = True
    #: The adaptive loop ends steps on the save times (as options step_t would) rather than
    #: interpolating them: cubic Hermite is third order, and across the long steps a stiff
    #: solve takes it missed the tolerance by orders of magnitude at rtol 1e-6
    #: (benchmarks/stiff.py: kvaerno5 on Robertson 0.16 against 2.0e-6 with the saves as
    #: step points, 66 against 72 steps; Van der Pol mu = 1000 3.3e-4 against 1.8e-5, 492
    #: against 497). Not when dL/dt is wanted: a save's gradient then comes from the
    #: interpolant.
    steps_to_saves = True

    @property
    def gamma(self) -> float:
        return self.a[-1][-1]


def _esdirk_rows(gamma: float, lower: Tuple[Row, ...]) -> Tuple[Row, ...]:
    """The full s x s matrix from the strictly lower rows 2..s and the diagonal (0, gamma, ...)."""
    s = len(lower) + 1
    rows = [(0.0,) * s]
    for i, row in enumerate(lower, start=1):
        rows.append(tuple(row) + (gamma,) + (0.0,) * (s - i - 1))
    return tuple(rows)


# Kvaerno (2004), "Singly diagonally implicit Runge-Kutta methods with an explicit first
# stage", BIT 44, 489-502: the 7-stage 5(4) pair, L-stable, stiffly accurate, gamma = 0.26.
# Coefficients read from OrdinaryDiffEq.jl (github.com/SciML/OrdinaryDiffEq.jl at
# b211787f7b18d3c5391121bd8c9e2d5fee54efee, lib/OrdinaryDiffEqSDIRK/src/sdirk_tableaus.jl,
# ``Kvaerno5Tableau``) and cross-checked digit for digit against diffrax
# (github.com/patrick-kidger/diffrax at 5ea5fcb05058bd22548300a10ea5ef5ce7fb75bb = diffrax 0.7.2,
# diffrax/_solver/kvaerno5.py): a, c and the embedded weights agree (OrdinaryDiffEq's
# btilde = a_6 - a_7 is the negative of diffrax's b_error = a_7 - a_6). b_hat is row 6.
_KV_G = 0.26
_KV_LOWER = (
    (_KV_G,),
    (0.13, 0.84033320996790809),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676),
    (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
     0.06962479448202728),
)
_KV_A = _esdirk_rows(_KV_G, _KV_LOWER)
KVAERNO5 = EmbeddedImplicitTableau(
    "kvaerno5",
    5,
    # Upstream's c (OrdinaryDiffEq c3..c6, diffrax c); equal to the row sums of a to 1e-15 (a test checks).
    c=(0.0, 0.52, 1.230333209967908, 0.895765984350076, 0.436393609858648, 1.0, 1.0),
    a=_KV_A,
    b=_KV_A[-1],
    l_stable=True,
    b_err=tuple(b - bh for b, bh in zip(_KV_A[-1], _KV_A[-2])),
    error_order=4,
    fsal=True,
)

# Kennedy & Carpenter (2003), "Additive Runge-Kutta schemes for convection-diffusion-reaction
# equations", Appl. Numer. Math. 44, 139-181: ARK4(3)6L[2]SA, its ESDIRK half (6 stages,
# L-stable, stiffly accurate, gamma = 1/4), run fully implicit here (no IMEX split).
# Coefficients read from OrdinaryDiffEq.jl (same commit, same file, ``KenCarp4Tableau``:
# a_ij, btilde = b_hat - b, c3..c5) and cross-checked against diffrax
# (same commit, diffrax/_solver/kencarp4.py: ``_implicit_tableau``, ``_b_sol_embedded``):
# every fraction agrees, and b_hat - b computed from diffrax's b_hat gives OrdinaryDiffEq's btilde.
_KC_G = 0.25
_KC_LOWER = (
    (_KC_G,),
    (8611 / 62500, -1743 / 31250),
    (5012029 / 34652500, -654441 / 2922500, 174375 / 388108),
    (15267082809 / 155376265600, -71443401 / 120774400, 730878875 / 902184768, 2285395 / 8070912),
    (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211),
)
_KC_A = _esdirk_rows(_KC_G, _KC_LOWER)
_KC_B_HAT = (4586570599 / 29645900160, 0.0, 178811875 / 945068544, 814220225 / 1159782912,
             -3700637 / 11593932, 61727 / 225920)
KENCARP4 = EmbeddedImplicitTableau(
    "kencarp4",
    4,
    c=(0.0, 0.5, 83 / 250, 31 / 50, 17 / 20, 1.0),
    a=_KC_A,
    b=_KC_A[-1],
    l_stable=True,
    b_err=tuple(b - bh for b, bh in zip(_KC_A[-1], _KC_B_HAT)),
    error_order=3,
    fsal=True,
)

ESDIRK_TABLEAUS = {tab.name: tab for tab in (KVAERNO5, KENCARP4)}
#: SciML's spellings (OrdinaryDiffEq.jl algorithm names) for the same tables.
ESDIRK_SCIML_NAMES = {"Kvaerno5": "kvaerno5", "KenCarp4": "kencarp4"}
