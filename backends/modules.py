"""Modules that run a part of a pipeline as a graph in a runtime backend, in place of the PyTorch part.

Each keeps its graph's bytes and its backend's name (checkpoints store both; copies reopen the session) and
reads the network's adapter (models/graphs.py) for its inputs and outputs. ``kind`` is the name checkpoints
record; the names before backends were plural (OrtSuperPoint, OrtNetwork, OrtMatcherNet) still load.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from models.graphs import DetectorGraph, MatcherGraph, graph_adapter
from models.matching import extraction_share

from . import backend, self_contained

MODULES: dict[str, type[GraphModule]] = {}
_OPENING = threading.Lock()  # extraction workers open a shared session once


def register_module(cls: type[GraphModule]) -> type[GraphModule]:
    """Class decorator: checkpoints restore graph parts of this ``kind`` (and its old names) with ``cls``."""
    for name in (cls.kind, *cls.old_names):
        MODULES[name] = cls
    return cls


class GraphModule(nn.Module):
    """A module whose computation is a graph run by a backend session; keeps the graph's bytes."""

    kind: ClassVar[str] = ""
    old_names: ClassVar[tuple[str, ...]] = ()
    macs: list[int] | None = None  # set by backends.graph_macs(): [all, weighted layers'] MACs while counting
    _probe: Any = None

    def _open(self, graph: str | os.PathLike | bytes, threads: int | None, backend_name: str) -> None:
        self.graph_bytes = graph if isinstance(graph, bytes) else Path(graph).read_bytes()
        self_contained(self.graph_bytes)
        self.threads, self.backend = threads, backend_name
        self.session = backend(backend_name).session(self.graph_bytes, threads)
        # the graph's hash in the state_dict, so detector fingerprints (feature caches) tell graphs apart
        digest = hashlib.sha1(self.graph_bytes).digest()
        self.register_buffer("onnx_sha1", torch.tensor(list(digest), dtype=torch.uint8))

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The session's outputs on ``feed`` (counted in ``macs`` while ``graph_macs`` is active)."""
        if self.macs is not None:
            self._probe = self._probe or backend(self.backend).probe(self.graph_bytes)
            for i, v in enumerate(self._probe(feed)):
                self.macs[i] += v
        return self._session(extraction_share()).run(None, feed)

    def _session(self, share: int):
        """The session for a run that shares the CPU with ``share - 1`` others (``Matcher.extract_images``): its
        share of the threads, in a session opened once (measured on 2 cores: two ALIKED graphs at once on one
        thread each take 0.91x the time of one after the other on two threads; on two threads each, 1.0x)."""
        if share <= 1:
            return self.session
        threads = max(1, (self.threads or torch.get_num_threads()) // share)
        with _OPENING:
            sessions = self.__dict__.setdefault("_shared", {})
            if threads not in sessions:
                sessions[threads] = backend(self.backend).session(self.graph_bytes, threads)
        return sessions[threads]

    def unused_state(self) -> list[str]:
        """The state_dict keys of weights kept beside the graph that never run (left out of fingerprints): none by
        default."""
        return []

    def python_state(self) -> dict[str, torch.Tensor]:
        """The weights that still run in PyTorch around the graph (a checkpoint keeps them): none by default."""
        return {}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "_probe", "_shared")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.session = backend(self.backend).session(self.graph_bytes, self.threads)


def _image(image: torch.Tensor) -> dict[str, np.ndarray]:
    return {"image": image.detach().cpu().numpy().astype(np.float32, copy=False)}


@register_module
class GraphDetector(GraphModule):
    """A detector whose dense network runs as a graph (its adapter's ``network``); post-processing unchanged (the
    detector's ``forward`` takes ``dense``: what computes its dense outputs)."""

    kind, old_names = "GraphDetector", ("OrtSuperPoint",)

    def __init__(
        self,
        detector: nn.Module,
        graph: str | os.PathLike | bytes,
        threads: int | None = None,
        backend_name: str = "onnxruntime",
    ):
        super().__init__()
        self.sp = detector  # for its settings and post-processing (its weights are not used)
        self._open(graph, threads, backend_name)

    @property
    def config(self):
        return self.sp.config

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(x).to(image.device) for x in self.run(_image(image)))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.sp(*args, **kwargs, dense=self.dense)  # its post-processing of the graph's outputs

    def unused_state(self) -> list[str]:
        """The state_dict keys of weights that never run: the detector's, less those after the graph."""
        kept = self.python_state()
        return [f"sp.{k}" for k in self.sp.state_dict() if k not in kept]

    def python_state(self) -> dict[str, torch.Tensor]:
        """The weights that still run in PyTorch after the graph (e.g. ALIKED's descriptor head), named as in the
        detector itself: a checkpoint keeps them, and loads them into the detector before the graph wraps it."""
        adapter = graph_adapter(self.sp, DetectorGraph)
        after = tuple(f"{m}." for m in (adapter.after if adapter else ()))
        return {k: v for k, v in self.sp.state_dict().items() if k.startswith(after)}  # none if nothing runs after


@register_module
class GraphNetwork(GraphModule):
    """A one-input, one-output image network (e.g. DISK's U-Net) run as a graph in place of the PyTorch one."""

    kind, old_names = "GraphNetwork", ("OrtNetwork",)

    def __init__(
        self,
        original: nn.Module | None,
        graph: str | os.PathLike | bytes,
        threads: int | None = None,
        backend_name: str = "onnxruntime",
    ):
        super().__init__()
        self._open(graph, threads, backend_name)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        (out,) = self.run(_image(image))
        return torch.from_numpy(out).to(image.device)


@register_module
class GraphMatcher(GraphModule):
    """A matching network run as a graph; same inputs and outputs as the PyTorch one (its adapter says how:
    LightGlue with all layers and its ``filter_threshold``; SuperGlue's mutual nearest neighbours).
    ``net``: the PyTorch network, for its settings only (its weights are not used)."""

    kind, old_names = "GraphMatcher", ("OrtMatcherNet",)

    def __init__(
        self,
        net: nn.Module,
        graph: str | os.PathLike | bytes,
        threads: int | None = None,
        backend_name: str = "onnxruntime",
    ):
        super().__init__()
        self.net = net
        self._open(graph, threads, backend_name)

    def unused_state(self) -> list[str]:
        """The state_dict keys of the PyTorch network's weights: the graph runs in their place."""
        return [f"net.{k}" for k in self.net.state_dict()]

    @property
    def adapter(self) -> MatcherGraph:
        return graph_adapter(self.net, MatcherGraph)

    @property
    def conf(self):  # LightGlue's settings
        return self.net.conf

    @property
    def config(self):  # SuperGlue's settings
        return self.net.config

    def forward(self, data: dict) -> dict:
        feed = graph_feed(self.net, data)
        (b, m), n = feed["kpts0"].shape[:2], feed["kpts1"].shape[1]
        device = self.onnx_sha1.device  # follows .to()
        if not (m and n):  # nothing to match: every keypoint goes to the dustbin with certainty
            none = lambda k: torch.full((b, k), -1, dtype=torch.long, device=device)  # noqa: E731
            return {
                "log_assignment": torch.zeros((b, m + 1, n + 1), device=device),
                "matches0": none(m),
                "matches1": none(n),
                "matching_scores0": torch.zeros((b, m), device=device),
                "matching_scores1": torch.zeros((b, n), device=device),
            }
        return self.adapter.matches(self.net, torch.from_numpy(self.run(feed)[0]).to(device))


def restore(kind: str, original: nn.Module, graph: bytes, backend_name: str = "onnxruntime") -> GraphModule:
    """A graph part of ``kind`` (as a checkpoint recorded it) in place of the PyTorch module ``original``."""
    if kind not in MODULES:
        raise ValueError(f"unknown graph module {kind!r}")
    return MODULES[kind](original, graph, backend_name=backend_name)


def graph_feed(net: nn.Module, data: dict) -> dict[str, np.ndarray]:
    """The graph inputs of a matching network for the data dict it is called with."""
    adapter = graph_adapter(net, MatcherGraph)
    return {k: v.detach().cpu().float().numpy() for k, v in adapter.feed(data).items()}
