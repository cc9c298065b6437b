"""Wall-clock inference latency of a model, measured the way a deployment would run it.

Eval mode under ``torch.inference_mode()`` (no autograd bookkeeping, BN in running-stats mode),
a few untimed warm-up calls (allocator, kernel selection, lazy initialisation), then
``time.perf_counter`` around each call. On CUDA the device is synchronised before starting and
after every call, since kernel launches return before the work is done. The median is the number
to compare: it ignores the occasional scheduler hiccup that drags the mean on a shared machine.

The same model runs through one of three backends (``backend=``), since a pruned model's speedup
depends on the kernels that run it: ``"eager"`` PyTorch, ``"compile"`` (``torch.compile``; its
compilation happens in the warm-up, which is at least one call), and ``"onnxruntime"`` (CPU:
the model exported by :func:`regprune.export.export_onnx` to a temporary file and run in an
``InferenceSession`` with the same thread count).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from regprune.inputs import CallArgs, ExampleInputs, as_call_args, iter_tensors, map_tensors
from regprune.modes import eval_mode

BACKENDS = ("eager", "compile", "onnxruntime")


@dataclass(frozen=True)
class Latency:
    """Latency statistics over ``repeats`` timed forward passes, in milliseconds per call.

    Attributes:
        median_ms: median time per forward call.
        mean_ms: mean time per forward call.
        std_ms: sample standard deviation (0 for a single repeat).
        p90_ms: 90th percentile (linear interpolation between order statistics).
        repeats: number of timed calls.
        batch_size: samples per call: the length of the first argument if it is a list (a
            detector's list of images), else the leading dimension of its first tensor (1 for
            a scalar).
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    repeats: int
    batch_size: int

    @property
    def median_ms_per_sample(self) -> float:
        """Median time divided by the batch size, to compare runs at different batch sizes."""
        return self.median_ms / self.batch_size


def measure_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    backend: str = "eager",
    memory_format: torch.memory_format | None = None,
) -> Latency:
    """Time the model's forward on ``example_inputs``.

    The model and inputs are used where they are (move both to the device to measure first).
    Every module's train/eval flag and the torch thread count are restored afterwards.

    Args:
        model: the module to time.
        example_inputs: the model's arguments as :func:`regprune.prune` takes them: a tensor,
            a tuple of positional arguments of any nesting (``([img],)``), or a CallArgs.
        warmup: untimed calls before timing (>= 0).
        repeats: timed calls (>= 1).
        threads: CPU threads for intra-op parallelism while timing (``torch.set_num_threads``);
            ``None`` keeps the current setting. Fix it when comparing models on a shared host.
            onnxruntime's session takes the same count.
        memory_format: ``torch.channels_last`` (or ``channels_last_3d``) times a copy of the
            model converted to that layout, with its 4-D (5-D) input tensors converted too; the
            caller's model stays as it is. oneDNN's convolutions run natively in NHWC, so a
            pruned model with narrow layers often runs faster that way at large batches (the
            run report times both layouts). ``None`` times the model as it is. Eager and
            compile only.
        backend: ``"eager"``, ``"compile"`` or ``"onnxruntime"`` (CPU only; needs ``onnx`` and
            ``onnxruntime``, the ``test`` extra); see the module docstring.

    Returns:
        A :class:`Latency` with per-call statistics in milliseconds.

    Example::

        before = measure_latency(model, torch.randn(64, 3, 32, 32), threads=1)
        after = measure_latency(small, torch.randn(64, 3, 32, 32), threads=1)
        speedup = before.median_ms / after.median_ms
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    call = as_call_args(example_inputs)
    if memory_format is not None:
        model, call = _in_layout(model, call, memory_format, backend)
    synchronize = _synchronizer(call, model)
    if backend == "compile":
        warmup = max(warmup, 1)  # the first call compiles: never time it

    previous_threads = torch.get_num_threads()
    times_ms: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with eval_mode(model), torch.inference_mode():
            forward = _forward(model, call, backend, torch.get_num_threads())
            for _ in range(warmup):
                forward()
            synchronize()
            for _ in range(repeats):
                start = time.perf_counter()
                forward()
                synchronize()
                times_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous_threads)

    return Latency(
        median_ms=statistics.median(times_ms),
        mean_ms=statistics.fmean(times_ms),
        std_ms=statistics.stdev(times_ms) if len(times_ms) > 1 else 0.0,
        p90_ms=_percentile(times_ms, 0.9),
        repeats=repeats,
        batch_size=_batch_size(call),
    )


LAYOUT_RANKS = {torch.channels_last: 4, torch.channels_last_3d: 5, torch.contiguous_format: None}
"""The layouts ``measure_latency(memory_format=...)`` takes, with the rank of the inputs each
converts (None: every tensor made contiguous)."""


def _in_layout(
    model: nn.Module, call: CallArgs, memory_format: torch.memory_format, backend: str
) -> tuple[nn.Module, CallArgs]:
    """A copy of ``model`` and ``call`` in ``memory_format`` (the caller's model untouched)."""
    if memory_format not in LAYOUT_RANKS:
        raise ValueError(
            "memory_format must be torch.channels_last, torch.channels_last_3d or "
            f"torch.contiguous_format, got {memory_format!r}"
        )
    if backend == "onnxruntime":
        raise ValueError(
            "memory_format is for the eager and compile backends; onnxruntime "
            "chooses its own layout"
        )
    rank = LAYOUT_RANKS[memory_format]

    def convert(x: torch.Tensor) -> torch.Tensor:
        if rank is None:
            return x.contiguous()
        return x.contiguous(memory_format=memory_format) if x.dim() == rank else x

    return copy.deepcopy(model).to(memory_format=memory_format), map_tensors(convert, call)


def _forward(model: nn.Module, call: CallArgs, backend: str, threads: int) -> Callable[[], object]:
    """One inference call of ``model`` on ``call`` through ``backend``, as a closure."""
    if backend == "eager":
        return lambda: model(*call.args, **call.kwargs)
    if backend == "compile":
        compiled = torch.compile(model)
        return lambda: compiled(*call.args, **call.kwargs)
    if any(x.device.type != "cpu" for x in iter_tensors(call)):
        raise ValueError("backend='onnxruntime' times on the CPU: give CPU inputs and model")
    import onnxruntime  # optional: the test extra

    from regprune.export import export_onnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # the session reads the file when it is made: the folder can go right after
    with (
        tempfile.TemporaryDirectory(prefix="regprune-latency-") as folder,
        torch.inference_mode(False),  # the exporter traces with autograd state it manages
    ):
        path = export_onnx(model, call, Path(folder) / "model.onnx")
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    feeds = {f"input_{i}": x.numpy() for i, x in enumerate(iter_tensors(call))}
    return lambda: session.run(None, feeds)


def _batch_size(call: CallArgs) -> int:
    first = call.args[0] if call.args else next(iter(call.kwargs.values()))
    if isinstance(first, list):
        return len(first)
    tensor = next(iter_tensors(first), None)
    return tensor.shape[0] if tensor is not None and tensor.dim() > 0 else 1


def _synchronizer(call: CallArgs, model: nn.Module) -> Callable[[], None]:
    """A no-op on CPU; ``torch.cuda.synchronize`` for every CUDA device in use."""
    devices = {x.device for x in iter_tensors(call)}
    devices.update(p.device for p in model.parameters())
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)

    def synchronize() -> None:
        for device in cuda:
            torch.cuda.synchronize(device)

    return synchronize


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
