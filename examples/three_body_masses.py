"""ACA's three-body experiment in miniature: known physics, unknown masses.

    python examples/three_body_masses.py            # default run
    python examples/three_body_masses.py --full     # more observations, more iterations

Three bodies in the plane under Newtonian gravity (G = 1),
    r_i'' = sum_{j != i} m_j (r_j - r_i) / |r_j - r_i|^3,
masses 1.0, 0.3, 0.1, the lighter bodies started at radii 1 and 2.2 with the circular-orbit
speeds about the heavy one and the total momentum zero; the heavy body drifts, and bodies
2 and 3 pass close to each other near t = T, so the prediction on [T, 2T] starts with a
strong interaction. The positions r_i(t) are observed
at ``--points`` times in [0, T] with Gaussian noise of sd ``--noise``; the initial positions
and velocities are known, the masses are not. The masses are learned (as log m, so they
stay positive) by LBFGS with a strong-Wolfe line search (``psg.fit_lbfgs``) on the
position MSE, with each sensealg in turn from the same initial guess (0.5, 0.5, 0.5); the
learned model then predicts [T, 2T]. Zhuang et al. (2020, ACA, section 4.3) fit the masses
of a three-body system this way and compare the adjoint, naive and ACA gradients.

The table: learned masses, their largest relative error, the prediction RMSE on [T, 2T]
against the true trajectory, wall time of the fit and the NFE of one forward/backward
pass at the solution.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pysciml_grad as psg
from _common import names, save_plot
from loss_bar import LossBar

F64 = torch.float64
OUT = Path(__file__).parent / "output"
TRUE_MASSES = [1.0, 0.3, 0.1]
SENSEALGS = {
    "CheckpointAdjoint": psg.CheckpointAdjoint(),
    "BacksolveAdjoint": psg.BacksolveAdjoint(),
    "InterpolatingAdjoint": psg.InterpolatingAdjoint(),
    "DirectAD": psg.DirectAD(),
}


class ThreeBody(torch.nn.Module):
    """State y = (r (3x2), v (3x2)) flattened to 12; masses = exp(log_m)."""

    def __init__(self, masses):
        super().__init__()
        self.log_m = torch.nn.Parameter(torch.log(torch.tensor(masses, dtype=F64)))

    def forward(self, t, y):
        r, v = y[..., :6].reshape(*y.shape[:-1], 3, 2), y[..., 6:]
        d = r[..., None, :, :] - r[..., :, None, :]  # d[i, j] = r_j - r_i
        dist3 = (d.pow(2).sum(-1) + torch.eye(3, dtype=y.dtype)).pow(1.5)  # eye: no self-force, no 0/0
        acc = (torch.exp(self.log_m)[None, :, None] * d / dist3[..., None]).sum(-2)
        return torch.cat([v, acc.reshape(*y.shape[:-1], 6)], dim=-1)


def initial_state():
    """Heavy body at the origin, the others at r=1 and r=2.2 with circular-orbit speeds, zero momentum."""
    m = torch.tensor(TRUE_MASSES, dtype=F64)
    r = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.2]], dtype=F64)
    v = torch.zeros(3, 2, dtype=F64)
    v[1] = torch.tensor([0.0, (m[0] / 1.0) ** 0.5])
    v[2] = torch.tensor([-((m[0] + m[1]) / 2.2) ** 0.5, 0.0])
    v[0] = -(m[1:, None] * v[1:]).sum(0) / m[0]
    return torch.cat([r.reshape(-1), v.reshape(-1)])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="3x the observations and 2x the LBFGS iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--T", type=float, default=4.0, help="observation window [0, T]; prediction [T, 2T]")
    p.add_argument("--points", type=int, default=21)
    p.add_argument("--noise", type=float, default=1e-3, help="sd of the position noise")
    p.add_argument("--iters", type=int, default=25, help="LBFGS iterations per sensealg")
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--sensealgs", default=",".join(SENSEALGS), help="comma-separated subset of " + ",".join(SENSEALGS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.full:
        args.points, args.iters = 3 * args.points, 2 * args.iters
    t0_all, cpu0 = time.perf_counter(), time.process_time()
    y0 = initial_state()
    truth = ThreeBody(TRUE_MASSES)
    t_obs = torch.linspace(0.0, args.T, args.points, dtype=F64)
    t_all = torch.linspace(0.0, 2 * args.T, 2 * args.points - 1, dtype=F64)
    with torch.no_grad():
        true_all = psg.odeint(truth, y0, t_all, method="dopri5", rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(args.seed)
    obs = true_all[: args.points, :6] + args.noise * torch.randn(args.points, 6, generator=g, dtype=F64)
    kw = dict(method="dopri5", rtol=args.rtol, atol=args.rtol * 1e-2)
    rows, fits = [], {}
    for name in names(args.sensealgs):
        alg = SENSEALGS[name]
        model = ThreeBody([0.5, 0.5, 0.5])
        row = {"sensealg": name}

        def loss():
            return ((psg.odeint(model, y0, t_obs, sensealg=alg, **kw)[:, :6] - obs) ** 2).mean()

        try:
            start = time.perf_counter()
            with LossBar(args.iters, f"lbfgs ({name})") as bar:
                res = psg.fit_lbfgs(model.parameters(), loss, max_iter=args.iters, callback=bar.at)
            row["time_s"] = time.perf_counter() - start
            ys, stats = psg.odeint(model, y0, t_obs, sensealg=alg, options={"return_stats": True}, **kw)
            ((ys[:, :6] - obs) ** 2).mean().backward()
            with torch.no_grad():
                pred = psg.odeint(model, y0, t_all, **kw)
            masses = torch.exp(model.log_m.detach())
            tail = slice(args.points - 1, None)
            row.update(
                masses=masses.tolist(),
                mass_rel_error=float(((masses - torch.tensor(TRUE_MASSES, dtype=F64)).abs() / torch.tensor(TRUE_MASSES, dtype=F64)).max()),
                predict_rmse=float(((pred[tail, :6] - true_all[tail, :6]) ** 2).mean().sqrt()),
                fit_mse=res["final_loss"], lbfgs_iterations=res["iterations"], loss_evaluations=res["evaluations"],
                nfe=stats.nfe, nfe_backward=stats.nfe_backward,
            )
            fits[name] = pred
        except (psg.errors.PySciMLGradError, RuntimeError) as exc:
            row["skipped"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    result = {
        "command": "python examples/three_body_masses.py" + (" --full" if args.full else "") + f" --seed {args.seed}",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "true_masses": TRUE_MASSES, "initial_masses": [0.5, 0.5, 0.5], "noise_sd": args.noise,
        "rows": rows, "run_time_s": time.perf_counter() - t0_all, "cpu_time_s": time.process_time() - cpu0,
    }
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "three_body_masses.json").write_text(json.dumps(result, indent=2))
    if not args.no_plot and fits:
        plot(args.out / "three_body_masses.png", t_all, true_all, obs, fits, args.points)
    return result


def print_table(r):
    print(f"three-body masses: truth {r['true_masses']}, initial guess {r['initial_masses']}, noise sd {r['noise_sd']:g}")
    print(f"{'sensealg':22s} {'learned masses':>28s} {'mass err':>9s} {'pred RMSE':>10s} {'time s':>7s} {'NFE f/b':>9s}")
    for row in r["rows"]:
        if "skipped" in row:
            print(f"{row['sensealg']:22s} not run: {row['skipped'][:120]}")
            continue
        masses = ", ".join(f"{m:.4f}" for m in row["masses"])
        print(f"{row['sensealg']:22s} {masses:>28s} {row['mass_rel_error']:9.2e} {row['predict_rmse']:10.2e} "
              f"{row['time_s']:7.1f} {str(row['nfe']) + '/' + str(row['nfe_backward']):>9s}")
    print(f"run time {r['run_time_s']:.1f} s wall, {r['cpu_time_s']:.1f} s CPU")


def plot(path, t_all, true_all, obs, fits, n_obs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(4.5 * len(fits), 4.2), squeeze=False)
    for ax, (name, pred) in zip(axes[0], fits.items()):
        for i, c in enumerate(("C0", "C1", "C2")):
            ax.plot(true_all[:, 2 * i], true_all[:, 2 * i + 1], c + "-", lw=1, alpha=0.5)
            ax.plot(pred[n_obs - 1 :, 2 * i], pred[n_obs - 1 :, 2 * i + 1], c + "--", lw=1.5)
            ax.plot(obs[:, 2 * i], obs[:, 2 * i + 1], c + ".", ms=4)
        ax.set_title(f"{name}: predicted [T, 2T] (dashed)")
        ax.set_aspect("equal")
    fig.suptitle("three bodies: true (solid), observed on [0, T] (dots), learned-mass prediction (dashed)")
    save_plot(fig, path)


if __name__ == "__main__":
    main()
