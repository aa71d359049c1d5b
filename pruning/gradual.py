"""Gradual magnitude pruning during finetuning: the cubic sparsity schedule of Zhu & Gupta ("To prune, or not to
prune", 2017).

Each weight's sparsity rises from 0 at ``start`` to its target at ``end`` (fractions of the run's steps) as
``target · (1 − (1 − p)³)`` with ``p`` the progress through the ramp: fast at first, while the network has many
redundant weights, slow near the target, where each removed weight costs most; the steps after ``end`` recover
at the final sparsity. Every ``every`` steps the smallest-magnitude weights of each tensor are masked until its
scheduled sparsity is reached, on top of the masks it already has (a pruned weight never comes back), with the
masks of fine-grained pruning (``Mask``: exact zeros, masked gradients, re-applied after each optimizer step).
The schedule is a function of the step alone, so a resumed run prunes exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compression.state import compressed_layers, get
from compression.tensors import Levels, owner, prunable_weights, resolve_levels
from helper import Check, InputError

from .fine_grained import SPARSITY, apply_masks, magnitude_mask

SETTINGS: dict[str, Any] = {
    "sparsity": None,  # null: no gradual pruning; one sparsity, or names/patterns -> sparsity (the final targets)
    "start": 0.0,  # fraction of the run's steps where the ramp starts ...
    "end": 0.6,  # ... and where it reaches the targets (the rest of the run recovers at them)
    "every": 10,  # steps between two pruning steps
}
CHECKS: dict[str, Check] = {
    "prune.sparsity": Check(kind=(float, dict), nullable=True, lo=0, hi=0.99, values=SPARSITY.values),
    "prune.start": Check(lo=0, hi=1),
    "prune.end": Check(lo=0, hi=1),
    "prune.every": Check(lo=1),
}


def cubic_sparsity(step: int, total: int, target: float, start: float, end: float) -> float:
    """Scheduled sparsity at ``step`` of ``total`` (0 before the ramp, ``target`` from ``end`` on)."""
    first, last = round(start * total), round(end * total)
    if step >= last:
        return target
    if step <= first:
        return 0.0
    progress = (step - first) / (last - first)
    return target * (1 - (1 - progress) ** 3)


class GradualPruning:
    """Prunes ``net`` along the cubic schedule to the targets ``sparsity`` over a run of ``total`` steps."""

    def __init__(self, net: nn.Module, sparsity: Levels, total: int, start: float, end: float, every: int):
        if end < start:
            raise InputError(f"prune: end ({end}) is before start ({start})")
        try:
            self.targets = {n: s for n, s in resolve_levels(net, sparsity).items() if s > 0}
        except ValueError as e:
            raise InputError(f"prune.sparsity: {e}") from None
        quantized = [
            name
            for name, _, found in compressed_layers(net)
            if set(found) - {"mask"} and f"{name}.weight" in self.targets
        ]
        if quantized:
            raise InputError(
                f"prune: {quantized[0]} is already quantized; prune gradually first, then quantize the result"
            )
        self.net, self.total, self.start, self.end, self.every = net, total, start, end, every
        self.last = round(end * total)  # the step that reaches the targets

    def due(self, step: int) -> bool:
        """Whether ``step`` (the number of optimizer steps done) is a pruning step."""
        return step == self.last or (round(self.start * self.total) < step < self.last and step % self.every == 0)

    def __call__(self, step: int) -> None:
        """Prune to the schedule of ``step`` if it is a pruning step."""
        if not self.due(step):
            return
        weights, new = prunable_weights(self.net), {}
        for name, target in self.targets.items():
            weight = weights[name]
            s = cubic_sparsity(step, self.total, target, self.start, self.end)
            state = get(owner(self.net, name), "mask")
            if s > 0 and (state is None or (~state.mask).sum().item() < round(s * weight.numel())):
                new[name] = magnitude_mask(weight, s)  # its masked weights are zeros: the first to go
        if new:
            apply_masks(self.net, new)  # the new masks and the old: a pruned weight stays pruned


def gradual_pruning(net: nn.Module, settings: dict[str, Any], total: int) -> GradualPruning | None:
    """The gradual pruning a finetuning config's ``prune`` section asks for (None: it asks for none)."""
    if settings.get("sparsity") is None:
        return None
    return GradualPruning(net, settings["sparsity"], total, settings["start"], settings["end"], settings["every"])
