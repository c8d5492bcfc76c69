"""The ODE block of examples/aca_digits.py in the form ``python -m pysciml_grad audit`` reads.

    python -m pysciml_grad audit examples/audit_conv_block.py [--json examples/output/audit_conv_block.json]

ANODE (Gholami, Keutzer & Biros 2019) argues that the continuous adjoint is unreliable for
ReLU conv blocks. This audits the gradient of the digits network's loss with respect to the
ODE block's input and parameters, at the example's training settings (heun_euler,
rtol = atol = 1e-2, float32, t in [0, 1]): ``func`` is the block's right-hand side
f(y) = conv(ReLU(GroupNorm(conv(ReLU(GroupNorm(y)))))) at the seed-0 initialisation (16
channels), ``y0`` the block's input for the first 8 test images, ``loss`` the
cross-entropy of the network's head (GroupNorm, ReLU, flatten, linear) on y(1). The audit's
reference is float64 DirectAD with dopri5 at rtol 1e-12, checked by finite differences.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import aca_digits as aca  # noqa: E402

_Xtr, _ytr, _Xte, _yte = aca.load_data(torch.device("cpu"))
torch.manual_seed(0)
_net = aca.Net(16, 4, aca.GRADIENTS["ACA"])
func = _net.block.field
with torch.no_grad():
    y0 = _net.down(F.relu(_net.norm0(_net.stem(_Xte[:8]))))
t = torch.tensor([0.0, 1.0])
_labels = _yte[:8]
method, rtol, atol = "heun_euler", aca.TOL, aca.TOL

_heads = {}


def loss(ys):
    if ys.dtype not in _heads:  # the float64 reference passes float64 states
        _heads[ys.dtype] = copy.deepcopy(torch.nn.ModuleList([_net.norm_out, _net.head])).to(ys.dtype)
    norm, head = _heads[ys.dtype]
    return F.cross_entropy(head(F.relu(norm(ys[-1])).flatten(1)), _labels)
