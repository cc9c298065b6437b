from __future__ import annotations

from regprune.train import MetricsLog


def test_drop_after_removes_only_later_epochs_of_that_phase(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl")
    for phase, epoch in [("sparsity", 1), ("sparsity", 2), ("finetune", 1), ("finetune", 2)]:
        log.append({"phase": phase, "epoch": epoch, "val_acc": 0.5})

    log.drop_after("finetune", 1)

    assert [(r["phase"], r["epoch"]) for r in log.read()] == [
        ("sparsity", 1),
        ("sparsity", 2),
        ("finetune", 1),
    ]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["metrics.jsonl"]


def test_missing_file_reads_as_empty(tmp_path):
    log = MetricsLog(tmp_path / "none.jsonl")

    log.drop_after("train", 0)

    assert log.read() == []
