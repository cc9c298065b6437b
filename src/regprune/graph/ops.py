"""How each torch function moves, mixes or blocks channel labels.

Five kinds of functions matter; each has one handler:

* **element-wise** (add, mul, relu, where ...): operands are broadcast against each other, and the
  atoms meeting at the same position are coupled;
* **data movement** (view, permute, cat, getitem, pad ...): replayed on the labels themselves;
* **reductions** (sum, mean, softmax ...): fine along dims with constant labels; a sum over
  channels is still exact, a mean is approximate, anything else locks;
* **per-channel spatial ops** (pooling, interpolation): labels pass through per channel;
* **normalizations** called as functions (batch_norm, layer_norm ...): their per-channel
  parameters are coupled to the channel they scale.

Any other function that touches a channel-carrying tensor is *unknown*: its inputs are locked and
its output gets a fresh locked atom, with the function's name as the reason. Nothing is guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from regprune.graph.atoms import atoms_in, unexpanded
from regprune.graph.labels import (
    channel_vector,
    compact,
    constant_label,
    expand_to,
    varying_dims,
)
from regprune.inputs import iter_tensors

if TYPE_CHECKING:
    from regprune.graph.tracer import Tracer

ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "add",
        "addcdiv",
        "addcmul",
        "asin",
        "atan",
        "atan2",
        "bfloat16",
        "bitwise_and",
        "bitwise_or",
        "ceil",
        "celu",
        "clamp",
        "clamp_max",
        "clamp_min",
        "clip",
        "clone",
        "contiguous",
        "cos",
        "cosh",
        "cpu",
        "cuda",
        "detach",
        "div",
        "divide",
        "double",
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "elu",
        "eq",
        "erf",
        "exp",
        "expm1",
        "float",
        "floor",
        "floor_divide",
        "fmod",
        "frac",
        "ge",
        "gelu",
        "glu_",
        "gt",
        "half",
        "hardsigmoid",
        "hardswish",
        "hardtanh",
        "hypot",
        "le",
        "leaky_relu",
        "lerp",
        "log",
        "log1p",
        "log2",
        "logical_and",
        "logical_not",
        "logical_or",
        "logsigmoid",
        "lt",
        "masked_fill",
        "maximum",
        "minimum",
        "mish",
        "mul",
        "multiply",
        "nan_to_num",
        "ne",
        "neg",
        "negative",
        "pow",
        "reciprocal",
        "relu",
        "relu6",
        "remainder",
        "requires_grad",
        "round",
        "rrelu",
        "rsqrt",
        "rsub",
        "selu",
        "sigmoid",
        "sign",
        "silu",
        "sin",
        "sinh",
        "softplus",
        "softshrink",
        "softsign",
        "sqrt",
        "square",
        "sub",
        "subtract",
        "tan",
        "tanh",
        "threshold",
        "to",
        "true_divide",
        "truediv",
        "trunc",
        "type",
        "type_as",
        "where",
        "xlogy",
        "and",
        "or",
        "xor",
        "mod",
        "floordiv",
        "matmul_scalar",
    ]
)

MOVEMENT = frozenset(
    [
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "permute",
        "transpose",
        "t",
        "swapaxes",
        "swapdims",
        "movedim",
        "moveaxis",
        "squeeze",
        "unsqueeze",
        "expand",
        "expand_as",
        "repeat",
        "repeat_interleave",
        "narrow",
        "select",
        "getitem",
        "index_select",
        "split",
        "chunk",
        "unbind",
        "tensor_split",
        "cat",
        "concat",
        "concatenate",
        "stack",
        "roll",
        "flip",
        "view_as",
        "reshape_as",
        "channel_shuffle",
        "pixel_shuffle",
        "pixel_unshuffle",
    ]
)

RESHAPES = frozenset(["view", "reshape", "view_as", "reshape_as", "unflatten"])

SELECTING = frozenset(
    [
        "getitem",
        "narrow",
        "select",
        "index_select",
        "split",
        "chunk",
        "unbind",
        "tensor_split",
        "roll",
    ]
)
"""Ops whose bounds are numbers fixed in the code: they cannot follow a channel dim that shrinks."""

SHUFFLING = frozenset(["channel_shuffle", "pixel_shuffle", "pixel_unshuffle"])

REDUCTIONS = frozenset(
    [
        "sum",
        "mean",
        "amax",
        "amin",
        "max",
        "min",
        "prod",
        "std",
        "var",
        "norm",
        "logsumexp",
        "all",
        "any",
    ]
)

ALONG_DIM = frozenset(["softmax", "log_softmax", "cumsum", "cumprod", "argmax", "argmin"])

SPATIAL = frozenset(
    [
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "lp_pool1d",
        "lp_pool2d",
        "interpolate",
        "upsample",
        "upsample_nearest",
        "upsample_bilinear",
    ]
)

CONSTANT_OUTPUT = frozenset(
    [
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
        "new_tensor",
        "size",
        "dim",
        "numel",
        "shape",
        "get",
    ]
)


FILLED = frozenset(
    [
        "zeros",
        "ones",
        "full",
        "zeros_like",
        "ones_like",
        "full_like",
        "new_zeros",
        "new_ones",
        "new_full",
    ]
)
"""Factories whose output holds one value everywhere."""


def _track_same_along(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Record along which dims a constant holds the same values (see ``Tracer.same_along``):
    every dim for a filled factory's output; for an element-wise op, the dims along which every
    operand is the same or broadcast."""
    outputs = [t for t in iter_tensors(out) if isinstance(t, torch.Tensor)]
    if not outputs:
        return
    if name in FILLED:
        for tensor in outputs:
            tracer.same_along[tensor] = frozenset(range(-tensor.dim(), 0))
        return
    if name not in ELEMENTWISE:
        return
    operands = [t for t in iter_tensors((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not any(t in tracer.same_along for t in operands):
        return
    for tensor in outputs:
        dims = frozenset(
            d
            for d in range(-tensor.dim(), 0)
            if all(
                t.dim() < -d or t.shape[d] == 1 or d in tracer.same_along.get(t, ())
                for t in operands
            )
        )
        if dims:
            tracer.same_along[tensor] = dims


def canonical_name(func: Callable) -> str:
    """``__iadd__``, ``add_`` and ``add`` all name the same rule."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        for prefix in ("i", "r"):
            if name.startswith(prefix) and name[1:] in ELEMENTWISE | {"add", "sub", "mul"}:
                name = name[1:]
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


def record_function(tracer: Tracer, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
    """Label the outputs of one torch call and record the coupling it implies."""
    name = canonical_name(func)
    if name == "setitem":
        _setitem(tracer, args)
        return
    _track_same_along(tracer, name, args, kwargs, out)
    outputs = list(iter_tensors(out))
    if not outputs or name in CONSTANT_OUTPUT:
        return
    inputs = [t for t in iter_tensors((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not any(tracer.has_atoms(t) for t in inputs):
        return
    handler = _HANDLERS.get(name)
    if handler is None:
        if name in ELEMENTWISE:
            handler = _elementwise
        elif name in MOVEMENT:
            handler = _movement
        elif name in REDUCTIONS:
            handler = _reduction
        elif name in SPATIAL:
            handler = _spatial
        elif name in ALONG_DIM:
            handler = _along_dim
    if handler is None:
        _unknown(tracer, name, inputs, outputs)
        return
    try:
        handler(tracer, name, args, kwargs, out)
    except Exception as error:  # a rule that cannot follow this call: lock, never guess
        _unknown(tracer, f"{name} ({type(error).__name__}: {error})", inputs, outputs)


def _unknown(tracer: Tracer, name: str, inputs: list, outputs: list) -> None:
    reason = f"op '{name}' is not known to the tracer"
    tracer.lock_inputs(inputs, reason)
    for tensor in outputs:
        tracer.set_label(tensor, tracer.locked_label(tensor, reason))


def _lock_all(tracer: Tracer, reason: str, args: Any, out: Any) -> None:
    tracer.lock_inputs(iter_tensors(args), reason)
    for tensor in iter_tensors(out):
        tracer.set_label(tensor, tracer.locked_label(tensor, reason))


# ---- element-wise ---------------------------------------------------------------------------
def merge_operands(tracer: Tracer, operands: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Couple the atoms that meet position by position; return the merged label.

    A position where one operand carries an atom and another operand is a full-size constant
    (not broadcast along that dim) cannot lose that position: the constant has a fixed size.
    Those atoms are locked (a zero-padded shortcut, a fixed mask).
    """
    ndim = len(shape)
    labels = [_pad_dims(compact(tracer.label(t)), ndim) for t in operands]
    labels = _unshare_from_heads(tracer, labels)
    sizes = [(1,) * (ndim - t.dim()) + tuple(t.shape) for t in operands]
    broadcast = torch.broadcast_shapes(*(tuple(lbl.shape) for lbl in labels))
    expanded = [lbl.expand(broadcast) for lbl in labels]
    for i, label in enumerate(expanded):
        for j, other in enumerate(expanded):
            if i != j:
                _lock_against_constant(tracer, label, other, sizes[j])
    # the smallest label first: coupled atoms are interchangeable, and where a label varies
    # along tokens only because a class token was concatenated (MViT), a per-channel operand
    # (a norm's weight) gives the output a per-channel label again, keeping later labels small
    order = sorted(range(len(labels)), key=lambda i: labels[i].numel())
    merged = expanded[order[0]]
    for i in order[1:]:
        tracer.atoms.couple(merged, expanded[i])
        merged = torch.where(merged >= 0, merged, expanded[i])
    return compact(merged).contiguous()


def unit_dim(tracer: Tracer, label: torch.Tensor) -> int | None:
    """The dim whose slices are the removable units of a head grid, None if not a head grid.

    A head grid is a label whose channels a reshape split into (..., heads, head_dim); its
    unit dim is the heads dim (the next-to-last varying one) or, with
    ``attention="head_dim"``, the last varying one.
    """
    varying = varying_dims(label)
    if len(varying) < 2 or not tracer.atoms.is_split(label.reshape(-1)):
        return None
    return varying[-2] if tracer.attention == "heads" else varying[-1]


def _unshare_from_heads(tracer: Tracer, labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """An operand that every unit of a head grid reads alike (RoPE's cos/sin over head_dim, a
    per-head_dim scale) must not couple the units: it is read as a fixed-size constant
    (which pins the dims it spans) and its own channels are locked."""
    for grid in labels:
        unit = unit_dim(tracer, grid)
        if unit is None:
            continue
        grid_varying = set(varying_dims(grid))
        for i, label in enumerate(labels):
            varying = set(varying_dims(label))
            if varying and unit not in varying and varying <= grid_varying - {unit}:
                reason = "it is read alike by every head (heads are the removable unit)"
                tracer.atoms.lock(atoms_in(label), tracer.where, reason)
                labels[i] = torch.full_like(label, -1)
    return labels


def _pad_dims(label: torch.Tensor, ndim: int) -> torch.Tensor:
    return label.reshape((1,) * (ndim - label.dim()) + tuple(label.shape))


def _lock_against_constant(
    tracer: Tracer, label: torch.Tensor, other: torch.Tensor, other_size: tuple[int, ...]
) -> None:
    exposed = (label >= 0) & (other < 0)
    if not bool(exposed.any()):
        return
    varying = varying_dims(compact(label))
    pinned = [d for d in varying if other_size[d] > 1]
    if pinned and len(varying) > 1:
        # a grid: the constant spans these dims only (RoPE's cos/sin span head_dim), so they
        # must not shrink; the others may
        for d in pinned:
            tracer.atoms.require_fixed(
                compact(label).contiguous(), d, tracer.where, "it meets a fixed-size constant"
            )
    elif pinned:
        tracer.atoms.lock(label[exposed], tracer.where, "it meets a fixed-size constant")


DTYPE_ONLY = frozenset(["to", "type", "type_as"])
"""Ops whose tensor arguments after the first lend only a dtype or device (``x.type_as(y)``,
``x.to(y)``): they must not couple ``y``'s channels with ``x``'s."""


KEEP_ZERO = frozenset(["mul", "div", "true_divide"])
"""Element-wise ops whose output is zero where the channel operand is (for a scalar other)."""


def _elementwise(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name in DTYPE_ONLY:
        args, kwargs = args[:1], {}
    operands = [t for t in iter_tensors((args, kwargs))]
    outputs = list(iter_tensors(out))
    shape = outputs[0].shape
    if any(t.dim() > len(shape) for t in operands):
        raise ValueError("operands have more dims than the output")
    # a one-element parameter (StarReLU's scale and bias, a learnable temperature) is read
    # alike by every channel: removing channels leaves it as it is, and pairing it with each
    # of them would make all the channels it meets one unit that can only go whole. Added to
    # a channel, it makes a zeroed channel nonzero: inexact (compensation folds it)
    shared = len(operands) > 1 and any(tracer.is_scalar_parameter(t) for t in operands)
    if shared:
        operands = [t for t in operands if not tracer.is_scalar_parameter(t)]
    if not operands:
        label = constant_label(len(shape))
    elif len(operands) == 1:
        label = _pad_dims(tracer.label(operands[0]), len(shape))
    else:
        label = merge_operands(tracer, operands, shape)
    if shared and name not in KEEP_ZERO:
        tracer.atoms.mark_inexact(atoms_in(label))
    for tensor in outputs:
        tracer.set_label(tensor, label)


# ---- data movement --------------------------------------------------------------------------
def _to_label_args(tracer: Tracer, value: Any, data_ids: set[int]) -> Any:
    if isinstance(value, torch.Tensor):
        if id(value) in data_ids:
            return expand_to(tracer.label(value), value.shape)
        return value.cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_label_args(tracer, v, data_ids) for v in value)
    return value


def _movement(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name == "repeat_interleave":
        repeats = kwargs.get("repeats", args[1] if len(args) > 1 else None)
        if isinstance(repeats, torch.Tensor) and repeats.numel() > 1:
            # one count per element: a fixed length that a shrinking dim cannot follow
            raise ValueError("per-element repeats")
    if name in ("cat", "concat", "concatenate", "stack"):
        data = list(args[0])
    elif name in ("expand_as", "view_as", "reshape_as") or name == "getitem":
        data = [args[0]]
    else:
        data = [args[0]] if isinstance(args[0], torch.Tensor) else []
    cat = name in ("cat", "concat", "concatenate")
    if cat and _cat_of_alike_sources(tracer, args, kwargs, out):
        return
    data_ids = {id(t) for t in data}
    like = None
    if name in ("expand_as", "view_as", "reshape_as"):
        # the other tensor gives the shape, and it may live on the meta device (a traced
        # parameter: timm's ScaledStdConv2d ends in ``.reshape_as(self.weight)``), which has
        # no data to copy: a zero-stride CPU tensor of that shape stands in for it
        like = args[1]
        args = (args[0], torch.empty(()).expand(like.shape))
    label_args = _to_label_args(tracer, args, data_ids)
    label_kwargs = {k: _to_label_args(tracer, v, data_ids) for k, v in kwargs.items()}
    func = getattr(torch.Tensor, name, None) if name != "getitem" else torch.Tensor.__getitem__
    if name in ("cat", "concat", "concatenate", "stack", "channel_shuffle"):
        func = getattr(torch, name)
    if name in ("pixel_shuffle", "pixel_unshuffle"):
        func = getattr(F, name)
    if name in ("view", "view_as"):
        # labels are broadcast views that ``view`` could not always reshape in place
        func = torch.Tensor.reshape if name == "view" else torch.Tensor.reshape_as
    label_out = func(*label_args, **label_kwargs)
    outputs = list(iter_tensors(out))
    label_outputs = list(iter_tensors(label_out))
    if like is not None:  # its own rule, stricter than a reshape's (below)
        _follow_the_other_shape(tracer, name, label_outputs[0], like)
    elif name in RESHAPES or name == "flatten":
        _check_reshape(tracer, name, data[0], label_args[0], label_outputs[0], args)
    if name in SELECTING or name in SHUFFLING:
        _check_selection(tracer, name, label_args[0], label_outputs, args, kwargs)
    for tensor, label in zip(outputs, label_outputs, strict=True):
        tracer.set_label(tensor, compact(label).contiguous())


def _cat_of_alike_sources(tracer: Tracer, args: tuple, kwargs: dict, out: Any) -> bool:
    """``cat`` along a dim that no source's channels vary along (tokens, time): one label.

    The sources' other dims must keep equal sizes for the cat to run, so their channels go
    together position by position (coupled here). Coupled atoms are interchangeable, so the
    output takes the first source's label instead of rows of each: a class token concatenated
    to thousands of tokens (ViT, MViT) would otherwise leave a label that varies along the
    tokens, and every later op, an attention product above all, would carry it at full size.
    Returns False (the general movement rule applies) where a source holds values of no atom
    (a constant can keep neither its size nor its place), where one varies along the cat dim,
    and where no source is longer than 1 along it (1-channel sources cat along channels).
    """
    if not isinstance(out, torch.Tensor):
        return False
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % out.dim()
    # an empty source adds nothing (timm's ``q[:, :, :npt]`` with no prefix tokens)
    sources = [t for t in args[0] if t.dim() != out.dim() or t.shape[dim] > 0]
    if len(sources) < 2:
        return False
    if all(t.dim() != out.dim() or t.shape[dim] < 2 for t in sources):
        return False  # no source shows that the dim carries no channels (1-channel sources)
    labels = [_pad_dims(compact(tracer.label(t)), out.dim()) for t in sources]
    if any(label.size(dim) > 1 or bool((label < 0).any()) for label in labels):
        return False
    shape = list(torch.broadcast_shapes(*(tuple(label.shape) for label in labels)))
    first = labels[0].expand(shape)
    for label in labels[1:]:
        tracer.atoms.couple(first, label.expand(shape))
    tracer.set_label(out, compact(first).contiguous())
    return True


def _follow_the_other_shape(
    tracer: Tracer, name: str, label_out: torch.Tensor, like: torch.Tensor
) -> None:
    """``x.reshape_as(y)`` (``view_as``, ``expand_as``) writes y's sizes: the result's channel
    dim shrinks only if y's does with the same channels, so they are coupled; otherwise (a
    label varying along several dims, a y whose size stays) the channels stay."""
    label_out = compact(label_out).contiguous()
    dims = varying_dims(label_out)
    if not dims:
        return
    # None when the label varies along another dim too (a weight's own elements)
    atoms = channel_vector(label_out, dims[0], label_out.shape[dims[0]])
    # the other tensor's label only when there is a channel vector to pair it with: a
    # parameter's label is one atom per element (timm's NFNets reshape every conv weight so)
    if atoms is not None:
        source = channel_vector(
            expand_to(tracer.label(like), like.shape), dims[0], like.shape[dims[0]]
        )
        if _couple_channels(tracer, source, atoms):
            return
    reason = f"'{name}' fixes the channel dim to the other tensor's {like.shape[dims[0]]}"
    tracer.atoms.lock(atoms_in(label_out), tracer.where, reason)


def _couple_channels(
    tracer: Tracer, source: torch.Tensor | None, atoms: torch.Tensor | None
) -> bool:
    """Couple two channel vectors of the same length made of real atoms; False otherwise."""
    if source is None or atoms is None or source.numel() != atoms.numel():
        return False
    if bool((source < 0).any()) or bool((atoms < 0).any()):
        return False
    tracer.atoms.couple(source, atoms)
    return True


def _check_reshape(
    tracer: Tracer,
    name: str,
    tensor: torch.Tensor,
    label_in: torch.Tensor,
    label_out: torch.Tensor,
    args: tuple,
) -> None:
    """Lock channels whose reshape could not follow a change of their count.

    Merging the channel dim with constant dims (``flatten(1)``) is fine: the flattened size is
    recomputed from the input. Splitting one channel dim into two (heads x head_dim, a channel
    shuffle) is not: any removal must keep the grid rectangular. A channel dim given as a fixed
    number (``view(b, 256)``) cannot follow either; use -1 or ``flatten`` there.
    """
    vin = varying_dims(compact(label_in))
    vout = varying_dims(compact(label_out))
    atoms = atoms_in(compact(label_in))
    requested = _requested_sizes(name, args, label_in.dim(), label_out.dim())
    followed = None
    try:
        if len(vin) > 1 or len(vout) > 1:
            _check_grid_reshape(tracer, name, label_in, label_out, requested)
            return
        if name not in ("view", "reshape") or not vout:
            return
        size = requested[vout[0]] if len(requested) == label_out.dim() else None
        if size is None:
            return
        written = channel_vector(label_out, vout[0], 1)
        # or a width surgery refreshes (ViT's hidden_dim), looked up only when needed
        if _follows_shape(tracer, size, written) or _couple_channels(
            tracer, tracer.stored_width_source(size), written
        ):
            followed = vout[0]
            return
        reason = f"'{name}' fixes the channel dim to {size}; use -1 or flatten()"
        tracer.atoms.lock(atoms, tracer.where, reason)
    finally:
        # a channel count read from a shape and written anywhere it does not follow its
        # channels (``reshape(B, G, P, D)`` after heads that stay whole) keeps those channels
        unfollowed = [n for d, n in enumerate(requested) if d != followed and n is not None]
        _pin_shape_sources(unfollowed, f"'{name}' writes a channel count read from a shape")


def _follows_shape(tracer: Tracer, size: Any, atoms: torch.Tensor | None) -> bool:
    """Whether a size a reshape writes is read from a shape whose dim shrinks with ``atoms``.

    ``B, C, H, W = x.shape; x.reshape(B, C, H // p, p, W // p, p)`` (torchvision's Swin and
    MaxViT, most window attention) writes the channel count as a number that the pruned model
    reads anew from its smaller input. The tracer hands out sizes that remember their source
    (``tracer.ShapeInt``); the source dim is coupled with the channels written (they must
    shrink alike for the size to stay true). A literal, or a number computed from a size, does
    not follow.
    """
    label = getattr(size, "label", None)
    if label is None or atoms is None:
        return False
    source = channel_vector(label, size.dim, int(size)) if size.dim < label.dim() else None
    return _couple_channels(tracer, source, atoms)


def _pin_shape_sources(sizes: Any, reason: str) -> None:
    """Sizes read from a shape and written where a removal cannot follow them keep the
    channels they count (``reshape(B, G, P, D)`` with D read from the input, after heads that
    stay whole: the input's D channels must stay too)."""
    for size in sizes:
        if hasattr(size, "pin_source"):
            size.pin_source(reason)


def _requested_sizes(name: str, args: tuple, ndim_in: int, ndim_out: int) -> list[int | None]:
    """Per output dim, the size the call writes as a number (as written: a size read from a
    shape stays a ``ShapeInt``), or None where the size follows the input (``-1``,
    ``flatten``, the dims ``unflatten`` leaves alone)."""
    if name == "flatten":
        return [None] * ndim_out
    if name in ("view_as", "reshape_as"):
        return [int(n) for n in args[1].shape]
    if name == "unflatten":
        dim = args[1] % ndim_in
        new = [None if int(n) == -1 else n for n in args[2]]
        return [None] * dim + new + [None] * (ndim_out - dim - len(new))
    sizes = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
    return [None if int(n) == -1 else n for n in sizes]  # a ShapeInt stays one


def _reshape_blocks(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[tuple[list[int], list[int]]]:
    """Pair each run of input dims with the run of output dims holding the same values.

    A reshape only ever splits or merges runs of adjacent dims; the runs end where the
    running products of both shapes agree.
    """
    if 0 in in_shape:
        raise ValueError("reshape of an empty tensor")
    ends_in = [math.prod(in_shape[: d + 1]) for d in range(len(in_shape))]
    ends_out = [math.prod(out_shape[: d + 1]) for d in range(len(out_shape))]
    common = sorted(set(ends_in) & set(ends_out))
    blocks: dict[int, tuple[list[int], list[int]]] = {end: ([], []) for end in common}
    for dims, ends in ((0, ends_in), (1, ends_out)):
        for d, end in enumerate(ends):
            blocks[next(c for c in common if c >= end)][dims].append(d)
    return list(blocks.values())


def _check_grid_reshape(
    tracer: Tracer,
    name: str,
    label_in: torch.Tensor,
    label_out: torch.Tensor,
    sizes: list[int | None],
) -> None:
    """Channels split into a grid (heads x head_dim) or merged back from one.

    A split keeps attention computable only if removals keep the grid rectangular: the tracer
    makes whole slices along one dim the unit (``Tracer.attention``: the heads dim, the one
    before the last, for ``"heads"``; the last for ``"head_dim"``), so every other dim of the
    grid never shrinks. A size written as a number must stay true after removal: it is
    required fixed (checked once the components are known) and locks otherwise, naming the fix
    (write ``-1``). A merge back (``reshape(b, n, -1)``) follows when it is ``-1``.
    """
    varying_in = set(varying_dims(compact(label_in)))
    out_compact = compact(label_out)
    in_compact = compact(label_in)
    for ins, outs in _reshape_blocks(tuple(label_in.shape), tuple(label_out.shape)):
        moved = [d for d in ins if d in varying_in]
        if not moved:
            continue
        big_in = [d for d in ins if label_in.size(d) > 1]
        big_out = [d for d in outs if label_out.size(d) > 1]
        refreshed = tracer.refreshed_sizes()
        if len(big_in) == 1:
            unit = None
            if len(big_out) > 1:
                unit = big_out[-2] if tracer.attention == "heads" else big_out[-1]
                whole_slices(tracer, out_compact, unit)
                tracer.atoms.mark_split(out_compact.reshape(-1))
            for d in big_out:
                if d == unit and sizes[d] is not None and sizes[d] == refreshed.get("heads"):
                    continue  # self.num_heads of a module whose heads surgery refreshes
                if sizes[d] is not None:
                    reason = (
                        f"'{name}' writes the size of a channel dim that would shrink "
                        f"(dim {d}: {sizes[d]}); write it as -1"
                    )
                    tracer.atoms.require_fixed(out_compact, d, tracer.where, reason)
        elif len(big_out) == 1:
            size = sizes[big_out[0]]
            # a width read from a shape (MetaFormer's reshape(B, N, C), C the block input's)
            # is not the attention's own width that surgery refreshes, even when equal to it
            refreshed_width = size == refreshed.get("width") and not hasattr(size, "label")
            if size is not None and not refreshed_width:
                reason = f"'{name}' fixes merged channel dims to {size}; write it as -1"
                for d in moved:
                    tracer.atoms.require_fixed(in_compact, d, tracer.where, reason)
        else:
            tracer.atoms.lock(
                atoms_in(in_compact), tracer.where, f"'{name}' splits and merges channel dims"
            )


def whole_slices(tracer: Tracer, label: torch.Tensor, dim: int) -> torch.Tensor:
    """Couple every atom of each slice along ``dim``: the slices become the removable units.

    Returns one representative atom per slice, shaped to broadcast against ``label``.
    """
    moved = label.movedim(dim, 0).reshape(label.size(dim), -1)
    representative = moved.max(dim=1).values
    tracer.atoms.couple(representative.unsqueeze(1).expand_as(moved), moved)
    shape = [1] * label.dim()
    shape[dim] = label.size(dim)
    return representative.reshape(shape)


def fix_dim(tracer: Tracer, label: torch.Tensor, dim: int) -> None:
    """Couple the slices along ``dim`` position by position: the dim can never shrink."""
    tracer.atoms.couple(label.narrow(dim, 0, 1).expand_as(label), label)


def _selected_dims(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int] | None:
    """The dims a selecting op cuts at fixed positions, or None when it cannot be told."""
    if name == "getitem":
        items = args[1] if isinstance(args[1], tuple) else (args[1],)
        consumed = [i for i in items if i is not None]
        dims, position = [], 0
        for item in items:
            if item is None:
                continue
            if item is Ellipsis:
                position += ndim - (len(consumed) - 1)
            elif isinstance(item, slice) and item == slice(None):
                position += 1
            elif isinstance(item, (int, slice)):
                dims.append(position)
                position += 1
            else:
                return None
        return dims
    position = {"unbind": 1, "select": 1, "narrow": 1, "index_select": 1}.get(name, 2)
    dim = kwargs.get("dim", args[position] if len(args) > position else 0)
    return [dim % ndim] if isinstance(dim, int) else None


def _equal_parts_that_follow(
    tracer: Tracer, name: str, args: tuple, kwargs: dict, total: int
) -> int | None:
    """How many equal parts a cut of a ``total``-wide dim makes whose size follows removals,
    None for any other cut.

    * ``chunk(n)`` (YOLOv8's C2f: ``cv1(x).chunk(2, 1)``): the part size is computed from the
      dim when the forward runs.
    * ``split(self.split_size)`` of a packed q/k/v projection whose width surgery refreshes
      (GPT-2).
    """
    if name == "chunk":
        parts = args[1] if len(args) > 1 else kwargs.get("chunks")
        return parts if isinstance(parts, int) and parts >= 2 else None
    if name == "split":
        size = args[1] if len(args) > 1 else kwargs.get("split_size")
        width = tracer.refreshed_sizes().get("width")
        if isinstance(size, int) and size == width and total % size == 0 and total > size:
            return total // size
    return None


def _cut_into_equal_parts(
    tracer: Tracer, name: str, label: torch.Tensor, args: tuple, kwargs: dict
) -> bool:
    """A channel dim cut into equal parts whose size follows removals
    (:func:`_equal_parts_that_follow`): the parts are coupled position by position, so every
    part loses the same positions and they stay equal. True when handled so."""
    if len(varying_dims(label)) != 1:
        return False
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % label.dim()
    total = label.size(dim)
    parts = _equal_parts_that_follow(tracer, name, args, kwargs, total)
    if parts is None or dim not in varying_dims(label) or total % parts:
        return False  # unequal parts: the last one's size would change differently
    chunks = label.movedim(dim, -1).unflatten(-1, (parts, total // parts))
    fix_dim(tracer, chunks, chunks.dim() - 2)
    return True


def _check_selection(
    tracer: Tracer,
    name: str,
    label_in: torch.Tensor,
    label_outputs: list,
    args: tuple,
    kwargs: dict | None = None,
) -> None:
    """Lock channels when an op keeps only part of a channel dim, or reorders it by index.

    ``x[:, :5]``, ``chunk`` and ``split`` cut at positions written in the code; once channels
    are removed, the cut falls elsewhere. Selections that keep every channel (``x[:, 0]`` on
    tokens, ``x[..., ::2, ::2]`` on space) are unaffected.
    """
    compact_in = compact(label_in)
    if not varying_dims(compact_in):
        return
    if _cut_into_equal_parts(tracer, name, compact_in, args, kwargs or {}):
        return
    atoms = atoms_in(compact_in)
    tensor_index = name == "getitem" and any(
        isinstance(i, (torch.Tensor, list))
        for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
    )
    # an empty result selects nothing (``q[:, :, :npt]`` with no prefix tokens)
    partial = any(out.numel() and atoms_in(out).numel() < atoms.numel() for out in label_outputs)
    rolls_channels = name == "roll" and _rolled_dims(args, compact_in.dim()) & set(
        varying_dims(compact_in)
    )
    if partial and not (name in SHUFFLING or tensor_index or rolls_channels):
        dims = _selected_dims(name, args, {}, compact_in.dim())
        if len(varying_dims(compact_in)) > 1 and dims is not None:
            # a grid (heads x head_dim): cutting a dim that never shrinks is fine (unbind of a
            # packed q/k/v, rotate_half over head_dim when whole heads are the unit)
            for dim in set(dims) & set(varying_dims(compact_in)):
                tracer.atoms.require_fixed(
                    compact_in,
                    dim,
                    tracer.where,
                    f"'{name}' selects or reorders channels at fixed positions",
                )
            return
    if name in SHUFFLING or tensor_index or partial or rolls_channels:
        tracer.atoms.lock(
            atoms, tracer.where, f"'{name}' selects or reorders channels at fixed positions"
        )


def _rolled_dims(args: tuple, ndim: int) -> set[int]:
    dims = args[2] if len(args) > 2 else None
    if dims is None:
        return set(range(ndim))  # roll of the flattened tensor moves everything
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return {d % ndim for d in dims}


def _setitem(tracer: Tracer, args: tuple) -> None:
    target, index, value = args[0], args[1], args[2]
    if not tracer.has_atoms(target) and not (
        isinstance(value, torch.Tensor) and tracer.has_atoms(value)
    ):
        return
    if _fill_rows(tracer, target, index, value):
        return
    if _write_within_channels(tracer, target, index, value):
        return
    label = expand_to(tracer.label(target), target.shape).clone()
    index = _to_label_args(tracer, index, set())
    if isinstance(value, torch.Tensor):
        region = label[index]
        written = expand_to(tracer.label(value), region.shape)
        if _writes_every_channel(value, region):
            # the value's channels must shrink with the region's for the write to run: they
            # are coupled, and the region keeps its own (interchangeable) atoms, so a write
            # into part of the tokens (MViT's relative positions, added to all but the class
            # token) leaves a label that does not vary along them
            both = (region >= 0) & (written >= 0)
            if bool(both.any()):
                tracer.atoms.couple(region[both], written[both])
                written = torch.where(both, region, written)
        label[index] = written
    else:
        label[index] = -1
    tracer.set_label(target, compact(label))


def _write_within_channels(tracer: Tracer, target: torch.Tensor, index: Any, value: Any) -> bool:
    """``target[slices] = value`` where every position of both carries an atom and the value
    writes every channel of the region (MViT's residual pooling, ``x[:, :, 1:] += q[:, :, 1:]``
    past the class token): the written channels are coupled with the region's and the target
    keeps its label, as the general rule below concludes. Done on the labels as they are
    (broadcast views), never at the activation's size: the general rule copies the label at
    full size (MViT-v2-S: 25,089 tokens by 96 channels per write). False when the write is not
    of that form."""
    if not isinstance(value, torch.Tensor):
        return False
    parts = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(part, slice | int) or part is Ellipsis for part in parts):
        return False
    held = compact(tracer.label(target))
    written = compact(tracer.label(value))
    if bool((held < 0).any()) or bool((written < 0).any()):
        return False
    region = expand_to(held, target.shape)[index]  # a view: broadcast dims keep stride 0
    if region.numel() == 0 or not _writes_every_channel(value, region):
        return False
    region = unexpanded(region)
    written = _pad_dims(written, region.dim())
    if written.dim() != region.dim():
        return False
    shape = torch.broadcast_shapes(tuple(region.shape), tuple(written.shape))
    tracer.atoms.couple(region.expand(shape), written.expand(shape))
    tracer.set_label(target, held)
    return True


def _writes_every_channel(value: torch.Tensor, region: torch.Tensor) -> bool:
    """Whether ``value`` is as long as the written region along every dim whose channels the
    region's label varies along (not broadcast over them)."""
    shape = (1,) * (region.dim() - value.dim()) + tuple(value.shape)
    if len(shape) != region.dim():
        return False
    return all(shape[d] == region.size(d) for d in varying_dims(compact(region)))


def _fill_rows(tracer: Tracer, target: torch.Tensor, index: Any, value: Any) -> bool:
    """``out[rows] = value``: rows (dim 0) of every channel written at once, as torchvision's
    ``MultiScaleRoIAlign`` gathers each pyramid level's pooled boxes into one tensor. The
    channels of every source are then the target's channels: they are coupled position by
    position (every level loses the same channels), and a target that held a constant (the
    ``zeros`` it was made as) takes them. False when the write is not of that form."""
    rows_only = isinstance(index, int) or (
        isinstance(index, torch.Tensor) and index.dim() == 1 and not index.is_floating_point()
    )
    if not rows_only or not isinstance(value, torch.Tensor) or target.dim() < 2:
        return False
    offset = 1 if isinstance(index, int) else 0  # an int index drops dim 0 of the region
    value_label = _pad_dims(compact(tracer.label(value)), target.dim() - offset)
    target_label = compact(tracer.label(target))
    varying = varying_dims(value_label)
    if len(varying) != 1 or varying[0] + offset == 0:
        return False
    dim = varying[0] + offset
    atoms = channel_vector(value_label, varying[0], target.shape[dim])
    if atoms is None or bool((atoms < 0).any()):
        return False
    held = channel_vector(target_label, dim, target.shape[dim])
    if held is None:
        return False
    if bool((held >= 0).any()):
        tracer.atoms.couple(held, atoms)
    else:
        tracer.label_channels(target, atoms, dim)
    return True


def _roi_pool(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """torchvision's ``roi_align`` / ``roi_pool``: every box of every channel is pooled alone,
    an output of (boxes, channels, h, w) whose channels are the input's."""
    x = args[0] if args else kwargs["input"]
    channels = channel_vector(tracer.label(x), 1, x.shape[1])
    if channels is None:
        raise ValueError("its input has no channel structure")
    tracer.label_channels(out, channels, 1)


# ---- reductions -----------------------------------------------------------------------------
def _reduced_dims(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int] | None:
    position = 2 if name == "norm" else 1  # norm(input, p, dim)
    dim = kwargs.get("dim", args[position] if len(args) > position else None)
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, torch.Tensor):
        return None
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return sorted(d % ndim for d in dims)


def _reduction(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):
        _elementwise(tracer, name, args, kwargs, out)  # max(a, b), min(a, b)
        return
    dims = _reduced_dims(name, args, kwargs, tensor.dim())
    label = compact(tracer.label(tensor))
    label = label.reshape((1,) * (tensor.dim() - label.dim()) + tuple(label.shape))
    varying = set(varying_dims(label))
    if dims is None:
        raise ValueError("reduction over tensor-valued dims")
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and name != "norm" else False))
    reduced = label
    for d in sorted(dims, reverse=True):
        reduced = reduced.narrow(d, 0, 1)
        if not keepdim:
            reduced = reduced.squeeze(d)
    if varying & set(dims):
        if name == "sum" and varying <= set(dims):
            reduced = torch.full_like(reduced, -1)
        elif name == "mean" and varying <= set(dims):
            tracer.atoms.mark_inexact(atoms_in(label))
            reduced = torch.full_like(reduced, -1)
        else:
            tracer.atoms.lock(atoms_in(label), tracer.where, f"'{name}' reduces over channels")
            _lock_all(tracer, f"'{name}' reduces over channels", args, out)
            return
    for tensor_out in iter_tensors(out):
        if tensor_out.dtype == torch.long and name in ("max", "min"):
            tracer.set_label(tensor_out, torch.full_like(reduced, -1))
        else:
            tracer.set_label(tensor_out, reduced)


def _along_dim(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    label = compact(tracer.label(tensor))
    if dim is None or (dim % tensor.dim()) in varying_dims(label):
        _lock_all(tracer, f"'{name}' mixes channels", args, out)
        return
    if name in ("argmax", "argmin"):
        return
    for tensor_out in iter_tensors(out):
        tracer.set_label(tensor_out, label)


# ---- per-channel spatial ops ----------------------------------------------------------------
def _spatial(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor = args[0] if args else kwargs["input"]
    label = compact(tracer.label(tensor))
    label = label.reshape((1,) * (tensor.dim() - label.dim()) + tuple(label.shape))
    if any(d >= 2 for d in varying_dims(label)):
        _lock_all(tracer, f"'{name}' mixes positions that carry different channels", args, out)
        return
    for tensor_out in iter_tensors(out):
        if tensor_out.dtype == torch.long:
            continue
        tracer.set_label(tensor_out, label)


def _pad(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor, pad = args[0], kwargs.get("pad", args[1] if len(args) > 1 else None)
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    label = expand_to(tracer.label(tensor), tensor.shape)
    padded_dims = {tensor.dim() - 1 - i // 2 for i in range(len(pad)) if pad[i]}
    along_channels = bool(padded_dims & set(varying_dims(compact(label))))
    if mode == "constant" and along_channels:
        # new channels of a fixed value: they belong to no atom
        padded = F.pad(label, pad, mode="constant", value=-1)
    elif along_channels:
        raise ValueError(f"{mode} padding along a channel dim")
    else:
        # rows of a channel's own (Swin's patch merging pads odd widths): they go with it
        padded = compact(label).expand(out.shape)
    tracer.set_label(out, compact(padded).contiguous())


# ---- normalizations and per-channel parameters ------------------------------------------------
def _align_to_dim(tracer: Tracer, param: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    label = tracer.label(param).reshape(-1)
    shape = [1] * ndim
    shape[dim] = label.numel()
    return label.reshape(shape)


def _per_channel(
    tracer: Tracer, tensor: torch.Tensor, params: list, out: torch.Tensor, dim: int = 1
) -> torch.Tensor:
    """Couple each 1-D per-channel parameter with the channel it scales (along ``dim``)."""
    merged = compact(tracer.label(tensor))
    merged = merged.reshape((1,) * (tensor.dim() - merged.dim()) + tuple(merged.shape))
    if _is_full_channel_label(merged, dim):
        return _per_channel_vector(tracer, merged, params, out, dim)
    for param in params:
        if isinstance(param, torch.Tensor) and param.numel() > 1:
            aligned = _align_to_dim(tracer, param, dim, tensor.dim())
            shape = torch.broadcast_shapes(tuple(merged.shape), tuple(aligned.shape))
            tracer.atoms.couple(merged.expand(shape), aligned.expand(shape))
            varies_elsewhere = any(d != dim for d in varying_dims(compact(merged)))
            if varies_elsewhere and not bool((merged < 0).any()):
                # every position is a real atom, coupled here with the parameter's channel:
                # coupled atoms are interchangeable, so the parameter's per-channel atoms
                # label the output, which keeps later labels per channel where the input
                # varied along the tokens too (MViT's pooled tokens after their class token).
                # A constant row (a fixed-size token) keeps the general rule.
                merged = torch.where(aligned >= 0, aligned, merged)
            else:
                merged = torch.where(merged >= 0, merged, aligned)
    merged = compact(merged).contiguous()
    tracer.set_label(out, merged)
    return merged


def _is_full_channel_label(label: torch.Tensor, dim: int) -> bool:
    """Whether a compact label is one atom per channel along ``dim`` and nothing else: the
    input of nearly every norm in a CNN (a conv's output)."""
    shape = label.shape
    return (
        shape[dim] > 1
        and all(size == 1 for d, size in enumerate(shape) if d != dim)
        and bool((label >= 0).all())
    )


def _per_channel_vector(
    tracer: Tracer, merged: torch.Tensor, params: list, out: torch.Tensor, dim: int
) -> torch.Tensor:
    """:func:`_per_channel` when the input is one atom per channel (:func:`_is_full_channel_label`).

    Why a path of its own (our choice; ``benchmarks/prune_time.py`` times the trace): the
    general rule broadcasts, couples and merges per parameter, four times per BatchNorm, the
    commonest op of a CNN's trace. Here every parameter's atoms meet the channel atoms in one
    coupling, and the output keeps the input's label, as the general rule would (no position
    lacks an atom, so no parameter's atom replaces one).
    """
    vector = merged.reshape(-1)
    labels = [
        tracer.label(p).reshape(-1) for p in params if isinstance(p, torch.Tensor) and p.numel() > 1
    ]
    if any(label.numel() != vector.numel() for label in labels):
        raise ValueError("a per-channel parameter does not match the channels it scales")
    if labels:
        tracer.atoms.couple(vector.repeat(len(labels)), torch.cat(labels))
    merged = merged.contiguous()
    tracer.set_label(out, merged)
    return merged


def _batch_norm(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    names = ("input", "running_mean", "running_var", "weight", "bias")
    values = [kwargs.get(n, args[i] if i < len(args) else None) for i, n in enumerate(names)]
    _per_channel(tracer, values[0], values[1:], out)


def _instance_norm(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    _batch_norm(tracer, name, args, kwargs, out)


def _group_norm(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor = args[0]
    num_groups = kwargs.get("num_groups", args[1] if len(args) > 1 else None)
    weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
    bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
    merged = _per_channel(tracer, tensor, [weight, bias], out)
    channels = channel_vector(merged, 1, tensor.shape[1])
    if channels is None:
        raise ValueError("group_norm input has no channel structure")
    if num_groups == 1:
        # one group normalises over every channel, as a LayerNorm does (PoolFormer's and
        # ConvNeXt-style "GroupNorm1"): any count stays divisible, a removed channel changes
        # the statistics (inexact, as a LayerNorm's), and coupling the group would make all
        # its channels one unit that can only go whole
        tracer.atoms.mark_inexact(atoms_in(channels))
        return
    # whole groups go together: GroupNorm's statistics stay exact and its size divisible
    per_group = channels.reshape(num_groups, -1)
    tracer.atoms.couple(per_group[:, :1].expand_as(per_group), per_group)


def _layer_norm(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensor = args[0]
    shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
    weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
    bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
    if len(shape) != 1:
        _lock_all(tracer, "layer_norm over several dims", args, out)
        return
    merged = _per_channel(tracer, tensor, [weight, bias], out, dim=tensor.dim() - 1)
    if tensor.dim() - 1 in varying_dims(merged):
        tracer.atoms.mark_inexact(atoms_in(merged))


def _prelu(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    _per_channel(tracer, args[0], [args[1]], out)


def _identity_like(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    for tensor in iter_tensors(out):
        tracer.set_label(tensor, tracer.label(args[0]))


# ---- attention: batched products --------------------------------------------------------------
def _padded(tracer: Tracer, tensor: torch.Tensor, ndim: int) -> torch.Tensor:
    return _pad_dims(compact(tracer.label(tensor)), ndim)


def _pin_against_constant(
    tracer: Tracer, label: torch.Tensor, other: torch.Tensor, other_size: tuple, dims: list[int]
) -> None:
    """Dims where ``label`` carries channels and the other operand is a full-size constant
    cannot shrink (the constant keeps its size)."""
    for d in dims:
        if label.size(d) > 1 and other_size[d] > 1 and bool((other < 0).any()):
            tracer.atoms.require_fixed(
                label, d, tracer.where, "it meets a fixed-size constant in a product"
            )


def follow_heads(
    tracer: Tracer, label: torch.Tensor, constant: torch.Tensor, constant_label: torch.Tensor
) -> torch.Tensor:
    """The label of a constant that meets attention scores ``label``, where it may follow
    removed heads instead of pinning them.

    A constant that is the same in every head and whose heads dim is the running attention
    module's head count, which surgery refreshes (``layers.rules.HEAD_LAYOUTS``), is rebuilt
    with the kept count by the pruned forward (T5's zero position bias of cross-attention,
    ``torch.zeros(1, self.n_heads, q, k)``): it takes the heads' atoms, so any later reader of
    the same tensor (the next layers, which reuse it) loses the same heads. "The same in every
    head" is what the tracer saw a factory fill and element-wise ops keep
    (``Tracer.same_along``), never a guess from values (which ``meta`` tracing does not have);
    a per-head constant (ALiBi slopes) still pins the heads. Otherwise ``constant_label`` is
    returned unchanged.
    """
    heads = tracer.refreshed_sizes().get("heads")
    varying = varying_dims(label)
    if heads is None or len(varying) != 1 or bool((constant_label >= 0).any()):
        return constant_label
    d = varying[0]
    offset = label.dim() - constant.dim()
    if d < offset or constant.shape[d - offset] != heads or label.size(d) != heads:
        return constant_label
    if d - label.dim() not in tracer.same_along.get(constant, ()):
        return constant_label
    units = label
    for other in range(label.dim()):
        if other != d:
            units = units.narrow(other, 0, 1)
    tracer.set_label(constant, units.reshape(units.shape[offset:]))
    return units


@dataclass
class ProductRecord:
    """One batched product between activations (``q @ k^T``, ``attn @ v``, the two inside
    ``F.scaled_dot_product_attention``) whose MACs shrink with the channels of its operands.

    Its MACs are ``macs_unit`` per kept position of the product's grid: the dims along which
    either operand's label varies (heads, head_dim, the contracted dim), every other dim folded
    into ``macs_unit``. ``a_atoms[i]`` / ``b_atoms[i]`` is the atom of each operand at grid
    position ``i`` (-1 where it carries none); a position is kept when both are.
    """

    where: str
    a_atoms: torch.Tensor
    b_atoms: torch.Tensor
    macs_unit: float


MAX_PRODUCT_GRID = 1 << 20
"""Products whose grid of varying positions is larger (a weight used in a matmul, one atom per
element) are left to the constant part of the MACs model."""


def _record_product(
    tracer: Tracer,
    la: torch.Tensor,
    lb: torch.Tensor,
    size_a: tuple[int, ...],
    size_b: tuple[int, ...],
) -> None:
    """Record the product's MACs per kept position of its label grid (``Tracer.products``)."""
    if not bool((la >= 0).any() or (lb >= 0).any()):
        return
    a, b = la.unsqueeze(-1), lb.unsqueeze(-3)
    grid = torch.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    positions = math.prod(grid)
    if positions > MAX_PRODUCT_GRID:
        return
    batch = torch.broadcast_shapes(size_a[:-2], size_b[:-2])
    macs = math.prod(batch) * size_a[-2] * size_a[-1] * size_b[-1]
    tracer.products.append(
        ProductRecord(
            tracer.where,
            a.expand(grid).reshape(-1).clone(),
            b.expand(grid).reshape(-1).clone(),
            macs / positions,
        )
    )


def _couple_contracted(tracer: Tracer, la: torch.Tensor, lb: torch.Tensor) -> None:
    """Couple position k of ``la (..., M, K)`` with position k of ``lb (..., K, N)``, for every
    row m and column n: one component per (batch index, k) holding the atoms of ``la[..., :, k]``
    and ``lb[..., k, :]``.

    Why not pair every (m, k, n): where a label varies along M and N (a class token
    concatenated to the tokens, MViT's pooled attention) that grid has M x K x N entries,
    a billion at 16x224x224, and the trace ran out of memory. Each side is coupled with one
    atom of the other side's set instead (the largest: >= 0 exactly when the set has an atom),
    which joins the same components: an atom with no atom on the other side stays alone, as
    it did when every pair had one position without an atom.
    """
    other_b = lb.amax(dim=-1, keepdim=True).transpose(-1, -2)  # (..., 1, K)
    other_a = la.amax(dim=-2, keepdim=True).transpose(-1, -2)  # (..., K, 1)
    for label, other in ((la, other_b), (lb, other_a)):
        shape = torch.broadcast_shapes(tuple(label.shape), tuple(other.shape))
        tracer.atoms.couple(label.expand(shape), other.expand(shape))


def product_label(
    tracer: Tracer,
    la: torch.Tensor,
    lb: torch.Tensor,
    size_a: tuple[int, ...],
    size_b: tuple[int, ...],
) -> torch.Tensor:
    """Couple and label a batched product ``(..., M, K) @ (..., K, N)`` (labels of equal ndim).

    * The contracted dim K: position k of both operands goes together (removing it from one
      would break the product); a zero channel contributes nothing, so the product is exact.
    * The batch dims (the heads of ``q @ k^T`` and ``attn @ v``) must shrink alike in both
      operands and the output. With ``attention="heads"`` each head's channels are coupled
      into one unit and that unit is coupled across operands (and, through the output label,
      with the next product's operand: q, k, v and the output of a head go together); with
      ``"head_dim"`` the batch dims are fixed instead.
    * The output carries what varies along M or N; a contraction over channels leaves no
      atom (like ``sum``), except under ``"heads"`` where the head's unit stands for its
      channels so that ``softmax(q k^T) @ v`` couples the head of q with the head of v.
    """
    la, lb = compact(la).contiguous(), compact(lb).contiguous()
    ndim = la.dim()
    _record_product(tracer, la, lb, size_a, size_b)
    batch_dims = list(range(ndim - 2))
    _pin_against_constant(tracer, la, lb, size_b, [*batch_dims, ndim - 1])
    _pin_against_constant(tracer, lb, la, size_a, [*batch_dims, ndim - 2])
    if la.size(-1) > 1 or lb.size(-2) > 1:
        _couple_contracted(tracer, la, lb)
    varying_batch = [d for d in batch_dims if la.size(d) > 1 or lb.size(d) > 1]
    for d in varying_batch:
        if tracer.attention == "heads":
            units = [whole_slices(tracer, lbl, d) for lbl in (la, lb) if lbl.size(d) > 1]
            if len(units) == 2:
                shape = torch.broadcast_shapes(tuple(units[0].shape), tuple(units[1].shape))
                tracer.atoms.couple(units[0].expand(shape), units[1].expand(shape))
        else:
            for lbl in (la, lb):
                if lbl.size(d) > 1:
                    fix_dim(tracer, lbl, d)

    def contracted(label: torch.Tensor, dim: int) -> torch.Tensor:
        if label.size(dim) == 1:
            return label
        if tracer.attention == "heads" and any(label.size(d) > 1 for d in batch_dims):
            return label.narrow(dim, 0, 1)  # the head's unit: all its channels are coupled
        return torch.full_like(label.narrow(dim, 0, 1), -1)

    ra, rb = compact(contracted(la, ndim - 1)), compact(contracted(lb, ndim - 2))
    if ra.size(-2) > 1 and rb.size(-1) > 1 and varying_batch and tracer.attention == "heads":
        # each side's head unit varies along its tokens: a class token's row took another path
        # (MViT pools every token but that one), so its atoms differ from the other rows'. They
        # are one head all the same: couple each head's atoms along both token dims and let one
        # atom per head label the scores
        head = ra.amax(dim=-2, keepdim=True)
        tracer.atoms.couple(ra, head.expand_as(ra))
        shape = torch.broadcast_shapes(tuple(rb.shape), tuple(head.shape))
        tracer.atoms.couple(rb.expand(shape), head.expand(shape))
        ra, rb = head, head
    if ra.size(-2) > 1 and rb.size(-1) > 1:
        raise ValueError("both operands carry channels on the product's output dims")
    shape = torch.broadcast_shapes(tuple(ra.shape), tuple(rb.shape))
    ra, rb = ra.expand(shape), rb.expand(shape)
    tracer.atoms.couple(ra, rb)
    merged = torch.where(rb >= 0, rb, ra) if lb.size(-1) > 1 else torch.where(ra >= 0, ra, rb)
    return compact(merged).contiguous()


def _matmul(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``a @ b`` / ``bmm``: the explicit ``softmax(q k^T) v`` path of attention."""
    a, b = args[0], args[1]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("product with a non-tensor operand")
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError("product with a vector")
    ndim = out.dim()
    la, lb = _padded(tracer, a, ndim), _padded(tracer, b, ndim)
    size_a = (1,) * (ndim - a.dim()) + tuple(a.shape)
    size_b = (1,) * (ndim - b.dim()) + tuple(b.shape)
    if tracer.attention == "head_dim" and (la.size(-1) > 1 or lb.size(-2) > 1):
        # the scale of q k^T is a Python number the tracer cannot see: if it is computed
        # from q.size(-1), removing head_dim positions changes it (our choice: inexact)
        tracer.atoms.mark_inexact(torch.cat([atoms_in(la), atoms_in(lb)]))
    tracer.set_label(out, product_label(tracer, la, lb, size_a, size_b))


def _scaled_dot_product_attention(
    tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any
) -> None:
    """``F.scaled_dot_product_attention``: ``softmax(q k^T * scale + mask) @ v``, per head.

    Grouped-query attention (``enable_gqa``, fewer key/value heads) reads kv head ``j`` from
    query heads ``j * r ... (j + 1) * r - 1``: the kv labels are repeated that way, so a kv
    head is removable only with every query head reading it.
    """
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    values = [kwargs.get(n, args[i] if i < len(args) else None) for i, n in enumerate(names)]
    query, key, value, mask, scale = values[0], values[1], values[2], values[3], values[6]
    ndim = out.dim()
    lq, lk, lv = (_padded(tracer, t, ndim) for t in (query, key, value))
    if any(lbl.size(-2) > 1 for lbl in (lq, lk, lv)):
        raise ValueError("attention inputs whose channels differ from token to token")
    size_k, size_v = tuple(key.shape), tuple(value.shape)
    if ndim >= 3 and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        lk = lk.expand(*key.shape[:-2], 1, lk.size(-1)).repeat_interleave(repeat, dim=-3)
        lv = lv.expand(*value.shape[:-2], 1, lv.size(-1)).repeat_interleave(repeat, dim=-3)
        size_k = (*key.shape[:-3], query.shape[-3], *key.shape[-2:])
        size_v = (*value.shape[:-3], query.shape[-3], *value.shape[-2:])
    if scale is None and tracer.attention == "head_dim" and lq.size(-1) > 1:
        # the default scale 1/sqrt(head_dim) changes when head_dim positions go
        tracer.atoms.mark_inexact(torch.cat([atoms_in(lq), atoms_in(lk)]))
    size_kt = (*size_k[:-2], size_k[-1], size_k[-2])
    scores = product_label(tracer, lq, lk.transpose(-2, -1), tuple(query.shape), size_kt)
    if isinstance(mask, torch.Tensor):
        lm = follow_heads(tracer, scores, mask, _padded(tracer, mask, ndim))
        mask_size = (1,) * (ndim - mask.dim()) + tuple(mask.shape)
        _pin_against_constant(tracer, scores, lm, mask_size, list(range(ndim - 2)))
        shape = torch.broadcast_shapes(tuple(scores.shape), tuple(lm.shape))
        tracer.atoms.couple(scores.expand(shape), lm.expand(shape))
        scores = compact(torch.where(scores.expand(shape) >= 0, scores.expand(shape), lm))
    scores_size = (*query.shape[:-1], size_k[-2])
    tracer.set_label(out, product_label(tracer, scores, lv, scores_size, size_v))


def _functional_linear(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.linear`` on a linear layer's own weight: that layer's call, outside its forward (EVA
    concatenates q, zero k and v biases) or inside a subclass's own forward (timm's
    ``Linear``); a bias that is not the layer's own is coupled with its output channels."""
    x = kwargs.get("input", args[0] if args else None)
    weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
    bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
    found = tracer.layer_of_weight(weight)
    if found is None or not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        raise ValueError("its weight is not a linear layer's own")
    layer, rule = found
    if tracer.owns(layer, rule.bias_name, bias):
        bias = None  # sliced with the layer
    elif bias is None and rule.bias(tracer.model.get_submodule(layer)) is not None:
        raise ValueError("the call leaves out the layer's own bias")
    bias_atoms = None
    if bias is not None:
        bias_atoms = channel_vector(tracer.label(bias), 0, bias.shape[0])
        if bias_atoms is None:
            raise ValueError("its bias has no channel structure")
    record = tracer.record_functional_call(layer, rule, x, out)
    if record is None:
        raise ValueError("its input is not read along the last dim")
    if bias_atoms is not None:
        tracer.atoms.couple(record.out_atoms, bias_atoms)


_HANDLERS: dict[str, Callable[[Tracer, str, tuple, dict, Any], None]] = {
    "linear": _functional_linear,
    "matmul": _matmul,
    "bmm": _matmul,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    "pad": _pad,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "group_norm": _group_norm,
    "layer_norm": _layer_norm,
    "prelu": _prelu,
    "stochastic_depth": _identity_like,
    "roi_align": _roi_pool,
    "roi_pool": _roi_pool,
}
