"""Rosenbrock tables as data (formulas in ``rosenbrock.py``).

Coefficients read from OrdinaryDiffEq.jl (github.com/SciML/OrdinaryDiffEq.jl, commit
b211787f7b18d3c5391121bd8c9e2d5fee54efee):

* Rodas4: ``lib/OrdinaryDiffEqRosenbrockTableaus/src/rosenbrock_tableaus.jl``
  (RODAS4A, RODAS4C, RODAS4c, RODAS4d, RODAS4H, gamma = 0.25, b = A[6,:] + e_6,
  btilde = e_6). Hairer & Wanner, *Solving ODEs II*, IV.7, Table 7.2 (RODAS);
  order 4, embedded order 3, L-stable, stiffly accurate.
* Rodas5P: ``lib/OrdinaryDiffEqRosenbrock/src/rosenbrock_tableaus.jl`` (RODAS5PA,
  RODAS5PC, RODAS5Pc, RODAS5Pd, RODAS5PH, gamma = 0.21193756319429014, b = A[8,:] + e_8,
  btilde = e_8). Steinebach (2023), "Construction of Rosenbrock-Wanner method Rodas5P
  and numerical benchmarks within the Julia Differential Equations package", BIT 63, 27;
  order 5, embedded order 4, L-stable, stiffly accurate.
* ROS3P: ``lib/OrdinaryDiffEqRosenbrockTableaus/src/rosenbrock_tableaus.jl``
  (``ROS3PRodasTableau``: gamma = 1/2 + sqrt(3)/6 and the coefficients built from it,
  no H: Hermite dense output). Lang & Verwer (2001), "ROS3P - an accurate third-order
  Rosenbrock solver designed for parabolic problems", BIT 41; order 3, embedded order 2,
  A-stable.

The orders are measured by ``tests/test_rosenbrock.py`` (fixed steps, known solution).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

from .rosenbrock import RosenbrockTableau


def _lower(matrix: Sequence[Sequence[float]]) -> Tuple[Tuple[float, ...], ...]:
    """Rows 2..s of a strictly lower-triangular s x s (or s x (s-1)) matrix, row i keeping i-1 entries."""
    return tuple(tuple(float(x) for x in matrix[i][:i]) for i in range(1, len(matrix)))


_RODAS4A = (
    (0, 0, 0, 0, 0, 0),
    (1.544, 0, 0, 0, 0, 0),
    (0.9466785280815826, 0.2557011698983284, 0, 0, 0, 0),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817, 0, 0, 0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 0, 0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1, 0),
)
_RODAS4C = (
    (0, 0, 0, 0, 0),
    (-5.6688, 0, 0, 0, 0),
    (-2.430093356833875, -0.2063599157091915, 0, 0, 0),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0, 0),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616, 0),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
)
_RODAS4H = (
    (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0),
    (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0),
)

RODAS4 = RosenbrockTableau(
    "rodas4",
    4,
    gamma=0.25,
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    A=_lower(_RODAS4A),
    C=_lower(_RODAS4C),
    d=(0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0),
    b=tuple(float(x) for x in _RODAS4A[5][:5]) + (1.0,),
    b_err=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    error_order=3,
    H=tuple(tuple(float(x) for x in row) for row in _RODAS4H),
)

_RODAS5PA = (
    (0, 0, 0, 0, 0, 0, 0, 0),
    (3.0, 0, 0, 0, 0, 0, 0, 0),
    (2.849394379747939, 0.45842242204463923, 0, 0, 0, 0, 0, 0),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0, 0, 0, 0),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641, 0, 0, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946, 0, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946, 1, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946, 1, 1, 0),
)
_RODAS5PC = (
    (0, 0, 0, 0, 0, 0, 0),
    (-14.155112264123755, 0, 0, 0, 0, 0, 0),
    (-17.97296035885952, -2.859693295451294, 0, 0, 0, 0, 0),
    (147.12150275711716, -1.41221402718213, 71.68940251302358, 0, 0, 0, 0),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306, 0, 0, 0),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471, 0, 0),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623,
     -28.087943162872662, 0),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047, -40.06618937091002,
     -54.66780262877968, -9.48861652309627),
)
_RODAS5PH = (
    (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204, 0.524948541321073,
     1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
    (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796, 20.176138334709044,
     15.98066361424651, -6.789040303419874, -6.710236069923372),
    (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643, -52.072871366152654,
     -59.78993625266729, -0.15582684282751913, 4.883087185713722),
)

RODAS5P = RosenbrockTableau(
    "rodas5p",
    5,
    gamma=0.21193756319429014,
    c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0),
    A=_lower(_RODAS5PA),
    C=_lower(_RODAS5PC),
    d=(0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069,
       0.0, 0.0, 0.0),
    b=tuple(float(x) for x in _RODAS5PA[7][:7]) + (1.0,),
    b_err=(0.0,) * 7 + (1.0,),
    error_order=4,
    H=_RODAS5PH,
)


def _ros3p() -> RosenbrockTableau:
    # Built as OrdinaryDiffEq's ROS3PRodasTableau builds it, from gamma.
    gamma = 0.5 + math.sqrt(3) / 6
    ig = 1 / gamma
    tmp = -ig * (2 - 0.5 * ig)
    tmp2 = ig * (2 / 3 - ig / 6)
    b = (ig * (1 + tmp2), tmp2, ig / 3)
    return RosenbrockTableau(
        "ros3p",
        3,
        gamma=gamma,
        c=(0.0, 1.0, 1.0),
        A=((ig,), (ig, 0.0)),
        C=((-ig * ig,), (-ig * (1 - tmp), tmp)),
        d=(0.7886751345948129, -0.2113248654051871, -1.077350269189626),
        b=b,
        b_err=(b[0] - 2.113248654051871, b[1] - 1.0, b[2] - 0.4226497308103742),
        error_order=2,
    )


ROS3P = _ros3p()

ROSENBROCK_TABLEAUS = {tab.name: tab for tab in (RODAS4, RODAS5P, ROS3P)}
#: SciML's spellings (OrdinaryDiffEq.jl algorithm names) for the same tables.
SCIML_NAMES = {"Rodas4": "rodas4", "Rodas5P": "rodas5p", "ROS3P": "ros3p"}
