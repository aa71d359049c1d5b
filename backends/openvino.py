"""OpenVINO as a runtime backend: the same ONNX graphs, compiled by OpenVINO for the CPU (``openvino`` is in
requirements.txt; without it only this backend is missing). benchmarks/detector_runtimes.py and
benchmarks/end_to_end.py compare it with ONNX Runtime side by side.

Two things its ONNX frontend does not do as ONNX Runtime does, handled here when a graph is opened:
- it has no rule for the standard ``DeformConv`` (ALIKED's deformable convolutions): the nodes become OpenVINO's
  own ``org.openvinotoolkit`` ``DeformableConv2D`` (the same operation; the bias an ``Add``), with bilinear sampling
  on a zero-padded map at the border (``bilinear_interpolation_pad``), which is what ``DeformConv`` and torchvision
  compute;
- its CPU plugin runs a ``Transpose`` behind its blocked layouts with a reference kernel (ALIKED's four
  channels-last outputs: 48 of 184 ms on one thread on the Intel VM): a graph output that is such a permutation is
  returned by the graph before it, as a permuted view of it (the same values; ALIKED's descriptor head reads the
  full-resolution level in that storage, models/aliked.py ``_pixels``).
"""

from __future__ import annotations

import threading

import numpy as np

from helper import InputError

from . import register_backend


def _openvino_onnx(graph: bytes) -> bytes:
    """``graph`` with its ``DeformConv`` nodes as OpenVINO's ``DeformableConv2D`` (+ ``Add`` of the bias)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(graph)
    if not any(n.op_type == "DeformConv" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return graph
    nodes = []
    for n in model.graph.node:
        if n.op_type != "DeformConv" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        x, w, offset, bias, mask = (list(n.input) + [""] * 5)[:5]
        out = n.output[0]
        conv_out = f"{out}/without_bias" if bias else out
        nodes.append(
            helper.make_node(
                "DeformableConv2D",
                [x, offset, w] + ([mask] if mask else []),
                [conv_out],
                domain="org.openvinotoolkit",
                strides=a.get("strides", [1, 1]),
                pads=a.get("pads", [0, 0, 0, 0]),
                dilations=a.get("dilations", [1, 1]),
                group=a.get("group", 1),
                deformable_groups=a.get("offset_group", 1),
            )
        )
        if bias:  # C -> 1×C×1×1, added
            axes = f"{out}/bias_axes"
            model.graph.initializer.append(numpy_helper.from_array(np.array([0, 2, 3], np.int64), axes))
            nodes += [
                helper.make_node("Unsqueeze", [bias, axes], [f"{out}/bias"]),
                helper.make_node("Add", [conv_out, f"{out}/bias"], [out]),
            ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("org.openvinotoolkit", 1))
    return model.SerializeToString()


def _host_permutations(model) -> dict[int, tuple[int, ...]]:
    """Outputs computed by a constant ``Transpose``: the graph returns its input instead; {output: permutation}."""
    perms = {}
    for i, result in enumerate(model.get_results()):
        node = result.input_value(0).get_node()
        perm = node.input_value(1).get_node() if node.get_type_name() == "Transpose" else None
        if perm is not None and perm.get_type_name() == "Constant":
            perms[i] = tuple(int(v) for v in perm.get_data())
            result.input(0).replace_source_output(node.input_value(0))
    if perms:
        model.validate_nodes_and_infer_types()
    return perms


class _Session:
    """``run(None, feed)`` (ONNX Runtime's calling convention) over the model compiled for the feed's shapes by the
    thread that runs it (a compiled model runs one inference at a time; ``Matcher.extract_images`` runs two images
    at once). Measured on the Intel VM, two images at once: compiled for dynamic shapes (any image size), 3 of 16
    pairs took 2-3x their usual time, and so did some with one model of two streams (pinned to the cores) shared by
    the two threads; a model per thread and shape, unpinned, had no such runs. Compiling for one size takes ~0.1 s;
    each thread keeps its last 8 sizes."""

    def __init__(self, core, model, config: dict, perms: dict[int, tuple[int, ...]]):
        self.core, self.model, self.config, self.perms = core, model, config, perms
        self.local = threading.local()

    def request(self, feed: dict[str, np.ndarray]):
        shapes = tuple((name, x.shape) for name, x in sorted(feed.items()))
        requests = self.local.__dict__.setdefault("requests", {})
        if shapes not in requests:
            model = self.model.clone()
            model.reshape({name: list(shape) for name, shape in shapes})
            requests[shapes] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            while len(requests) > 8:
                del requests[next(iter(requests))]
        return requests[shapes]

    def run(self, _outputs, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = self.request(feed)
        request.start_async(feed)
        request.wait()
        outputs = [request.get_output_tensor(i).data for i in range(len(request.model_outputs))]
        # copies: the request's buffers are overwritten by its next run; a permuted output is a view of its copy
        return [np.transpose(x.copy(), self.perms[i]) if i in self.perms else x.copy() for i, x in enumerate(outputs)]


@register_backend("openvino")
class OpenVino:
    """OpenVINO's CPU plugin, latency hint (one request at a time, as a pipeline runs), in the graph's precision."""

    def session(self, graph: bytes, threads: int | None = None) -> _Session:
        try:
            import openvino as ov
        except ImportError:
            raise InputError("the openvino backend needs the package openvino: pip install openvino") from None
        core = ov.Core()
        model = core.read_model(model=_openvino_onnx(graph), weights=b"")  # ONNX bytes (weights inside)
        for op in model.get_ops():
            if op.get_type_name() == "DeformableConvolution":
                op.set_attribute("bilinear_interpolation_pad", True)
        perms = _host_permutations(model)
        # f32: OpenVINO otherwise computes in bf16 on CPUs that have it, another precision. Unpinned: a thread's
        # model of one thread (one image of two at once) was otherwise pinned to the core of the other's
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return _Session(core, model, config, perms)

    def probe(self, graph: bytes):
        from .onnxruntime import MacProbe  # shapes of the same graph: ONNX Runtime counts them

        return MacProbe(graph)
