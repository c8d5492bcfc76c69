"""The latent-ODE example's problem in the form ``python -m pysciml_grad audit`` reads.

    python -m pysciml_grad audit examples/audit_latent_ode.py [--json examples/output/audit_latent_ode.json]

Defines ``func`` (the latent dynamics of examples/latent_ode_irregular.py, a 4-32-32-4 tanh
MLP at its seed-0 initialisation), ``y0`` (the latent initial states its GRU encoder gives
the 32 seed-0 series, detached: the audit differentiates the solve, not the encoder), ``t``
(the series' own observation times, a NaN-padded ``(32, T)`` tensor: the per-sample save
times the package solves on their union), ``loss`` (the example's masked MSE of the linear
decoder's output against the observations) and the solver settings the example trains with
(dopri5, rtol 1e-4, atol 1e-6, float32).
"""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import latent_ode_irregular as lat  # noqa: E402

_args = lat.parse_args([])
t, _obs, _z0, _sign = lat.make_data(_args.series, _args.min_obs, _args.max_obs, _args.noise, 0, _args.grid)
torch.manual_seed(0)
_model = lat.Model()
func = _model.func
with torch.no_grad():
    y0 = _model.encoder(t, _obs)
method, rtol, atol = "dopri5", _args.rtol, _args.rtol * 1e-2

# the audit's float64 reference passes float64 states: the decoder and data follow them
_by_dtype = {torch.float32: (_model, _obs)}


def loss(ys):
    if ys.dtype not in _by_dtype:
        model = copy.deepcopy(_model).to(ys.dtype)
        _by_dtype[ys.dtype] = (model, _obs.to(ys.dtype))
    model, obs = _by_dtype[ys.dtype]
    return lat.masked_mse(model, ys, obs)
