"""Where the backsolve adjoint fails, and the gradient methods that do not.

BacksolveAdjoint (Chen et al. 2018) recovers y(t) during the backward pass by solving the
ODE backwards in time from y(T). On a flow that contracts forwards in time, the reverse
flow expands, so the tiny forward error at T is amplified on the way back and the
adjoint is computed along the wrong trajectory. Two such problems:

* Van der Pol, mu = 5, t in [0, 5]: a strongly attracting limit cycle;
* a contracting flow dy/dt = -k (y - b) + 0.3 sin(flip(y)), t in [0, 10].

For each, the script prints the relative gradient error (max over y0 and the
parameters) of every sensealg against a float64 reference (CheckpointAdjoint at
rtol=1e-12), BacksolveAdjoint's measured reconstruction error (in units of the
tolerance) and whether it raised a GradientAccuracyWarning, then saves a plot of the
forward trajectory against the reverse-time reconstruction to
examples/output/backsolve_failure.png.

    python examples/backsolve_failure.py
"""

from __future__ import annotations

import os
import warnings

import torch

import pysciml_grad as psg

torch.set_num_threads(2)
DT = torch.float64
RTOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
SENSEALGS = {
    # The pre-issue-8 DirectAD, which differentiated the step-size controller (plain
    # DirectAD() now equals CheckpointAdjoint): the README's "DirectAD" column.
    "DirectAD(through_controller=True)": psg.DirectAD(through_controller=True),
    "CheckpointAdjoint": psg.CheckpointAdjoint(),
    "BacksolveAdjoint": psg.BacksolveAdjoint(),
    "InterpolatingAdjoint": psg.InterpolatingAdjoint(),
    "QuadratureAdjoint": psg.QuadratureAdjoint(),
}


class VanDerPol(torch.nn.Module):
    def __init__(self, mu=5.0):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=DT))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)


class Contracting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([2.0, 0.5], dtype=DT))
        self.b = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=DT))

    def forward(self, t, y):
        return -self.k * (y - self.b) + 0.3 * torch.sin(y.flip(-1))


PROBLEMS = {
    "Van der Pol mu=5, T=5": (VanDerPol(), torch.tensor([2.0, 0.0], dtype=DT), torch.linspace(0, 5, 3, dtype=DT)),
    "contracting flow, T=10": (Contracting(), torch.tensor([0.5, -0.5], dtype=DT), torch.linspace(0, 10, 3, dtype=DT)),
}


def loss_of(ys):
    return (ys[-1] ** 2).sum() + ys[len(ys) // 2].sum()


def gradient(func, y0, t, sensealg, rtol, atol):
    y0 = y0.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", psg.errors.GradientAccuracyWarning)
        ys, stats = psg.odeint(func, y0, t, rtol=rtol, atol=atol, sensealg=sensealg, options={"return_stats": True})
        grads = torch.autograd.grad(loss_of(ys), [y0, *func.parameters()])
    warned = any(issubclass(w.category, psg.errors.GradientAccuracyWarning) for w in caught)
    return torch.cat([g.reshape(-1) for g in grads]), stats, warned


def table(name, func, y0, t):
    ref = gradient(func, y0, t, psg.CheckpointAdjoint(), 1e-12, 1e-14)[0]
    header = "| rtol | " + " | ".join(SENSEALGS) + " | backsolve reconstruction (x tol) | warned |"
    lines = [f"\n{name}: relative gradient error vs CheckpointAdjoint at rtol=1e-12 (atol = 1e-3 rtol)",
             header, "|---" * (len(SENSEALGS) + 3) + "|"]
    for rtol in RTOLS:
        cells, recon, warned = [], "-", "-"
        for label, sensealg in SENSEALGS.items():
            try:
                g, stats, w = gradient(func, y0, t, sensealg, rtol, 1e-3 * rtol)
            except psg.errors.SolverError as err:
                cells.append(f"fails ({type(err).__name__})")
                if label == "BacksolveAdjoint":
                    recon, warned = "diverged", "error"
                continue
            cells.append(f"{float(((g - ref).abs() / ref.abs()).max()):.1e}")
            if label == "BacksolveAdjoint":
                recon, warned = f"{stats.extra['backsolve_reconstruction_error']:.1e}", "yes" if w else "no"
        lines.append(f"| {rtol:.0e} | " + " | ".join(cells) + f" | {recon} | {warned} |")
    return "\n".join(lines)


def reverse_reconstruction(func, y_end, ts_back, rtol, atol):
    """y(t) integrated backwards from y(T), interval by interval, as BacksolveAdjoint's
    state component is; stops where the reverse solve breaks down."""
    out = [y_end]
    with torch.no_grad():
        for a, b in zip(ts_back[:-1], ts_back[1:]):
            try:
                ys = psg.odeint(func, out[-1], torch.stack([a, b]), rtol=rtol, atol=atol)
            except psg.errors.SolverError:
                break
            if not bool(torch.isfinite(ys[-1]).all()) or float(ys[-1].abs().max()) > 1e6:
                break
            out.append(ys[-1])
    return torch.stack(out)


def plot(path, rtol=1e-5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PROBLEMS), figsize=(11, 6.5), sharex="col")
    for col, (name, (func, y0, t)) in enumerate(PROBLEMS.items()):
        T = float(t[-1])
        ts = torch.linspace(0, T, 401, dtype=DT)
        with torch.no_grad():
            fwd = psg.odeint(func, y0, ts, rtol=rtol, atol=1e-3 * rtol)
        back_t = ts.flip(0)
        rev = reverse_reconstruction(func, fwd[-1], back_t, rtol, 1e-3 * rtol)
        rt = back_t[: len(rev)]
        ax = axes[0, col]
        for j, color in enumerate(("C0", "C1")):
            ax.plot(ts, fwd[:, j], color=color, label=f"forward y{j}")
            ax.plot(rt, rev[:, j], "--", color=color, label=f"reverse-time y{j}")
        ax.set_ylim(float(fwd.min()) - 1, float(fwd.max()) + 1)
        ax.set_title(f"{name}, rtol={rtol:g}")
        ax.legend(fontsize=7, loc="best")
        err = (rev - fwd.flip(0)[: len(rev)]).abs().max(dim=1).values
        axes[1, col].semilogy(rt, err.clamp(min=1e-17), color="C3")
        axes[1, col].axhline(rtol, color="gray", ls=":", label="rtol")
        if len(rev) < len(back_t):
            axes[1, col].axvline(float(rt[-1]), color="k", ls="--", label="reverse solve breaks down")
        axes[1, col].set_xlabel("t")
        axes[1, col].set_ylabel("|y_reverse(t) - y_forward(t)|")
        axes[1, col].legend(fontsize=7)
    fig.suptitle("BacksolveAdjoint's reverse-time reconstruction drifts from the forward trajectory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    for name, (func, y0, t) in PROBLEMS.items():
        print(table(name, func, y0, t))
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "backsolve_failure.png")
    plot(path)
    print(f"\nplot written to {path}")


if __name__ == "__main__":
    main()
