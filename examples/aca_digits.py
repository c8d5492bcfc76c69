"""ACA's image-classification experiment in miniature: ODE blocks vs residual blocks on 8x8 digits.

    python examples/aca_digits.py                 # default run: 3 seeds, a few epochs
    python examples/aca_digits.py --full          # wider network, more epochs
    python examples/aca_digits.py --device cuda   # on a GPU

Zhuang et al. (2020), "Adaptive checkpoint adjoint method for gradient estimation in neural
ODE" (ICML), section 4.1: a ResNet whose residual blocks are replaced by ODE blocks,
trained with the adaptive HeunEuler solver ("RK12") by three gradient methods -- ACA
(``psg.CheckpointAdjoint``), the continuous adjoint (``psg.BacksolveAdjoint``) and the
"naive" method (``psg.DirectAD(through_controller=True)``, backprop through the step-size
search too) -- against the same network with plain residual blocks. The paper reports
that ACA reaches about half the test error of the adjoint and naive methods in about half
their training time, and that a network trained with one solver keeps its accuracy when
tested with another. Both are measured here on scikit-learn's 8x8 digits (1797 images,
shipped with scikit-learn, no download).

The network (small, so it trains on two CPU cores in minutes):

    x (1x8x8) -> conv3x3(1->C) -> GroupNorm -> ReLU -> conv4x4/2(C->C) (now Cx4x4) -> [block]
      -> GroupNorm -> ReLU -> flatten -> linear(16C->10)

with ``[block]`` either the ODE block y(1) for dy/dt = f(y), y(0) = input, or the residual
block y + f(y) (one explicit Euler step of size 1 of the same ODE), and, as in ANODE and
torchdiffeq's ODE-net for MNIST,

    f(y) = conv3x3(ReLU(GroupNorm(conv3x3(ReLU(GroupNorm(y)))))).

Settings taken from the ACA code (juntang-zhuang/torch_ACA, ``cifar_classification/train.py``
at commit 2a7fec1057885929d6aa17d14a2ab2e787fc2424): method RK12 (HeunEuler), t0 = 0,
t1 = 1, rtol = atol = 1e-2. The optimiser differs (they train ResNet-18 on CIFAR-10 for 90
epochs with SGD, lr 0.1); here Adam, lr ``--lr`` (1e-2), 6 epochs, batch 64.

What is measured, per (block, gradient method, seed): final test error; training wall time;
NFE per training batch (forward, and backward where the method counts it); peak memory of
one forward + backward on a training batch (``--batch``, 64) after training (CUDA:
``torch.cuda.max_memory_allocated``; CPU: peak resident set size, ``VmHWM`` of
/proc/self/status reset through /proc/self/clear_refs, minus the RSS before, with freed
heap memory returned to the system by glibc's ``malloc_trim(0)`` first so the figure is the
step's own allocations); for BacksolveAdjoint, the reverse-time reconstruction error the
``GradientAccuracyWarning`` is computed from (``stats.extra["backsolve_reconstruction_error"]``:
RMS of (y_reconstructed - y_forward) / (atol + rtol |y|) at the save times, i.e. in units of
the tolerance; the warning fires above 100). The second table: the ODE networks trained with
HeunEuler, tested with other solvers.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import pysciml_grad as psg
from _common import names, save_plot
from loss_bar import LossBar

OUT = Path(__file__).parent / "output"
TOL = 1e-2  # ACA's rtol = atol for training (torch_ACA cifar_classification/train.py)
GRADIENTS = {
    "ACA": psg.CheckpointAdjoint(),
    "adjoint": psg.BacksolveAdjoint(),
    "naive": psg.DirectAD(through_controller=True),
}
#: The test-time solvers: (label, method, options, rtol). Fixed-step ones use 4 steps on [0, 1].
TEST_SOLVERS = [
    ("heun_euler (train)", "heun_euler", {}, TOL),
    ("euler h=1/4", "euler", {"step_size": 0.25}, TOL),
    ("midpoint h=1/4", "midpoint", {"step_size": 0.25}, TOL),
    ("rk4 h=1/4", "rk4", {"step_size": 0.25}, TOL),
    ("bosh3 tol 1e-2", "bosh3", {}, TOL),
    ("dopri5 tol 1e-2", "dopri5", {}, TOL),
    ("dopri5 tol 1e-6", "dopri5", {}, 1e-6),
]


def load_data(device, test_size=497, split_seed=0):
    """8x8 digits scaled to [0, 1] and standardised; a fixed stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=test_size, random_state=split_seed, stratify=y)
    mean, sd = Xtr.mean(), Xtr.std()

    def prep(a):
        return torch.tensor((a - mean) / sd, dtype=torch.float32, device=device).view(-1, 1, 8, 8)

    return prep(Xtr), torch.tensor(ytr, device=device), prep(Xte), torch.tensor(yte, device=device)


class ConvField(nn.Module):
    """f(y) = conv(ReLU(GN(conv(ReLU(GN(y)))))): the ODE right-hand side and the residual branch."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, t, y):
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(y))))))


class ODEBlock(nn.Module):
    """y -> y(1), dy/dt = f(y), y(0) = y, solved by ``psg.odeint``; keeps the last solve's stats."""

    def __init__(self, field: ConvField, sensealg, method="heun_euler", rtol=TOL, atol=TOL, options=None):
        super().__init__()
        self.field = field
        self.sensealg, self.method, self.rtol, self.atol, self.options = sensealg, method, rtol, atol, options or {}
        self.stats = None

    def forward(self, x):
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        ys, self.stats = psg.odeint(self.field, x, t, method=self.method, rtol=self.rtol, atol=self.atol,
                                    sensealg=self.sensealg, options={**self.options, "return_stats": True})
        return ys[-1]


class ResBlock(nn.Module):
    """y -> y + f(y): one Euler step of size 1 of the ODE block's equation."""

    def __init__(self, field: ConvField):
        super().__init__()
        self.field = field
        self.stats = None

    def forward(self, x):
        return x + self.field(None, x)


class Net(nn.Module):
    def __init__(self, channels: int, groups: int, gradient=None):
        super().__init__()
        # 8x8 -> 4x4 before the block (the downsampling of torchdiffeq's ODE-net for MNIST),
        # and the 4x4 map flattened after it: global pooling of 8x8 digits loses the layout
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.norm0 = nn.GroupNorm(groups, channels)
        self.down = nn.Conv2d(channels, channels, 4, stride=2, padding=1)
        field = ConvField(channels, groups)
        self.block = ResBlock(field) if gradient is None else ODEBlock(field, gradient)
        self.norm_out = nn.GroupNorm(groups, channels)
        self.head = nn.Linear(16 * channels, 10)

    def forward(self, x):
        y = self.block(self.down(F.relu(self.norm0(self.stem(x)))))
        return self.head(F.relu(self.norm_out(y)).flatten(1))


def _trim():
    gc.collect()
    try:  # return freed heap pages to the OS so the next peak RSS is this step's own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_memory_mb(net, x, y):
    """Peak memory (MB) of one forward + backward; see the module docstring for how."""
    net.zero_grad()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        F.cross_entropy(net(x), y).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda max_memory_allocated - allocated before"
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None, "not measured (no /proc/self/clear_refs)"
    base = _status_kb("VmRSS")
    F.cross_entropy(net(x), y).backward()
    return (_status_kb("VmHWM") - base) / 1024, "peak RSS (VmHWM) - RSS before, after malloc_trim"


@torch.no_grad()
def test_error(net, X, y, batch=512):
    net.eval()
    wrong = 0
    for i in range(0, len(X), batch):
        wrong += int((net(X[i : i + batch]).argmax(1) != y[i : i + batch]).sum())
    net.train()
    return wrong / len(X)


def train_one(kind, seed, data, args):
    """Train one network; returns its row of numbers and the trained network."""
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    net = Net(args.channels, args.groups, None if kind == "ResNet" else GRADIENTS[kind]).to(Xtr.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    nfe, nfe_b, recon, losses = [], [], [], []
    sync = torch.cuda.synchronize if Xtr.device.type == "cuda" else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        # the backsolve drift is recorded below, per batch, instead of warned about each time
        warnings.simplefilter("ignore", psg.errors.GradientAccuracyWarning)
        bar = LossBar(args.epochs * math.ceil(len(Xtr) / args.batch), f"{kind} seed {seed}")
        for epoch in range(args.epochs):
            perm = torch.randperm(len(Xtr), generator=gen).to(Xtr.device)
            for i in range(0, len(Xtr), args.batch):
                idx = perm[i : i + args.batch]
                opt.zero_grad()
                loss = F.cross_entropy(net(Xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.step(losses[-1])
                s = net.block.stats
                if s is not None:
                    nfe.append(s.nfe)
                    nfe_b.append(s.nfe_backward)
                    if "backsolve_reconstruction_error" in s.extra:
                        recon.append(s.extra["backsolve_reconstruction_error"])
            if args.verbose:
                print(f"  {kind:8s} seed {seed} epoch {epoch + 1}: loss {sum(losses[-5:]) / 5:.3f}", flush=True)
        bar.close()
    sync()
    row = {"kind": kind, "seed": seed, "train_time_s": time.perf_counter() - start,
           "train_cpu_s": time.process_time() - cpu, "final_loss": losses[-1],
           "test_error": test_error(net, Xte, yte)}
    if nfe:
        row.update(nfe_forward=sum(nfe) / len(nfe), nfe_backward=sum(nfe_b) / len(nfe_b))
    if recon:
        srt = sorted(recon)
        row["reconstruction_error"] = {"median": srt[len(srt) // 2], "max": srt[-1], "first": recon[0],
                                       "last": recon[-1], "batches_over_100": sum(r > 100 for r in recon),
                                       "batches": len(recon)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", psg.errors.GradientAccuracyWarning)
        row["peak_memory_mb"], row["memory_measure"] = peak_memory_mb(net, Xtr[: args.batch], ytr[: args.batch])
    return row, net


def solver_robustness(net, Xte, yte):
    """Test error of a HeunEuler-trained ODE network with each test-time solver."""
    out = {}
    block = net.block
    saved = (block.method, block.rtol, block.atol, block.options)
    for label, method, options, tol in TEST_SOLVERS:
        block.method, block.rtol, block.atol, block.options = method, tol, tol, options
        out[label] = test_error(net, Xte, yte)
    block.method, block.rtol, block.atol, block.options = saved
    return out


def summarise(rows, key):
    vals = [r[key] for r in rows if key in r and r[key] is not None]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "min": min(vals), "max": max(vals), "n": len(vals)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="32 channels, 3x the epochs")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--kinds", default="ResNet," + ",".join(GRADIENTS), help="comma-separated subset of ResNet," + ",".join(GRADIENTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 1 by default: on a shared 2-core machine two threads per process "
                        "ran 10-20x slower per batch than one (measured)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.full:
        args.channels, args.epochs = 32, 3 * args.epochs
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:  # main() is also called in-process (smoke test): leave torch as it was
        torch.set_num_threads(threads)


def run(args):
    device = torch.device(args.device)
    t_all, cpu0 = time.perf_counter(), time.process_time()
    Xtr, ytr, Xte, yte = load_data(device)
    if args.train_size:
        Xtr, ytr = Xtr[: args.train_size], ytr[: args.train_size]
    kinds = names(args.kinds)
    rows, robustness = [], {}
    for seed in range(args.seeds):
        for kind in kinds:
            row, net = train_one(kind, seed, (Xtr, ytr, Xte, yte), args)
            if kind != "ResNet":
                robustness.setdefault(kind, []).append(solver_robustness(net, Xte, yte))
            rows.append(row)
            print(f"{kind:8s} seed {seed}: test error {100 * row['test_error']:.2f} %, {row['train_time_s']:.1f} s", flush=True)
    summary = {}
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        summary[kind] = {k: summarise(rs, k) for k in ("test_error", "train_time_s", "train_cpu_s", "nfe_forward", "nfe_backward", "peak_memory_mb")}
        if any("reconstruction_error" in r for r in rs):
            summary[kind]["reconstruction_error_median"] = summarise(
                [{"v": r["reconstruction_error"]["median"]} for r in rs], "v")
            summary[kind]["reconstruction_error_max"] = max(r["reconstruction_error"]["max"] for r in rs)
    robust = {kind: {label: summarise([{"v": d[label]} for d in ds], "v") for label, *_ in TEST_SOLVERS}
              for kind, ds in robustness.items()}
    try:
        load = list(__import__("os").getloadavg())
    except OSError:
        load = None
    result = {
        "command": "python examples/aca_digits.py" + (" --full" if args.full else "")
        + ("" if args.device == "cpu" else f" --device {args.device}"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_train": len(Xtr), "n_test": len(Xte), "tolerance": TOL, "rows": rows, "summary": summary,
        "robustness": robust, "test_solvers": [s[0] for s in TEST_SOLVERS],
        "memory_measure": rows[0].get("memory_measure") if rows else None, "torch_threads": torch.get_num_threads(),
        "run_time_s": time.perf_counter() - t_all, "cpu_time_s": time.process_time() - cpu0, "load_average": load,
    }
    print_tables(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aca_digits.json").write_text(json.dumps(result, indent=2))
    if not args.no_plot:
        plot(args.out / "aca_digits.png", result)
    return result


def _ms(s, scale=1.0, fmt="{:.2f}"):
    if s is None:
        return "-"
    return (fmt + " +- " + fmt).format(scale * s["mean"], scale * s["sd"])


def print_tables(r):
    print(f"\n8x8 digits, {r['n_train']} train / {r['n_test']} test, heun_euler rtol=atol={r['tolerance']:g}; "
          f"mean +- sd over {r['args']['seeds']} seeds")
    print(f"{'block / gradient':18s} {'test error %':>14s} {'train time s':>14s} {'NFE fwd':>14s} {'NFE bwd':>14s} {'peak MB':>12s}")
    for kind, s in r["summary"].items():
        print(f"{kind:18s} {_ms(s['test_error'], 100):>14s} {_ms(s['train_time_s'], fmt='{:.1f}'):>14s} "
              f"{_ms(s['nfe_forward'], fmt='{:.1f}'):>14s} {_ms(s['nfe_backward'], fmt='{:.1f}'):>14s} "
              f"{_ms(s['peak_memory_mb'], fmt='{:.1f}'):>12s}")
        if "reconstruction_error_median" in s:
            print(f"{'':18s} backsolve reconstruction error (x tolerance): median over batches "
                  f"{_ms(s['reconstruction_error_median'], fmt='{:.3g}')}, max {s['reconstruction_error_max']:.3g}")
    print("\ntest error % of the ODE networks (trained with heun_euler) under other test-time solvers")
    print(f"{'gradient':10s} " + " ".join(f"{lab:>20s}" for lab in r["test_solvers"]))
    for kind, d in r["robustness"].items():
        print(f"{kind:10s} " + " ".join(f"{_ms(d[lab], 100):>20s}" for lab in r["test_solvers"]))
    print(f"run time {r['run_time_s']:.1f} s wall, {r['cpu_time_s']:.1f} s CPU")


def plot(path, r):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (kind, s) in enumerate(r["summary"].items()):
        pts = [row for row in r["rows"] if row["kind"] == kind]
        a1.scatter([p["train_time_s"] for p in pts], [100 * p["test_error"] for p in pts], color=f"C{i}", label=kind)
    a1.set_xlabel("training wall time (s)")
    a1.set_ylabel("test error (%)")
    a1.set_title("per seed: error vs time")
    a1.legend()
    labels = r["test_solvers"]
    width = 0.8 / max(1, len(r["robustness"]))
    for i, (kind, d) in enumerate(r["robustness"].items()):
        a2.bar([j + i * width for j in range(len(labels))], [100 * d[lab]["mean"] for lab in labels], width,
               yerr=[100 * d[lab]["sd"] for lab in labels], label=kind, color=f"C{i + 1}")
    a2.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    a2.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    a2.set_ylabel("test error (%)")
    a2.set_title("trained with heun_euler, tested with ...")
    a2.legend()
    save_plot(fig, path)


if __name__ == "__main__":
    main()
