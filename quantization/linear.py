"""Linear (uniform) quantization: symmetric per-output-channel weights, calibrated per-tensor activations.

Weights are rounded in place to their per-channel grid (so the stored codes and scales reproduce them
bit-exactly); activations entering each layer are fake-quantized with a scale and zero point calibrated on
sample data (min/max or percentile). Attention products and Sinkhorn stay in float. The grid is the layer's
``Grid`` state and the activation quantizer its ``ActivationQuant`` state (compression/state.py), so a loaded
checkpoint runs exactly as it was evaluated.

Training: with the finetuning setting ``qat`` (the default) the layers train quantization-aware — the float
weight becomes a shadow that the optimizer updates, and the forward pass sees it fake-quantized
(straight-through estimator, via a parametrization). Without it, weights are put back on their grid after every
optimizer step. Either way what is evaluated is what the checkpoint stores.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.methods import Job, register_method
from compression.state import LayerState, attach, compressed_layers, detach, get, register_state
from compression.tensors import int_grid, owner, pack_bits, prunable_weights, resolve_levels, unpack_bits
from helper import Check
from quantization.kmeans import other_weights

logger = logging.getLogger(__name__)
BitsSpec = Union[int, Mapping[str, int]]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() whose gradient is the identity (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _channels(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.view((-1,) + (1,) * (ndim - 1))


class WeightFakeQuant(nn.Module):
    """Parametrization: a float shadow weight seen through its per-channel int grid (STE gradient)."""

    def __init__(self, scale: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q = int_grid(self.bits)
        return round_ste(weight / _channels(self.scale, weight.ndim)).clamp(-q, q) * _channels(self.scale, weight.ndim)


@register_state
class Grid(LayerState):
    """A layer's weight on a symmetric per-output-channel grid of ``bits`` bits (codes -q..q times the scale)."""

    kind = "linear"
    order = 1

    def __init__(self, scale: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.bits = int(bits)

    def snap(self, layer: nn.Module) -> None:
        """Round the layer's weight to the grid (QAT layers need not: their forward pass does)."""
        if parametrize.is_parametrized(layer, "weight"):
            return
        w, q = layer.weight, int_grid(self.bits)
        with torch.no_grad():
            w.copy_(torch.round(w / _channels(self.scale, w.ndim)).clamp(-q, q) * _channels(self.scale, w.ndim))

    def after_step(self, layer: nn.Module) -> None:
        self.snap(layer)

    def start_training(self, layer: nn.Module, settings: dict[str, Any]) -> None:
        if settings.get("qat", True) and not parametrize.is_parametrized(layer, "weight"):
            parametrize.register_parametrization(layer, "weight", WeightFakeQuant(self.scale, self.bits))

    def encode(self, layer: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
        q, scale = int_grid(self.bits), self.scale.detach().cpu()
        codes = torch.round(weight / _channels(scale, weight.ndim)).to(torch.int64) + q
        entry = {
            "kind": self.kind,
            "shape": list(weight.shape),
            "bits": self.bits,
            "scale": scale,
            "codes": pack_bits(codes, self.bits),
            "count": weight.numel(),
        }
        act = get(layer, "activation")
        if act is not None:
            entry.update(act_scale=act.scale.cpu(), act_zero_point=act.zero_point.cpu(), act_bits=act.bits)
        return entry

    @classmethod
    def decode(cls, entry: dict[str, Any]) -> tuple[torch.Tensor, list[LayerState]]:
        shape, scale = entry["shape"], entry["scale"]
        codes = unpack_bits(entry["codes"], entry["bits"], entry["count"])
        weight = (codes - int_grid(entry["bits"])).view(shape).to(scale.dtype) * _channels(scale, len(shape))
        found: list[LayerState] = [cls(scale, entry["bits"])]
        if "act_scale" in entry:  # run exactly as evaluated: inputs fake-quantized
            found.append(ActivationQuant(entry["act_scale"], entry["act_zero_point"], entry["act_bits"]))
        return weight, found


def _quantize_input(layer: nn.Module, inputs: tuple) -> tuple | None:
    state = get(layer, "activation")
    return None if state is None else (state.quantize(inputs[0]), *inputs[1:])


@register_state
class ActivationQuant(LayerState):
    """Asymmetric per-tensor fake quantization of a layer's input (its scale and zero point were calibrated)."""

    kind = "activation"

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("zero_point", zero_point, persistent=False)
        self.bits = int(bits)

    def attached(self, layer: nn.Module) -> None:
        if _quantize_input not in layer._forward_pre_hooks.values():
            layer.register_forward_pre_hook(_quantize_input)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` (straight-through gradient)."""
        q = (round_ste(x / self.scale) + self.zero_point).clamp(0, 2**self.bits - 1)
        return (q - self.zero_point) * self.scale


def remove_activation_quant(model: nn.Module) -> int:
    """Stop fake-quantizing inputs in every layer of ``model`` (weights stay on their grid); returns the count."""
    return sum(detach(layer, "activation") is not None for _, layer, _ in list(compressed_layers(model)))


def enable_qat(model: nn.Module) -> int:
    """Quantization-aware training for every linear-quantized layer of ``model``; returns how many."""
    found = [(layer, s["linear"]) for _, layer, s in compressed_layers(model) if "linear" in s]
    for layer, grid in found:
        grid.start_training(layer, {"qat": True})
    return len(found)


def step_scales(weight: torch.Tensor, step: float, bits: int = 8) -> torch.Tensor:
    """Per-output-channel scales of a grid ``step`` times each channel's RMS apart, coarser only where the channel's
    max |w| would need more than ``bits``-bit codes."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return torch.maximum(step * w.pow(2).mean(1).sqrt(), w.abs().amax(1) / int_grid(bits)).clamp(min=1e-12)


@torch.no_grad()
def quantize_grid(model: nn.Module, step: float, bits: int = 8) -> float:
    """Every weight of ``model`` on a uniform grid ``step`` times its RMS apart (per output channel; per tensor for
    ``other_weights``, which have no layer to hold a state and are stored as shared values), weights only, in place;
    returns the empirical entropy of the codes, in bits per weight (what the checkpoint's coder comes close to).

    The entropy-constrained scalar quantizer: with an entropy coder behind it a uniform grid's codes cost their
    entropy, and at equal bytes it errs less than k-means codebooks of a fixed bit width, whose codes are used about
    evenly and leave the coder nothing to gain (Gish & Pierce 1968). ALIKED in the 20x file of
    benchmarks/deep_compression.py, measured: k-means at 6 bits (8 for its small tensors) 32.3 dB signal-to-error, at
    8 bits 38.4 dB but the file 19.0x; this grid at 0.0156 x RMS 40.9 dB, the file 20.0x. ``step`` moves the size
    continuously, where a bit width moves it by a bit per weight. Less weight error did not make that pipeline more
    accurate (its finished files lost more AUC@3px than with k-means; docs/results/deep-compression.md).
    """
    codes = []
    for name, w in prunable_weights(model).items():
        layer = owner(model, name)
        scale = step_scales(w, step, bits)
        attach(layer, Grid(scale, bits)).snap(layer)
        codes.append(torch.round(w / _channels(scale, w.ndim)).flatten())
    codes += grid_other_weights(model, step, bits)
    return sum(_entropy_bits(c) for c in codes) / max(1, sum(c.numel() for c in codes))


@torch.no_grad()
def grid_other_weights(model: nn.Module, step: float, bits: int = 8) -> list[torch.Tensor]:
    """``other_weights`` on a grid ``step`` times each tensor's RMS apart, in place, without a layer state (they
    stay on it until they are trained; checkpoints store them as shared values and codes); returns their codes."""
    q, codes = int_grid(bits), []
    for p in other_weights(model).values():
        scale = max(step * float(p.pow(2).mean().sqrt()), float(p.abs().max()) / q, 1e-12)
        codes.append(torch.round(p / scale).clamp(-q, q).flatten())
        p.copy_(codes[-1].view_as(p) * scale + 0.0)  # + 0.0: no -0.0 beside 0.0 (one value in the codebook)
    return codes


def _entropy_bits(codes: torch.Tensor) -> float:
    """The empirical order-0 entropy of integer codes, in bits for all of them."""
    counts = torch.unique(codes, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum() * counts.sum())


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scales: max |w| of each channel maps to 2^(bits-1) - 1."""
    return (weight.detach().reshape(weight.shape[0], -1).abs().amax(1) / int_grid(bits)).clamp(min=1e-12)


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


def quantize_linear(
    model: nn.Module,
    calibrate: Callable[[], None],
    weight_bits: BitsSpec = 8,
    activation_bits: int = 8,
    method: str = "minmax",
) -> dict[str, int]:
    """Quantize the weights of ``model``'s conv/linear layers in place and fake-quantize their inputs.

    ``calibrate`` runs the model on sample data once (e.g. an evaluation of a few pairs) to set the
    activation ranges (asymmetric, per tensor). Returns the weight bits per tensor.
    """
    spec = resolve_levels(model, weight_bits, "bits")
    layers = {name: owner(model, name) for name in spec}
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
        attach(layer, Grid(weight_scales(w, bits).to(w.device), bits)).snap(layer)
        if obs.hi < obs.lo:  # never ran during calibration (e.g. an early-exit head): weights only
            logger.debug("%s did not run during calibration; its inputs stay float", name)
            continue
        lo, hi = min(obs.lo, 0.0), max(obs.hi, 0.0)
        scale = torch.tensor(max(hi - lo, 1e-8) / (2**activation_bits - 1))
        attach(layer, ActivationQuant(scale, torch.round(-lo / scale), activation_bits))
    logger.info("linear-quantized %d layers of %s", len(layers), type(model).__name__)
    return {n: int(b) for n, b in spec.items()}


def _simulated(model: nn.Module) -> str | None:
    if remove_activation_quant(model):  # timed as what it is on CPU: fp32 kernels (the int8 path is ORT's)
        return "fp32 kernels on int8-grid weights (simulated int8; see int8-onnxruntime)"
    return None


@register_method(
    "linear-int8",
    settings={"bits": 8, "activation_bits": 8, "calibration_method": "minmax"},
    checks={"activation_bits": Check(lo=2, hi=16), "calibration_method": Check(choices=("minmax", "percentile"))},
    calibrated=True,
    bits=lambda spec: spec.get("bits", 8),
    execution=_simulated,
)
def linear_method(job: Job) -> None:
    """Linear quantization of the part's weights and inputs, calibrated on the calibration pairs."""
    matcher = job.matcher
    quantize_linear(
        job.net,
        lambda: job.calibrate(matcher),
        job.spec.get("bits", 8),
        job.spec.get("activation_bits", 8),
        job.spec.get("calibration_method", "minmax"),
    )


@register_method(
    "grid",
    settings={"step": 0.03},
    checks={"step": Check(kind=float, lo=0, open=True)},
    needs=("step",),
)
def grid_method(job: Job) -> None:
    """The part's weights on a uniform grid ``step`` times each channel's RMS apart, weights only (the entropy-coded
    file pays each weight its codes' entropy: ``job.bits``); e.g. the detector of benchmarks/deep_compression.py."""
    job.bits = quantize_grid(job.net, job.spec["step"])
