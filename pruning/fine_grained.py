"""Fine-grained (unstructured) magnitude pruning with exact sparsity and masks that survive training.

Masks live on the pruned modules as non-persistent buffers (``weight_mask``): they move with ``.to()``,
stay out of the state_dict (so checkpoints keep their official keys) and are re-applied after every
optimizer step of any optimizer by a global post-step hook, so pruned weights cannot grow back.
"""
from __future__ import annotations

import fnmatch
import logging
from typing import Mapping, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from helper import after_every_step, stop_after_every_step

logger = logging.getLogger(__name__)

SparsitySpec = Union[float, Mapping[str, float]]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every convolution and linear layer (the tensors pruning acts on), by parameter name."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(m.weight, nn.Parameter)}


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


def resolve_sparsities(model: nn.Module, spec: SparsitySpec) -> dict[str, float]:
    """Per-parameter sparsity from a uniform value or a dict of names / glob patterns ('*attn*', 'gnn.layers.0.*').

    Later patterns win over earlier ones; parameters matching no pattern are left dense.
    """
    names = list(prunable_weights(model))
    if isinstance(spec, (int, float)):
        return {n: float(spec) for n in names}
    out: dict[str, float] = {}
    for pattern, value in spec.items():
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern) or n == pattern
                   or fnmatch.fnmatchcase(n, f"*{pattern}*")]
        if not matched:
            raise ValueError(f"sparsity pattern '{pattern}' matches no prunable weight of {type(model).__name__}")
        out.update({n: float(value) for n in matched})
    return out


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
        out[n] = zeroed[start:start + k].sum().item() / k
        start += k
    return out


def _reapply_mask(module: nn.Module) -> None:
    mask = getattr(module, "weight_mask", None)
    if mask is not None:
        weight = (module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight")
                  else module.weight)  # QAT: the float shadow
        weight.mul_(mask)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights and keep them zero: gradients are masked, and every optimizer step re-applies."""
    modules = dict(model.named_modules())
    for pname, mask in masks.items():
        module = modules[pname.rsplit(".", 1)[0] if "." in pname else ""]
        mask = mask.to(module.weight.device)
        if "weight_mask" in module._buffers:
            module.weight_mask = module.weight_mask & mask
        else:
            module.register_buffer("weight_mask", mask, persistent=False)
            # Masked gradients keep optimizer moments at zero for pruned weights.
            module.weight.register_hook(lambda g, m=module: g * m.weight_mask if hasattr(m, "weight_mask") else g)
        with torch.no_grad():
            module.weight.mul_(module.weight_mask)
        after_every_step("prune", _reapply_mask, module)


def prune_fine_grained(model: nn.Module, spec: SparsitySpec, global_ranking: bool = False) -> dict[str, float]:
    """Prune ``model`` in place by weight magnitude; returns the sparsity applied to each parameter.

    ``spec`` is a uniform sparsity or a dict of names/patterns -> sparsity; with ``global_ranking`` a single
    float is spread over the layers by one global magnitude ranking instead.
    """
    if global_ranking:
        if not isinstance(spec, (int, float)):
            raise ValueError("global ranking takes one overall sparsity")
        sparsities = global_sparsities(model, float(spec))
    else:
        sparsities = resolve_sparsities(model, spec)
    weights = prunable_weights(model)
    apply_masks(model, {n: magnitude_mask(weights[n], s) for n, s in sparsities.items() if s > 0})
    logger.info("pruned %d tensors of %s", sum(s > 0 for s in sparsities.values()), type(model).__name__)
    return sparsities


def remove_masks(model: nn.Module) -> None:
    """Forget the masks (the zeros stay); training may then regrow the weights."""
    for module in model.modules():
        if "weight_mask" in module._buffers:
            del module._buffers["weight_mask"]
            stop_after_every_step("prune", module)


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, plus 'total'."""
    weights = prunable_weights(model)
    report = {n: (w == 0).sum().item() / w.numel() for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    report["total"] = sum((w == 0).sum().item() for w in weights.values()) / max(total, 1)
    return report
