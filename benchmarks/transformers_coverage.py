"""Prune transformers by heads and MLP widths, beside Torch-Pruning 1.6.1; write the section of
docs/coverage.md.

    python benchmarks/transformers_coverage.py --out docs/coverage.md

Models (random weights, nothing downloaded): the tiny Hugging Face configs of
``tests/hf_models.py`` (BERT, ViT, GPT-2, Llama with grouped-query attention, T5), timm's
``vit_tiny_patch16_224`` at 64 px and torchvision's ``vit_b_16`` and ``swin_t`` at 224 px.

Ours: ``rp.prune_with_result(model, example, ratio=0.5)`` with its defaults; MACs before and
after, what was kept whole and why, the engine's time (trace, plan, surgery) and the whole
call's, and the exactness error (the plan's exact groups removed against the same channels
zeroed, as in ``benchmarks/coverage.py``).

Torch-Pruning: ``MetaPruner(model, example, MagnitudeImportance(p=1), pruning_ratio=0.5,
num_heads=..., prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5,
ignored_layers=[the output layer])``, the head options of its transformer examples, on a
copy; then the head attributes its examples set by hand (``num_heads`` from
``pruner.num_heads``, head size from the projection's rows) where the attention module has
them. Whether it ran, whether the pruned model runs with outputs of the original's shapes, MACs
after (counted by ``rp.count``), time.

Each side of each model runs in a fresh interpreter with one thread and a timeout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as a file (python benchmarks/x.py): the repo root holds benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.coverage import exactness_error
from benchmarks.workers import emit, measure, run_worker
from tests.hf_models import tiny_hf_model

import regprune as rp
from regprune.inputs import as_call_args, call_model
from regprune.io import atomic_write_text
from regprune.layers.rules import head_layout_for, head_sizes
from regprune.metrics import format_count
from regprune.report import describe_machine, machine_info, markdown_table, write_generated_block
from regprune.structures import structure_mismatch

MODELS = {
    "hf_bert": "HF `BertModel` (64 wide, 4 heads, 2 layers, 12 tokens)",
    "hf_vit": "HF `ViTModel` (64 wide, 4 heads, 2 layers, 32 px)",
    "hf_gpt2": "HF `GPT2LMHeadModel` (64 wide, 4 heads, 2 layers, 12 tokens)",
    "hf_llama": "HF `LlamaForCausalLM` (64 wide, 4 q / 2 kv heads, 2 layers, 12 tokens)",
    "hf_t5": "HF `T5ForConditionalGeneration` (64 wide, 4 heads, 2+2 layers, 12 / 8 tokens)",
    "timm_vit_tiny": "timm `vit_tiny_patch16_224` at 64 px (3 heads, 12 layers)",
    "tv_vit_b_16": "torchvision `vit_b_16` (224 px, 12 heads, 12 layers)",
    "tv_swin_t": "torchvision `swin_t` (224 px, 3-24 heads, 12 blocks)",
}

OUTPUT_LAYERS = ("lm_head", "head", "heads.head", "pooler.dense")
"""The layers Torch-Pruning's examples leave out (the classifier / LM head)."""


def build(name: str) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    if name.startswith("hf_"):
        return tiny_hf_model(name[3:], use_cache=False)
    if name == "timm_vit_tiny":
        import timm

        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)
        return model.eval(), torch.randn(1, 3, 64, 64)
    import torchvision

    model = getattr(torchvision.models, name[3:])(weights=None)
    return model.eval(), torch.randn(1, 3, 224, 224)


def _warm_up() -> None:
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    rp.prune(tiny, torch.randn(2, 8), ratio=0.5)


def worker_ours(name: str) -> dict[str, Any]:
    model, example = build(name)
    start = time.perf_counter()
    result = rp.prune_with_result(model, example, ratio=0.5)
    total_s = time.perf_counter() - start
    return {
        "status": "ok",
        "time_s": total_s,
        "engine_s": sum(result.phase_s[p] for p in ("trace", "plan", "surgery")),
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "macs_counted": rp.count(result.model, example).macs,
        "kept_whole": [str(entry) for entry in result.graph.unprunable],
        "exactness_error": exactness_error(model, example, result.graph, result.plan, name),
    }


def _head_modules(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """The q/k/v projections and their head counts, as Torch-Pruning's ``num_heads`` takes them."""
    heads: dict[torch.nn.Module, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            heads[module] = module.num_heads
            continue
        layout = head_layout_for(module)
        if layout is None:
            continue
        sizes = head_sizes(module)
        count, kv = sizes["heads"], sizes["kv_heads"]  # type: ignore[index]
        heads[module.get_submodule(layout.query)] = count
        for child in (layout.key, layout.value):
            if child is not None:
                heads[module.get_submodule(child)] = kv
    return heads


def _set_head_attributes(model: torch.nn.Module, pruned_heads: dict) -> None:
    """What Torch-Pruning's transformer examples do by hand after ``step()``."""
    for module in model.modules():
        layout = head_layout_for(module)
        query = getattr(module, layout.query, None) if layout else None
        if query is None or query not in pruned_heads:
            continue
        rows = query.weight.shape[0 if not hasattr(query, "nf") else 1] // layout.packed
        heads = pruned_heads[query]
        for attr in layout.heads:
            if hasattr(module, attr):
                setattr(module, attr, heads)
        setattr(module, layout.head_dim, rows // heads)
        for attr in layout.width:
            if hasattr(module, attr):
                setattr(module, attr, rows)
        key = getattr(module, layout.key, None) if layout.key else None
        for attr in layout.kv_heads:
            if key is not None and key in pruned_heads:
                setattr(module, attr, pruned_heads[key])
        if layout.kv_groups and hasattr(module, layout.kv_groups) and key in pruned_heads:
            setattr(module, layout.kv_groups, heads // pruned_heads[key])


def worker_tp(name: str) -> dict[str, Any]:
    import torch_pruning as tp

    pristine, example = build(name)
    call = as_call_args(example)
    args = call.kwargs if call.kwargs else (call.args[0] if len(call.args) == 1 else call.args)
    with torch.no_grad():
        expected = call_model(pristine, example)
    model = copy.deepcopy(pristine)
    ignored = [m for n, m in model.named_modules() if n in OUTPUT_LAYERS]
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        args,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        num_heads=_head_modules(model),
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=0.5,
    )
    pruner.step()
    row: dict[str, Any] = {"time_s": time.perf_counter() - start}
    _set_head_attributes(model, pruner.num_heads)
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, example)
    except Exception as error:
        return {**row, "status": f"FAIL (pruned model): {type(error).__name__}: {error}"[:200]}
    problem = structure_mismatch(output, expected)
    row["status"] = "ok" if problem is None else f"outputs changed: {problem}"[:200]
    row["macs_after"] = rp.count(model, example).macs
    return row


def run_side(side: str, name: str, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", side, "--models", name]
    emitted, ended, stderr = run_worker(command, timeout_s)
    if emitted:
        return emitted[0]
    return {"status": f"FAIL: {ended}: {stderr[-200:]}"}


def worker_main(side: str, name: str) -> None:
    torch.set_num_threads(1)
    if side == "ours":
        _warm_up()
    emit(measure(worker_ours if side == "ours" else worker_tp, name))


START = "<!-- transformers_coverage: generated, do not edit by hand -->"
END = "<!-- transformers_coverage: end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _status(text: str) -> str:
    """A status cell: a timeout says so, without the warnings the worker printed before it."""
    if "timed out after" in text:
        return text[: text.index(" s", text.index("timed out after")) + 2]
    return _cell(text)


def render(rows: list[dict], command: str, machine: str) -> str:
    lines = [
        "# Transformers: heads and MLP widths",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}.",
        "",
        "Ours: `rp.prune_with_result(model, example, ratio=0.5)` with its defaults (L1, local "
        "scope, whole heads); `engine s` is trace + plan + surgery, `ours s` the whole call. "
        "`MACs after` is the allocation's prediction and equals `rp.count` of the pruned model "
        "(checked: `counted`). Exactness: the exact groups removed against the same channels "
        "zeroed, largest difference relative to the largest output. TP: Torch-Pruning 1.6.1 "
        "`MetaPruner(..., MagnitudeImportance(p=1), pruning_ratio=0.5, num_heads=..., "
        "prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5, "
        "ignored_layers=[output layer])` on a copy, then the head attributes set by hand as its "
        "examples do; `TP shapes` says whether the pruned model runs with outputs of the "
        "original's shapes; `TP / ours` is TP's time over our engine's (> 1: we are faster).",
        "",
    ]
    header = [
        "model",
        "MACs before",
        "MACs after",
        "ratio",
        "counted",
        "kept whole",
        "exactness",
        "engine s",
        "ours s",
        "TP shapes",
        "TP MACs after",
        "TP s",
        "TP / ours",
    ]
    table = []
    for row in rows:
        ours, theirs = row["ours"], row["tp"]
        ok = ours.get("status") == "ok"
        tp_ran = "time_s" in theirs
        table.append(
            [
                MODELS[row["model"]],
                format_count(ours["macs_before"]) if ok else _cell(ours["status"]),
                format_count(ours["macs_after"]) if ok else "",
                f"{ours['macs_after'] / ours['macs_before']:.3f}" if ok else "",
                ("= predicted" if ours["macs_counted"] == ours["macs_after"] else "differs")
                if ok
                else "",
                str(len(ours["kept_whole"])) if ok else "",
                (
                    f"{ours['exactness_error']:.1e}"
                    if ok and isinstance(ours["exactness_error"], float)
                    else _cell(str(ours.get("exactness_error", "")))
                ),
                f"{ours['engine_s']:.2f}" if ok else "",
                f"{ours['time_s']:.2f}" if ok else "",
                _status(theirs["status"]),
                format_count(theirs["macs_after"]) if "macs_after" in theirs else "",
                f"{theirs['time_s']:.2f}" if tp_ran else "",
                f"{theirs['time_s'] / ours['engine_s']:.2f}" if tp_ran and ok else "",
            ]
        )
    align = ["l", "r", "r", "r", "l", "r", "r", "r", "r", "l", "r", "r", "r"]
    lines.append(markdown_table(header, table, align))
    lines += ["", "Kept whole, and why:", ""]
    for row in rows:
        kept = row["ours"].get("kept_whole")
        if kept is None:
            continue
        lines.append(f"- **{row['model']}** ({len(kept)}):")
        lines += [f"  - {_cell(entry)}" for entry in kept[:8]]
        if len(kept) > 8:
            lines.append(f"  - ... and {len(kept) - 8} more of the same kinds")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per model, ours")
    parser.add_argument("--tp-timeout-s", type=float, default=180.0, help="per model, TP")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument("--from-json", type=Path, help="re-render the section from a run's JSON")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.models[0])
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        block = render(report["rows"], report["command"], report["machine"])
        write_generated_block(args.out, block, start=START, end=END)
        return
    torch.set_num_threads(1)
    rows = []
    for name in args.models or list(MODELS):
        row = {
            "model": name,
            "ours": run_side("ours", name, args.timeout_s),
            "tp": run_side("tp", name, args.tp_timeout_s),
        }
        rows.append(row)
        print(json.dumps(row)[:400], flush=True)
    command = f"python benchmarks/transformers_coverage.py --tp-timeout-s {args.tp_timeout_s:g}"
    if args.models:
        command += " --models " + " ".join(args.models)
    packages = ["transformers", "timm", "torchvision", "torch-pruning"]
    machine = describe_machine(machine_info(packages))
    machine += f", load average at the end {os.getloadavg()[0]:.1f} (shared)"
    report = {"command": command, "machine": machine, "rows": rows}
    atomic_write_text(
        args.out.with_name("coverage_transformers.json"), json.dumps(report, indent=1)
    )
    write_generated_block(args.out, render(rows, command, machine), start=START, end=END)


if __name__ == "__main__":
    main()
