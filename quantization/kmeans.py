"""K-means weight sharing (Deep Compression): each tensor keeps 2^bits shared values and a code per weight.

Pruned zeros stay exact zeros outside the codebook. The codebook, the codes and the mask of the non-zeros are
the layer's ``Codebook`` state (compression/state.py); after every optimizer step (``enforce``, called by the
training loop) each centroid moves to the mean of its weights (for SGD this is the lab's gradient summed per
centroid) and the shared values are written back, so a finetuned model still has exactly 2^bits values per
tensor. The checkpoint stores the codes packed at their bit width.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import nn

from compression.methods import Job, pattern_check, register_method
from compression.state import LayerState, attach, compressed_layers, register_state
from compression.tensors import owner, pack_bits, prunable_weights, resolve_levels, unpack_bits
from helper import Check

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
    ordered = torch.sort(values).values  # Lloyd's steps on sorted values: each cluster is a run, its sum a difference
    distinct = torch.unique_consecutive(ordered)
    if distinct.numel() <= k:  # already shared values (e.g. re-quantizing): the codebook is exact
        centroids = torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
        return centroids, torch.searchsorted(distinct, values)
    at = (torch.arange(k, dtype=torch.float64, device=values.device) + 0.5) / k * (ordered.numel() - 1)  # quantiles
    low = at.floor().long()
    high = (low + 1).clamp(max=ordered.numel() - 1)
    centroids = torch.unique_consecutive(ordered[low] + (at - low).float() * (ordered[high] - ordered[low]))
    if centroids.numel() < k:  # ties in the quantiles: fill in evenly spread values
        fill = torch.linspace(0, 1, k - centroids.numel() + 2, device=values.device)[1:-1]
        centroids = torch.sort(torch.cat([centroids, values.min() + fill * (values.max() - values.min())])).values
    sums_before = torch.cat([ordered.new_zeros(1, dtype=torch.float64), torch.cumsum(ordered.double(), 0)])
    for _ in range(iters):
        ends = torch.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, right=True)  # as bucketize splits
        bounds = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), ordered.numel())])
        counts = (bounds[1:] - bounds[:-1]).double()
        sums = sums_before[bounds[1:]] - sums_before[bounds[:-1]]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids.double()).float()
        new, _ = torch.sort(new)
        if torch.allclose(new, centroids):
            break
        centroids = new
    codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, codes


@register_state
class Codebook(LayerState):
    """A layer's k-means weight sharing: 2^bits shared values, a code per (non-zero) weight, and the mask of the
    non-zeros when the weight is pruned (zeros stay outside the codebook)."""

    kind = "kmeans"
    order = 2  # stores the weight, mask included

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("codebook", codebook, persistent=False)
        self.register_buffer("codes", codes.to(torch.uint8), persistent=False)
        self.register_buffer("nonzero", nonzero, persistent=False)

    @property
    def bits(self) -> int:
        return max(1, int(self.codebook.numel() - 1).bit_length())

    def values(self, like: torch.Tensor) -> torch.Tensor:
        """The weight these codes describe (shaped and typed as ``like``)."""
        values = self.codebook[self.codes.long()].to(like.dtype)
        if self.nonzero is None:
            return values.view_as(like)
        flat = torch.zeros(like.numel(), device=like.device, dtype=like.dtype)
        flat[self.nonzero.flatten()] = values
        return flat.view_as(like)

    def after_step(self, layer: nn.Module) -> None:
        """Move each centroid to the mean of its (just updated) weights, then share the values again."""
        w = layer.weight.detach().flatten()
        values = w if self.nonzero is None else w[self.nonzero.flatten()]
        k = self.codebook.numel()
        codes = self.codes.long()
        sums = torch.zeros(k, device=w.device).index_add_(0, codes, values.float())
        counts = torch.bincount(codes, minlength=k).float()
        self.codebook.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), self.codebook))
        layer.weight.copy_(self.values(layer.weight))

    def encode(self, layer: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
        entry = {
            "kind": self.kind,
            "shape": list(weight.shape),
            "dtype": str(weight.dtype).split(".")[-1],
            "bits": self.bits,
            "codebook": self.codebook.detach().cpu().to(weight.dtype),
            "codes": pack_bits(self.codes, self.bits),
            "count": int(self.codes.numel()),
        }
        if self.nonzero is not None:
            entry["mask"] = pack_bits(self.nonzero, 1)
        return entry

    @classmethod
    def decode(cls, entry: dict[str, Any]) -> tuple[torch.Tensor, list[LayerState]]:
        shape, numel = entry["shape"], int(np.prod(entry["shape"]))
        codes = unpack_bits(entry["codes"], entry["bits"], entry["count"])
        nonzero = unpack_bits(entry["mask"], 1, numel).bool().view(shape) if "mask" in entry else None
        state = cls(entry["codebook"], codes, nonzero)
        return state.values(torch.empty(shape, dtype=entry["codebook"].dtype)), [state]


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
    spec = resolve_levels(model, bits, "bits")
    weights = prunable_weights(model)
    applied = {}
    for name, b in spec.items():
        b = int(b)
        if not 1 <= b <= 8:
            raise ValueError(f"k-means bits must be 1..8, got {b} for {name}")
        layer = owner(model, name)
        w = weights[name].detach().flatten()
        nonzero = w != 0
        sparse = not bool(nonzero.all())
        codebook, codes = kmeans_1d(w[nonzero] if sparse else w, 2**b, iters)
        state = attach(layer, Codebook(codebook.to(w), codes, nonzero.view_as(weights[name]) if sparse else None))
        with torch.no_grad():
            layer.weight.copy_(state.values(layer.weight))
        applied[name] = b
    logger.info("k-means quantized %d tensors of %s", len(applied), type(model).__name__)
    return applied


def other_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Float parameters of two or more dimensions that are no layer's weight (ALIKED's descriptor aggregation)."""
    layers = set(prunable_weights(model))
    return {n: p for n, p in model.named_parameters() if p.ndim >= 2 and p.is_floating_point() and n not in layers}


@torch.no_grad()
def share_other_weights(model: nn.Module, bits: int) -> dict[str, int]:
    """k-means value sharing of ``other_weights`` in place, without a layer state (there is no layer to hold one):
    their values stay shared until they are trained, and checkpoints store them as values plus codes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"k-means bits must be 1..8, got {bits}")
    found = other_weights(model)
    for p in found.values():
        p.copy_(kmeans_values(p, bits))
    return {n: bits for n in found}


def quantized_layers(model: nn.Module) -> int:
    """How many layers of ``model`` have k-means codes (e.g. restored by loading a checkpoint)."""
    return sum("kmeans" in found for _, _, found in compressed_layers(model))


BITS = Check(kind=(int, dict), words=("auto",), lo=1, hi=8, values=Check(kind=int, lo=1, hi=8))


@register_method(
    "kmeans",
    settings={"bits": 8, "other_bits": None},
    checks={"bits": BITS, "other_bits": Check(kind=int, nullable=True, lo=1, hi=8)},
    needs=("bits",),
    bits=lambda spec: "auto" if isinstance(spec["bits"], dict) else spec["bits"],  # per pattern: the method counts
    check=pattern_check("bits"),
)
def kmeans_method(job: Job) -> None:
    """k-means weight sharing of the part: one bit width, per-pattern widths, or mixed widths a scan chose; with
    ``other_bits``, the part's other weight tensors too (``share_other_weights``)."""
    if job.spec.get("other_bits") is not None:
        share_other_weights(job.net, job.spec["other_bits"])
    bits = job.spec["bits"]
    if not isinstance(bits, dict) and bits != "auto":
        quantize_kmeans(job.net, bits)
        return
    applied = quantize_kmeans(job.net, bits if isinstance(bits, dict) else {"*": job.base_bits, **job.levels})
    weights = prunable_weights(job.net)
    job.bits = sum(b * weights[n].numel() for n, b in applied.items()) / sum(weights[n].numel() for n in applied)
