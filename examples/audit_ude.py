"""The UDE example's problem in the form ``python -m pysciml_grad audit`` reads.

    python -m pysciml_grad audit examples/audit_ude.py [--json examples/output/audit_ude.json]

Defines ``func`` (the Lotka-Volterra UDE of examples/ude_lotka_volterra.py: known linear
terms + a 2-32-32-2 tanh MLP at its seed-0 initialisation), ``y0`` and ``t`` (the 21
observation times on [0, 5]), ``loss`` (MSE against the seed-0 noisy data) and the
solver settings the example trains with (tsit5, rtol 1e-6, atol 1e-8).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import ude_lotka_volterra as ude  # noqa: E402

t, _clean, data, _sd = ude.make_data(5e-3, seed=0)
_rates = (data[1:] - data[:-1]) / (t[1:] - t[:-1])[:, None]
func = ude.UDE(32, 0, data.abs().amax(0), _rates.abs().amax(0))
y0 = data[0].clone()
method, rtol, atol = "tsit5", 1e-6, 1e-8


def loss(ys):
    return ((ys - data) ** 2).mean()
