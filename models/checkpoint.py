"""Checkpoints this project writes: the weights plus everything needed to rebuild the network.

A pruned network has other shapes than its config says, so a checkpoint records the matcher's zoo name,
its config, the state_dict and the few int attributes that shapes cannot tell (attention head counts and
dims). Loading rebuilds the default network, resizes each layer to the stored weights and loads strictly,
so the caller never needs to know the shapes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helper import git_commit

from .matching import Matcher, build_matcher
from .weights import WeightsError, read_state_dict

FORMAT = "efficient-feature-matching/checkpoint"
VERSION = 1
SHAPE_ATTRS = ("num_heads", "dim", "head_dim", "embed_dim")  # ints that shapes alone do not determine


def shape_attrs(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-module int attributes that define shapes (head counts and dims)."""
    found = {}
    for name, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in SHAPE_ATTRS if isinstance(getattr(module, a, None), int)}
        if attrs:
            found[name] = attrs
    return found


def _resized(module: nn.Module, weight: torch.Tensor) -> nn.Module | None:
    """A fresh layer of ``module``'s kind shaped for ``weight``, or None for kinds that never resize."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return type(module)(weight.shape[1] * module.groups, weight.shape[0], module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None,
                            module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(weight.shape[1], weight.shape[0], module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module)(weight.shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(weight.shape, module.eps, module.elementwise_affine)
    return None


def fit_shapes(model: nn.Module, state: dict[str, torch.Tensor], attrs: dict[str, dict[str, int]]) -> None:
    """Replace every layer whose stored weight has another shape by one of the stored shape; set shape attrs."""
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight" if name else "weight")
        own = getattr(module, "weight", None)
        if weight is None or not isinstance(own, torch.Tensor) or own.shape == weight.shape:
            continue
        new = _resized(module, weight)
        if new is None:
            raise WeightsError(f"cannot resize {name} ({type(module).__name__}) to {tuple(weight.shape)}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    for name, values in attrs.items():
        for attr, value in values.items():
            setattr(model.get_submodule(name), attr, value)


def save_checkpoint(matcher: Matcher, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``matcher`` atomically as a self-describing checkpoint (zoo name, config, weights, git commit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**matcher.config}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "matcher": matcher.name,
        "config": config,
        "attrs": shape_attrs(matcher),
        "state_dict": {k: v.detach().cpu() for k, v in matcher.state_dict().items()},
        "meta": {"git_commit": git_commit(), **(meta or {})},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike) -> Matcher:
    """Rebuild the Matcher saved by ``save_checkpoint``, whatever its pruned shapes."""
    payload = read_state_dict(path)
    if not is_checkpoint(payload):
        raise WeightsError(f"{path} is not a checkpoint written by this project (no '{FORMAT}' header)")
    if payload.get("version", 0) > VERSION:
        raise WeightsError(f"{path} has checkpoint version {payload['version']}; this code reads up to {VERSION}")
    config = _without_weights(payload["config"])
    matcher = build_matcher(payload["matcher"], config)
    fit_shapes(matcher, payload["state_dict"], payload.get("attrs", {}))
    try:
        matcher.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {payload['matcher']}: {str(e).splitlines()[0]}") from None
    return matcher.eval()


def _without_weights(config: dict[str, Any]) -> dict[str, Any]:
    """The same config with every network built randomly (the checkpoint brings the weights)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for part in ("superpoint", "superglue"):
        config[part] = {**config.get(part, {}), "weights": None}
    config["pretrained"] = False
    return config
