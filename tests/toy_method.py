"""A compression method written the way docs/ARCHITECTURE.md says: this one file, nothing else touched.

Ternary weights (Li & Liu, "Ternary weight networks", 2016): each weight becomes -a, 0 or +a with one scale a
per layer. The state keeps a; after every optimizer step the weights are ternarized again; the checkpoint stores
2-bit codes and a.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from compression.methods import Job, register_method
from compression.state import LayerState, attach, register_state
from compression.tensors import owner, pack_bits, prunable_weights, unpack_bits
from helper import Check


def ternarize(weight: torch.Tensor, scale: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(weight.abs() > threshold * scale, torch.sign(weight) * scale, torch.zeros_like(weight))


@register_state
class Ternary(LayerState):
    kind = "toy-ternary"
    order = 3

    def __init__(self, scale: torch.Tensor, threshold: float):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.threshold = float(threshold)

    def after_step(self, layer: nn.Module) -> None:
        layer.weight.copy_(ternarize(layer.weight, self.scale, self.threshold))

    def encode(self, layer: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
        codes = (torch.sign(weight) + 1).to(torch.int64)  # 0, 1, 2
        return {
            "kind": self.kind,
            "shape": list(weight.shape),
            "scale": self.scale.cpu(),
            "threshold": self.threshold,
            "codes": pack_bits(codes, 2),
            "count": weight.numel(),
        }

    @classmethod
    def decode(cls, entry: dict[str, Any]) -> tuple[torch.Tensor, list[LayerState]]:
        codes = unpack_bits(entry["codes"], 2, entry["count"]).view(entry["shape"])
        weight = (codes - 1).to(entry["scale"].dtype) * entry["scale"]
        assert weight.numel() == int(np.prod(entry["shape"]))
        return weight, [cls(entry["scale"], entry["threshold"])]


@register_method(
    "toy-ternary", settings={"threshold": 0.7}, checks={"threshold": Check(kind=float, lo=0, hi=2)}, bits=lambda spec: 2
)
def ternary_method(job: Job) -> None:
    """Every conv/linear weight of the part: -a, 0 or +a, a = the mean |w| of the layer."""
    for name, weight in prunable_weights(job.net).items():
        layer = owner(job.net, name)
        state = attach(layer, Ternary(weight.detach().abs().mean(), job.spec.get("threshold", 0.7)))
        with torch.no_grad():
            state.after_step(layer)
