"""L0 regularization with hard-concrete gates.

Source: Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
ICLR 2018; code AMLab-Amsterdam/L0_regularization (``l0_layers.py``). Per-weight (fine-grained)
gates as in Xie et al., ECAI 2019; per-channel gates over a :class:`ChannelGroup` are ours.

A gate ``z`` in [0, 1] multiplies what it controls. During training ``z`` is a sample of the
hard-concrete distribution (exact 0 and 1 have non-zero probability); the expected number of
non-zero gates is differentiable in ``log_alpha`` and is the penalty. Gates are installed with
``torch.nn.utils.parametrize``, so the model stays a plain ``nn.Module`` whose ``weight`` reads as
``original * z``, and :meth:`L0Regularizer.bake` writes the test-time product back into the
weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from regprune.graph.groups import ChannelGroup
from regprune.layers import weight_layers
from regprune.regularizers._slices import index_groups
from regprune.regularizers.lagrangian import ExpectedCostConstraint
from regprune.regularizers.protocol import Regularizer

BETA = 2.0 / 3.0
"""Temperature of the hard-concrete distribution (Louizos et al.)."""
GAMMA = -0.1
"""Lower end of the stretched interval (Louizos et al.)."""
ZETA = 1.1
"""Upper end of the stretched interval (Louizos et al.)."""
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
_UNIFORM_EPS = 1e-6  # u is drawn from (eps, 1 - eps), as in the code, so log(u) stays finite

Granularity = Literal["weight", "channel"]


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates with location parameters ``log_alpha``.

    * training: ``u ~ U(0, 1)``,
      ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta) * (zeta - gamma) + gamma``,
      ``z = clamp(s, 0, 1)`` -- a fresh sample per call;
    * eval: ``z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``;
    * ``expected_l0() = sigmoid(log_alpha - beta * log(-gamma / zeta)) = P(z != 0)``.

    ``log_alpha`` starts at ``N(log(keep / (1 - keep)), 0.01)``. The code's argument is the drop
    rate ``p`` with mean ``log((1 - p) / p)``; with ``keep = 1 - p`` this is the same number, and
    at the default 0.5 both are 0.

    Args:
        shape: number of gates, or their shape (per-weight gates take the weight's shape).
        init_keep_prob: initial keep probability in (0, 1).

    Example::

        gate = HardConcreteGate(8)
        z = gate()           # a sample in training mode, the test gate in eval mode
    """

    def __init__(self, shape: int | Sequence[int], init_keep_prob: float = 0.5) -> None:
        super().__init__()
        if not 0 < init_keep_prob < 1:
            raise ValueError(f"init_keep_prob must be in (0, 1), got {init_keep_prob}")
        self.init_keep_prob = float(init_keep_prob)
        size = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_alpha = nn.Parameter(torch.empty(size))
        self._held: torch.Tensor | None = None
        self.settled = False
        """True: the test gate in training mode too (see :attr:`L0Regularizer.settle_at`)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mean = math.log(self.init_keep_prob / (1 - self.init_keep_prob))
        with torch.no_grad():
            self.log_alpha.normal_(mean, 1e-2)

    def sample(self) -> torch.Tensor:
        """A fresh training-mode draw of ``z``, differentiable in ``log_alpha``."""
        u = torch.rand_like(self.log_alpha) * (1 - 2 * _UNIFORM_EPS) + _UNIFORM_EPS
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def test_gate(self) -> torch.Tensor:
        """The deterministic eval-mode ``z``."""
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self) -> torch.Tensor:
        """The held draw inside :meth:`hold` / :meth:`release`, else a sample (training, not
        settled) or the test gate (eval, or settled)."""
        if self._held is not None:
            return self._held
        return self.sample() if self.training and not self.settled else self.test_gate()

    def hold(self) -> None:
        """Fix one draw until :meth:`release`.

        Every parametrization that reads a channel gate during one model forward must see the
        same ``z`` (the channel's filter, bias and BN affine are gated together); the
        regularizer calls this in a forward pre-hook.
        """
        self._held = None
        self._held = self()

    def release(self) -> None:
        self._held = None

    def expected_l0(self) -> torch.Tensor:
        """``P(z != 0)`` per gate, differentiable in ``log_alpha``."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))

    def clamp_(self) -> None:
        """Clamp ``log_alpha`` to ``[log 0.01, log 100]`` in place (after every optimizer step)."""
        with torch.no_grad():
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.log_alpha.shape)}, init_keep_prob={self.init_keep_prob}"


class WeightGating(nn.Module):
    """Parametrization ``W -> W * z`` with one gate per weight."""

    def __init__(self, gate: HardConcreteGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gate().to(weight.dtype)


class ChannelGating(nn.Module):
    """Parametrization ``W -> W * z[channel_of]`` along ``dim``; entries of other groups
    (``channel_of == -1``) are multiplied by 1.

    With ``hard=True`` the factor is the mask ``z > 0`` instead of ``z`` (no gradient): used on
    the filters of a group whose channels pass through a norm layer, see
    :class:`L0Regularizer`.
    """

    def __init__(
        self, gate: HardConcreteGate, dim: int, channel_of: torch.Tensor, *, hard: bool = False
    ) -> None:
        super().__init__()
        self.gate = gate
        self.dim = dim
        self.hard = hard
        # -1 indexes the 1 appended to z in forward, so no mask is needed.
        self.register_buffer("channel_of", channel_of.detach().to(torch.long).clone(), False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        z = self.gate()
        if self.hard:
            z = (z.detach() > 0).to(z.dtype)
        scale = torch.cat([z, z.new_ones(1)])[self.channel_of].to(weight.dtype)
        shape = [1] * weight.dim()
        shape[self.dim] = -1
        return weight * scale.reshape(shape)


def _own_parametrized_class(clone: nn.Module, original_class: type) -> None:
    """Give a deep-copied parametrized module a class of its own.

    Why: ``torch.nn.utils.parametrize`` injects one class per parametrized module that holds
    the parametrized properties, and a deep copy shares that class with the original; removing
    the copy's parametrization would delete the property from the shared class and break the
    original model.
    """
    if type(clone) is not original_class:
        return  # already given its own class (a module with several gated tensors)
    namespace = {
        k: v for k, v in original_class.__dict__.items() if k not in ("__dict__", "__weakref__")
    }
    clone.__class__ = type(original_class.__name__, original_class.__bases__, namespace)


class L0Regularizer(Regularizer):
    """Hard-concrete L0 gates installed on a model, with the expected-L0 penalty.

    **Modifies ``model`` in place**: it registers parametrizations (the gates' ``log_alpha`` then
    appear in ``model.parameters()`` and ``model.state_dict()``, so build the optimizer after
    this, preferably without weight decay on the gates) and a forward pre-/post-hook pair that
    holds one gate draw per forward. ``model.train()`` / ``model.eval()`` switch the gates
    between sampling and the test gate. :meth:`bake` undoes all of it.

    Granularities:

    * ``"weight"`` (Xie et al.): one gate per weight of each selected Conv/Linear ``weight``;
      ``|g| = 1``.
    * ``"channel"``: one gate per channel of each :class:`ChannelGroup`. The gate multiplies
      every slice of the group except the consumers' ``"in"`` slices: the producers' ``"out"``
      weights and biases (a channel without a following norm is zero), the ``"norm"`` scale
      *and* shift (a following BN would otherwise emit ``beta`` for a zero input, and its batch
      statistics undo any scaling of its input), and ``"free"`` tensors added into the channel.
      So a test gate of 0 makes the channel's output exactly 0 in train and eval mode. The
      consumers' input slices need no gate: they read a zero. Buffers are not gated.
      In a group with a norm slice the producers' filters take the mask ``z > 0``, not ``z``
      (**our choice**): a BN's batch statistics cancel any scaling of its input, so ``z`` there
      only reaches the running statistics, which then average ``z * y`` over sampled ``z`` and
      no longer match the test gate's ``y`` (on ResNet-20 after 250 budget-mode steps the
      gated model read 55.5 % in eval mode before this and 70.9 % after: docs/budget_study.md,
      "Channel L0 and BatchNorm").
      ``|g|`` is **our choice**: the number of parameter entries removed with the channel,
      ``"in"`` slices included, since they go too when the channel is pruned.

    Penalty: ``sum_g expected_l0_g * lam * |g| / N`` (Louizos et al. eq. with ``N`` training
    samples).

    Args:
        model: the model to gate (modified in place, see above).
        targets: ``"channel"``: the channel groups (required). ``"weight"``: modules or their
            qualified names whose ``weight`` is gated; None gates every Conv1d/2d/3d and Linear.
        lam: ``lambda`` of the penalty, >= 0.
        num_samples: ``N``, the number of training samples.
        granularity: ``"weight"`` | ``"channel"``.
        init_keep_prob: initial keep probability of every gate.

    Example::

        reg = L0Regularizer(model, lam=0.1, num_samples=len(train_set))
        optimizer = torch.optim.Adam(model.parameters())
        for x, y in loader:
            loss = criterion(model(x), y) + reg.penalty(model)
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            reg.step(model)
        small = reg.baked_copy()  # plain weights, zero where the test gate is 0
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[ChannelGroup] | Iterable[nn.Module | str] | None = None,
        *,
        lam: float,
        num_samples: int,
        granularity: Granularity = "weight",
        init_keep_prob: float = 0.5,
    ) -> None:
        if not 0 <= lam < float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples (N) must be an integer >= 1, got {num_samples!r}")
        if granularity not in ("weight", "channel"):
            raise ValueError(f"granularity must be 'weight' or 'channel', got {granularity!r}")
        self.model = model
        self.lam = float(lam)
        self.num_samples = num_samples
        self.granularity: Granularity = granularity
        self.gates: dict[int | str, HardConcreteGate] = {}
        self._sizes: dict[int | str, torch.Tensor] = {}
        self._gated: list[tuple[nn.Module, str]] = []
        if granularity == "channel":
            if targets is None:
                raise ValueError("granularity='channel' needs the channel groups as targets")
            self._install_channel_gates(list(targets), init_keep_prob)  # type: ignore[arg-type]
        else:
            self._install_weight_gates(targets, init_keep_prob)  # type: ignore[arg-type]
        if not self.gates:
            raise ValueError("nothing to gate: the targets select no parameter")
        self.constraint: ExpectedCostConstraint | None = None
        """Optional Lagrangian on the expected cost of channel gates (budget mode)."""
        self.settle_at: int | None = None
        """From this many steps on, the gates use their test value in training too (budget
        mode sets it to ``silence_at`` of the budget; **our choice**, not the paper's). Why: a
        network trained under sampled gates is not the one the test gates define: every BN
        after a gate averages its statistics over draws of ``z`` in (0, 1), and the weights
        adapt to noise the pruned model never sees. Once the gates have met the target, the
        rest of the budget trains the network that will be kept (ResNet-20, 250 budget steps:
        the gated model read 70.9 % in eval mode without this, 80.8 % with it)."""
        self._warned_no_grad = False
        self.gate_optimizer: torch.optim.Optimizer | None = None
        """Optional optimizer of the gates' own (budget mode: :meth:`train_gates_with_adam`),
        stepped in :meth:`step`; None: the gates train in the caller's optimizer."""
        self.steps = 0
        self._hooks: list[Any] = []
        self._install_hooks()

    def train_gates_with_adam(self, lr: float) -> None:
        """Train ``log_alpha`` with an Adam of the regularizer's own, stepped in :meth:`step`.

        Why (**our choice**, budget mode): the gates must close within the budget whatever the
        weights' optimizer, learning rate and schedule are. In the caller's optimizer they move
        at its rate: a cosine schedule has brought it to a tenth by the time the gates should
        settle (ResNet-20, 100 budget steps under cosine, the test
        ``test_channel_l0_budget_gates_close_their_set_under_a_decaying_lr`` with the gates in
        the weights' optimizer at ``gate_lr_scale=50``: 31 of 154 removed inputs silent, the
        pruned model at 10 %), and SGD barely feels a saturated sigmoid's slope. Adam's step
        is about ``lr`` whatever the gradient's scale (Louizos et al. train the gates with
        Adam). Keep the gates out of the caller's optimizer
        (:meth:`PruningMethod.optimizer_groups` marks them ``exclude``).
        """
        self.gate_optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def _install_hooks(self) -> None:
        self._hooks = [
            self.model.register_forward_pre_hook(self._hold_gates),
            self.model.register_forward_hook(self._release_gates, always_call=True),
        ]

    def _check_model(self, model: nn.Module) -> None:
        if model is not self.model:
            raise ValueError(
                "L0Regularizer: the gates live in the model it was built on; pass that model "
                f"(got a {type(model).__name__} that is not it)"
            )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``lam / N * sum_g expected_l0_g * |g|``, differentiable in every ``log_alpha``."""
        self._check_model(model)
        total = self.lam / self.num_samples * self.expected_nonzero()
        if self.constraint is not None:
            total = total + self.constraint.term(self.keep_probabilities())
        return total

    def keep_probabilities(self) -> dict[int | str, torch.Tensor]:
        """``P(z != 0)`` of every gate, differentiable in ``log_alpha``."""
        return {key: gate.expected_l0() for key, gate in self.gates.items()}

    def parameters(self) -> list[nn.Parameter]:
        """The gates' ``log_alpha`` (train them without weight decay)."""
        return [gate.log_alpha for gate in self.gates.values()]

    @property
    def steps_own_parameters(self) -> bool:
        return self.gate_optimizer is not None

    def expected_nonzero(self) -> torch.Tensor:
        """Expected number of parameter entries with a non-zero gate (for logging)."""
        total: torch.Tensor | None = None
        for key, gate in self.gates.items():
            size = self._sizes.get(key)
            term = gate.expected_l0()
            term = term.sum() if size is None else (term * size.to(term.device)).sum()
            total = term if total is None else total + term
        assert total is not None
        return total

    def step(self, model: nn.Module) -> None:
        """Step the gates' own optimizer if they have one, clamp every ``log_alpha`` to
        ``[log 0.01, log 100]`` and ascend the constraint (call after ``optimizer.step``)."""
        self._check_model(model)
        if self.gate_optimizer is not None:
            self._step_gates()
        for gate in self.gates.values():
            gate.clamp_()
        if self.constraint is not None:
            self.constraint.update()
        self.steps += 1
        self._settle()

    def _step_gates(self) -> None:
        assert self.gate_optimizer is not None
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads and not self._warned_no_grad:
            self._warned_no_grad = True
            warnings.warn(
                "L0 gates: no gradient reached the gates before method.step(), so they did "
                "not move. Call optimizer.zero_grad() before backward (not between "
                "optimizer.step() and method.step()), add method.penalty() to the loss, and "
                "leave the gates out of your optimizer (build it with "
                "regprune.train.build_optimizer(model, ..., groups=method.optimizer_groups()))",
                stacklevel=4,
            )
        # a float16 loss scaler's overflow step (its optimizer skips it) must not reach Adam's
        # moments either: one inf there makes every later step of that gate NaN
        if grads and bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            self.gate_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)

    def _settle(self) -> None:
        settled = self.settle_at is not None and self.steps >= self.settle_at
        for gate in self.gates.values():
            gate.settled = settled

    def test_gates(self) -> dict[int | str, torch.Tensor]:
        """Deterministic gates, detached: by group id (channel) or module name (weight)."""
        with torch.no_grad():
            return {key: gate.test_gate().clone() for key, gate in self.gates.items()}

    def sparsity(self) -> float:
        """Fraction of the gated parameter entries whose test gate is exactly 0."""
        zero = 0.0
        total = 0.0
        with torch.no_grad():
            for key, gate in self.gates.items():
                closed = (gate.test_gate() == 0).double()
                size = self._sizes.get(key)
                if size is None:
                    zero += float(closed.sum())
                    total += closed.numel()
                else:
                    size = size.to(closed.device).double()
                    zero += float((closed * size).sum())
                    total += float(size.sum())
        return zero / total if total else 0.0

    def stats(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            expected = float(self.expected_nonzero())
        stats = {"gates/closed": self.sparsity(), "l0/expected": expected}
        return stats | (self.constraint.stats() if self.constraint is not None else {})

    def baked_copy(self) -> nn.Module:
        """A plain copy of the model with the test gates written into its weights; the gated
        model is left as it is (training can go on, the gates stay).

        Why a copy: pruning must not change the model being trained (the life cycle's
        contract), and :meth:`bake` would remove the gates from it.
        """
        for hook in self._hooks:
            hook.remove()
        try:
            clone = copy.deepcopy(self.model)
        finally:
            self._install_hooks()
        names = {id(m): n for n, m in self.model.named_modules()}
        # a tensor shared by two groups (a norm after a concat) holds two gatings: remove once
        unique = {(id(module), name): (module, name) for module, name in self._gated}
        for module, name in unique.values():
            owner = clone.get_submodule(names[id(module)]) if names[id(module)] else clone
            _own_parametrized_class(owner, type(module))
            for gating in owner.parametrizations[name]:
                gating.gate.release()
                gating.gate.eval()
            parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
        return clone

    def bake(self) -> None:
        """Write the test-gated weights into the parameters and remove gates and hooks.

        Afterwards the model has no parametrization: every gated tensor equals
        ``original * test_gate`` (exactly 0 where the gate is 0) in the same ``nn.Parameter``
        object, so an existing optimizer keeps pointing at it; ``log_alpha`` is gone.
        """
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for gate in self.gates.values():
            gate.release()
            gate.eval()
        for module, name in self._gated:
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self._gated = []

    def state_dict(self) -> dict[str, Any]:
        """``lam`` and ``log_alpha`` of every gate (also in ``model.state_dict()``; kept here
        so the regularizer restores on its own)."""
        state = super().state_dict() | {
            "log_alpha": {key: gate.log_alpha.detach().clone() for key, gate in self.gates.items()},
            "steps": self.steps,
        }
        if self.constraint is not None:
            state["constraint"] = self.constraint.state_dict()
        if self.gate_optimizer is not None:
            state["gate_optimizer"] = self.gate_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["log_alpha"]
        if set(saved) != set(self.gates):
            raise ValueError(
                f"state has gates {sorted(map(str, saved))}, this regularizer "
                f"{sorted(map(str, self.gates))}"
            )
        with torch.no_grad():
            for key, gate in self.gates.items():
                gate.log_alpha.copy_(saved[key])
        if self.constraint is not None:
            self.constraint.load_state_dict(state["constraint"])
        if self.gate_optimizer is not None:
            self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.steps = int(state.get("steps", 0))
        self._settle()

    def _hold_gates(self, module: nn.Module, args: Any) -> None:
        for gate in self.gates.values():
            gate.hold()

    def _release_gates(self, module: nn.Module, args: Any, output: Any) -> None:
        for gate in self.gates.values():
            gate.release()

    def _install_weight_gates(
        self, targets: Iterable[nn.Module | str] | None, init_keep_prob: float
    ) -> None:
        named = dict(self.model.named_modules())
        if targets is None:
            names = list(weight_layers(self.model))
        else:
            by_identity = {id(m): n for n, m in named.items()}
            names = []
            for target in targets:
                name = target if isinstance(target, str) else by_identity.get(id(target))
                if name is None or name not in named:
                    raise ValueError(f"{target!r} is not a module of the model")
                names.append(name)
        for name in dict.fromkeys(names):
            module = named[name]
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter):
                raise ValueError(f"{name or '<root>'} has no weight parameter to gate")
            gate = HardConcreteGate(weight.shape, init_keep_prob).to(weight.device)
            parametrize.register_parametrization(module, "weight", WeightGating(gate))
            self.gates[name] = gate
            self._gated.append((module, "weight"))

    def _install_channel_gates(self, groups: list[ChannelGroup], init_keep_prob: float) -> None:
        groups, _ = index_groups(groups)
        for group in groups:
            gated: list[tuple[nn.Module, str, int, torch.Tensor, bool]] = []
            has_norm = any(s.role == "norm" for s in group.slices)
            size = torch.zeros(group.size, dtype=torch.float64)
            device = torch.device("cpu")
            for param_slice in group.slices:
                tensor = param_slice.weight_in(self.model)
                if tensor is None:
                    continue
                dim = param_slice.axis(tensor)
                positions, channels = param_slice.positions_on(torch.device("cpu"))
                entries = tensor.numel() / tensor.shape[dim] if tensor.dim() else 1.0
                size.index_add_(0, channels, torch.full((len(positions),), entries).double())
                if param_slice.role != "in":
                    device = tensor.device
                    channel_of = torch.as_tensor(param_slice.channel_of).to(device)
                    owner = (
                        self.model.get_submodule(param_slice.module)
                        if param_slice.module
                        else self.model
                    )
                    hard = has_norm and param_slice.role == "out"
                    gated.append((owner, param_slice.param, dim, channel_of, hard))
            if not gated:
                raise ValueError(
                    f"group {group.id} has no out/norm/free parameter to gate; leave it out"
                )
            gate = HardConcreteGate(group.size, init_keep_prob).to(device)
            for owner, name, dim, channel_of, hard in gated:
                parametrize.register_parametrization(
                    owner, name, ChannelGating(gate, dim, channel_of, hard=hard)
                )
                self._gated.append((owner, name))
            self.gates[group.id] = gate
            self._sizes[group.id] = size.to(device)
