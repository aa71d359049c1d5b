"""Fine-grained (unstructured) magnitude pruning with exact sparsity and masks that survive training.

A mask is the pruned layer's ``Mask`` state (compression/state.py): it moves with ``.to()``, stays out of the
state_dict (checkpoints keep their official keys), masks the weight's gradient, and the training loop re-applies
it after every optimizer step (``enforce``), so pruned weights cannot grow back.
"""

from __future__ import annotations

import functools
import logging
from typing import Mapping

import torch
from torch import nn

from compression.methods import Job, pattern_check, register_method
from compression.state import LayerState, attach, compressed_layers, detach, get, register_state, trained_weight
from compression.tensors import Levels, owner, prunable_weights, resolve_levels
from helper import Check

logger = logging.getLogger(__name__)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the largest-magnitude weights; exactly round(sparsity × numel) entries are zeroed."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n_zero = int(round(sparsity * weight.numel()))
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_zero:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)  # ties broken by position
        mask[order[:n_zero]] = False
    return mask.view_as(weight)


def global_sparsities(model: nn.Module, sparsity: float, names: list[str] | None = None) -> dict[str, float]:
    """Per-parameter sparsities that remove the globally smallest weights (one magnitude ranking over all)."""
    weights = prunable_weights(model)
    names = names or list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten() for n in names])
    n_zero = int(round(sparsity * flat.numel()))
    if n_zero == 0:
        return {n: 0.0 for n in names}
    threshold_index = torch.argsort(flat, stable=True)[:n_zero]
    zeroed = torch.zeros(flat.numel(), dtype=torch.bool)
    zeroed[threshold_index] = True
    out, start = {}, 0
    for n in names:
        k = weights[n].numel()
        out[n] = zeroed[start : start + k].sum().item() / k
        start += k
    return out


@register_state
class Mask(LayerState):
    """Fine-grained pruning's mask of a layer's weight: masked gradients, and zeros re-applied after each step."""

    kind = "mask"

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)

    def after_step(self, layer: nn.Module) -> None:
        trained_weight(layer).mul_(self.mask)


def _masked_gradient(layer: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    state = get(layer, "mask")
    return grad if state is None else grad * state.mask


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights and keep them zero: their gradients are masked (so optimizer moments stay zero)
    and ``compression.state.enforce`` after each optimizer step zeroes them again."""
    for pname, mask in masks.items():
        module = owner(model, pname)
        mask = mask.to(module.weight.device)
        state = get(module, "mask")
        if state is not None:
            state.mask = state.mask & mask
        else:
            attach(module, Mask(mask))
            module.weight.register_hook(functools.partial(_masked_gradient, module))
        with torch.no_grad():
            module.weight.mul_(get(module, "mask").mask)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of ``model``'s pruned weights, by parameter name."""
    return {
        f"{name}.weight" if name else "weight": found["mask"].mask
        for name, _, found in compressed_layers(model)
        if "mask" in found
    }


def prune_fine_grained(model: nn.Module, spec: Levels, global_ranking: bool = False) -> dict[str, float]:
    """Prune ``model`` in place by weight magnitude; returns the sparsity applied to each parameter.

    ``spec`` is a uniform sparsity or a dict of names/patterns -> sparsity; with ``global_ranking`` a single
    float is spread over the layers by one global magnitude ranking instead.
    """
    if global_ranking:
        if not isinstance(spec, (int, float)):
            raise ValueError("global ranking takes one overall sparsity")
        sparsities = global_sparsities(model, float(spec))
    else:
        sparsities = resolve_levels(model, spec)
    weights = prunable_weights(model)
    apply_masks(model, {n: magnitude_mask(weights[n], s) for n, s in sparsities.items() if s > 0})
    logger.info("pruned %d tensors of %s", sum(s > 0 for s in sparsities.values()), type(model).__name__)
    return sparsities


def remove_masks(model: nn.Module) -> None:
    """Forget the masks (the zeros stay); training may then regrow the weights."""
    for _, layer, _ in list(compressed_layers(model)):
        detach(layer, "mask")


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, plus 'total'."""
    weights = prunable_weights(model)
    report = {n: (w == 0).sum().item() / w.numel() for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    report["total"] = sum((w == 0).sum().item() for w in weights.values()) / max(total, 1)
    return report


SPARSITY = Check(kind=(float, dict), words=("auto",), lo=0, hi=0.99, values=Check(kind=float, lo=0, hi=0.99))


@register_method(
    "fine-grained",
    settings={"sparsity": 0.5, "schedule": "one-shot", "ranking": "layer"},
    checks={
        "sparsity": SPARSITY,
        "schedule": Check(choices=("one-shot", "gradual")),
        "ranking": Check(choices=("layer", "global")),
    },
    needs=("sparsity",),
    check=pattern_check("sparsity"),
)
def fine_grained_method(job: Job) -> None:
    """Magnitude pruning of the part at the variant's sparsity (one value, per-pattern values, or the scan's; with
    ``ranking: global`` one value spread over the tensors by one magnitude ranking of them all); with ``schedule:
    gradual`` the pruning happens during the variant's finetuning instead (pruning/gradual.py)."""
    if job.spec.get("schedule") != "gradual":
        spec = job.levels if job.spec["sparsity"] == "auto" else job.spec["sparsity"]
        prune_fine_grained(job.net, spec, global_ranking=job.spec.get("ranking") == "global")
