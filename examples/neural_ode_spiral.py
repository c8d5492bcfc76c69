"""Fit the spiral of the demo and plot learned vs true trajectory and the loss curve.

    python examples/neural_ode_spiral.py      # writes examples/output/neural_ode_spiral.png
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pysciml_grad as psg  # noqa: E402
from pysciml_grad import demo  # noqa: E402
from loss_bar import LossBar  # noqa: E402


def main():
    torch.manual_seed(0)
    y0, t, ys = demo.make_data()
    model = demo.SpiralField()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    losses = []
    with LossBar(300, "adam (spiral)") as bar:
        for step in range(300):
            w0, wt, wy = demo.windows(t, ys, g)
            opt.zero_grad()
            loss = demo.loss_of(model, w0, wt, wy)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.step(losses[-1])
    with torch.no_grad():
        pred = psg.odeint(model, y0, t, rtol=1e-5, atol=1e-7)
    out = Path(__file__).parent / "output"
    out.mkdir(exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ys[:, 0, 0], ys[:, 0, 1], "k-", label="true")
    ax1.plot(pred[:, 0, 0], pred[:, 0, 1], "r--", label="neural ODE")
    ax1.set_title("trajectory from y0 = (2, 0), t in [0, 10]")
    ax1.legend()
    ax2.semilogy(losses)
    ax2.set_xlabel("step")
    ax2.set_ylabel("window loss (mean abs error)")
    fig.tight_layout()
    fig.savefig(out / "neural_ode_spiral.png", dpi=100)
    print(f"final window loss {losses[-1]:.4f}; plot: {out / 'neural_ode_spiral.png'}")


if __name__ == "__main__":
    main()
