"""What prune() cuts: after a penalty, the trained model with BN statistics re-estimated.

A penalty moves weights faster than momentum running statistics follow; the tests make the
lag explicit (the running statistics are shifted by hand) and check that the network pruning
measures and cuts carries statistics of the data it was given, while the caller's model keeps
its own.
"""

from __future__ import annotations

import warnings

import torch

import regprune as rp
from tests.methods.test_methods_unit import X, batches, resnet, train_steps

STALE_SHIFT = 5.0


def stem_mean(model: torch.nn.Module, data) -> torch.Tensor:
    """Per-channel mean of what the first BN reads over ``data`` (its input does not depend on
    any BN): what a re-estimated running mean must be."""
    with torch.no_grad():
        outputs = torch.cat([model.conv1(x) for x, _ in data])
    return outputs.mean(dim=(0, 2, 3))


def trained_slimming():
    model = resnet()
    method = rp.methods.get("slimming", model, X, target_macs=0.5, total_steps=20)
    train_steps(model, method, 4)
    with torch.no_grad():  # statistics that lag the weights
        model.bn1.running_mean += STALE_SHIFT
    return model, method


def test_after_a_penalty_the_network_to_prune_has_statistics_of_the_calibration_data() -> None:
    model, method = trained_slimming()
    stale = model.bn1.running_mean.clone()
    data = batches()
    settled = method.model_to_prune(data)
    assert settled is not model
    torch.testing.assert_close(settled.bn1.running_mean, stem_mean(model, data))
    torch.testing.assert_close(model.bn1.running_mean, stale)  # the caller's model untouched


def test_prune_cuts_the_network_with_re_estimated_statistics() -> None:
    model, method = trained_slimming()
    data = batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # four steps do not silence the removal set
        small = method.prune(data)
    expected = stem_mean(model, data)
    kept = small.bn1.running_mean
    # every kept channel's mean is one of the re-estimated means, none the stale one
    distance = (kept[:, None] - expected[None, :]).abs().min(dim=1).values
    assert float(distance.max()) < 1e-5


def test_without_a_penalty_or_data_the_trained_model_is_cut() -> None:
    model = resnet()
    oneshot = rp.methods.get("oneshot", model, X, target_macs=0.5)
    assert oneshot.model_to_prune(batches()) is model  # statistics of a whole run beat 4 batches
    _, slimming = trained_slimming()
    assert slimming.model_to_prune(None) is slimming.model
