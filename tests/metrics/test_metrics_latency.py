"""measure_latency(): structure and side effects only; timings are never asserted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regprune.inputs import CallArgs
from regprune.metrics import Latency, measure_latency


class Probe(nn.Module):
    """Records how it was called: how often, in which mode, under which grad regime."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        # counted in a container: attributes a forward rebinds are put back after timing
        # (regprune.modes.eval_mode leaves the caller's model as it was)
        self.count = [0]
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count[0] += 1
        self.seen.add((self.training, torch.is_inference_mode_enabled()))
        return self.fc(x)


def test_result_is_sane_and_repeats_are_honoured() -> None:
    model = Probe()
    result = measure_latency(model, torch.randn(5, 8), warmup=2, repeats=7)
    assert isinstance(result, Latency)
    assert model.count[0] == 2 + 7
    assert (result.repeats, result.batch_size) == (7, 5)
    assert result.median_ms > 0 and result.mean_ms > 0 and result.p90_ms > 0
    assert result.std_ms >= 0
    assert result.p90_ms >= result.median_ms
    assert result.median_ms_per_sample == pytest.approx(result.median_ms / 5)


def test_runs_in_eval_and_inference_mode_and_restores_the_callers_state() -> None:
    model = Probe().train()
    threads = torch.get_num_threads()
    measure_latency(model, torch.randn(1, 8), warmup=1, repeats=2, threads=1)
    assert model.seen == {(False, True)}
    assert model.training
    assert torch.get_num_threads() == threads


def test_single_repeat_has_zero_std_and_tuple_inputs_work() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    result = measure_latency(Pair(), (torch.randn(3, 2), torch.randn(3, 2)), warmup=0, repeats=1)
    assert result.std_ms == 0.0
    assert result.median_ms == result.mean_ms == result.p90_ms
    assert result.batch_size == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats"), ({"threads": 0}, "threads")],
)
def test_invalid_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_is_timed() -> None:
    model = nn.Linear(64, 64).cuda()
    result = measure_latency(model, torch.randn(32, 64, device="cuda"), warmup=1, repeats=3)
    assert result.median_ms > 0 and result.repeats == 3


def test_a_list_of_images_and_keyword_inputs_are_passed_and_the_list_is_the_batch() -> None:
    class Detector(nn.Module):
        def forward(self, images: list[torch.Tensor], scale: float = 1.0) -> list[torch.Tensor]:
            assert scale == 2.0
            return [image * scale for image in images]

    images = [torch.randn(3, 4, 4), torch.randn(3, 6, 5)]
    result = measure_latency(Detector(), CallArgs(images, scale=2.0), warmup=0, repeats=2)
    assert result.batch_size == 2


def test_onnxruntime_times_the_exported_file_not_the_module() -> None:
    pytest.importorskip("onnxruntime")
    model = Probe()
    x = torch.randn(5, 8)
    threads_before = torch.get_num_threads()
    result = measure_latency(model, x, warmup=2, repeats=7, threads=1, backend="onnxruntime")
    # the export runs the module a few times; the 9 timed and warm-up calls do not
    assert model.count[0] < 2 + 7
    assert (result.repeats, result.batch_size) == (7, 5) and result.median_ms > 0
    assert model.training and torch.get_num_threads() == threads_before


def test_compile_never_times_the_compiling_call(monkeypatch) -> None:
    compiled: list[nn.Module] = []

    def fake_compile(module: nn.Module) -> nn.Module:  # stands for torch.compile's wrapper
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Probe()
    result = measure_latency(model, torch.randn(5, 8), warmup=0, repeats=3, backend="compile")
    assert compiled == [model] and result.repeats == 3
    assert model.count[0] == 1 + 3  # one untimed call (the compiling one) although warmup=0


def test_an_unknown_backend_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \('eager', 'compile'"):
        measure_latency(Probe(), torch.randn(1, 8), backend="tensorrt")


class LayoutProbe(nn.Module):
    """A conv that records the memory layout of what it is called with and of its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[bool, bool]] = []  # the list object survives a deep copy's calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_nhwc = self.conv.weight.is_contiguous(memory_format=torch.channels_last)
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last), weight_nhwc))
        return self.conv(x)


def test_channels_last_times_a_converted_copy_and_leaves_the_callers_model_as_it_was() -> None:
    model = LayoutProbe()
    seen = model.seen
    measure_latency(
        model, torch.randn(2, 3, 8, 8), warmup=0, repeats=2, memory_format=torch.channels_last
    )
    assert model.seen is seen and model.seen == []  # the copy recorded into its own list
    assert model.conv.weight.is_contiguous()
    assert not model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    model.seen.clear()
    measure_latency(model, torch.randn(2, 3, 8, 8), warmup=0, repeats=2)
    assert model.seen == [(False, False), (False, False)]


def test_channels_last_reaches_the_timed_forward(monkeypatch) -> None:
    import regprune.metrics.latency as latency

    timed: list[nn.Module] = []
    original_forward = latency._forward

    def spy(model, call, backend, threads):
        timed.append(model)
        return original_forward(model, call, backend, threads)

    monkeypatch.setattr(latency, "_forward", spy)
    measure_latency(
        LayoutProbe(),
        torch.randn(2, 3, 8, 8),
        warmup=0,
        repeats=2,
        memory_format=torch.channels_last,
    )
    assert timed[0].seen == [(True, True), (True, True)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory_format": "nhwc"}, "memory_format must be torch.channels_last"),
        ({"memory_format": torch.channels_last, "backend": "onnxruntime"}, "eager and compile"),
    ],
)
def test_a_bad_memory_format_is_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(LayoutProbe(), torch.randn(1, 3, 8, 8), **kwargs)
