"""Structured states: tuples, lists and dicts of tensors, nested, as one flat vector.

The engines integrate one tensor. A structured state (FFJORD's ``(z, logp)``, a dict of
position and momentum, ...) is flattened once at the solve entry: the leaves are
concatenated into one 1-D tensor, ``func`` is wrapped so that it sees and returns the
user's structure, and the stacked solution is cut back into leaves of shape
``(len(t), *leaf.shape)``. Every method and every sensealg then works unchanged, and
the gradient flows through the concatenation and the slices like any other operation.

Flattening order: tuples and lists by position, dicts by insertion order (the order
``dict.items()`` gives), depth first. Leaves must share one floating dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

import torch

from .errors import InvalidStateError, RHSOutputError

#: Names of the step callbacks a ``func`` may carry (torchdiffeq's convention); the
#: wrapper forwards them with the state restructured.
CALLBACK_NAMES = tuple(
    name + suffix
    for name in ("callback_step", "callback_accept_step", "callback_reject_step")
    for suffix in ("", "_adjoint")
)


@dataclass(frozen=True)
class Structure:
    """The shape of a structured state: a nested spec and the leaves' shapes.

    ``spec`` is ``None`` for a leaf, ``("tuple"|"list", children)`` or
    ``("dict", keys, children)``.
    """

    spec: Any
    shapes: Tuple[torch.Size, ...]

    @property
    def numels(self) -> Tuple[int, ...]:
        return tuple(int(s.numel()) for s in self.shapes)

    def flatten(self, tree: Any, what: str = "the state") -> torch.Tensor:
        leaves = _leaves(tree, self.spec, what)
        return torch.cat([leaf.reshape(-1) for leaf in leaves])

    def unflatten(self, flat: torch.Tensor, lead: Tuple[int, ...] = ()) -> Any:
        """Cut ``flat[..., N]`` into leaves of shape ``(*lead, *leaf_shape)``."""
        pieces: List[torch.Tensor] = []
        start = 0
        for shape, n in zip(self.shapes, self.numels):
            # view((...)) with a tuple, so that lead == () and shape == () works too.
            pieces.append(flat[..., start:start + n].view((*lead, *shape)))
            start += n
        return _build(self.spec, iter(pieces))


def is_structured(y0: Any) -> bool:
    return isinstance(y0, (tuple, list, dict))


def structure_of(y0: Any) -> Structure:
    """Read the structure of ``y0`` and check its leaves (tensors, one floating dtype, one device)."""
    spec, leaves = _spec(y0, "y0")
    if not leaves:
        raise InvalidStateError("y0 is an empty tuple/list/dict; a structured state needs at least one tensor")
    first = leaves[0]
    for path, leaf in zip(_paths(spec), leaves):
        if not leaf.is_floating_point():
            raise InvalidStateError(
                f"y0{path} has dtype {leaf.dtype}; every leaf of a structured state must be floating point"
            )
        if leaf.dtype != first.dtype or leaf.device != first.device:
            raise InvalidStateError(
                f"y0{path} is {leaf.dtype} on {leaf.device} but the first leaf is {first.dtype} on "
                f"{first.device}; the leaves of a structured state must share one dtype and device "
                "(they are integrated as one vector): convert them, e.g. leaf.to(first)"
            )
    return Structure(spec, tuple(leaf.shape for leaf in leaves))


class StructuredFunc(torch.nn.Module):
    """``func`` seen through a flat state: ``f(t, y_flat) = flatten(func(t, unflatten(y_flat)))``.

    An ``nn.Module`` so that the parameters of a module ``func`` stay discoverable
    (``base_func`` is a registered submodule); step callbacks are forwarded with the
    state restructured.
    """

    @property
    def __wrapped__(self) -> Callable:  # functools' convention: the user's func, for per-func caches
        return self.base_func

    def __init__(self, base_func: Callable, structure: Structure):
        super().__init__()
        self.base_func = base_func
        self.structure = structure
        for name in CALLBACK_NAMES:
            callback = getattr(base_func, name, None)
            if callback is not None:
                object.__setattr__(self, name, _restructured_callback(callback, structure))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.base_func(t, self.structure.unflatten(y))
        try:
            return self.structure.flatten(out, "func(t, y)")
        except InvalidStateError as exc:
            raise RHSOutputError(
                f"{exc}; func(t, y) must return dy/dt with the same structure as y0"
            ) from None


def _restructured_callback(callback: Callable, structure: Structure) -> Callable:
    def restructured(t0, y0, dt):
        return callback(t0, structure.unflatten(y0), dt)

    return restructured


def wrap_norm(norm: Callable, structure: Structure) -> Callable:
    """A user norm written for the structured state, applied to the flat one."""

    def flat_norm(x: torch.Tensor) -> torch.Tensor:
        return norm(structure.unflatten(x))

    flat_norm.per_sample = getattr(norm, "per_sample", False)  # see norms.PerSampleNorm
    return flat_norm


def _spec(tree: Any, path: str):
    if isinstance(tree, torch.Tensor):
        return None, [tree]
    if isinstance(tree, (tuple, list)):
        kind = "tuple" if isinstance(tree, tuple) else "list"
        children, leaves = [], []
        for i, child in enumerate(tree):
            spec, sub = _spec(child, f"{path}[{i}]")
            children.append(spec)
            leaves.extend(sub)
        return (kind, tuple(children), type(tree)), leaves
    if isinstance(tree, dict):
        keys = tuple(tree)
        children, leaves = [], []
        for k in keys:
            spec, sub = _spec(tree[k], f"{path}[{k!r}]")
            children.append(spec)
            leaves.extend(sub)
        return ("dict", keys, tuple(children)), leaves
    raise InvalidStateError(
        f"{path} is a {type(tree).__name__}; y0 must be a torch.Tensor or a tuple/list/dict of "
        "torch.Tensor leaves (a structured state holds only tensors): wrap numbers, e.g. "
        "torch.as_tensor([1.0, 2.0], dtype=torch.float64)"
    )


def _paths(spec: Any, prefix: str = "") -> List[str]:
    if spec is None:
        return [prefix]
    if spec[0] == "dict":
        _, keys, children = spec
        return [p for k, c in zip(keys, children) for p in _paths(c, f"{prefix}[{k!r}]")]
    _, children, _ = spec
    return [p for i, c in enumerate(children) for p in _paths(c, f"{prefix}[{i}]")]


def _leaves(tree: Any, spec: Any, what: str) -> Sequence[torch.Tensor]:
    if spec is None:
        if not isinstance(tree, torch.Tensor):
            raise InvalidStateError(f"{what} has a {type(tree).__name__} where y0 has a tensor")
        return [tree]
    if spec[0] == "dict":
        _, keys, children = spec
        if not isinstance(tree, dict) or tuple(tree) != keys:
            got = tuple(tree) if isinstance(tree, dict) else type(tree).__name__
            raise InvalidStateError(f"{what} has keys/type {got} where y0 has a dict with keys {keys}")
        return [leaf for k, c in zip(keys, children) for leaf in _leaves(tree[k], c, what)]
    kind, children, _ = spec
    if not isinstance(tree, (tuple, list)) or len(tree) != len(children):
        got = f"length {len(tree)}" if isinstance(tree, (tuple, list)) else type(tree).__name__
        raise InvalidStateError(f"{what} is a {got} where y0 is a {kind} of length {len(children)}")
    return [leaf for child, c in zip(tree, children) for leaf in _leaves(child, c, what)]


def _build(spec: Any, pieces) -> Any:
    if spec is None:
        return next(pieces)
    if spec[0] == "dict":
        _, keys, children = spec
        return {k: _build(c, pieces) for k, c in zip(keys, children)}
    _, children, cls = spec
    items = [_build(c, pieces) for c in children]
    return tuple(items) if cls is tuple else (list(items) if cls is list else cls(*items))
