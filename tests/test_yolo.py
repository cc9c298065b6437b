"""ultralytics YOLO models, built from their yaml (random weights, nothing downloaded), prune
with no ignore list, are exact on every raw output, and still run inside ultralytics.

Skipped where ultralytics is not installed (it is not in the test extras: it pulls opencv).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no online checks

import numpy as np
import pytest
import torch
from benchmarks.timm_coverage import calibrate_norms
from benchmarks.yolo_coverage import exactness, leaf_errors, split_c2f

import regprune as rp
from regprune.structures import structure_mismatch

ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import torch_safe_load  # noqa: E402


def pruned_yolo(yaml: str, size: int = 160, ratio: float = 0.3):
    """(YOLO object, its original model with calibrated norms, example input, PruneResult)."""
    torch.manual_seed(0)
    yolo = YOLO(yaml)
    model = yolo.model.eval()
    x = torch.rand(1, 3, size, size)
    calibrate_norms(model, x)  # with initial statistics the outputs hardly depend on x
    return yolo, model, x, rp.prune_with_result(model, x, ratio=ratio)


def assert_same_outputs(got, want, rtol: float = 1e-4) -> None:
    assert structure_mismatch(got, want) is None
    errors = leaf_errors(got, want)
    assert errors and max(errors.values()) <= rtol, errors


def assert_predicts(yolo, pruned: torch.nn.Module, size: int) -> None:
    yolo.model = pruned
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    results = yolo.predict(image, imgsz=size, conf=0.0, verbose=False)
    assert len(results) == 1 and len(results[0].boxes) > 0
    assert results[0].boxes.xyxy.shape[1] == 4


def test_yolov8n_prunes_is_exact_and_runs_in_ultralytics_predict() -> None:
    yolo, model, x, result = pruned_yolo("yolov8n.yaml")
    assert result.macs_after < 0.8 * result.macs_before
    kept_whole = {entry.split(":")[0] for entry in map(str, result.graph.unprunable)}
    # the class logits and box distributions are the task's outputs: their widths are fixed
    assert {f"model.22.cv3.{i}.2" for i in range(3)} <= kept_whole
    assert {f"model.22.cv2.{i}.2" for i in range(3)} <= kept_whole

    report = exactness(model, x, result.graph, result.plan)
    assert report["exact_channels_dropped"] > 0
    assert report["exact"], report["exactness_by_leaf"]
    assert set(report["exactness_by_leaf"]) >= {"[0]", "[1]['boxes']", "[1]['scores']"}

    assert_predicts(yolo, result.model.eval(), size=160)


SLOW_MODELS = [
    "yolov8n-seg.yaml",
    "yolov8n-pose.yaml",
    "yolo11n.yaml",
    "yolo11n-seg.yaml",
    "yolo11n-pose.yaml",
]


@pytest.mark.slow
@pytest.mark.parametrize("yaml", SLOW_MODELS)
def test_yolo_task_models_prune_exactly_and_predict(yaml: str) -> None:
    yolo, model, x, result = pruned_yolo(yaml)
    assert result.macs_after < 0.9 * result.macs_before
    report = exactness(model, x, result.graph, result.plan)
    assert report["exact_channels_dropped"] > 0
    assert report["exact"], report.get("exactness_by_leaf", report)

    pruned = result.model.eval()
    other = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert structure_mismatch(pruned(other), model(other)) is None
    assert_predicts(yolo, pruned, size=160)


@pytest.mark.slow
def test_pruned_yolo_saves_and_loads_both_ways(tmp_path) -> None:
    _, _, x, result = pruned_yolo("yolov8n.yaml")
    pruned = result.model.eval()
    with torch.no_grad():
        want = pruned(x)

    # ultralytics' way: the whole module pickled, loaded by YOLO(path)
    path = tmp_path / "pruned.pt"
    torch.save({"model": pruned, "train_args": {}}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # a pickled module needs its classes allowed
    loaded = YOLO(str(path)).model.eval()
    with torch.no_grad():
        assert_same_outputs(loaded(x), want, rtol=0)
    ckpt, _ = torch_safe_load(str(path), safe_only=True)  # ultralytics' weights_only allow-list
    with torch.no_grad():
        assert_same_outputs(ckpt["model"].eval()(x), want, rtol=0)

    # regprune's way: weights and sizes only, loaded into a model rebuilt from the yaml
    rp.save_pruned(pruned, tmp_path / "pruned_state.pt")
    rebuilt = rp.load_pruned(YOLO("yolov8n.yaml").model, tmp_path / "pruned_state.pt").eval()
    with torch.no_grad():
        assert_same_outputs(rebuilt(x), want, rtol=0)


@pytest.mark.slow
def test_c2f_chunk_prunes_by_itself_as_the_split_rewrite_does() -> None:
    """C2f's ``cv1(x).chunk(2, 1)``: the halves are coupled position by position, so cv1 and
    the bottlenecks shrink with no rewrite; ``split_c2f`` (docs/yolo.md) gives the same."""
    _, model, x, default = pruned_yolo("yolov8n.yaml")
    assert not any("'chunk'" in str(entry) for entry in default.graph.unprunable)
    with torch.no_grad():
        want = model(x)
    split = split_c2f(model)
    with torch.no_grad():
        assert_same_outputs(split(x), want, rtol=0)
    result = rp.prune_with_result(split, x, ratio=0.3)
    assert not any("'chunk'" in str(entry) for entry in result.graph.unprunable)
    assert result.macs_after == pytest.approx(default.macs_after, rel=0.02)
    report = exactness(split, x, result.graph, result.plan)
    assert report["exact"], report.get("exactness_by_leaf", report)


def write_tiny_dataset(root) -> str:
    """Four 64x64 images per split, one bright square each (class 0), and its data yaml."""
    import cv2

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            image = (rng.random((64, 64, 3)) * 80).astype(np.uint8)
            x, y, size = (int(v) for v in rng.integers([8, 8, 10], [40, 40, 20]))
            image[y : y + size, x : x + size] = 255
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), image)
            box = f"0 {(x + size / 2) / 64} {(y + size / 2) / 64} {size / 64} {size / 64}\n"
            (root / "labels" / split / f"{i}.txt").write_text(box)
    path = root / "data.yaml"
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: square\n")
    return str(path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:slimming.*the regularizer has not finished")  # one step
def test_docs_yolo_recipe_regularizes_prunes_and_finetunes(tmp_path) -> None:
    """Every python block of docs/yolo.md, in order, with its settings block replaced by a
    synthetic dataset and one CPU epoch per phase."""
    text = (Path(__file__).parents[1] / "docs" / "yolo.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    settings = [i for i, block in enumerate(blocks) if block.startswith("# settings")]
    assert len(settings) == 1
    blocks[settings[0]] = (
        f"data = {write_tiny_dataset(tmp_path / 'data')!r}\n"
        "cfg, nc, imgsz = 'yolov8n.yaml', 1, 64\n"
        "regularize_epochs, finetune_epochs = 1, 1\n"
        f"train_args = dict(batch=2, device='cpu', workers=0, plots=False, "
        f"project={str(tmp_path / 'runs')!r})\n"
    )
    namespace: dict = {}
    exec(compile("\n".join(blocks[: settings[0] + 1]), "docs/yolo.md", "exec"), namespace)
    exec_rest = "\n".join(blocks[settings[0] + 1 :])
    # the recipe's model, before training, to see that the hooks and the optimizer moved it
    exec_rest = exec_rest.replace(
        "yolo = YOLO(cfg)\n",
        "yolo = YOLO(cfg)\ntrained_before = [p.detach().clone() for p in model.parameters()]\n",
        1,
    )
    exec(compile(exec_rest, "docs/yolo.md", "exec"), namespace)
    model, method, pruned = namespace["model"], namespace["method"], namespace["pruned"]
    trained_before = namespace["trained_before"]
    assert method.iteration >= 1
    assert any(
        not torch.equal(a, b.cpu()) for a, b in zip(trained_before, model.parameters(), strict=True)
    )
    x = torch.rand(1, 3, 64, 64)
    macs_before = rp.count(model.cpu().eval(), x).macs
    macs_pruned = rp.count(pruned.eval(), x).macs
    assert macs_pruned < 0.8 * macs_before
    finetuned = namespace["yolo"].model.float().eval()
    assert rp.count(finetuned, x).macs == macs_pruned  # fine-tuning kept the pruned widths
    results = namespace["yolo"].predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
    assert len(results) == 1
