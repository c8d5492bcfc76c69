"""Checkpoint schedules: binomial reversal is optimal and within budget; online thinning
keeps what it promises."""

from functools import lru_cache

import pytest

from pysciml_grad.backends.torch.adjoints.schedule import (
    Counter,
    OnlineThinning,
    optimal_cost,
    reverse,
    sqrt_capacity,
)


@lru_cache(maxsize=None)
def brute_force_cost(length, free):
    """Fewest recomputed steps to reverse ``length`` steps with ``free`` extra slots, by
    exhaustive dynamic programming over the first checkpoint position."""
    if length <= 1:
        return 0
    if free == 0:
        return length * (length - 1) // 2
    return min(m + brute_force_cost(length - m, free - 1) + brute_force_cost(m, free) for m in range(1, length))


@pytest.mark.parametrize("free", range(0, 7))
def test_binomial_reversal_is_optimal_and_within_budget(free):
    for length in range(1, 90):
        counter = Counter()
        # States are the step index itself, so a wrong recomputation shows up as a wrong value.
        seq = list(reverse(length, {0: 0}, lambda n, s: s + 1, budget=free + 1, counter=counter))
        assert [n for n, _ in seq] == list(range(length - 1, -1, -1))
        assert all(n == s for n, s in seq)
        assert counter.peak_held <= free + 1
        assert counter.recomputed == brute_force_cost(length, free)
        assert optimal_cost(length, free) == brute_force_cost(length, free)


def test_reverse_with_forward_checkpoints_segments():
    kept = {0: 0, 7: 7, 14: 14}
    counter = Counter()
    seq = list(reverse(20, kept, lambda n, s: s + 1, budget=5, counter=counter))
    assert [n for n, _ in seq] == list(range(19, -1, -1)) and all(n == s for n, s in seq)
    assert counter.peak_held <= 5
    # Each segment reversed with 5 - 3 = 2 free slots.
    assert counter.recomputed == optimal_cost(6, 2) + 2 * optimal_cost(7, 2)


def test_unbounded_reverse_recomputes_nothing_when_all_kept():
    kept = {n: n for n in range(10)}
    counter = Counter()
    assert [s for _, s in reverse(10, kept, lambda n, s: s + 1, budget=None, counter=counter)] == list(range(9, -1, -1))
    assert counter.recomputed == 0


def test_reverse_requires_the_initial_state():
    with pytest.raises(ValueError):
        list(reverse(5, {2: 2}, lambda n, s: s + 1, budget=3))


@pytest.mark.parametrize("capacity", [1, 2, 5, 8])
def test_online_thinning_fixed_capacity(capacity):
    for n_steps in (1, 3, 17, 100, 1000):
        store = OnlineThinning(lambda stride: capacity)
        for n in range(n_steps):
            store.offer(n, n)
            assert len(store.states) <= capacity
        kept = sorted(store.states)
        assert kept[0] == 0
        gaps = {b - a for a, b in zip(kept, kept[1:])}
        assert gaps <= {store.stride}  # uniform spacing
        assert len(kept) == -(-n_steps // store.stride)  # every multiple of the stride is kept
        # After a thinning more than half the capacity is still in use.
        assert store.stride == 1 or len(kept) > capacity // 2


def test_online_thinning_sqrt_rule():
    for n_steps in (10, 100, 1000, 10000):
        store = OnlineThinning(sqrt_capacity)
        for n in range(n_steps):
            store.offer(n, n)
        # Kept states and the steps per segment are both O(sqrt(N)).
        assert len(store.states) <= max(4, 2 * int(n_steps**0.5) + 2)
        assert store.stride <= max(4, 2 * int(n_steps**0.5) + 2)
