"""The pruning target: one object, validated once, used by the API, the methods and configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

SCOPES = ("local", "global")

AUTO_MULTIPLE = 8
"""``round_to="auto"`` rounds kept widths to this multiple (our choice): 8 fp32 lanes of an AVX2
register and the channel block of oneDNN's blocked layouts on such CPUs, and the multiple that
fp16 / bf16 tensor cores want on a GPU; a width off it runs in padded or scalar tails."""

AUTO_MIN_GROUPS = (16, 64)
"""``round_to="auto"`` rounds groups of at least this many channels, trying each entry in turn
(our choice). 16 first: with the count search stepping in whole blocks, even a 16-channel
CIFAR stage can be aligned and still meet a MACs target, and aligned narrow layers are where
onnxruntime and ``torch.compile`` gained most (docs/latency_backends.md). Where the target
cannot be met within its tolerance that way (a 16-channel group aligned to 8 keeps at least
half of itself), only groups of 64 or more are rounded (a block is then at most an eighth of
the group); where even that misses, no group is (the plan of ``round_to=1``)."""

AUTO_MIN_GROUP = AUTO_MIN_GROUPS[0]
"""The first rung of :data:`AUTO_MIN_GROUPS`: what a ratio target (which cannot miss) uses."""

DEFAULT_MAX_RATIO = 0.8
"""The most of one channel group a default target removes (our choice, issue 14): a global
ranking may otherwise thin a layer to one channel, and a network whose layer is that thin can
lose most of its accuracy for good (group lasso on a VGG: 20.9 % after fine-tuning where
one-shot criteria reached 91 %). Keeping a fifth of every group still allows any MACs target
down to a few percent; ``max_ratio=1.0`` asks for the papers' uncapped rule."""


@dataclass(frozen=True)
class Target:
    """What to prune to.

    Attributes:
        ratio: fraction of channels to remove, in [0, 1) (per group for local scope, overall
            for global); or
        target_macs: fraction of the model's MACs to keep, in (0, 1] (met within 1 % below).
        scope: ``"local"`` (same share in every group) or ``"global"`` (one ranking).
        round_to: kept widths are multiples of this; ``"auto"``: of :data:`AUTO_MULTIPLE` in
            groups of at least :data:`AUTO_MIN_GROUP` channels, free in smaller ones; with a
            MACs target, relaxed rung by rung (:data:`AUTO_MIN_GROUPS`) until it is met.
            ``None``: ``"auto"`` for a MACs target, 1 for a ratio (our choice, the one-shot
            API's default): a MACs budget leaves the allocation free to pick aligned widths,
            while a ratio asks for a number of channels (``ratio=5/64`` would drop nothing
            once a 64-channel group's 59 kept channels rounded up to 64).
        max_ratio: no channel group loses more than this fraction of its channels; None (the
            default) is :data:`DEFAULT_MAX_RATIO`.

    Raises:
        ValueError: at construction, naming the argument and what is allowed.
    """

    ratio: float | None = None
    target_macs: float | None = None
    scope: str = "local"
    round_to: int | str | None = 1
    max_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.max_ratio is None:
            object.__setattr__(self, "max_ratio", DEFAULT_MAX_RATIO)
        if self.round_to is None:
            object.__setattr__(self, "round_to", "auto" if self.target_macs is not None else 1)
        for name, value in (("ratio", self.ratio), ("target_macs", self.target_macs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if (self.ratio is None) == (self.target_macs is None):
            raise ValueError(
                "give exactly one of ratio= (fraction of channels to remove) or "
                "target_macs= (fraction of MACs to keep)"
            )
        if self.ratio is not None and not (0.0 <= float(self.ratio) < 1.0):
            raise ValueError(
                f"ratio must be in [0, 1) (fraction of channels removed), got {self.ratio}"
            )
        if self.target_macs is not None and not (0.0 < float(self.target_macs) <= 1.0):
            raise ValueError(
                f"target_macs must be in (0, 1] (fraction of the MACs kept), got {self.target_macs}"
            )
        if not isinstance(self.scope, str) or self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        round_to = self.round_to
        if round_to != "auto" and (
            isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1
        ):
            raise ValueError(
                f"round_to must be a positive integer (kept widths are multiples of it) or "
                f"'auto' (multiples of {AUTO_MULTIPLE} where a group is wide enough), "
                f"got {round_to!r}"
            )
        max_ratio = self.max_ratio
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, Real) or not 0 < max_ratio <= 1:
            raise ValueError(
                f"max_ratio must be in (0, 1] (the most of one group that may go), "
                f"got {max_ratio!r}"
            )

    @property
    def is_macs(self) -> bool:
        return self.target_macs is not None

    def multiple_for(self, size: int, min_group: int | None = AUTO_MIN_GROUP) -> int:
        """The multiple a group of ``size`` channels keeps its width at; with ``"auto"``, only
        groups of at least ``min_group`` channels round (None: none do)."""
        if self.round_to == "auto":
            return AUTO_MULTIPLE if min_group is not None and size >= min_group else 1
        return int(self.round_to)

    def rounding_rungs(self) -> tuple[int | None, ...]:
        """The ``min_group`` values a MACs allocation tries in turn (one for a fixed round_to)."""
        return (*AUTO_MIN_GROUPS, None) if self.round_to == "auto" else (AUTO_MIN_GROUP,)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
