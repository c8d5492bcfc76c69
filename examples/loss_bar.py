"""The progress bar the examples' training loops show: iterations done and the current loss.

tqdm's bar when tqdm is installed (the ``examples`` extra installs it); without it, one line
on stderr each time another tenth of the iterations is done, and one at the end. The bar
only displays: it reads the loss as a float the loop has already computed.

    with LossBar(300, "adam") as bar:
        for step in range(300):
            ...
            bar.step(loss)                      # one iteration, current loss

    psg.fit_lbfgs(params, loss_fn, max_iter=200, callback=bar.at)   # callback(iteration, loss)
"""

from __future__ import annotations

import sys


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class LossBar:
    def __init__(self, total: int, desc: str, file=None):
        self.total, self.desc = int(total), desc
        self.file = file if file is not None else sys.stderr
        self.done, self.loss = 0, float("nan")
        self._printed = 0
        tqdm = _tqdm()
        self._bar = tqdm(total=self.total, desc=desc, file=self.file, dynamic_ncols=True) if tqdm is not None else None

    def at(self, iteration: int, loss: float) -> None:
        """Iterations done so far and the loss there (``psg.fit_lbfgs``'s ``callback``)."""
        self.step(loss, max(0, int(iteration) - self.done))

    def step(self, loss, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.loss = float(loss)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{self.loss:.4g}", refresh=False)
            self._bar.update(self.done - self._bar.n)
        elif self.total and 10 * (self.done - self._printed) >= self.total:
            self._line()

    def _line(self) -> None:
        self._printed = self.done
        print(f"{self.desc}: {self.done}/{self.total}  loss={self.loss:.4g}", file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done > self._printed:
            self._line()

    def __enter__(self) -> "LossBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
