"""Labels stay as small as the channel structure: a class token concatenated to the tokens and a
write into part of the tokens couple their channels instead of making the label vary along the
tokens (which locked the layers that read it, and made every later check as big as the tokens).
"""

from __future__ import annotations

import torch
from torch import nn

import regprune as rp
from regprune.graph import trace_graph
from regprune.graph.atoms import AtomTable, atoms_in
from regprune.graph.labels import compact
from tests.exactness import check_exact


class ClassTokenNet(nn.Module):
    """ViT-style: patch conv, class token concatenated in front, position embedding, LayerNorm,
    an MLP, and a head on the class token. The MLP has no LayerNorm after it, so its hidden
    width is an exact group whatever the embedding dim does."""

    def __init__(self, dim: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        # no prefix to keep out of a rotation: an empty slice joins the cat (timm's RoPE
        # attention with num_prefix_tokens=0), which must change nothing
        x = torch.cat([x[:, :0], x], dim=1)
        x = x + self.fc2(torch.relu(self.fc1(self.norm(x))))
        return self.head(x[:, 0])


def test_a_class_token_concatenated_to_the_tokens_goes_with_their_channels() -> None:
    model = ClassTokenNet().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = trace_graph(model, x)
    assert [u.layer for u in graph.unprunable] == ["head"]
    (embedding,) = [g for g in graph.groups if "patch" in g.producers]
    sliced = {(s.module, s.param) for s in embedding.slices}
    assert {("", "cls"), ("", "pos"), ("norm", "weight"), ("fc1", "weight")} <= sliced
    # the embedding dim is coupled to a LayerNorm (inexact); the MLP's hidden width is exact
    check_exact(model, x, 0.5)
    pruned = rp.prune(model, x, ratio=0.5)
    assert pruned.cls.shape[-1] == pruned.patch.out_channels < 8
    assert pruned.pos.shape[-1] == pruned.norm.weight.numel() == pruned.patch.out_channels
    assert pruned(x).shape == (2, 5)


class PartialWriteNet(nn.Module):
    """A scale written into every row but the first (MViT adds its relative positions to all
    but the class token's scores in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y[:, :, 1:] = self.scale * y[:, :, 1:]
        return self.conv2(y)


def test_a_write_into_part_of_the_rows_couples_the_written_channels() -> None:
    model = PartialWriteNet().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace_graph(model, x)
    assert [u.layer for u in graph.unprunable] == ["conv2"]
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.conv1.out_channels == pruned.scale.shape[0] == 4


class PartialResidualNet(nn.Module):
    """Another branch's channels written into every row but the first (MViT's residual pooling
    past the class token writes ``x[:, :, 1:] += q[:, :, 1:]`` back the same way)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = self.conv_a(x), self.conv_b(x)
        y[:, :, 1:] = z[:, :, 1:]
        return self.conv2(torch.relu(y))


def test_a_partial_write_from_another_branch_couples_the_two_branches() -> None:
    model = PartialResidualNet().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace_graph(model, x)
    (group,) = [g for g in graph.groups if "conv_a" in g.producers]
    assert group.producers == ["conv_a", "conv_b"]
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.conv_a.out_channels == pruned.conv_b.out_channels == 4


def test_checks_on_broadcast_labels_read_what_they_hold() -> None:
    """Labels replayed through movement are broadcast views at the activation's size: compact
    and atoms_in give what the full tensor would, also past the size where atoms_in stops
    sorting."""
    small = torch.tensor([3, -1, 7, 3]).reshape(1, 4, 1)
    big = (torch.arange(10_000) % 5_003).reshape(1, 1, -1)
    for label, shape in ((small, (5, 4, 9)), (big, (6, 3, 10_000))):
        expanded = label.expand(shape)
        full = expanded.contiguous()
        assert torch.equal(atoms_in(expanded), torch.unique(full[full >= 0]))
        assert torch.equal(compact(expanded), compact(full))
        assert compact(expanded).shape == label.shape
    assert torch.equal(atoms_in(small.expand(5, 4, 9)), torch.tensor([3, 7]))


def test_a_lock_on_a_broadcast_label_locks_its_atoms_once() -> None:
    table = AtomTable()
    atoms = table.new(4)
    table.lock(atoms.reshape(1, 4, 1).expand(100, 4, 100), "m", "why")
    assert (table.reason_of_atoms() == 0).all()


class StackedTokensNet(nn.Module):
    """Two projections stacked into two tokens, a LayerNorm over their channels, an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a, self.fc_b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([self.fc_a(x), self.fc_b(x)], dim=1)
        return self.fc2(torch.relu(self.fc1(self.norm(tokens)))).sum(1)


def test_a_norm_gives_tokens_of_coupled_channels_one_label_per_channel() -> None:
    """The two tokens hold different atoms (a label varying along the tokens); the LayerNorm
    couples them channel by channel, and its output is labelled per channel, so the Linear
    that reads it sees a channel vector instead of locking its input."""
    model = StackedTokensNet().eval()
    x = torch.randn(4, 6)
    graph = trace_graph(model, x)
    assert [u.layer for u in graph.unprunable] == ["fc2"]
    (tokens,) = [g for g in graph.groups if "fc_a" in g.producers]
    assert sorted(tokens.producers) == ["fc_a", "fc_b"]
    pruned = rp.prune(model, x, ratio=0.5)
    assert pruned.fc_a.out_features == pruned.fc_b.out_features == pruned.fc1.in_features == 4
    check_exact(model, x, 0.5)  # the MLP's hidden width, an exact group
