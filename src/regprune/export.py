"""Deployment checks for a pruned model: ONNX export (checked in onnxruntime) and torch.compile.

A pruned model is only useful if it runs where it will be deployed, with the outputs it had in
PyTorch. These functions export and compare; a mismatch raises :class:`ExportCheckError` with the
numbers, rather than returning a flag that is easy to ignore.

Why the TorchScript ONNX exporter (``dynamo=False``): torch 2.14's default, torch.export-based
exporter needs the ``onnxscript`` package, which regprune does not depend on. The TorchScript
exporter is deprecated upstream but complete for the conv/linear/norm models regprune prunes.
When it is removed, switch to ``dynamo=True`` and add ``onnxscript`` to the ``test`` extra.

Why the attention fast path is switched off during export: in eval mode under ``no_grad``,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` run one fused kernel,
``aten::_native_multi_head_attention``, which the TorchScript exporter has no ONNX translation
for, so every transformer (torchvision's ViT, pruned or not) failed to export. The export runs
with ``torch.backends.mha.set_fastpath_enabled(False)``, which makes those modules take their
composite path (linear, matmul, softmax) with the same result; the previous setting is restored
afterwards, and the model itself is not touched. The switch is process-wide: another thread
running attention during an export takes the slow path too.

``onnx`` and ``onnxruntime`` are optional (the ``test`` extra): they are imported when used.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regprune.inputs import CallArgs, ExampleInputs, as_call_args, iter_tensors
from regprune.modes import eval_mode


class ExportCheckError(RuntimeError):
    """The exported or compiled model's outputs differ from eager PyTorch beyond tolerance."""


def _outputs(value: Any) -> list[torch.Tensor]:
    """A model's output tensors, flattened in the order the ONNX exporter lists them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _outputs(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _outputs(item)]
    raise TypeError(f"model outputs must be tensors, tuples, lists or dicts, got {type(value)}")


def _eager_outputs(model: nn.Module, call: CallArgs) -> list[torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        return [t.detach().cpu() for t in _outputs(model(*call.args, **call.kwargs))]


@contextlib.contextmanager
def _attention_fastpath_disabled() -> Iterator[None]:
    """Attention modules take their composite path inside (see the module docstring)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _max_abs_diff(
    expected: list[torch.Tensor], got: list[torch.Tensor], what: str, atol: float
) -> float:
    if len(expected) != len(got):
        raise ExportCheckError(f"{what} returned {len(got)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        if tuple(want.shape) != tuple(have.shape):
            raise ExportCheckError(
                f"{what} output {index} has shape {tuple(have.shape)}, PyTorch {tuple(want.shape)}"
            )
        diff = (want.double() - have.double()).abs().max().item() if want.numel() else 0.0
        if diff != diff:  # NaN compares unequal to itself
            raise ExportCheckError(f"{what} output {index} differs from PyTorch by NaN")
        worst = max(worst, diff)
    if worst > atol:
        raise ExportCheckError(
            f"{what} differs from PyTorch by up to {worst:.3g} (max abs), above atol={atol:g}"
        )
    return worst


def export_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike[str],
    opset: int = 17,
) -> Path:
    """Export ``model`` to an ONNX file with a dynamic batch dimension.

    The export runs in eval mode (BN with running statistics, no dropout, as deployed); every
    module's train/eval flag is restored afterwards. Attention modules are exported through
    their composite path (the fused inference kernel has no ONNX form; see the module
    docstring). The file's inputs are the tensors inside ``example_inputs`` in pytree order
    (nested ones flattened, as the exporter does), named ``input_0``, ``input_1``...; outputs
    ``output_0``.... Dimension 0 of every output and of every argument that is itself a tensor
    is the symbolic ``batch``, so the file accepts any batch size, not only the example's;
    tensors nested inside an argument (a detector's images, ``CHW``) are not batch-first and
    keep their shapes.

    Args:
        model: the (pruned) model; left unchanged.
        example_inputs: the model's arguments as :func:`regprune.prune` takes them (a tensor,
            a tuple of positional arguments of any nesting, or a CallArgs).
        path: the ``.onnx`` file to write (parent folders are created).
        opset: ONNX opset version.

    Returns:
        ``path``.

    Example::

        export_onnx(small, torch.randn(1, 3, 32, 32), "small.onnx")
        check_onnx(small, torch.randn(8, 3, 32, 32), "small.onnx")  # max abs diff
    """
    call = as_call_args(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_outputs = len(_eager_outputs(model, call))
    batch_first = {
        id(x) for x in (*call.args, *call.kwargs.values()) if isinstance(x, torch.Tensor)
    }
    input_names, dynamic_axes = [], {}
    for i, tensor in enumerate(iter_tensors(call)):
        input_names.append(f"input_{i}")
        if id(tensor) in batch_first:
            dynamic_axes[f"input_{i}"] = {0: "batch"}
    output_names = [f"output_{i}" for i in range(num_outputs)]
    dynamic_axes.update({name: {0: "batch"} for name in output_names})
    with (
        eval_mode(model),
        torch.no_grad(),
        _attention_fastpath_disabled(),
        warnings.catch_warnings(),
    ):
        # The exporter warns that it is the legacy one on every call; the module docstring says
        # why it is chosen, so the warning would only be noise for callers.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model,
            call.args,
            str(path),
            kwargs=call.kwargs or None,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    return path


def check_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike[str],
    atol: float = 1e-4,
) -> float:
    """Run the ONNX file in onnxruntime (CPU) and compare with ``model`` in eval mode.

    Use other inputs (another batch size) than at export to check the dynamic batch axis.

    Args:
        model: the PyTorch model the file was exported from.
        example_inputs: inputs for both, as :func:`export_onnx` takes them.
        path: the ``.onnx`` file.
        atol: largest acceptable absolute difference of any output element.

    Returns:
        The largest absolute difference over all output elements.

    Raises:
        FileNotFoundError: no file at ``path``.
        ExportCheckError: different output count or shapes, or a difference above ``atol``.
    """
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; write it with export_onnx first")
    call = as_call_args(example_inputs)
    expected = _eager_outputs(model, call)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        spec.name: x.detach().cpu().numpy()
        for spec, x in zip(session.get_inputs(), iter_tensors(call), strict=True)
    }
    got = [torch.from_numpy(array) for array in session.run(None, feeds)]
    return _max_abs_diff(expected, got, f"onnxruntime on {path}", atol)


def check_compile(
    model: nn.Module, example_inputs: ExampleInputs, atol: float = 1e-4, backend: str = "inductor"
) -> float:
    """Run ``torch.compile(model)`` in eval mode and compare with eager ``model``.

    Slow the first time on CPU: Inductor generates and compiles C++ kernels (30-60 s for a
    ResNet-20 on one core); later calls in the same process, or with a warm Inductor cache, are
    fast. ``model`` itself is not modified (``torch.compile`` wraps it).

    Args:
        model: the (pruned) model.
        example_inputs: the model's arguments as :func:`regprune.prune` takes them.
        atol: largest acceptable absolute difference of any output element.
        backend: ``torch.compile`` backend; ``"inductor"`` is what deployment uses,
            ``"eager"`` / ``"aot_eager"`` isolate graph capture from code generation when
            hunting a mismatch.

    Returns:
        The largest absolute difference between compiled and eager outputs.

    Raises:
        ExportCheckError: different outputs beyond ``atol``.
    """
    call = as_call_args(example_inputs)
    expected = _eager_outputs(model, call)
    compiled = torch.compile(model, backend=backend)
    with eval_mode(model), torch.no_grad():
        got = [t.detach().cpu() for t in _outputs(compiled(*call.args, **call.kwargs))]
    return _max_abs_diff(expected, got, "torch.compile", atol)
