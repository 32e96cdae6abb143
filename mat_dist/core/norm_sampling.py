"""Which threat model attacks each input slot in a training batch.

Every PGD method attacks slot m of batch b under one of the config's threat
models (``attack.norms``); this module says which one, by index, so that the
attack loop never branches on a norm:

* ``FIXED``: slot m under threat model m (the paper's MAT, AT, ensemble AT).
* ``ROTATE``: slot m under threat model (m + b) mod N (``attack.rotate_norms``).
* ``UNIFORM``: each slot draws a threat model uniformly (SAT).
* ``E_AT``: each slot draws threat model n with probability proportional to
  1 - a_n, a_n being the running robust accuracy of the training batches
  attacked in norm n since training began (Croce and Hein, ICML 2022: the
  norm the model is weakest in is drawn most). While some norm has no figure
  yet, every norm is equally likely (E-AT's code does the same); so is every
  norm when all are at 100%.

The draws use a generator of their own, seeded by the run's seed alone, and the
accuracies are counted over the global batch (the caller sums them across DDP
ranks), so every rank draws the same norms. The state (counts and generator)
travels in checkpoints: a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import enum
from typing import Any

import torch


class NormRule(str, enum.Enum):
    FIXED = "fixed"
    ROTATE = "rotate"
    UNIFORM = "uniform"
    E_AT = "e_at"


class NormSampler:
    """Per batch, the index into the threat-model list of every input slot."""

    def __init__(self, rule: NormRule, *, num_norms: int, num_slots: int, seed: int) -> None:
        if rule is NormRule.FIXED and num_norms != num_slots:
            raise ValueError(f"a fixed assignment needs one threat model per slot ({num_norms} for {num_slots})")
        self.rule, self.num_norms, self.num_slots = rule, num_norms, num_slots
        self.generator = torch.Generator().manual_seed(seed * 104729 + 17)
        self.correct = torch.zeros(num_norms, dtype=torch.float64)  # robust training examples, per norm
        self.seen = torch.zeros(num_norms, dtype=torch.float64)     # attacked training examples, per norm

    @property
    def adaptive(self) -> bool:
        """Whether draws depend on recorded accuracies (the caller then records every batch)."""
        return self.rule is NormRule.E_AT

    def accuracies(self) -> torch.Tensor:
        """Running robust accuracy per norm (NaN where no batch was attacked in that norm)."""
        return torch.where(self.seen > 0, self.correct / self.seen.clamp_min(1), torch.full_like(self.seen, float("nan")))

    def probabilities(self) -> torch.Tensor:
        """The probability of drawing each threat model for one slot (N,), float64."""
        equal = torch.full((self.num_norms,), 1.0 / self.num_norms, dtype=torch.float64)
        if self.rule is not NormRule.E_AT or bool((self.seen == 0).any()):
            return equal
        weights = 1.0 - self.accuracies()
        total = float(weights.sum())
        return equal if total <= 0 else weights / total

    def assign(self, batch: int) -> list[int]:
        """The threat-model index of every slot in global batch number ``batch`` (0-based, over all epochs)."""
        if self.rule is NormRule.FIXED:
            return list(range(self.num_slots))
        if self.rule is NormRule.ROTATE:
            return [(m + batch) % self.num_norms for m in range(self.num_slots)]
        draws = torch.multinomial(self.probabilities(), self.num_slots, replacement=True, generator=self.generator)
        return [int(i) for i in draws]

    def add(self, correct: torch.Tensor, seen: torch.Tensor) -> None:
        """Count a batch given per threat model: ``correct[n]`` of ``seen[n]`` attacked examples kept correct."""
        self.correct += correct.to(torch.float64)
        self.seen += seen.to(torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct.clone(), "seen": self.seen.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correct = state["correct"].to(torch.float64).clone()
        self.seen = state["seen"].to(torch.float64).clone()
        self.generator.set_state(state["generator"])
