"""K-means weight sharing (Deep Compression): each tensor keeps 2^bits shared values and a code per weight.

Pruned zeros stay exact zeros outside the codebook. Codes and codebooks live on the modules as
non-persistent buffers (``weight_codes``, ``weight_codebook``); after every optimizer step a global hook moves
each centroid to the mean of its weights (for SGD this is the lab's gradient summed per centroid) and writes
the shared values back, so a finetuned model still has exactly 2^bits values per tensor.
"""
from __future__ import annotations

import logging
from typing import Mapping, Union

import torch
from torch import nn

from helper import after_every_step
from pruning.fine_grained import prunable_weights, resolve_sparsities

logger = logging.getLogger(__name__)
BitsSpec = Union[int, Mapping[str, int]]


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook of k sorted centroids, code per value) by Lloyd's algorithm on a line.

    Initialised at quantiles, so every centroid starts with values (a linear initialisation leaves centroids
    stranded in the empty gap that magnitude pruning cuts around zero).
    """
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return torch.zeros(k), torch.zeros(0, dtype=torch.long)
    distinct = torch.unique(values)
    if distinct.numel() <= k:  # already shared values (e.g. re-quantizing): the codebook is exact
        centroids = torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
        return centroids, torch.searchsorted(distinct, values)
    sample = values[:: values.numel() // (1 << 20) + 1]  # quantile() has a size limit; a strided sample suffices
    centroids = torch.unique(torch.quantile(sample, (torch.arange(k, device=values.device) + 0.5) / k))
    if centroids.numel() < k:  # ties in the quantiles: fill in evenly spread values
        fill = torch.linspace(0, 1, k - centroids.numel() + 2, device=values.device)[1:-1]
        centroids = torch.sort(torch.cat([centroids, values.min() + fill * (values.max() - values.min())])).values
    for _ in range(iters):
        codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k, device=values.device).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=k).float()
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new, _ = torch.sort(new)
        if torch.allclose(new, centroids):
            break
        centroids = new
    codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, codes


def _write_back(module: nn.Module) -> None:
    w = module.weight
    values = module.weight_codebook[module.weight_codes.long()]
    nonzero = getattr(module, "weight_nonzero", None)
    with torch.no_grad():
        if nonzero is None:
            w.copy_(values.view_as(w))
        else:
            flat = torch.zeros(w.numel(), device=w.device, dtype=w.dtype)
            flat[nonzero.flatten()] = values
            w.copy_(flat.view_as(w))


def _update_codebook(module: nn.Module) -> None:
    """Move each centroid to the mean of its (just updated) weights, then share the values again."""
    if not hasattr(module, "weight_codes"):
        return
    w = module.weight.detach().flatten()
    nonzero = getattr(module, "weight_nonzero", None)
    values = w if nonzero is None else w[nonzero.flatten()]
    k = module.weight_codebook.numel()
    codes = module.weight_codes.long()
    sums = torch.zeros(k, device=w.device).index_add_(0, codes, values.float())
    counts = torch.bincount(codes, minlength=k).float()
    module.weight_codebook.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), module.weight_codebook))
    _write_back(module)


def kmeans_values(weight: torch.Tensor, bits: float) -> torch.Tensor:
    """The tensor with its non-zero values replaced by their k-means centroid at ``bits`` (for sensitivity scans)."""
    w = weight.detach().flatten()
    nonzero = w != 0
    codebook, codes = kmeans_1d(w[nonzero], 2 ** int(bits))
    out = torch.zeros_like(w)
    out[nonzero] = codebook.to(w)[codes]
    return out.view_as(weight)


def quantize_kmeans(model: nn.Module, bits: BitsSpec, iters: int = 30) -> dict[str, int]:
    """Replace weights by k-means shared values in place (zeros kept exact); returns the bits per tensor."""
    spec = resolve_sparsities(model, bits)  # same name/pattern resolution, values are bit widths
    weights = prunable_weights(model)
    modules = dict(model.named_modules())
    applied = {}
    for name, b in spec.items():
        b = int(b)
        if not 1 <= b <= 8:
            raise ValueError(f"k-means bits must be 1..8, got {b} for {name}")
        module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        w = weights[name].detach().flatten()
        nonzero = w != 0
        sparse = not bool(nonzero.all())
        codebook, codes = kmeans_1d(w[nonzero] if sparse else w, 2 ** b, iters)
        for buf, value in (("weight_codebook", codebook.to(w)), ("weight_codes", codes.to(torch.uint8)),
                           ("weight_nonzero", nonzero.view_as(weights[name]) if sparse else None)):
            module._buffers.pop(buf, None)
            if value is not None:
                module.register_buffer(buf, value, persistent=False)
        _write_back(module)
        after_every_step("kmeans", _update_codebook, module)
        applied[name] = b
    logger.info("k-means quantized %d tensors of %s", len(applied), type(model).__name__)
    return applied


def track(model: nn.Module) -> int:
    """Keep the codebooks of a loaded k-means model (buffers restored by load_checkpoint) updated in training."""
    found = [m for m in model.modules() if hasattr(m, "weight_codes")]
    for m in found:
        after_every_step("kmeans", _update_codebook, m)
    return len(found)
