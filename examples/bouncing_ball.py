"""A bouncing ball with psg.odeint_event: fit the coefficient of restitution from one
observed landing time, differentiating through five chained terminal events.

The ball falls from height h0 under gravity g (y = (height, velocity), y'' = -g); each
landing is a terminal event (height = 0, found by root finding on the dense output); the
next flight starts from the ground with velocity -e v. Landing times are differentiable
in e by the implicit function theorem, and the closed form is

    T_n = t_1 + sum_{i=1}^{n-1} 2 e^i v_1 / g,    t_1 = sqrt(2 h0 / g),  v_1 = g t_1,

so the script prints dT_5/de from autograd next to the closed form, then fits e to the
landing time T_5 observed for e = 0.8, starting from e = 0.5, with Newton steps on
(T_5(e) - T_obs)^2, and saves the trajectory before and after the fit to
examples/output/bouncing_ball.png.

    python examples/bouncing_ball.py
"""

from __future__ import annotations

import math
import os

import torch

import pysciml_grad as psg

D = torch.float64
G, H0, N_BOUNCES = 9.81, 1.0, 5


def fall(t, y):
    return torch.stack([y[1], -G * torch.ones_like(y[0])])


def ground(t, y):
    return y[0]


def flights(e: torch.Tensor):
    """Chained solves: the landing times and, per flight, (t0, y0) to draw it."""
    t0 = torch.zeros((), dtype=D)
    y0 = torch.tensor([H0, 0.0], dtype=D)
    landings, starts = [], []
    for _ in range(N_BOUNCES):
        starts.append((t0.detach(), y0.detach()))
        t_ev, ys = psg.odeint_event(fall, y0, t0, event_fn=ground, rtol=1e-10, atol=1e-12, params=[e])
        landings.append(t_ev)
        # Restart from the ground (height 0 at t0 is armed at the first non-zero value).
        y0 = torch.stack([torch.zeros((), dtype=D), -e * ys[-1, 1]])
        t0 = t_ev
    return landings, starts


def closed_form(e: float, n: int = N_BOUNCES):
    t1 = math.sqrt(2 * H0 / G)
    v1 = G * t1
    T = t1 + sum(2 * e**i * v1 / G for i in range(1, n))
    dT = sum(2 * i * e ** (i - 1) * v1 / G for i in range(1, n))
    return T, dT


def main() -> None:
    e = torch.tensor(0.5, dtype=D, requires_grad=True)
    landings, _ = flights(e)
    (dT,) = torch.autograd.grad(landings[-1], [e])
    T_exact, dT_exact = closed_form(0.5)
    print(f"T_5(e=0.5) = {float(landings[-1].detach()):.12f}  closed form {T_exact:.12f}")
    print(f"dT_5/de    = {float(dT):.12f}  closed form {dT_exact:.12f}")

    T_obs = closed_form(0.8)[0]
    history = [0.5]
    for it in range(6):
        landings, _ = flights(e)
        r = landings[-1] - T_obs
        (g,) = torch.autograd.grad(r, [e])
        with torch.no_grad():
            e -= r.detach() / g  # Newton on the residual
        history.append(float(e.detach()))
        print(f"Newton step {it + 1}: e = {float(e.detach()):.12f}, residual before the step {float(r.detach()):.3e}")
    print(f"fitted e = {history[-1]:.10f} (true 0.8)")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, value, style in (("e = 0.5 (start)", 0.5, "--"), (f"e = {history[-1]:.4f} (fitted)", history[-1], "-")):
        ee = torch.tensor(value, dtype=D)
        landings, starts = flights(ee)
        for k, ((t0, y0), t1) in enumerate(zip(starts, landings)):
            ts = torch.linspace(float(t0), float(t1), 60, dtype=D)
            ys = psg.odeint(fall, y0, ts, rtol=1e-10, atol=1e-12)
            ax.plot(ts, ys[:, 0], style, color="C0" if value == 0.5 else "C1", label=label if k == 0 else None)
    ax.axvline(T_obs, color="k", lw=0.8, label="observed 5th landing")
    ax.set_xlabel("t")
    ax.set_ylabel("height")
    ax.legend()
    ax.set_title("Fitting the restitution coefficient through 5 terminal events")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "bouncing_ball.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("saved", path)


if __name__ == "__main__":
    main()
