"""Small pieces the example scripts share (importable because each script's folder is on sys.path)."""

from __future__ import annotations


def save_plot(fig, path, dpi=100):
    """Lay out, write and close ``fig`` (pyplot keeps every open figure alive until closed), then say where."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"plot: {path}")


def names(csv: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated command-line list."""
    return [s.strip() for s in csv.split(",") if s.strip()]
