"""Linear (uniform) quantization: symmetric per-output-channel weights, calibrated per-tensor activations.

Weights are rounded in place to their per-channel grid (so the stored codes and scales reproduce them
bit-exactly); activations entering each layer are fake-quantized by a forward pre-hook with a scale and zero
point calibrated on sample data (min/max or percentile). Attention products and Sinkhorn stay in float.

Training: ``enable_qat`` turns the layers into quantization-aware training — the float weight becomes a shadow
that the optimizer updates, and the forward pass sees it fake-quantized (straight-through estimator, via a
parametrization). Without it, weights are put back on their grid after every optimizer step. Either way what
is evaluated is what the checkpoint stores.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from helper import after_every_step
from models.quantized import install_activation_quant, round_ste
from pruning.fine_grained import prunable_weights, resolve_sparsities

logger = logging.getLogger(__name__)
BitsSpec = Union[int, Mapping[str, int]]


class WeightFakeQuant(nn.Module):
    """Parametrization: a float shadow weight seen through its per-channel int grid (STE gradient)."""

    def __init__(self, scale: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        s = self.scale.view((-1,) + (1,) * (weight.ndim - 1))
        return round_ste(weight / s).clamp(-qmax, qmax) * s


def enable_qat(model: nn.Module) -> int:
    """Quantization-aware training for every linear-quantized layer of ``model``; returns how many."""
    count = 0
    for layer in model.modules():
        if hasattr(layer, "weight_scale") and not parametrize.is_parametrized(layer, "weight"):
            parametrize.register_parametrization(layer, "weight", WeightFakeQuant(layer.weight_scale,
                                                                                  layer.weight_bits))
            count += 1
    return count


def snap(layer: nn.Module) -> None:
    """Round a layer's weight to its per-channel grid (what the checkpoint stores); QAT layers need not."""
    if parametrize.is_parametrized(layer, "weight"):
        return
    w, s = layer.weight, layer.weight_scale
    qmax = 2 ** (layer.weight_bits - 1) - 1
    shape = (-1,) + (1,) * (w.ndim - 1)
    with torch.no_grad():
        w.copy_(torch.round(w / s.view(shape)).clamp(-qmax, qmax) * s.view(shape))


def track(model: nn.Module) -> int:
    """Keep every linear-quantized layer of ``model`` on its grid after each optimizer step."""
    found = [m for m in model.modules() if hasattr(m, "weight_scale")]
    for m in found:
        after_every_step("linear", snap, m)
    return len(found)


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scales: max |w| of each channel maps to 2^(bits-1) - 1."""
    qmax = 2 ** (bits - 1) - 1
    return (weight.detach().reshape(weight.shape[0], -1).abs().amax(1) / qmax).clamp(min=1e-12)


class ActivationObserver:
    """Collects the range of a layer's input during calibration (min/max, or a percentile of |x|)."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99):
        self.method, self.percentile = method, percentile
        self.lo, self.hi = float("inf"), float("-inf")

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().float().flatten()
        if self.method == "percentile" and x.numel() > 1:
            sample = x[:: x.numel() // (1 << 20) + 1]
            lo, hi = torch.quantile(sample, 1 - self.percentile / 100), torch.quantile(sample, self.percentile / 100)
        else:
            lo, hi = x.min(), x.max()
        self.lo, self.hi = min(self.lo, lo.item()), max(self.hi, hi.item())


def quantize_linear(model: nn.Module, calibrate: Callable[[], None], weight_bits: BitsSpec = 8,
                    activation_bits: int = 8, method: str = "minmax") -> dict[str, int]:
    """Quantize the weights of ``model``'s conv/linear layers in place and fake-quantize their inputs.

    ``calibrate`` runs the model on sample data once (e.g. an evaluation of a few pairs) to set the
    activation ranges (asymmetric, per tensor). Returns the weight bits per tensor.
    """
    spec = resolve_sparsities(model, weight_bits)
    modules = dict(model.named_modules())
    layers = {name: modules[name.rsplit(".", 1)[0] if "." in name else ""] for name in spec}
    observers = {name: ActivationObserver(method) for name in layers}
    handles = [layer.register_forward_pre_hook(observers[name]) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for h in handles:
            h.remove()
    weights = prunable_weights(model)
    for name, layer in layers.items():
        bits = int(spec[name])
        obs = observers[name]
        w = weights[name]
        s = weight_scales(w, bits)
        layer._buffers.pop("weight_scale", None)
        layer.register_buffer("weight_scale", s.to(w.device), persistent=False)
        layer.weight_bits = bits
        snap(layer)
        if obs.hi < obs.lo:  # never ran during calibration (e.g. an early-exit head): weights only
            logger.debug("%s did not run during calibration; its inputs stay float", name)
            continue
        lo, hi = min(obs.lo, 0.0), max(obs.hi, 0.0)
        scale = torch.tensor(max(hi - lo, 1e-8) / (2 ** activation_bits - 1))
        install_activation_quant(layer, scale, torch.round(-lo / scale), activation_bits)
    track(model)
    logger.info("linear-quantized %d layers of %s", len(layers), type(model).__name__)
    return {n: int(b) for n, b in spec.items()}
