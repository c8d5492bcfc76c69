"""A latent ODE on irregularly sampled spirals, trained with each sensealg (ACA's second experiment).

    python examples/latent_ode_irregular.py           # default run
    python examples/latent_ode_irregular.py --full    # more series, more iterations

Rubanova, Chen & Duvenaud (2019) and Chen et al. (2018, section 5) fit a *latent ODE* to
irregularly sampled time series; Zhuang et al. (2020, ACA, section 4.2) compare gradient
methods on it. Here, in miniature:

* data: ``--series`` 2-D spirals z(t) = exp(-a t) R(s w t) z(0) (the solution of
  dz/dt = [[-a, s w], [-s w, -a]] z, so the truth is known in closed form), a = 0.1,
  w = 1, direction s = +-1 at random, |z(0)| in [1, 2] and its angle uniform. Each series
  is observed at t = 0 and at its own random times in (0, 5] -- between ``--min-obs`` and
  ``--max-obs`` of them, so the rows have different lengths -- with Gaussian noise of sd
  ``--noise``; the rows are NaN-padded at the end into a ``(B, T)`` tensor of times. The
  times are a random subset of the grid 0.1, 0.2, ..., 5 per series (``--grid``; 0 for
  continuous times): the backward pass of the continuous adjoints runs one solve per
  interval between distinct save times, and 32 series of continuous random times have
  ~550 distinct ones (measured: BacksolveAdjoint 40x the time of CheckpointAdjoint per
  iteration then), as in a real data set recorded at a clock's resolution.
* model: a GRU encoder run *backwards* over each series' observations (inputs: the
  observation and the time gap to the next one), whose final state gives the latent
  initial state z0 (4-D; deterministic: the comparison is about gradients, so the
  variational part of Rubanova et al. is left out); a latent ODE dz/dt = MLP(z)
  (4-32-32-4, tanh); a linear decoder to 2-D.
* solve: ``psg.odeint(func, z0, t)`` with ``t`` of shape ``(B, T)``: the package takes the
  union of all rows' times, solves the batch once and gathers each row's own times
  (``pysciml_grad.batching``; NaN where padded). The loss is the MSE over the valid
  entries only (NaN entries are replaced before the decoder, so no NaN reaches a gradient).
* training: Adam (lr ``--lr``), ``--iters`` full-batch iterations, dopri5 at rtol
  ``--rtol``, the same initialisation for every sensealg.

Table per sensealg: final training loss, extrapolation MSE on (5, 10] against the true
spiral (regular grid of 20 times), training wall and CPU time, NFE forward/backward per
iteration (mean).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import pysciml_grad as psg
from _common import names, save_plot
from loss_bar import LossBar

OUT = Path(__file__).parent / "output"
T_OBS, T_EXT = 5.0, 10.0
DECAY, OMEGA = 0.1, 1.0
SENSEALGS = {
    "CheckpointAdjoint": psg.CheckpointAdjoint(),
    "BacksolveAdjoint": psg.BacksolveAdjoint(),
    "InterpolatingAdjoint": psg.InterpolatingAdjoint(),
    "QuadratureAdjoint": psg.QuadratureAdjoint(),
    "DirectAD": psg.DirectAD(),
}


def spiral(z0: torch.Tensor, sign: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed-form solution at times t (B, T) for z0 (B, 2), direction sign (B,): (B, T, 2)."""
    ang = sign[:, None] * OMEGA * t
    c, s = torch.cos(ang), torch.sin(ang)
    x = c * z0[:, None, 0] + s * z0[:, None, 1]
    y = -s * z0[:, None, 0] + c * z0[:, None, 1]
    return torch.exp(-DECAY * t)[..., None] * torch.stack([x, y], dim=-1)


def make_data(n_series: int, min_obs: int, max_obs: int, noise: float, seed: int, grid: float = 0.0,
              dtype=torch.float32):
    """Irregular observations: (t (B, T) NaN-padded, obs (B, T, 2) NaN-padded, z0, sign).
    ``grid > 0``: each series' times are a random subset of the grid k * grid in (0, T_OBS]."""
    g = torch.Generator().manual_seed(seed)
    radius = 1.0 + torch.rand(n_series, generator=g, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(n_series, generator=g, dtype=torch.float64)
    z0 = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    sign = torch.where(torch.rand(n_series, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    t = torch.full((n_series, max_obs), float("nan"), dtype=torch.float64)
    for b in range(n_series):
        n = int(torch.randint(min_obs, max_obs + 1, (1,), generator=g))
        t[b, 0] = 0.0
        if grid > 0:
            slots = torch.randperm(round(T_OBS / grid), generator=g)[: n - 1] + 1
            t[b, 1:n] = torch.sort(slots.to(torch.float64) * grid).values
        else:
            t[b, 1:n] = torch.sort(T_OBS * (1 - torch.rand(n - 1, generator=g, dtype=torch.float64))).values
    clean = spiral(z0, sign, torch.nan_to_num(t))
    obs = clean + noise * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    obs[torch.isnan(t)] = float("nan")
    return t.to(dtype), obs.to(dtype), z0, sign


class Encoder(nn.Module):
    """GRU run backwards in time over each row's valid observations -> z0."""

    def __init__(self, latent: int, hidden: int):
        super().__init__()
        self.cell = nn.GRUCell(3, hidden)
        self.out = nn.Linear(hidden, latent)
        self.hidden = hidden

    def forward(self, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        B, T = t.shape
        valid = ~torch.isnan(t)
        h = obs.new_zeros(B, self.hidden)
        t_next = torch.nan_to_num(t, nan=0.0)
        gap = torch.zeros_like(t)
        gap[:, :-1] = torch.where(valid[:, 1:], t_next[:, 1:] - t_next[:, :-1], 0.0)
        for k in range(T - 1, -1, -1):  # last observation first: z0 summarises the future
            x = torch.cat([torch.nan_to_num(obs[:, k]), gap[:, k : k + 1]], dim=-1)
            h = torch.where(valid[:, k : k + 1], self.cell(x, h), h)
        return self.out(h)


class LatentODE(nn.Module):
    def __init__(self, latent: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, latent))

    def forward(self, t, z):
        return self.net(z)


class Model(nn.Module):
    def __init__(self, latent=4, hidden=32, enc_hidden=32):
        super().__init__()
        self.encoder = Encoder(latent, enc_hidden)
        self.func = LatentODE(latent, hidden)
        self.decoder = nn.Linear(latent, 2)


def masked_mse(model: Model, zs: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """MSE of decoder(zs) (T, B, L) against obs (B, T, 2) over the valid (non-NaN) entries."""
    valid = ~torch.isnan(zs[..., :1])  # (T, B, 1)
    pred = model.decoder(torch.where(valid, zs, torch.zeros_like(zs)))  # no NaN into the decoder's gradient
    target = obs.transpose(0, 1)
    err = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (err**2).sum() / (2 * valid.sum())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="2x the series and 3x the iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--series", type=int, default=32)
    p.add_argument("--min-obs", type=int, default=10)
    p.add_argument("--max-obs", type=int, default=25)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--grid", type=float, default=0.1,
                   help="observation times on a grid of this spacing (0: continuous random times); the continuous "
                        "adjoints restart at every distinct save time, so their cost grows with the union's size")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--sensealgs", default=",".join(SENSEALGS), help="comma-separated subset of " + ",".join(SENSEALGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: see examples/aca_digits.py)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.full:
        args.series, args.iters = 2 * args.series, 3 * args.iters
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args):
    device = torch.device(args.device)
    t_all, cpu0 = time.perf_counter(), time.process_time()
    t, obs, z0_true, sign = make_data(args.series, args.min_obs, args.max_obs, args.noise, args.seed, args.grid)
    t, obs = t.to(device), obs.to(device)
    t_ext = torch.linspace(0.0, T_EXT, 41, dtype=torch.float32, device=device)
    future = t_ext > T_OBS
    true_ext = spiral(z0_true, sign, t_ext.double().cpu().expand(args.series, -1)).float().to(device)  # (B, 41, 2)
    kw = dict(method="dopri5", rtol=args.rtol, atol=args.rtol * 1e-2)
    rows, preds = [], {}
    for name in names(args.sensealgs):
        alg = SENSEALGS[name]
        torch.manual_seed(args.seed)
        model = Model().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        row, losses, nfe, nfe_b, recon = {"sensealg": name}, [], [], [], []
        start, cpu = time.perf_counter(), time.process_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", psg.errors.GradientAccuracyWarning)  # recorded below instead
                bar = LossBar(args.iters, f"adam ({name})")
                for _ in range(args.iters):
                    opt.zero_grad()
                    z0 = model.encoder(t, obs)
                    zs, stats = psg.odeint(model.func, z0, t, sensealg=alg, options={"return_stats": True}, **kw)
                    loss = masked_mse(model, zs, obs)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                    bar.step(losses[-1])
                    nfe.append(stats.nfe)
                    nfe_b.append(stats.nfe_backward)
                    if "backsolve_reconstruction_error" in stats.extra:
                        recon.append(stats.extra["backsolve_reconstruction_error"])
                bar.close()
            row.update(train_time_s=time.perf_counter() - start, train_cpu_s=time.process_time() - cpu)
            with torch.no_grad():
                z0 = model.encoder(t, obs)
                pred = model.decoder(psg.odeint(model.func, z0, t_ext, **kw)).transpose(0, 1)  # (B, 41, 2)
            row.update(
                final_loss=losses[-1], losses=losses,
                extrapolation_mse=float(((pred[:, future] - true_ext[:, future]) ** 2).mean()),
                interpolation_mse=float(((pred[:, ~future] - true_ext[:, ~future]) ** 2).mean()),
                nfe=sum(nfe) / len(nfe), nfe_backward=sum(nfe_b) / len(nfe_b),
            )
            if recon:
                row["reconstruction_error_max"] = max(recon)
                row["reconstruction_error_median"] = sorted(recon)[len(recon) // 2]
            preds[name] = pred.cpu()
        except (psg.errors.PySciMLGradError, RuntimeError) as exc:
            row["skipped"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(f"{name}: " + (f"loss {row['final_loss']:.4f}, extrapolation MSE {row['extrapolation_mse']:.4f}, "
                             f"{row['train_time_s']:.1f} s" if "skipped" not in row else row["skipped"]), flush=True)
    valid = ~torch.isnan(t)
    lengths = valid.sum(1)
    union = torch.unique(t[valid])
    try:
        load = list(__import__("os").getloadavg())
    except OSError:
        load = None
    result = {
        "command": "python examples/latent_ode_irregular.py" + (" --full" if args.full else "") + f" --seed {args.seed}"
        + ("" if args.device == "cpu" else f" --device {args.device}"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"series": args.series, "obs_per_series_min": int(lengths.min()), "obs_per_series_max": int(lengths.max()),
                 "obs_total": int(valid.sum()), "union_times": len(union), "noise_sd": args.noise},
        "rows": rows, "torch_threads": args.threads, "load_average": load,
        "run_time_s": time.perf_counter() - t_all, "cpu_time_s": time.process_time() - cpu0,
    }
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latent_ode_irregular.json").write_text(json.dumps(result, indent=2))
    if not args.no_plot and preds:
        plot(args.out / "latent_ode_irregular.png", t.cpu(), obs.cpu(), t_ext.cpu(), true_ext.cpu(), preds, rows)
    return result


def print_table(r):
    d = r["data"]
    print(f"\nlatent ODE, {d['series']} spirals, {d['obs_per_series_min']}-{d['obs_per_series_max']} observations each "
          f"({d['obs_total']} in all, {d['union_times']} distinct times), noise sd {d['noise_sd']:g}")
    print(f"{'sensealg':22s} {'final loss':>10s} {'extrap MSE':>10s} {'time s':>7s} {'CPU s':>7s} {'NFE f/b':>13s}")
    for row in r["rows"]:
        if "skipped" in row:
            print(f"{row['sensealg']:22s} not run: {row['skipped'][:120]}")
            continue
        print(f"{row['sensealg']:22s} {row['final_loss']:10.4f} {row['extrapolation_mse']:10.4f} {row['train_time_s']:7.1f} "
              f"{row['train_cpu_s']:7.1f} {row['nfe']:6.1f}/{row['nfe_backward']:<6.1f}")
    print(f"run time {r['run_time_s']:.1f} s wall, {r['cpu_time_s']:.1f} s CPU")


def plot(path, t, obs, t_ext, true_ext, preds, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    name = next(iter(preds))
    for ax, b in zip(axes[:2], (0, 1)):
        ax.plot(true_ext[b, :, 0], true_ext[b, :, 1], "k-", lw=1, alpha=0.5, label="truth on [0, 10]")
        ax.plot(obs[b, :, 0], obs[b, :, 1], "k.", ms=5, label=f"{int((~torch.isnan(t[b])).sum())} observations")
        for i, (n, p) in enumerate(preds.items()):
            ax.plot(p[b, :, 0], p[b, :, 1], f"C{i}--", lw=1.2, label=n)
        ax.set_title(f"series {b}")
        ax.set_aspect("equal")
    axes[0].legend(fontsize=7)
    for i, row in enumerate(rows):
        if "losses" in row:
            axes[2].semilogy(row["losses"], f"C{i}", lw=1, label=row["sensealg"])
    axes[2].set_xlabel("Adam iteration")
    axes[2].set_ylabel("training loss (masked MSE)")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"latent ODE on irregular spirals: extrapolation to t = {T_EXT:g} from observations on [0, {T_OBS:g}]")
    save_plot(fig, path)


if __name__ == "__main__":
    main()
