"""ONNX Runtime as a runtime backend: CPU sessions of ONNX graphs, and their multiply-accumulates counted.

Why ONNX Runtime: torch.ao.quantization is deprecated, torchao's PT2E flow needs torch.compile lowering and
does not cover Conv1d; ORT's int8 Conv/MatMul kernels use VNNI on these CPUs (see benchmarks/int8_superpoint.py
and benchmarks/int8_matcher.py), and since 1.32 its CPU provider runs ``DeformConv`` (ALIKED).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import register_backend


def cpu_session(onnx: str | os.PathLike | bytes, threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session of a graph (a file or its bytes; ``threads``: intra-op threads, default ORT's;
    ``profile_prefix``: where ONNX Runtime's profiler writes its trace, none if unset).

    Its threads do not spin-wait after a run: the PyTorch code that runs between two graph calls (keypoint
    selection, the matcher) would otherwise share the cores with idle spinning ORT threads (measured 9 % of a
    pair's time on 2 cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    model = onnx if isinstance(onnx, bytes) else str(onnx)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def op_times(onnx: bytes, feed: dict[str, np.ndarray], threads: int = 1, rounds: int = 3) -> dict[str, list[float]]:
    """Where a graph's time goes: {operator type: [milliseconds per run, nodes]}, by ONNX Runtime's own profiler
    (mean of ``rounds`` runs after a warm-up one), in the graph ONNX Runtime runs after its optimizations, so its
    layout reorders (``ReorderInput``/``ReorderOutput`` around the ops its blocked NCHWc layout cannot hold) and
    fused nodes count as operators of their own."""
    with tempfile.TemporaryDirectory() as tmp:
        session = cpu_session(onnx, threads, profile_prefix=str(Path(tmp) / "profile"))
        session.run(None, feed)  # the warm-up run is profiled too: counted apart below
        for _ in range(rounds):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[0]["ts"] + runs[0]["dur"]  # after the warm-up run
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            entry = per_op[e["args"]["op_name"]]
            entry[0] += e["dur"] / 1e3 / rounds
            entry[1] += 1 / rounds
    return {op: [ms, round(n)] for op, (ms, n) in sorted(per_op.items(), key=lambda kv: -kv[1][0])}


_MAC_OPS = {
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "Gemm": (0, 1),
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "Einsum": (0, 1),
}


class MacProbe:
    """The multiply-accumulates of one run of a graph, from the shapes that the inputs and outputs of its
    MatMul / Gemm / Conv nodes take on a given feed (a second session returns them as extra outputs)."""

    def __init__(self, onnx_bytes: bytes):
        import onnx

        model = onnx.load_from_string(onnx_bytes)
        graph = model.graph
        self.const = {i.name: tuple(i.dims) for i in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}

        def constant(name: str) -> bool:  # a weight: an initializer, maybe dequantized / transposed / cast
            node = producer.get(name)
            return name in self.const or (
                node is not None
                and node.op_type != "DynamicQuantizeLinear"
                and all(constant(i) for i in node.input if i)
            )

        self.nodes = []  # (op, attributes, input a, input b, output, b is a weight)
        for n in graph.node:
            if n.op_type in _MAC_OPS:
                a, b = (n.input[i] for i in _MAC_OPS[n.op_type])
                attrs = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
                self.nodes.append((n.op_type, attrs, a, b, n.output[0], constant(b)))
        wanted = {v for node in self.nodes for v in node[2:5]} - set(self.const)
        listed = {o.name for o in graph.output}
        graph.output.extend(onnx.helper.make_empty_tensor_value_info(v) for v in sorted(wanted - listed))
        self.session = cpu_session(model.SerializeToString())

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[int, int]:
        """(all MACs, MACs of the layers with weights) of one run on ``feed``."""
        names = [o.name for o in self.session.get_outputs()]
        shapes = {**self.const, **{k: v.shape for k, v in zip(names, self.session.run(None, feed))}}
        total = weighted = 0
        for op, attrs, a, b, out, is_weight in self.nodes:
            if op.startswith("Conv"):  # every output element sums Cin/groups × kernel products
                macs = int(np.prod(shapes[out])) * int(np.prod(shapes[b][1:]))
            elif op == "Einsum":  # a two-operand contraction: one product per combination of all its indices
                terms = attrs["equation"].decode().replace(" ", "").split("->")[0].split(",")
                sizes = {c: s for term, name in zip(terms, (a, b)) for c, s in zip(term, shapes[name])}
                macs = int(np.prod(list(sizes.values())))
            else:
                k = shapes[a][0] if attrs.get("transA") else shapes[a][-1]
                macs = int(np.prod(shapes[out])) * int(k)
            total += macs
            weighted += macs * is_weight
        return total, weighted


@register_backend("onnxruntime")
class OnnxRuntime:
    """ONNX Runtime's CPU provider."""

    def session(self, graph: bytes, threads: int | None = None):
        return cpu_session(graph, threads)

    def probe(self, graph: bytes) -> MacProbe:
        return MacProbe(graph)
