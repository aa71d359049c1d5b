"""Runtime backends: parts of a pipeline that run as an exported graph in another runtime instead of PyTorch.

A backend registers with ``@register_backend(name)`` a class that opens a graph (``session``) and counts its
multiply-accumulates (``probe``); ONNX Runtime is ``backends/onnxruntime.py``. The modules that stand in for a
PyTorch part (``backends/modules.py``) keep their graph's bytes and the backend's name, so checkpoints store them
and copies reopen them. Models never import this package; the pipeline finds these parts with ``graph_modules``.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from typing import Any, Callable, Iterator

from torch import nn

from helper import first_line

BACKENDS: dict[str, Any] = {}


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: a runtime with ``session(graph_bytes, threads)`` (an object with ``run(None, feed)``)
    and ``probe(graph_bytes)`` (a callable feed -> (all MACs, MACs of weighted layers))."""

    def decorate(cls: type) -> type:
        BACKENDS[name] = cls()
        return cls

    return decorate


def backend(name: str) -> Any:
    if name not in BACKENDS:  # every module of the package, so that a new backend registers by existing
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    if name not in BACKENDS:
        raise ValueError(f"unknown runtime backend {name!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def self_contained(graph: bytes) -> None:
    """Refuse (ValueError) an ONNX graph that is not one, or that names external data: its weights must lie in its own
    bytes. ONNX Runtime and OpenVINO would open an external-data file relative to the working directory, so a graph
    from a checkpoint could make the process read any file there."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(graph)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ValueError(f"not an ONNX graph ({first_line(e)[:120]})") from None
    if not model.HasField("graph"):
        raise ValueError("not an ONNX graph (no graph in it)")

    def tensors(nodes: Any, graph: Any = None) -> Iterator[Any]:
        if graph is not None:
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
        for node in nodes:
            for a in node.attribute:
                yield from (a.t, *a.tensors)
                for sparse in (a.sparse_tensor, *a.sparse_tensors):
                    yield from (sparse.values, sparse.indices)
                for sub in (a.g, *a.graphs):
                    yield from tensors(sub.node, sub)

    everything = [tensors(model.graph.node, model.graph), *(tensors(f.node) for f in model.functions)]
    for found in everything:
        for t in found:
            if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
                where = next((e.value for e in t.external_data if e.key == "location"), "?")
                raise ValueError(f"its tensor {t.name!r} refers to external data ({where!r}); refused")


def graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of ``model`` that run as graphs in a runtime backend, by module name (e.g. 'matcher')."""
    from .modules import GraphModule

    return {name: m for name, m in model.named_modules() if isinstance(m, GraphModule)}


@contextlib.contextmanager
def graph_macs(model: nn.Module) -> Iterator[list[int]]:
    """While active, the graph parts of ``model`` add the multiply-accumulates of their runs to the yielded
    [all, layers with weights only] (PyTorch's counters do not see inside a runtime session)."""
    parts, counted = graph_modules(model).values(), [0, 0]
    for part in parts:
        part.macs = counted
    try:
        yield counted
    finally:
        for part in parts:
            part.macs = None
