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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from regprune.graph.labels import atoms_in, channel_vector, compact, expand_to, varying_dims
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
    sizes = [(1,) * (ndim - t.dim()) + tuple(t.shape) for t in operands]
    broadcast = torch.broadcast_shapes(*(tuple(lbl.shape) for lbl in labels))
    expanded = [lbl.expand(broadcast) for lbl in labels]
    for i, label in enumerate(expanded):
        for j, other in enumerate(expanded):
            if i != j:
                _lock_against_constant(tracer, label, other, sizes[j])
    merged = expanded[0]
    for label in expanded[1:]:
        tracer.atoms.couple(merged, label)
        merged = torch.where(merged >= 0, merged, label)
    return compact(merged.contiguous())


def _pad_dims(label: torch.Tensor, ndim: int) -> torch.Tensor:
    return label.reshape((1,) * (ndim - label.dim()) + tuple(label.shape))


def _lock_against_constant(
    tracer: Tracer, label: torch.Tensor, other: torch.Tensor, other_size: tuple[int, ...]
) -> None:
    exposed = (label >= 0) & (other < 0)
    if not bool(exposed.any()):
        return
    if any(other_size[d] > 1 for d in varying_dims(compact(label.contiguous()))):
        tracer.atoms.lock(label[exposed], tracer.where, "it meets a fixed-size constant")


def _elementwise(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    operands = [t for t in iter_tensors((args, kwargs))]
    outputs = list(iter_tensors(out))
    shape = outputs[0].shape
    if any(t.dim() > len(shape) for t in operands):
        raise ValueError("operands have more dims than the output")
    if len(operands) == 1:
        label = _pad_dims(tracer.label(operands[0]), len(shape))
    else:
        label = merge_operands(tracer, operands, shape)
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
    if name in ("cat", "concat", "concatenate", "stack"):
        data = list(args[0])
    elif name in ("expand_as", "view_as", "reshape_as") or name == "getitem":
        data = [args[0]]
    else:
        data = [args[0]] if isinstance(args[0], torch.Tensor) else []
    data_ids = {id(t) for t in data}
    label_args = _to_label_args(tracer, args, data_ids)
    label_kwargs = {k: _to_label_args(tracer, v, data_ids) for k, v in kwargs.items()}
    if name in ("expand_as", "view_as", "reshape_as"):
        label_args = (label_args[0], args[1].cpu())
    if name in ("view", "view_as"):
        label_args = (label_args[0].contiguous(), *label_args[1:])
    func = getattr(torch.Tensor, name, None) if name != "getitem" else torch.Tensor.__getitem__
    if name in ("cat", "concat", "concatenate", "stack", "channel_shuffle"):
        func = getattr(torch, name)
    if name in ("pixel_shuffle", "pixel_unshuffle"):
        func = getattr(F, name)
    if name in ("view", "view_as"):
        func = torch.Tensor.reshape if name == "view" else torch.Tensor.reshape_as
    label_out = func(*label_args, **label_kwargs)
    outputs = list(iter_tensors(out))
    label_outputs = list(iter_tensors(label_out))
    if name in RESHAPES or name == "flatten":
        _check_reshape(tracer, name, data[0], label_args[0], label_outputs[0], args)
    if name in SELECTING or name in SHUFFLING:
        _check_selection(tracer, name, label_args[0], label_outputs, args)
    for tensor, label in zip(outputs, label_outputs, strict=True):
        tracer.set_label(tensor, compact(label.contiguous()))


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
    vout = varying_dims(compact(label_out.contiguous()))
    atoms = atoms_in(compact(label_in))
    if len(vin) > 1 or len(vout) > 1:
        if tuple(compact(label_in).shape) != tuple(compact(label_out.contiguous()).shape):
            tracer.atoms.lock(atoms, tracer.where, f"'{name}' splits or merges channel dims")
        return
    if name not in ("view", "reshape") or not vout:
        return
    sizes = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
    sizes = list(sizes)
    if len(sizes) == label_out.dim() and sizes[vout[0]] != -1:
        tracer.atoms.lock(
            atoms,
            tracer.where,
            f"'{name}' fixes the channel dim to {sizes[vout[0]]}; use -1 or flatten()",
        )


def _check_selection(
    tracer: Tracer, name: str, label_in: torch.Tensor, label_outputs: list, args: tuple
) -> None:
    """Lock channels when an op keeps only part of a channel dim, or reorders it by index.

    ``x[:, :5]``, ``chunk`` and ``split`` cut at positions written in the code; once channels
    are removed, the cut falls elsewhere. Selections that keep every channel (``x[:, 0]`` on
    tokens, ``x[..., ::2, ::2]`` on space) are unaffected.
    """
    compact_in = compact(label_in)
    if not varying_dims(compact_in):
        return
    atoms = atoms_in(compact_in)
    tensor_index = name == "getitem" and any(
        isinstance(i, (torch.Tensor, list))
        for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
    )
    partial = any(atoms_in(out).numel() < atoms.numel() for out in label_outputs)
    rolls_channels = name == "roll" and _rolled_dims(args, compact_in.dim()) & set(
        varying_dims(compact_in)
    )
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
    label = expand_to(tracer.label(target), target.shape).clone()
    index = _to_label_args(tracer, index, set())
    if isinstance(value, torch.Tensor):
        label[index] = expand_to(tracer.label(value), label[index].shape)
    else:
        label[index] = -1
    tracer.set_label(target, compact(label))


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
    if mode == "constant":
        padded = F.pad(label, pad, mode="constant", value=-1)
    else:
        padded_dims = {tensor.dim() - 1 - i // 2 for i in range(len(pad)) if pad[i]}
        if padded_dims & set(varying_dims(compact(label))):
            raise ValueError(f"{mode} padding along a channel dim")
        padded = compact(label).expand(out.shape)
    tracer.set_label(out, compact(padded.contiguous()))


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
    for param in params:
        if isinstance(param, torch.Tensor) and param.numel() > 1:
            aligned = _align_to_dim(tracer, param, dim, tensor.dim())
            shape = torch.broadcast_shapes(tuple(merged.shape), tuple(aligned.shape))
            tracer.atoms.couple(merged.expand(shape), aligned.expand(shape))
            merged = torch.where(merged >= 0, merged, aligned)
    merged = compact(merged.contiguous())
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


_HANDLERS: dict[str, Callable[[Tracer, str, tuple, dict, Any], None]] = {
    "pad": _pad,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "group_norm": _group_norm,
    "layer_norm": _layer_norm,
    "prelu": _prelu,
    "stochastic_depth": _identity_like,
}
