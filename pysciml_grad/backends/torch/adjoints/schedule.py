"""Checkpoint schedules: which forward states to keep, and how to reverse a step
sequence under a memory budget by recomputing the rest.

Two pieces, both plain Python over step indices (no tensors are created here):

* :class:`OnlineThinning` decides *during the forward pass*, when the number of steps
  N is not yet known, which step-start states to keep: the multiples of a stride s;
  when more than ``capacity(s)`` are kept, s doubles and every other one is dropped.
  A fixed capacity c keeps between c/2 and c states, uniformly spaced; the capacity
  ``s`` (``sqrt_capacity``) keeps about sqrt(N) states at spacing about sqrt(N).

* :func:`reverse` walks the steps backwards, yielding ``(n, state_n)`` for
  n = N-1, ..., 0, from the kept states. Between two kept states it uses binomial
  checkpointing (Griewank 1992, "Achieving logarithmic growth of temporal and spatial
  complexity in reverse automatic differentiation"; Griewank & Walther 2000, ACM TOMS
  26, "Algorithm 799: revolve") with the free slots of the budget: reversing l steps
  with c free slots recomputes the minimal number of steps,

      T(l, c) = r l - C(c + r + 1, c + 2)   where C(c + r, r - 1) < l <= C(c + r + 1, r),

  i.e. each step is recomputed at most r times (r grows like l^(1/(c+1))). Every recomputed
  state is bitwise the forward one (the same step function on the same inputs), so the
  gradient does not depend on the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Generic, Iterator, Optional, Tuple, TypeVar

State = TypeVar("State")


def binomial(c: int, r: int) -> int:
    """beta(c, r) = C(c + r, c) (Griewank 1992)."""
    return math.comb(c + r, c)


# Cost model. Reversing a segment of l steps means producing state_n for n = l-1, ..., 0
# (each then replayed once with autograd by the caller, not counted here) from the held
# start state, with ``free`` extra checkpoint slots; the one working state being
# advanced or handed out is not a slot. Then the longest segment reversible with every
# step advanced at most r times is L(free, r) = L(free, r-1) + L(free-1, r) with
# L(0, r) = r + 1 and L(c, 0) = 1, i.e. L(c, r) = beta(c + 1, r): Griewank's bound with
# the working state acting as one more slot.


def repetitions(length: int, free: int) -> int:
    """Smallest r with L(free, r) = beta(free + 1, r) >= length."""
    r = 0
    while binomial(free + 1, r) < length:
        r += 1
    return r


def optimal_cost(length: int, free: int) -> int:
    """Minimal number of recomputed forward steps to reverse ``length`` steps with
    ``free`` extra slots: T = r l - beta(free + 2, r - 1) (Griewank's closed form
    with free + 1 slots)."""
    if length <= 1:
        return 0
    r = repetitions(length, free)
    return r * length - binomial(free + 2, r - 1)


def split(length: int, free: int) -> int:
    """How far to advance before placing the next checkpoint (revolve's step choice).

    The cost T(., c) is convex and piecewise linear in the length, with slope r on the
    band L(c, r-1) < l <= L(c, r). With r = repetitions(length, free), the split m is
    optimal when the left part (reversed later with ``free`` slots) lies in band r - 1
    and the right part (reversed first with ``free - 1`` slots) in band r:
    L(free, r-2) <= m <= L(free, r-1) and L(free-1, r-1) <= length - m <= L(free-1, r).
    Pascal's rule L(c, r) = L(c, r-1) + L(c-1, r) makes the range non-empty; the
    smallest m advances least.
    """
    r = repetitions(length, free)

    def band(c: int, k: int) -> int:
        return binomial(c + 1, k) if k >= 0 else 0

    lo = max(1, length - band(free - 1, r), band(free, r - 2))
    hi = min(length - 1, band(free, r - 1), length - band(free - 1, r - 1))
    return max(1, min(lo, hi))


class OnlineThinning(Generic[State]):
    """Keep the states of steps n = 0, s, 2s, ... with a stride s that doubles whenever
    more than ``capacity(s)`` states are kept (``capacity=None``: keep every state).

    Step 0 (the initial state) is always kept, so every step is reachable by
    recomputation from a kept state.
    """

    def __init__(self, capacity: Optional[Callable[[int], int]] = None):
        self.capacity = capacity
        self.stride = 1
        self.states: Dict[int, State] = {}

    def offer(self, n: int, state: State) -> None:
        if n % self.stride:
            return
        self.states[n] = state
        if self.capacity is None:
            return
        while len(self.states) > max(1, self.capacity(self.stride)):
            self.stride *= 2
            self.states = {k: v for k, v in self.states.items() if k % self.stride == 0}


def sqrt_capacity(stride: int) -> int:
    """Capacity for the sqrt(N) rule: at most ``stride`` states at spacing ``stride``,
    so states kept and steps per segment are both about sqrt(N)."""
    return max(4, stride)


@dataclass
class Counter:
    """How much a reversal recomputed and the most states it held at once."""

    recomputed: int = 0
    held: int = 0
    peak_held: int = 0

    def hold(self, k: int = 1) -> None:
        self.held += k
        self.peak_held = max(self.peak_held, self.held)

    def release(self, k: int = 1) -> None:
        self.held -= k


def reverse(
    n_steps: int,
    kept: Dict[int, State],
    advance: Callable[[int, State], State],
    budget: Optional[int],
    counter: Optional[Counter] = None,
) -> Iterator[Tuple[int, State]]:
    """Yield ``(n, state_n)`` for n = n_steps - 1 down to 0.

    ``kept`` holds the states the forward pass kept (step 0 included); ``advance(n, s)``
    maps state_n to state_{n+1} without building a graph. ``budget``: the most
    checkpoint states held at once, the kept ones included (None: unbounded); the one
    working state being advanced or yielded is not a checkpoint. The kept states stay held
    throughout (so a second backward with ``retain_graph=True`` still finds them); each
    segment between two kept states is reversed with the slots left over.
    """
    counter = counter if counter is not None else Counter()
    starts = sorted(kept)
    if not starts or starts[0] != 0:
        raise ValueError("the state of step 0 must be kept")
    counter.hold(len(starts))
    free = None if budget is None else max(0, budget - len(starts))
    for j in range(len(starts) - 1, -1, -1):
        a = starts[j]
        b = starts[j + 1] if j + 1 < len(starts) else n_steps
        yield from _revolve(a, b, kept[a], advance, free, counter)


def _revolve(a: int, b: int, state_a: State, advance, free: Optional[int], counter: Counter) -> Iterator[Tuple[int, State]]:
    length = b - a
    if length <= 0:
        return
    if length == 1:
        yield a, state_a
        return
    if free is None or free >= length - 2:
        # Enough slots: store the segment (the last state is the working state, not a
        # slot); each step is advanced once.
        states = [state_a]
        for n in range(a, b - 1):
            states.append(advance(n, states[-1]))
            counter.recomputed += 1
            if n < b - 2:
                counter.hold()
        yield b - 1, states.pop()
        for n in range(b - 2, a, -1):
            yield n, states.pop()
            counter.release()
        yield a, state_a
        return
    if free == 0:
        # No slot at all: recompute every state from the segment start.
        for n in range(b - 1, a, -1):
            s = state_a
            for m in range(a, n):
                s = advance(m, s)
                counter.recomputed += 1
            yield n, s  # the working state, not a checkpoint
            del s
        yield a, state_a
        return
    m = split(length, free)
    s = state_a
    for n in range(a, a + m):
        s = advance(n, s)
        counter.recomputed += 1
    counter.hold()
    yield from _revolve(a + m, b, s, advance, free - 1, counter)
    counter.release()
    del s
    yield from _revolve(a, a + m, state_a, advance, free, counter)
