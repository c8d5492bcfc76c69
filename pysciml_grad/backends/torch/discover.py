"""What ``func`` reads, draws and writes, learned from the first evaluation of a solve.

An adjoint is a ``torch.autograd.Function`` whose inputs are the tensors it returns
gradients for. A tensor that ``func`` closes over (``lambda t, y: net(y)``, a bound
method, ``functools.partial``, a module multiplying by an outside tensor, ``W = base * 2``
computed before the solve) is not among them unless it is found, and autograd would
silently give it no gradient. The first evaluation f0 = func(t0, y0) is made by every
solve anyway; :func:`discover` makes it once, outside the Function, with autograd on
and under a :class:`~torch.overrides.TorchFunctionMode` that sees every tensor flowing
into an op:

* a tensor that enters an op but was not produced by an op during the call (nor is
  ``t`` or ``y``) was created outside ``func``; those that require grad are the
  Function's extra inputs. Non-leaf ones (``W = base * 2``) are kept as they are, so
  the adjoint's vector-Jacobian products stop at W and autograd carries dL/dW on to
  ``base`` through the graph the user built (that graph is never traversed twice);
* a walk of f0's autograd graph from its output, stopping at those tensors, finds any
  leaf that requires grad and reached f0 by a path the mode cannot see (an op
  implemented outside Python's torch function dispatch); it is added too;
* the CPU (and y0's CUDA device's) generator state before and after the call tells
  whether ``func`` draws random numbers (dropout in ``train()``);
* the version counter of every outside tensor before and after, and for those needing
  no grad a copy of the value, tell which buffers ``func`` updates in place
  (BatchNorm's running statistics in ``train()``: its kernel does not bump the counter).

Cost: one evaluation with a graph and one Python callback per op, instead of the same
evaluation without a graph; no evaluation is added (f0 is handed to the forward
solve, detached). A tensor that ``func`` reads only at later times (a branch on t) is
not seen by the first evaluation; :func:`check_graph` looks at replayed graphs in the
backward pass and raises if it meets one: the first replayed step's (or backward
evaluation's) always, and during the first :data:`FULL_AUDITS` backward passes of each
``func`` every one of them (:func:`audit_everything`), so a tensor read only inside a
middle time window is caught in the first training iteration. After that only the first
is checked: the walk and the :class:`Watch` mode each check needs (so that tensors
created inside ``func`` are not mistaken for outside ones) add 0.65x the step's own
forward with a graph (P2 speed problem, six MLP stages: 790 us plain, 1304 us watched
and walked; 1.28x when the mode flattened each op's arguments with pytree).
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...errors import PySciMLGradError


_ATOMS = (int, float, bool, complex, str, type(None), slice, type(Ellipsis), torch.dtype, torch.device,
          torch.memory_format, torch.layout)


def _tensors(obj: object) -> List[torch.Tensor]:
    """The tensors in an op's arguments or result. Ops take tensors, numbers and (nested)
    lists, tuples and dicts of them; this walk is 4-5x cheaper per op than pytree's
    flatten, which made a watched step cost 0.2-0.3x an unwatched one. Any other
    container goes to pytree."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        found: List[torch.Tensor] = []
        for x in obj:
            if isinstance(x, torch.Tensor):
                found.append(x)
            elif not isinstance(x, _ATOMS):
                found += _tensors(x)
        return found
    if isinstance(obj, dict):
        return _tensors(tuple(obj.values()))
    if isinstance(obj, _ATOMS):
        return []
    return [x for x in tree_flatten(obj)[0] if isinstance(x, torch.Tensor)]


class Watch(TorchFunctionMode):
    """Records the tensors flowing into ops that no op of this call produced."""

    def __init__(self, inside: Sequence[torch.Tensor]):
        super().__init__()
        self.produced: Dict[int, torch.Tensor] = {id(x): x for x in inside}
        self.outside: Dict[int, torch.Tensor] = {}
        self.versions: Dict[int, int] = {}
        # Values of outside tensors that need no grad (buffers, constants): some kernels
        # update them in place without bumping the version counter (batch_norm's running
        # statistics), so a copy is compared after the call.
        self.values: Dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for x in _tensors((args, kwargs)):
            if id(x) not in self.produced and id(x) not in self.outside:
                self.outside[id(x)] = x
                self.versions[id(x)] = x._version
                if not x.requires_grad:
                    self.values[id(x)] = x.detach().clone()
        out = func(*args, **kwargs)
        for x in _tensors(out):
            if id(x) not in self.outside:
                # Held until the call ends, so no id is reused by a later tensor.
                self.produced[id(x)] = x
        return out


def rng_devices(y0: torch.Tensor) -> List[int]:
    """CUDA devices whose generators a replay must restore (CPU's always is)."""
    return [y0.device.index if y0.device.index is not None else torch.cuda.current_device()] if y0.is_cuda else []


def rng_state(devices: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """The CPU generator's state and those of ``devices`` (what ``torch.utils.checkpoint``
    saves with ``preserve_rng_state=True``)."""
    return (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices))


def set_rng_state(state: Tuple[torch.Tensor, ...], devices: Sequence[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1:]):
        torch.cuda.set_rng_state(s, d)


@dataclass
class Discovery:
    """The first evaluation and what it revealed."""

    f0: torch.Tensor  # func(t0, y0), detached: the forward solve's first stage
    tensors: Tuple[torch.Tensor, ...]  # outside tensors requiring grad, in order of first use
    random: bool  # func drew from the default generators
    mutated: Tuple[torch.Tensor, ...]  # outside tensors func changed in place (buffers)
    rng_before: Optional[Tuple[torch.Tensor, ...]] = None  # generator state before f0 (set when random)
    devices: List[int] = field(default_factory=list)


def discover(func: Callable, t0: float, y0: torch.Tensor) -> Discovery:
    """Evaluate ``func(t0, y0)`` once with autograd on; see the module docstring."""
    y = y0.detach()
    t = torch.full((), t0, dtype=y0.dtype, device=y0.device)
    devices = rng_devices(y0)
    before = rng_state(devices)
    watch = Watch([y, t])
    with torch.enable_grad(), watch:
        out = func(t, y)
    after = rng_state(devices)
    random = any(not torch.equal(a, b) for a, b in zip(before, after))
    found: Dict[int, torch.Tensor] = {}
    mutated: List[torch.Tensor] = []
    for key, x in watch.outside.items():
        old = watch.values.get(key)
        if x._version != watch.versions[key] or (old is not None and not _same(old, x)):
            mutated.append(x)
        elif x.requires_grad:
            found[key] = x
    if isinstance(out, torch.Tensor) and out.grad_fn is not None:
        for leaf in _unseen_leaves(out, list(found.values()) + [y]):
            found.setdefault(id(leaf), leaf)
    f0 = out.detach() if isinstance(out, torch.Tensor) else out
    return Discovery(f0, tuple(found.values()), random, tuple(mutated), before if random else None, devices)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b.detach()) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.detach().nan_to_num())))


def _unseen_leaves(out: torch.Tensor, known: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Leaves requiring grad in ``out``'s graph not behind one of ``known``."""
    stop = {x.grad_fn for x in known if x.grad_fn is not None}
    known_ids = {id(x) for x in known}
    leaves: List[torch.Tensor] = []
    seen = set()
    todo = [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if isinstance(var, torch.Tensor):
            if id(var) not in known_ids:
                leaves.append(var)
            continue
        todo.extend(nxt for nxt, _ in node.next_functions)
    return leaves


def check_graph(outputs: Sequence[torch.Tensor], known: Sequence[torch.Tensor], name: str,
                watch: Optional[Watch] = None) -> None:
    """Raise if a replayed evaluation's graph reaches a tensor requiring grad that is
    not an input of the adjoint (nor made by an op during the replay, as ``watch``, the
    mode it ran under, saw): its gradient would be lost."""
    stop = {x.grad_fn for x in known if x.grad_fn is not None}
    known_ids = {id(x) for x in known} | (set(watch.produced) if watch is not None else set())
    seen = set()
    todo = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor)]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if isinstance(var, torch.Tensor):
            if id(var) not in known_ids:
                raise PySciMLGradError(
                    f"{name}: func reads a tensor of shape {tuple(var.shape)} (dtype {var.dtype}) that "
                    "requires grad but was not used by the first evaluation func(t0, y0), so its gradient "
                    "cannot be routed (it is read only at later times, e.g. behind a branch on t). Pass it "
                    "explicitly: odeint(..., params=[that_tensor, ...])."
                )
            continue
        todo.extend(nxt for nxt, _ in node.next_functions)


FULL_AUDITS = 2  # backward passes per func in which every replayed graph is checked
_audits: "weakref.WeakKeyDictionary[Callable, int]" = weakref.WeakKeyDictionary()


def audit_key(func: Callable) -> object:
    """What identifies ``func`` across solves: a training loop often builds a new
    ``lambda t, y: net(y)`` (or a bound method, a partial, our own wrappers) per call,
    so wrappers are unwrapped and a Python function is known by its code object."""
    for _ in range(16):
        if isinstance(func, functools.partial):
            func = func.func
        elif inspect.ismethod(func):
            func = func.__func__
        elif hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        else:
            break
    return getattr(func, "__code__", func)


def audit_everything(func: Callable) -> bool:
    """Whether this backward pass checks every replayed graph of ``func`` (counts the pass).

    True for the first :data:`FULL_AUDITS` passes of each func (by :func:`audit_key`), and
    always for one that cannot be weakly referenced (it cannot be remembered).
    """
    key = audit_key(func)
    try:
        seen = _audits.get(key, 0)
        _audits[key] = seen + 1
    except TypeError:
        return True
    return seen < FULL_AUDITS
