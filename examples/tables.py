"""Regenerate the tables of docs/examples.md from the examples' JSON files.

    python examples/tables.py          # rewrites the marked blocks of docs/examples.md

Each block sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` and is rebuilt
from ``examples/output/<name>.json``; a missing JSON leaves its block as it is. The PNGs
are copied to ``docs/img/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "output"
DOC = ROOT / "docs" / "examples.md"


def ude_markdown(r) -> str:
    lines = [
        f"Command: `{r['command']}`; run time {r['run_time_s']:.0f} s wall, {r.get('cpu_time_s', float('nan')):.0f} s CPU.",
        "",
        f"Fit: MSE against the noisy data {r['fit_mse_vs_data']:.2e}; noise floor (mean noise variance) "
        f"{r['noise_floor_mse']:.2e}, ratio {r['fit_mse_vs_data'] / r['noise_floor_mse']:.2f}; MSE against the clean "
        f"trajectory {r['fit_mse_vs_clean']:.2e}.",
        "",
        f"Sparse regression: STLSQ, threshold {r['threshold']:g}, {len(r['library'])} monomials of degree <= "
        f"{r['args']['degree']} ({', '.join(r['library'])}), on the network along the fitted trajectory.",
        "",
        "| missing term | truth | recovered | relative error |",
        "|---|---|---|---|",
        f"| U1: -beta x y | {-r['beta']['truth']:.4f} | {-r['beta']['recovered']:.4f} | {100 * r['beta']['rel_error']:.2f} % |",
        f"| U2: +gamma x y | {r['gamma']['truth']:.4f} | {r['gamma']['recovered']:.4f} | {100 * r['gamma']['rel_error']:.2f} % |",
        "",
        "Other library terms above the threshold: "
        + (", ".join(f"{s['output']} {s['term']} ({s['coefficient']:+.3f})" for s in r["spurious_terms"]) or "none")
        + ". Recovered: " + "; ".join(f"`{e}`" for e in r["equations"]) + ".",
    ]
    return "\n".join(lines)


def audit_markdown(r) -> str:
    s, ref = r["settings"], r["reference"]
    lines = [
        f"Settings: method={s['method']}, rtol={s['rtol']:g}, atol={s['atol']:g}, {s['dtype']}, {s['n_inputs']} inputs; "
        f"accurate = relative error <= {s['accept']:.0e}. Reference: {ref['how']}; central finite differences along "
        f"{len(ref['fd_check'])} random directions agree with it to {ref['fd_worst_rel_diff']:.1e}.",
        "",
        "| backend | sensealg | rel. error | NFE fwd/bwd | time (ms) | peak RSS (MB) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['sensealg']} | not run: {row['skipped'][:120]} | | | | |")
            continue
        mem = f"{row['peak_bytes'] / 2**20:.1f}" if row.get("peak_bytes") is not None else "-"
        lines.append(f"| {row['backend']} | `{row['sensealg']}` | {row['rel_error']:.2e} | {row['nfe']}/{row['nfe_backward']} | "
                     f"{row['time_s'] * 1e3:.0f} | {mem} | {'ok' if row['accurate'] else 'INACCURATE'} |")
    rec = r["recommendation"]
    lines += ["", f"Recommendation: `{rec['sensealg']}` -- {rec['reason']}"]
    return "\n".join(lines)


def three_body_markdown(r) -> str:
    lines = [
        f"Command: `{r['command']}`; run time {r['run_time_s']:.0f} s wall"
        + (f", {r['cpu_time_s']:.0f} s CPU" if "cpu_time_s" in r else "") + f". True masses {r['true_masses']}, "
        f"initial guess {r['initial_masses']}.",
        "",
        "| sensealg | learned masses | max rel. mass error | prediction RMSE on [T, 2T] | fit time (s) | LBFGS iterations | NFE fwd/bwd of one gradient |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['sensealg']} | not run: {row['skipped'][:120]} | | | | | |")
            continue
        masses = ", ".join(f"{m:.4f}" for m in row["masses"])
        lines.append(f"| `{row['sensealg']}` | {masses} | {row['mass_rel_error']:.2e} | {row['predict_rmse']:.2e} | "
                     f"{row['time_s']:.1f} | {row['lbfgs_iterations']} | {row['nfe']}/{row['nfe_backward']} |")
    return "\n".join(lines)


def _pm(s, scale=1.0, digits=2):
    if s is None:
        return "-"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['sd']:.{digits}f}"


def aca_claim_sentence(summary) -> str:
    """ACA's claim (about half the error in half the time of adjoint and naive), checked on
    the means; time is CPU time because the wall time of a shared machine measures its load."""
    ours = summary["ACA"]
    parts, holds = [], True
    for other in ("adjoint", "naive"):
        if other not in summary:
            continue
        e = ours["test_error"]["mean"] / summary[other]["test_error"]["mean"]
        t = ours["train_cpu_s"]["mean"] / summary[other]["train_cpu_s"]["mean"]
        holds &= e <= 0.6 and t <= 0.6
        parts.append(f"{e:.2f}x the error and {t:.2f}x the training CPU time of {other}")
    spread = max(s["test_error"]["sd"] for s in summary.values() if s.get("test_error")) * 100
    verdict = "holds here" if holds else "does not hold here"
    return (f"ACA's claim (about half the error in half the time of the adjoint and naive methods) {verdict}: ACA reached "
            + "; ".join(parts) + f" (means over seeds; the largest seed-to-seed sd of the test error is {spread:.2f} points).")


def aca_markdown(r) -> str:
    a = r["args"]
    load = r.get("load_average")
    lines = [
        f"Command: `{r['command']}`; run time {r['run_time_s']:.0f} s wall, {r['cpu_time_s']:.0f} s CPU"
        + (f" (1-minute load average {load[0]:.1f} on 2 cores at the end)" if load else "") + f"; torch threads {r['torch_threads']}.",
        f"{r['n_train']} training / {r['n_test']} test images, {a['channels']} channels, {a['epochs']} epochs of Adam "
        f"(lr {a['lr']:g}, batch {a['batch']}); ODE blocks solved with heun_euler, rtol = atol = {r['tolerance']:g}, "
        f"t in [0, 1]. Mean ± sd over {a['seeds']} seeds (seed = initialisation and batch order).",
        "",
        "| block / gradient | test error (%) | train wall time (s) | train CPU time (s) | NFE fwd per batch | NFE bwd per batch | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"ResNet": "residual blocks", "ACA": "ODE, ACA (`CheckpointAdjoint()`)",
             "adjoint": "ODE, adjoint (`BacksolveAdjoint()`)", "naive": "ODE, naive (`DirectAD(through_controller=True)`)"}
    for kind, s in r["summary"].items():
        lines.append(f"| {names.get(kind, kind)} | {_pm(s['test_error'], 100)} | {_pm(s['train_time_s'], digits=1)} | "
                     f"{_pm(s.get('train_cpu_s'), digits=1)} | {_pm(s['nfe_forward'], digits=1)} | "
                     f"{_pm(s['nfe_backward'], digits=1)} | {_pm(s['peak_memory_mb'], digits=1)} |")
    lines += ["", f"Peak memory: {r['memory_measure']}, one forward + backward on a batch of {a['batch']}.", ""]
    lines += [aca_claim_sentence(r["summary"]), ""]
    adj = r["summary"].get("adjoint", {})
    if adj.get("reconstruction_error_median"):
        lines += [
            "BacksolveAdjoint's reverse-time reconstruction error on the conv ODE block (the figure "
            "`GradientAccuracyWarning` is computed from, in units of the tolerance; it warns above 100): median "
            f"over training batches {_pm(adj['reconstruction_error_median'], digits=3)} (mean ± sd over seeds), "
            f"largest in any batch {adj['reconstruction_error_max']:.3g}.", ""]
    labels = r["test_solvers"]
    lines += ["Test error (%) of the ODE networks trained with heun_euler, evaluated with other solvers:", "",
              "| trained with | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for kind, d in r["robustness"].items():
        lines.append(f"| {kind} | " + " | ".join(_pm(d[lab], 100) for lab in labels) + " |")
    return "\n".join(lines)


def latent_markdown(r) -> str:
    d, a = r["data"], r["args"]
    load = r.get("load_average")
    lines = [
        f"Command: `{r['command']}`; run time {r['run_time_s']:.0f} s wall, {r['cpu_time_s']:.0f} s CPU"
        + (f" (1-minute load average {load[0]:.1f} on 2 cores at the end)" if load else "") + f"; torch threads {r['torch_threads']}.",
        f"{d['series']} spirals, {d['obs_per_series_min']}-{d['obs_per_series_max']} observations per series on [0, 5] "
        f"({d['obs_total']} in all, {d['union_times']} distinct times), noise sd {d['noise_sd']:g}; {a['iters']} Adam "
        f"iterations (lr {a['lr']:g}), dopri5 at rtol {a['rtol']:g}, atol {a['rtol'] * 1e-2:g}, float32; the same "
        "initialisation for every sensealg.",
        "",
        "| sensealg | final training loss | extrapolation MSE on (5, 10] | interpolation MSE on [0, 5] | train wall time (s) | "
        "train CPU time (s) | NFE fwd/bwd per iteration |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| `{row['sensealg']}` | not run: {row['skipped'][:120]} | | | | | |")
            continue
        lines.append(f"| `{row['sensealg']}` | {row['final_loss']:.4f} | {row['extrapolation_mse']:.4f} | "
                     f"{row['interpolation_mse']:.4f} | {row['train_time_s']:.1f} | {row['train_cpu_s']:.1f} | "
                     f"{row['nfe']:.1f}/{row['nfe_backward']:.1f} |")
    bs = next((row for row in r["rows"] if "reconstruction_error_max" in row), None)
    if bs:
        lines += ["", f"BacksolveAdjoint's reconstruction error (x tolerance): median over iterations "
                      f"{bs['reconstruction_error_median']:.3g}, largest {bs['reconstruction_error_max']:.3g}."]
    return "\n".join(lines)


BLOCKS = {"ude_lotka_volterra": ude_markdown, "audit_ude": audit_markdown, "three_body_masses": three_body_markdown,
          "aca_digits": aca_markdown, "latent_ode_irregular": latent_markdown, "audit_latent_ode": audit_markdown,
          "audit_conv_block": audit_markdown}


def main() -> None:
    text = DOC.read_text()
    for name, render in BLOCKS.items():
        path = OUT / f"{name}.json"
        if not path.exists():
            continue
        block = render(json.loads(path.read_text()))
        text = re.sub(
            rf"(<!-- BEGIN {name} -->\n).*?(\n<!-- END {name} -->)",
            lambda m: m.group(1) + block + m.group(2), text, flags=re.S,
        )
    DOC.write_text(text)
    img = DOC.parent / "img"
    img.mkdir(exist_ok=True)
    for name in BLOCKS:  # the figures the page shows (examples/output/ itself is not tracked)
        png = OUT / f"{name}.png"
        if png.exists():
            (img / png.name).write_bytes(png.read_bytes())
    print(f"rewrote {DOC}")


if __name__ == "__main__":
    main()
