"""OpenVINO as a runtime backend: the same ONNX graphs, compiled by OpenVINO for the CPU (optional: ``pip install
openvino``). Its ONNX frontend reads the QDQ int8 graphs of SuperPoint and DISK, but has no rule for ``DeformConv``
(ALIKED's graph is refused); benchmarks/detector_runtimes.py compares it with ONNX Runtime side by side."""

from __future__ import annotations

import numpy as np

from helper import InputError

from . import register_backend


class _Session:
    """``run(None, feed)`` over a compiled OpenVINO model (ONNX Runtime's calling convention)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, _outputs, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feed)
        return [np.asarray(results[out]) for out in self.compiled.outputs]


@register_backend("openvino")
class OpenVino:
    """OpenVINO's CPU plugin, latency hint (one request at a time, as a pipeline runs), in the graph's precision."""

    def session(self, graph: bytes, threads: int | None = None) -> _Session:
        try:
            import openvino as ov
        except ImportError:
            raise InputError("the openvino backend needs the package openvino: pip install openvino") from None
        core = ov.Core()
        model = core.read_model(model=graph, weights=b"")  # ONNX bytes (weights inside)
        # f32: OpenVINO otherwise computes in bf16 on CPUs that have it (this EPYC does), another precision
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return _Session(core.compile_model(model, "CPU", config))

    def probe(self, graph: bytes):
        from .onnxruntime import MacProbe  # shapes of the same graph: ONNX Runtime counts them

        return MacProbe(graph)
