"""The shared benchmark problems.

Every library in ``benchmarks/run.py`` solves exactly these problems, built from the same
seeded weights, so that times, function counts and gradients are comparable.

(a) ``mlp_problem()``: the speed problem. A neural ODE dy/dt = MLP(y) with state dimension
    2, MLP 2 -> 64 -> 64 -> 2 (tanh), float32, a batch of 512 initial states, integrated
    over t in [0, 1] with save times [0, 1]; the loss is mean(y(1)**2).
(b) ``memory_problem(n_steps)``: the same kind of model made bigger (batch and hidden
    width) so that memory is dominated by the autograd activations, integrated with
    fixed-step rk4 for N steps (``options={"step_size": 1/N}``), for the memory scaling
    runs at N = 100 and N = 1000.

Nothing here imports a peer library: only torch (and numpy for conversions).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

SEED = 0


class MLP(nn.Module):
    """dy/dt = W3 tanh(W2 tanh(W1 y + b1) + b2) + b3; autonomous, ``t`` is ignored."""

    def __init__(self, dim: int = 2, hidden: int = 64, seed: int = SEED, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim, hidden, dtype=dtype)
        self.l2 = nn.Linear(hidden, hidden, dtype=dtype)
        self.l3 = nn.Linear(hidden, dim, dtype=dtype)
        # Seeded init, independent of the global RNG state: PyTorch's default
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn in float64
        # from one generator so every dtype/device copy holds the same numbers.
        with torch.no_grad():
            for lin in (self.l1, self.l2, self.l3):
                bound = 1.0 / lin.in_features ** 0.5
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)

    def forward(self, t, y):  # noqa: D401 - torchdiffeq convention f(t, y)
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(y)))))

    def numpy_params(self) -> List:
        """Weights and biases in the order (W1, b1, W2, b2, W3, b3), as numpy arrays."""
        return [p.detach().cpu().numpy() for p in self.parameters()]


class Counted(nn.Module):
    """Wraps a vector field and counts its calls, split into forward and backward phases.

    Libraries count function evaluations differently (or not at all), so every torch
    solver in the benchmark is handed the same counting wrapper: ``n_calls[phase]`` is the
    number of times the library called f(t, y), whatever it does inside. ``phase`` is
    switched by the runner to "backward" just before ``loss.backward()``.
    """

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f
        self.phase = "forward"
        self.n_calls: Dict[str, int] = {"forward": 0, "backward": 0}
        self.n_accepted = 0
        self.n_rejected = 0

    def reset(self):
        self.phase = "forward"
        self.n_calls = {"forward": 0, "backward": 0}
        self.n_accepted = 0
        self.n_rejected = 0

    def forward(self, t, y):
        self.n_calls[self.phase] += 1
        return self.f(t, y)

    # torchdiffeq calls these hooks on the function it integrates (adaptive solvers).
    def callback_accept_step(self, t0, y0, dt):
        if self.phase == "forward":
            self.n_accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        if self.phase == "forward":
            self.n_rejected += 1


@dataclass
class Problem:
    """One benchmark problem: model, initial states, save times, solver settings."""

    name: str
    func: MLP
    y0: torch.Tensor
    t: torch.Tensor
    method: str
    rtol: float = 1e-6
    atol: float = 1e-8
    step_size: Optional[float] = None
    info: Dict = field(default_factory=dict)

    def loss(self, y_final: torch.Tensor) -> torch.Tensor:
        return (y_final ** 2).mean()

    def to(self, device=None, dtype=None) -> "Problem":
        """A copy on another device / dtype (same weights, cast)."""
        func = MLP(self.func.l1.in_features, self.func.l1.out_features)
        func.load_state_dict(self.func.state_dict())
        func = func.to(device=device, dtype=dtype)
        return Problem(self.name, func, self.y0.to(device=device, dtype=dtype),
                       self.t.to(device=device, dtype=dtype if dtype is not None else self.t.dtype),
                       self.method, self.rtol, self.atol, self.step_size, dict(self.info))


def _initial_states(batch: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, dim, generator=gen, dtype=torch.float32)


def mlp_problem(batch: int = 512, hidden: int = 64, rtol: float = 1e-6, atol: float = 1e-8,
                method: str = "dopri5", t1: float = 1.0) -> Problem:
    """(a) The speed problem: MLP 2->64->64->2 (tanh), batch 512, t in [0, t1=1], float32."""
    func = MLP(2, hidden)
    return Problem(
        name=f"mlp_node_b{batch}_h{hidden}_T{t1:g}",
        func=func,
        y0=_initial_states(batch, 2, SEED),
        t=torch.tensor([0.0, t1]),
        method=method,
        rtol=rtol,
        atol=atol,
        info=dict(batch=batch, hidden=hidden, dim=2, t_span=[0.0, t1], dtype="float32",
                  loss=f"mean(y({t1:g})^2)", method=method, rtol=rtol, atol=atol),
    )


# Memory problem size (defaults; ``run.py memory --mem-batch/--mem-hidden`` change them):
# big enough that the autograd activations dominate (DirectAD keeps 2 x batch x hidden
# floats per RHS evaluation: ~1 GiB at N = 1000 rk4 steps, against a few MiB for the
# states), small enough that every configuration runs in ~10-20 s on 2 busy cores.
# Wider settings are too slow for 2 cores: batch 1024 / hidden 128 took 150 s (and 8 GB
# RSS) for DirectAD at N = 1000 on this machine; batch 4096 / hidden 256 would be ~16x
# the work. Use them on a GPU: --device cuda --mem-batch 4096 --mem-hidden 256.
MEMORY_BATCH = 512
MEMORY_HIDDEN = 64


def memory_problem(n_steps: int, batch: int = MEMORY_BATCH, hidden: int = MEMORY_HIDDEN) -> Problem:
    """(b) Fixed-step rk4 with N steps over [0, 1] on a bigger MLP, for memory scaling."""
    func = MLP(2, hidden)
    return Problem(
        name=f"mlp_node_rk4_N{n_steps}_b{batch}_h{hidden}",
        func=func,
        y0=_initial_states(batch, 2, SEED),
        t=torch.tensor([0.0, 1.0]),
        method="rk4",
        step_size=1.0 / n_steps,
        info=dict(batch=batch, hidden=hidden, dim=2, t_span=[0.0, 1.0], dtype="float32",
                  loss="mean(y(1)^2)", method="rk4", n_steps=n_steps, step_size=1.0 / n_steps),
    )


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer read after it measures the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_medians(once: Callable[[], float], set_a: Callable[[], None], set_b: Callable[[], None],
                        repeats: int, warmup: int = 2) -> Tuple[float, float]:
    """Median times of ``once()`` under setting A and under setting B, the two run
    alternately call by call (so machine load hits both alike), the first ``warmup``
    rounds dropped; setting A is restored at the end."""
    on, off = [], []
    for r in range(repeats + warmup):
        set_a()
        a = once()
        set_b()
        b = once()
        if r >= warmup:
            on.append(a)
            off.append(b)
    set_a()
    return statistics.median(on), statistics.median(off)
