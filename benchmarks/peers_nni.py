"""Can NNI (the other peer docs/specs/DESIGN.md names) physically prune here? A reproducible check.

NNI's pruners only compute masks; the speedup (``ModelSpeedup``) is what removes channels, and
it is what a fair comparison needs (same MACs, measured latency). This script runs NNI's own
documented two steps on the benchmark's model, ResNet-20 (and torchvision's ResNet-18), and
prints what happened: MACs before / after on success, the exception otherwise.

NNI 3.0 (2023-09, the latest release) pins none of torch's versions; installed beside the
project's torch 2.14.1 without its server-side dependencies:

    pip install --target /tmp/nni-pkgs --no-deps nni==3.0 json_tricks schema typeguard astor \\
        cloudpickle colorama prettytable responses psutil requests urllib3 idna certifi
    PYTHONPATH=/tmp/nni-pkgs python benchmarks/peers_nni.py

Result on 2026-11-29 (torch 2.14.1): both fail inside NNI's tracer, the open NNI issue
microsoft/nni#5768 (reported on torch 2.2); see docs/benchmarks.md, "NNI".
"""

from __future__ import annotations

import traceback

import torch
import torchvision

import regprune as rp
from regprune.models import create_model


def try_nni(name: str, model: torch.nn.Module, example: torch.Tensor) -> str:
    from nni.compression.pruning import L1NormPruner
    from nni.compression.speedup import ModelSpeedup

    before = rp.count(model, example).macs
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}]
    try:
        pruner = L1NormPruner(model, config_list)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        ModelSpeedup(model, example, masks).speedup_model()
    except Exception as error:  # the finding is the error itself
        where = traceback.extract_tb(error.__traceback__)[-1]
        return (
            f"{name}: FAILED in {where.filename.split('site-packages/')[-1].split('nni-pkgs/')[-1]}"
            f":{where.lineno}: {type(error).__name__}: {error}"
        )
    after = rp.count(model, example).macs
    return f"{name}: ok, MACs {before / 1e6:.2f} M -> {after / 1e6:.2f} M"


def main() -> None:
    import nni

    print(f"nni {nni.__version__}, torch {torch.__version__}")
    print(
        try_nni(
            "resnet20", create_model("resnet20", in_channels=1).eval(), torch.randn(1, 1, 28, 28)
        )
    )
    print(
        try_nni(
            "resnet18",
            torchvision.models.resnet18(weights=None).eval(),
            torch.randn(1, 3, 224, 224),
        )
    )


if __name__ == "__main__":
    main()
