"""How a network becomes a fixed graph for another runtime: one adapter per architecture, registered next to it.

Adapters are pure PyTorch (which module to export, its inputs, how to read its outputs as the network does):
models never import a runtime. ``backends/`` exports and runs the graphs; ``quantization/int8.py`` quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class MatcherGraph:
    """A matching network as a graph: keypoints and descriptors (normalized as the network does) in, log
    assignment out; matches read from it as the network reads them."""

    wrapper: Callable[[nn.Module], nn.Module]  # the network -> a module of tensors in, log assignment out
    axes: dict[str, int]  # the graph's inputs, in order, and the axis that counts keypoints
    feed: Callable[[dict[str, Any]], dict[str, torch.Tensor]]  # graph inputs from the network's data dict
    matches: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]  # outputs from the log assignment


@dataclass(frozen=True)
class DetectorGraph:
    """The dense network of a detector as a graph: an N×C×H×W image in (sides multiples of ``multiple``)."""

    network: Callable[[nn.Module], nn.Module]  # the detector -> the module exported
    outputs: tuple[str, ...]
    multiple: int
    submodule: str | None = None  # the graph replaces this submodule; None: it computes the detector's dense()
    pad: bool = False  # the detector zero-pads images to multiples at the bottom and right (calibration must too)
    keep_float: tuple[str, ...] = ()  # convolutions that stay float under int8 (by name)
    keep_last: bool = False  # the last convolution stays float
    opset: int = 18  # the ONNX opset the graph needs (DeformConv: 19)
    after: tuple[str, ...] = ()  # the detector's modules that run after the graph, in PyTorch (their weights are kept)


GRAPHS: dict[type, MatcherGraph | DetectorGraph] = {}


def register_graph(network: type, adapter: MatcherGraph | DetectorGraph) -> None:
    """Make networks of class ``network`` (and subclasses) exportable by ``adapter``."""
    GRAPHS[network] = adapter


def graph_adapter(net: nn.Module, kind: type) -> Any:
    """The adapter of ``kind`` (MatcherGraph or DetectorGraph) registered for ``net``'s class, or None."""
    found = next((GRAPHS[c] for c in type(net).__mro__ if c in GRAPHS), None)
    return found if isinstance(found, kind) else None


def supported(kind: type) -> str:
    return ", ".join(c.__name__ for c, a in GRAPHS.items() if isinstance(a, kind))
