"""A stiff universal differential equation trained with CheckpointAdjoint and rodas5p.

    python examples/stiff_ude.py              # default: ~2-4 min on 2 CPU cores
    python examples/stiff_ude.py --iters 5    # a quick look

Robertson's chemical kinetics (Robertson 1966; Hairer & Wanner II, IV.10),

    A -> B (k1 = 0.04),   B + B -> C + B (k2 = 3e7),   B + C -> A + C (k3 = 1e4),

is stiff: its Jacobian has eigenvalues down to about -1e4 while the solution evolves over
t ~ 1e2 (an explicit method takes ~1e5 steps to reach t = 1e2). Here the fast reactions 2
and 3 are known and the slow one is not: the rate of A -> B is an MLP r(y), entering with
its stoichiometry (-1, +1, 0), so the model conserves mass as the true one does; r(y) =
k(y) y1 with k(y) = 0.1 softplus(MLP(y)) (a first-order reaction of A whose coefficient is
learned as a function of the state; the truth is k = 0.04):

    dy/dt = (-r(y) + k3 y2 y3,  r(y) - k2 y2^2 - k3 y2 y3,  k2 y2^2).

The data are the true solution at 12 log-spaced times in [1e-3, 1e2] (noise-free: the point
is that the gradient through a stiff solve is exact and training works). Each Adam step
solves with ``method='rodas5p'`` (Rosenbrock, adaptive) and differentiates with
``psg.CheckpointAdjoint()``: the exact gradient of the discrete Rosenbrock map, the
Jacobian's own dependence on the network included (tests/test_stiff_ude.py checks it
against float64 finite differences to 1e-6). The table compares the learned rate with
k1 y1 on the states the trajectory visits; a JSON and a plot go to examples/output/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pysciml_grad as psg
from loss_bar import LossBar

F64 = torch.float64
K = (0.04, 3e7, 1e4)
OUT = Path(__file__).parent / "output"
Y_SCALE = torch.tensor([1.0, 1e4, 1.0], dtype=F64)  # y2 stays below 4e-5: weigh it to O(1)


def robertson(t, y):
    k1, k2, k3 = K
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 ** 2, k2 * y2 ** 2], -1)


class StiffUDE(torch.nn.Module):
    """Known fast reactions plus an MLP rate r(y) for the slow one (see module docstring)."""

    def __init__(self, hidden: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).to(F64)
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=F64) / layer.weight.shape[1] ** 0.5)
                layer.bias.zero_()

    def rate(self, y):
        # A first-order reaction of A with an unknown, state-dependent coefficient
        # k(y) = 0.1 softplus(MLP(y)) >= 0 (the truth is k = 0.04): a nonnegative rate that
        # vanishes with y1 keeps every trial model chemically possible (no negative states
        # blowing up). The input y * Y_SCALE is O(1).
        k = 0.1 * torch.nn.functional.softplus(self.net(y * Y_SCALE.to(y.device)).squeeze(-1))
        return k * y[..., 0]

    def forward(self, t, y):
        _, k2, k3 = K
        y1, y2, y3 = y.unbind(-1)
        r = self.rate(y)
        return torch.stack([-r + k3 * y2 * y3, r - k3 * y2 * y3 - k2 * y2 ** 2, k2 * y2 ** 2], -1)


def make_data(n_times: int = 12, t_max: float = 1e2):
    t = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-3, torch.log10(torch.tensor(t_max)).item(), n_times, dtype=F64)])
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    with torch.no_grad():
        data = psg.odeint(robertson, y0, t, method="rodas5p", rtol=1e-9, atol=1e-13)
    return t, y0, data


def loss_fn(model, t, y0, data, rtol, atol, sensealg=None, stats=False):
    out = psg.odeint(model, y0, t, method="rodas5p", rtol=rtol, atol=atol,
                     sensealg=sensealg or psg.CheckpointAdjoint(), options={"return_stats": True})
    ys, st = out
    loss = (((ys - data) * Y_SCALE) ** 2).mean()
    return (loss, st) if stats else loss


def main(argv=None):
    ap = argparse.ArgumentParser(description="stiff UDE (Robertson) trained with CheckpointAdjoint + rodas5p")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--times", type=int, default=12)
    ap.add_argument("--t-max", type=float, default=1e2)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--write-docs", action="store_true", help="write the result table into docs/stiff.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t, y0, data = make_data(args.times, args.t_max)
    model = StiffUDE(args.hidden, args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    atol = 1e-10
    history = []
    start = time.perf_counter()
    print(f"{'iter':>5} {'loss':>11} {'steps':>6} {'NFE fwd':>8} {'NFE bwd':>8} {'s/iter':>7}")
    bar = LossBar(args.iters, "adam (stiff UDE)")
    for it in range(args.iters + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, st = loss_fn(model, t, y0, data, args.rtol, atol, stats=True)
        if it < args.iters:
            loss.backward()
            opt.step()
        row = dict(iter=it, loss=float(loss.detach()), steps=st.n_steps, nfe=st.nfe, nfe_backward=st.nfe_backward,
                   seconds=time.perf_counter() - t0)
        history.append(row)
        if it < args.iters:
            bar.step(row["loss"])
        if it % max(1, args.iters // 10) == 0 or it == args.iters:
            print(f"{it:5d} {row['loss']:11.3e} {st.n_steps:6d} {st.nfe:8d} {st.nfe_backward:8d} {row['seconds']:7.2f}")
    bar.close()
    total = time.perf_counter() - start

    with torch.no_grad():
        ys = psg.odeint(model, y0, t, method="rodas5p", rtol=args.rtol, atol=atol)
        visited = ys[1:]
        learned, true = model.rate(visited), K[0] * visited[:, 0]
        rate_err = float(((learned - true).abs() / true.abs()).max())
    print(f"\nlearned rate r(y) vs k1*y1 on the {len(visited)} visited states: max relative error {rate_err:.2e}")
    print(f"loss {history[0]['loss']:.3e} -> {history[-1]['loss']:.3e} in {args.iters} Adam steps, {total:.1f} s")
    result = dict(
        settings=vars(args), loss_first=history[0]["loss"], loss_last=history[-1]["loss"], history=history,
        rate_max_rel_error=rate_err, total_seconds=total, t=t.tolist(), data=data.tolist(), fit=ys.tolist(),
        rate_learned=learned.tolist(), rate_true=true.tolist(),
    )
    (out / "stiff_ude.json").write_text(json.dumps(result, indent=1))
    if not args.no_plot:
        plot(result, out / "stiff_ude.png")
    if args.write_docs:
        write_docs(result)
    return result


DOC = Path(__file__).resolve().parents[1] / "docs" / "stiff.md"
START, END = "<!-- stiff-ude:start -->", "<!-- stiff-ude:end -->"


def docs_block(result) -> str:
    h = result["history"]
    s = result["settings"]
    per_iter = sorted(r["seconds"] for r in h[:-1])[len(h[:-1]) // 2] if len(h) > 1 else h[0]["seconds"]
    lines = [
        f"Measured by `python examples/stiff_ude.py` (Adam, lr {s['lr']}, {s['iters']} steps, MLP 3-{s['hidden']}-1, "
        f"rtol {s['rtol']:g}; 2 shared cores at load ~14):",
        "",
        "| | value |",
        "|---|---|",
        f"| loss at the start / end | {result['loss_first']:.3e} / {result['loss_last']:.3e} |",
        f"| learned rate vs k1 y1 on the visited states, max relative error | {result['rate_max_rel_error']:.2e} |",
        f"| accepted steps per solve (first / last) | {h[0]['steps']} / {h[-1]['steps']} |",
        f"| RHS evaluations forward / backward (first step) | {h[0]['nfe']} / {h[0]['nfe_backward']} |",
        f"| median seconds per Adam step; total | {per_iter:.2f}; {result['total_seconds']:.0f} s |",
        "",
        "![stiff UDE: data and fit, loss, learned rate](img/stiff_ude.png)",
    ]
    return "\n".join(lines)


def write_docs(result, doc: Path = DOC) -> None:
    page = doc.read_text()
    head, rest = page.split(START, 1)
    doc.write_text(head + START + "\n" + docs_block(result) + "\n" + END + rest.split(END, 1)[1])


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.tensor(result["t"][1:])
    data, fit = torch.tensor(result["data"])[1:], torch.tensor(result["fit"])[1:]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    for j, (name, scale) in enumerate((("y1", 1.0), ("y2 x 1e4", 1e4), ("y3", 1.0))):
        ax1.plot(t, data[:, j] * scale, "o", ms=4, label=f"data {name}")
        ax1.plot(t, fit[:, j] * scale, "-", label=f"UDE {name}")
    ax1.set_xscale("log"), ax1.set_xlabel("t"), ax1.legend(fontsize=7), ax1.set_title("Robertson: data and trained UDE")
    ax2.semilogy([h["loss"] for h in result["history"]])
    ax2.set_xlabel("Adam step"), ax2.set_title("loss (CheckpointAdjoint, rodas5p)")
    ax3.plot(t, result["rate_true"], "o", label="k1 y1 (true)")
    ax3.plot(t, result["rate_learned"], "x", label="MLP r(y)")
    ax3.set_xscale("log"), ax3.set_xlabel("t"), ax3.legend(), ax3.set_title("slow reaction rate along the fit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
