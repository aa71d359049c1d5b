"""Real int8 execution on CPU: a network's dense part exported to ONNX, quantized by ONNX Runtime's tools (QDQ with
per-channel int8 weights and uint8 activations calibrated on sample data, or dynamic: activations quantized per
call) and run by a runtime backend in place of PyTorch. Fake quantization is never faster; this is the path that is.

Detectors and matching networks with a graph adapter (models/graphs.py: SuperPoint's dense network, DISK's U-Net,
SuperGlue with its Sinkhorn iterations unrolled, LightGlue without its early exits) are covered. In the matchers
only the layers with weights become int8 (projections, MLPs, keypoint encoder, final projection); attention
products, softmax and Sinkhorn stay float, as in the fake-quant simulation of quantization/linear.py.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from backends import graph_modules
from backends.export import export_detector, export_matcher
from backends.modules import GraphDetector, GraphMatcher, GraphNetwork, graph_feed
from compression.methods import Job, register_method
from helper import Check, InputError
from models.graphs import DetectorGraph, MatcherGraph, graph_adapter, supported

logger = logging.getLogger(__name__)

# Weights on 7 bits (|w| <= 64) so that int8 graphs compute alike on every x86 CPU: without VNNI (AVX2 and
# pre-Cascade-Lake AVX-512 CPUs) ONNX Runtime multiplies uint8 x int8 with VPMADDUBSW, whose int16 sum of two
# products saturates at full-range weights. Measured under qemu's AVX2 EPYC-Rome vs this VNNI EPYC (dynamic int8):
# a random 2-layer LightGlue's argmax agrees with fp32 .575 vs .950 with 8-bit weights, .950 on both with 7 bits;
# the pretrained LightGlue keeps .988 vs .996 of the fp32 matches with 8 bits, .996 / .992 with 7
# (benchmarks/int8_portability.py). The same speed on VNNI.
REDUCE_RANGE = True


def quantize_static_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: Iterable[np.ndarray],
    keep_float: Iterable[str] = (),
    keep_last: bool = False,
) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of the convolutions, calibrated on the given images.

    The output layers named in ``keep_float`` (or the graph's last convolution, with ``keep_last``) stay float:
    a detector's logits and descriptors feed a softmax / normalisation whose small differences decide keypoints.
    """
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    exclude = [
        n.name
        for n in graph.node
        if any(k in n.name or any(k in i for i in n.input) for k in keep_float) and n.op_type == "Conv"
    ]
    if keep_last:
        exclude.append([n.name for n in graph.node if n.op_type == "Conv"][-1])

    return _static_qdq(
        fp32_path, int8_path, [{"image": np.ascontiguousarray(x, np.float32)} for x in calibration], ["Conv"], exclude
    )


def _static_qdq(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    feeds: Iterable[dict[str, np.ndarray]],
    ops: list[str],
    exclude: list[str],
) -> Path:
    """ONNX Runtime's static QDQ quantization: per-channel int8 weights (7-bit, REDUCE_RANGE), uint8 activations
    calibrated on ``feeds`` (graph inputs), for the nodes of ``ops`` not in ``exclude``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    items = iter(list(feeds))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(items, None)

    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=ops,
        nodes_to_exclude=exclude,
        reduce_range=REDUCE_RANGE,
    )
    return Path(int8_path)


def coordinate_layers(graph) -> list[str]:
    """Names of the weighted nodes that read keypoint coordinates (LightGlue's positional encoding, SuperGlue's
    first keypoint-encoder layer). They stay float: a uint8 grid over [-1, 1] would move the positions the
    network sees by up to 1.3 px at 640 px."""
    derived, found = {i.name for i in graph.input if i.name.startswith("kpts")}, []
    for node in graph.node:  # topological order
        if not any(i in derived for i in node.input):
            continue
        if node.op_type in ("MatMul", "Conv", "Gemm", "Einsum"):
            found.append(node.name)
        else:
            derived.update(node.output)
    return found


def quantize_matcher_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: Iterable[dict[str, np.ndarray]] | None = None,
) -> Path:
    """int8 weights for every MatMul/Conv with a weight (per channel), except the layers that read keypoint
    coordinates; products of two activations stay float.

    With ``calibration`` (graph inputs of sample pairs): static QDQ with calibrated uint8 activations; without:
    dynamic quantization (activation ranges measured on every call).
    """
    import onnx
    from onnxruntime.quantization import (
        QuantType,
        quantize_dynamic,
    )

    graph = onnx.load(str(fp32_path)).graph
    weights = {i.name for i in graph.initializer}
    ops = ["MatMul", "Conv"]
    exclude = [n.name for n in graph.node if n.op_type in ops and not any(i in weights for i in n.input)]
    exclude += coordinate_layers(graph)
    if calibration is None:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=exclude,
            reduce_range=REDUCE_RANGE,
        )
        return Path(int8_path)
    return _static_qdq(fp32_path, int8_path, calibration, ops, exclude)


def recorded_inputs(module: nn.Module, run) -> list:
    """The first argument of every call of ``module`` while ``run()`` runs (e.g. a matcher network's data dicts
    during an evaluation of calibration pairs)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


def int8_detector(
    matcher: nn.Module,
    calibration: list[torch.Tensor],
    folder: str | os.PathLike,
    threads: int | None = None,
    quantize: bool = True,
    backend_name: str = "onnxruntime",
) -> nn.Module:
    """A copy of ``matcher`` whose detector network runs as an ONNX graph, int8 (or fp32 with ``quantize=False``),
    in ``backend_name``'s runtime (backends/).

    Any detector with a graph adapter (models/graphs.py: SuperPoint's dense network, DISK's U-Net, ALIKED's dense
    part); post-processing stays in PyTorch. ``calibration``: images as the detector sees them (1×C×H×W in [0, 1]).
    """
    m = copy.deepcopy(matcher).eval()
    det = m.detector
    adapter = graph_adapter(det, DetectorGraph)
    if adapter is None:
        raise ValueError(f"no graph adapter for a {type(det).__name__} detector ({supported(DetectorGraph)} have one)")
    k = adapter.multiple
    if adapter.pad:  # as the detector pads: zeros at the bottom and right up to multiples
        calibration = [F.pad(x, (0, -x.shape[-1] % k, 0, -x.shape[-2] % k)) for x in calibration]
    path = export_detector(det, Path(folder) / f"{type(det).__name__.lower()}.onnx", calibration[0])
    if quantize:
        path = quantize_static_onnx(
            path,
            path.with_name(path.stem + "_int8.onnx"),
            [x.cpu().numpy() for x in calibration],
            adapter.keep_float,
            adapter.keep_last,
        )
    if adapter.submodule is None:
        m.detector = GraphDetector(det, path, threads, backend_name)
    else:
        setattr(det, adapter.submodule, GraphNetwork(None, path, threads, backend_name))
    m.onnx_path = path
    return m


def int8_matcher(
    matcher: nn.Module,
    calibration: list[dict],
    folder: str | os.PathLike,
    threads: int | None = None,
    mode: str = "auto",
) -> nn.Module:
    """A copy of ``matcher`` whose matching network (SuperGlue, LightGlue: any with a graph adapter) runs as an
    ONNX graph.

    ``mode``: 'dynamic' (int8 weights, activations quantized per call), 'static' (activations calibrated on
    ``calibration``: the data dicts the network receives for a few sample pairs), 'fp32' (no quantization) or
    'auto': the faster int8 mode measured on CPU (benchmarks/int8_matcher.py): static for SuperGlue (its 1×1
    convolutions become QLinearConv; dynamic ConvInteger is slower than fp32), dynamic for LightGlue (MatMulInteger).
    """
    if mode not in ("auto", "dynamic", "static", "fp32"):
        raise ValueError(f"int8 matcher mode must be auto, dynamic, static or fp32, got {mode!r}")
    m = copy.deepcopy(matcher).eval()
    net = m.matcher
    kind = type(net).__name__
    adapter = graph_adapter(net, MatcherGraph)
    if adapter is None:
        raise ValueError(f"no graph adapter for a {kind} matcher ({supported(MatcherGraph)} have one)")
    if mode == "auto":
        mode = "static" if any(axis == 2 for axis in adapter.axes.values()) else "dynamic"  # conv1d layout: SuperGlue
    if not calibration:
        raise ValueError("int8_matcher needs at least one sample pair's data to trace the graph")
    with torch.no_grad():
        path = export_matcher(net, adapter, Path(folder) / f"{kind.lower()}.onnx", adapter.feed(calibration[0]))
    if mode != "fp32":
        feeds = [graph_feed(net, d) for d in calibration]
        path = quantize_matcher_onnx(
            path, path.with_name(f"{path.stem}_int8_{mode}.onnx"), feeds if mode == "static" else None
        )
    m.matcher = GraphMatcher(net, path, threads)
    m.onnx_path = path
    return m


RUNTIMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}  # backends a variant's graph may run in


def _int8_kernels(model: nn.Module) -> str | None:
    parts = graph_modules(model)
    if not parts:
        return None
    # op types are strings in the graph's bytes: QDQ graphs hold QuantizeLinear, dynamic ones MatMulInteger
    groups: dict[str, list[str]] = {}
    for n, m in parts.items():
        int8 = any(op in m.graph_bytes for op in (b"QuantizeLinear", b"Integer"))
        label = f"int8 kernels ({RUNTIMES[m.backend]})" if int8 else f"fp32 {RUNTIMES[m.backend]} graph"
        groups.setdefault(label, []).append(n)
    return "; ".join(f"{label} for the {'+'.join(names)}" for label, names in sorted(groups.items(), reverse=True))


@register_method(
    "int8-onnxruntime",
    settings={"mode": "auto", "runtime": "onnxruntime"},
    checks={"mode": Check(choices=("auto", "dynamic", "static", "fp32")), "runtime": Check(choices=tuple(RUNTIMES))},
    calibrated=True,
    final=True,
    bits=lambda spec: 32 if spec.get("mode") == "fp32" else 8,
    execution=_int8_kernels,
)
def int8_method(job: Job) -> None:
    """The part runs in real int8 kernels of ONNX Runtime, calibrated on the calibration pairs (the graph's bytes
    go into the checkpoint); ``mode: fp32`` runs it as an fp32 graph (for ALIKED the faster choice: its int8 graph
    is no faster, benchmarks/detector_runtimes.py). ``runtime: openvino`` runs a detector's graph in OpenVINO
    instead (the same graph; for ALIKED's fp32 graph 0.85x ONNX Runtime's time, two images at once on 2 cores:
    benchmarks/end_to_end.py)."""
    runtime = job.spec.get("runtime", "onnxruntime")
    if runtime != "onnxruntime" and job.part == "matcher":
        raise InputError(f"runtime: {runtime} runs detector graphs; the matcher's int8 graph runs in ONNX Runtime")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if job.part == "matcher":
                matcher = job.matcher
                data = recorded_inputs(matcher.matcher, lambda: job.calibrate(matcher))
                job.matcher = int8_matcher(matcher, data, tmp, mode=job.spec.get("mode", "auto"))
            else:
                fp32 = job.spec.get("mode") == "fp32"  # the graph alone: the runtime's fusions, no quantization
                images = job.calibration_images()
                job.matcher = int8_detector(job.matcher, images, tmp, quantize=not fp32, backend_name=runtime)
        except ValueError as e:  # no graph adapter for this network, or a bad mode
            raise InputError(f"variant on {job.part}: {e}") from None
