"""
    PySciMLGrad

The Julia half of `pysciml_grad`'s `backend = "julia"`: build an `ODEProblem` from what
Python hands over, solve it with an OrdinaryDiffEq algorithm and, on request, return a
pullback that maps dL/d(saved states) to (dL/du0, dL/dp) with a SciMLSensitivity method.

Python calls (through juliacall):

  - `compile_rhs(src)`: Julia source of f -> a compiled right-hand side;
  - `reverse_time(rhs)`: the same right-hand side in s = -t (decreasing save times);
  - `PyRHS(forward, pullback)`: a right-hand side implemented by Python callbacks;
  - `solve_forward(rhs, u0, p, ts, alg, opts, grid)` -> `(ys, stats)`;
  - `solve_with_pullback(rhs, u0, p, ts, alg, sensealg, opts, grid)` -> `(ys, stats, handle)`;
  - `apply_pullback(handle, dL_dys)` -> `(dL_du0, dL_dp)`.

`alg`, `sensealg` and `opts` are Julia source for constructor calls and a NamedTuple,
produced by `pysciml_grad/backends/julia/translate.py` and rebuilt here by `build`, which
evaluates nothing but whitelisted constructors and literals.
"""
module PySciMLGrad

using ADTypes: AutoFiniteDiff, AutoForwardDiff
using ChainRulesCore:
    ChainRulesCore,
    AbstractZero,
    NoTangent,
    ZeroTangent,
    ignore_derivatives,
    unthunk
using OrdinaryDiffEqBDF: FBDF, QNDF
using OrdinaryDiffEqLowOrderRK:
    BS3,
    BS5,
    DP5,
    Euler,
    Heun,
    Midpoint,
    OwrenZen3,
    OwrenZen4,
    OwrenZen5,
    RK4,
    Ralston
using OrdinaryDiffEqRosenbrock: ROS3P, Rodas4, Rodas4P, Rodas5, Rodas5P, Rosenbrock23
using OrdinaryDiffEqSDIRK: ImplicitEuler, KenCarp4, Kvaerno5, TRBDF2, Trapezoid
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqVerner: Vern6, Vern7, Vern8, Vern9
using PythonCall: Py, PyArray
using SciMLBase: SciMLBase, ODEFunction, ODEProblem, solve
using SciMLSensitivity:
    BacksolveAdjoint,
    EnzymeVJP,
    ForwardDiffSensitivity,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    ReverseDiffAdjoint,
    ReverseDiffVJP,
    TrackerVJP,
    ZygoteVJP
using Zygote: Zygote

export PyRHS, apply_pullback, compile_rhs, reverse_time, solve_forward, solve_with_pullback

"""Version of the Python <-> Julia calling convention; Python refuses a mismatch."""
const PROTOCOL_VERSION = 2

include("errors.jl")
include("build.jl")
include("arrays.jl")
include("rhs.jl")
include("solve.jl")

end # module PySciMLGrad
