"""Compression state: one object per layer and method, registered on the layer it compresses.

A method that must keep something beside a layer's weight (a pruning mask, a k-means codebook and codes, the
scales of an integer grid, an activation quantizer) keeps it in a ``LayerState`` attached to that layer under
``layer.compression[kind]``. States are modules so that their buffers move with ``.to()``; the buffers are
non-persistent, so state_dicts keep the official keys. Each state says what it needs after an optimizer step
(``after_step``: the training loop that owns the optimizer calls ``enforce``), before training
(``start_training``) and how the checkpoint stores its weight (``encode`` / ``decode``, by ``kind``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

ATTR = "compression"


class LayerState(nn.Module):
    """What one compression method keeps for one layer; subclasses register with ``@register_state``."""

    kind: ClassVar[str] = ""  # the key on the layer and the checkpoint entry's kind
    order: ClassVar[int] = 0  # which state encodes a weight that several states describe: the highest

    def attached(self, layer: nn.Module) -> None:
        """Called once the state is on ``layer`` (e.g. to hook its forward pass)."""

    def after_step(self, layer: nn.Module) -> None:
        """Make ``layer.weight`` obey this state again after an optimizer step changed it."""

    def start_training(self, layer: nn.Module, settings: dict[str, Any]) -> None:
        """Prepare ``layer`` for training (``settings``: the finetuning config)."""

    def encode(self, layer: nn.Module, weight: torch.Tensor) -> dict[str, Any] | None:
        """The checkpoint entry of ``weight`` (the layer's weight as evaluated) in this method's compact form, or
        None when the checkpoint's generic forms (sparse or dense) store it."""
        return None

    @classmethod
    def decode(cls, entry: dict[str, Any]) -> tuple[torch.Tensor, list[LayerState]]:
        """(the weight, the states to attach to its layer) of an entry that ``encode`` wrote."""
        raise NotImplementedError(f"{cls.__name__} writes no checkpoint entries")

    def forward(self, *args: Any) -> Any:
        raise RuntimeError(f"{type(self).__name__} is compression state, not a layer")


STATES: dict[str, type[LayerState]] = {}


def register_state(cls: type[LayerState]) -> type[LayerState]:
    """Class decorator: make a LayerState's ``kind`` known to checkpoints (entries of that kind decode by it)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} needs a 'kind'")
    if STATES.get(cls.kind, cls) is not cls:
        raise ValueError(f"two compression states of kind {cls.kind!r}: {STATES[cls.kind].__name__}, {cls.__name__}")
    STATES[cls.kind] = cls
    return cls


def states(layer: nn.Module) -> dict[str, LayerState]:
    """The states attached to ``layer``, by kind, in the order they were attached."""
    container = layer._modules.get(ATTR)
    return dict(container.items()) if container is not None else {}


def get(layer: nn.Module, kind: str) -> LayerState | None:
    return states(layer).get(kind)


def attach(layer: nn.Module, state: LayerState) -> LayerState:
    """Attach ``state`` to ``layer`` (replacing one of its kind), on the layer's device."""
    container = layer._modules.get(ATTR)
    if container is None:
        container = nn.ModuleDict()
        layer.add_module(ATTR, container)
    weight = getattr(layer, "weight", None)
    container[state.kind] = state.to(weight.device) if isinstance(weight, torch.Tensor) else state
    state.attached(layer)
    return state


def detach(layer: nn.Module, kind: str) -> LayerState | None:
    """Remove the state of ``kind`` from ``layer`` (the weight stays as it is); returns it."""
    container = layer._modules.get(ATTR)
    if container is None or kind not in container:
        return None
    state = container[kind]
    del container[kind]
    if not len(container):
        del layer._modules[ATTR]
    return state


def compressed_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, dict[str, LayerState]]]:
    """(name, layer, its states) of every layer of ``model`` that has compression state."""
    for name, layer in model.named_modules():
        found = states(layer)
        if found:
            yield name, layer, found


def encoder(layer: nn.Module) -> LayerState | None:
    """The state that stores ``layer``'s weight in the checkpoint: the one of highest ``order``."""
    found = states(layer).values()
    return max(found, key=lambda s: s.order) if found else None


def enforce(model: nn.Module) -> None:
    """Re-apply every state's constraint (masks, shared values, grids): call after each optimizer step."""
    with torch.no_grad():
        for _, layer, found in list(compressed_layers(model)):
            for state in found.values():
                state.after_step(layer)


def start_training(model: nn.Module, settings: dict[str, Any]) -> None:
    """Let every state prepare its layer for training (e.g. quantization-aware training)."""
    for _, layer, found in list(compressed_layers(model)):
        for state in found.values():
            state.start_training(layer, settings)


def trained_weight(layer: nn.Module) -> torch.Tensor:
    """The float tensor the optimizer updates: the weight, or its shadow under a parametrization (QAT)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight
