"""Tensor helpers every compression method uses: which weights it acts on, per-weight levels, bit packing."""

from __future__ import annotations

import fnmatch
from typing import Mapping, Union

import numpy as np
import torch
from torch import nn

Levels = Union[float, Mapping[str, float]]  # one value for every weight, or names / glob patterns -> value


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every convolution and linear layer (the tensors compression acts on), by parameter name."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(m.weight, nn.Parameter)
    }


def owner(model: nn.Module, parameter: str) -> nn.Module:
    """The layer that holds the parameter named ``parameter`` (e.g. 'gnn.layers.0.mlp.0.weight')."""
    return model.get_submodule(parameter.rsplit(".", 1)[0] if "." in parameter else "")


def resolve_levels(model: nn.Module, spec: Levels, what: str = "sparsity") -> dict[str, float]:
    """Per-weight level (a sparsity, a bit width) from one value or a dict of names / glob patterns ('*attn*',
    'gnn.layers.0.*'). Later patterns win over earlier ones; weights that match no pattern are left out."""
    names = list(prunable_weights(model))
    if isinstance(spec, (int, float)):
        return {n: float(spec) for n in names}
    out: dict[str, float] = {}
    for pattern, value in spec.items():
        matched = [
            n
            for n in names
            if fnmatch.fnmatchcase(n, pattern) or n == pattern or fnmatch.fnmatchcase(n, f"*{pattern}*")
        ]
        if not matched:
            raise ValueError(f"{what} pattern '{pattern}' matches no prunable weight of {type(model).__name__}")
        out.update({n: float(value) for n in matched})
    return out


def resized(module: nn.Module, shape: tuple[int, ...] | torch.Size) -> nn.Module | None:
    """A fresh layer of ``module``'s kind and settings whose weight has ``shape`` (conv, linear, batch and layer
    norms), on its device; None for kinds that never change shape. Channel pruning and checkpoint loading build
    their smaller layers with it."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        new = type(module)(
            shape[1] * module.groups,
            shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
        )
    elif isinstance(module, nn.Linear):
        new = nn.Linear(shape[1], shape[0], module.bias is not None)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = type(module)(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
    elif isinstance(module, nn.LayerNorm):
        new = nn.LayerNorm(tuple(shape), module.eps, module.elementwise_affine)
    else:
        return None
    own = next(iter([*module.parameters(), *module.buffers()]), None)
    return new.to(own.device) if own is None or not own.is_floating_point() else new.to(own.device, own.dtype)


def int_grid(bits: int) -> int:
    """The largest code of a symmetric signed grid of ``bits`` bits: codes run over -q..q, q = 2^(bits-1) - 1."""
    return 2 ** (bits - 1) - 1


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers < 2**bits (any shape) into a flat uint8 tensor, ``bits`` bits each."""
    v = values.flatten().to(torch.int64).cpu().numpy()
    planes = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.ravel()))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The ``count`` integers that ``pack_bits`` packed at ``bits`` bits each."""
    planes = np.unpackbits(packed.numpy())[: count * bits].reshape(count, bits).astype(np.int64)
    return torch.from_numpy((planes << np.arange(bits)).sum(1))
