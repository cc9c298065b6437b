"""Label tensors: for every value of an activation, the atom it depends on.

A label tensor has the same number of dims as the activation it describes and broadcasts to its
shape: a conv output of shape (N, C, H, W) is labelled by a (1, C, 1, 1) tensor of atom ids. Data
movement ops (view, permute, cat, getitem, pad ...) are replayed on the labels by calling the very
same torch function on them, so the tracer needs no per-op index bookkeeping; only ops that mix
values need rules.
"""

from __future__ import annotations

import torch

from regprune.graph.atoms import NO_ATOM, unexpanded


def constant_label(ndim: int) -> torch.Tensor:
    """The label of a value that depends on no atom."""
    return torch.full((1,) * ndim, NO_ATOM, dtype=torch.long)


def expand_to(label: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Broadcast a label to an activation's full shape (a view: no copy)."""
    if label.dim() < len(shape):
        label = label.reshape((1,) * (len(shape) - label.dim()) + tuple(label.shape))
    return label.expand(tuple(shape))


def compact(label: torch.Tensor) -> torch.Tensor:
    """Shrink every dim along which the label is constant to size 1.

    Keeps label tensors as small as the structure they carry, so a channel label stays
    (1, C, 1, 1) however large the feature map, and later checks are cheap.
    """
    label = unexpanded(label)
    for dim in range(label.dim()):
        size = label.size(dim)
        if size > 1:
            first = label.narrow(dim, 0, 1)
            # the last slice first: a dim that varies mostly shows it there (a class token
            # in row 0), and that comparison is 1/size of the whole one
            if not bool((label.narrow(dim, size - 1, 1) == first).all()):
                continue
            if size == 2 or bool((label == first).all()):
                label = first
    return label


def varying_dims(label: torch.Tensor) -> list[int]:
    """Dims along which a compacted label changes."""
    return [d for d in range(label.dim()) if label.size(d) > 1]


def channel_vector(label: torch.Tensor, dim: int, size: int) -> torch.Tensor | None:
    """The per-channel atoms along ``dim`` if the label is constant along every other dim.

    Returns None when the label varies along another dim as well: the layer then sees a
    channel structure it cannot slice, and the caller locks it.
    """
    label = compact(label)
    if any(d != dim for d in varying_dims(label)):
        return None
    index = [0] * label.dim()
    index[dim] = slice(None)
    vector = label[tuple(index)].reshape(-1)
    return vector.expand(size).clone() if vector.numel() == 1 else vector.clone()


def channel_label(atoms: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """A label with ``atoms`` along ``dim`` and size 1 elsewhere."""
    shape = [1] * ndim
    shape[dim] = atoms.numel()
    return atoms.reshape(shape)
