"""Running linear-quantized layers: activation fake-quantization installed from buffers on the layer.

Lives with the models (not the quantization toolkit) because a loaded quantized checkpoint must run the
same way it was evaluated, wherever it is loaded.
"""
from __future__ import annotations

import torch
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() whose gradient is the identity (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-tensor quantize-dequantize of an activation."""
    q = (round_ste(x / scale) + zero_point).clamp(0, 2**bits - 1)
    return (q - zero_point) * scale


def install_activation_quant(layer: nn.Module, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> None:
    """Fake-quantize the input of ``layer`` from now on (replacing an earlier installation)."""
    for buf, value in (("act_scale", scale), ("act_zero_point", zero_point)):
        layer._buffers.pop(buf, None)
        layer.register_buffer(buf, value.to(layer.weight.device), persistent=False)
    layer.act_bits = bits
    old = getattr(layer, "_act_hook", None)
    if old is not None:
        old.remove()
    layer._act_hook = layer.register_forward_pre_hook(
        lambda m, inputs: (fake_quantize_activation(inputs[0], m.act_scale, m.act_zero_point, m.act_bits),
                           *inputs[1:]))


def remove_activation_quant(model: nn.Module) -> int:
    """Stop fake-quantizing inputs in every layer of ``model`` (weights stay on their grid); returns the count."""
    count = 0
    for layer in model.modules():
        hook = getattr(layer, "_act_hook", None)
        if hook is not None:
            hook.remove()
            del layer._act_hook
            count += 1
    return count
