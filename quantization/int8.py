"""Real int8 execution on CPU through ONNX Runtime: export a network's dense part, quantize it (QDQ with
per-channel int8 weights and uint8 activations calibrated on sample data, or dynamic: activations quantized per
call) and run it in place of PyTorch. Fake quantization is never faster; this is the backend that is.

Detectors (SuperPoint's dense network, DISK's U-Net) and matchers (SuperGlue with its Sinkhorn iterations
unrolled, LightGlue without its early exits) are covered. In the matchers only the layers with weights become
int8 (projections, MLPs, keypoint encoder, final projection); attention products, softmax and Sinkhorn stay
float, as in the fake-quant simulation of quantization/linear.py.

Why ONNX Runtime: torch.ao.quantization is deprecated, torchao's PT2E flow needs torch.compile lowering and
does not cover Conv1d; ORT's int8 Conv/MatMul kernels use VNNI on these CPUs (see benchmarks/int8_superpoint.py
and benchmarks/int8_matcher.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Weights on 7 bits (|w| <= 64) so that int8 graphs compute alike on every x86 CPU: without VNNI (AVX2 and
# pre-Cascade-Lake AVX-512 CPUs) ONNX Runtime multiplies uint8 x int8 with VPMADDUBSW, whose int16 sum of two
# products saturates at full-range weights. Measured under qemu's AVX2 EPYC-Rome vs this VNNI EPYC (dynamic int8):
# a random 2-layer LightGlue's argmax agrees with fp32 .575 vs .950 with 8-bit weights, .950 on both with 7 bits;
# the pretrained LightGlue keeps .988 vs .996 of the fp32 matches with 8 bits, .996 / .992 with 7
# (benchmarks/int8_portability.py). The same speed on VNNI.
REDUCE_RANGE = True


class _Dense(nn.Module):
    def __init__(self, sp: nn.Module):
        super().__init__()
        self.sp = sp

    def forward(self, image: torch.Tensor):
        return self.sp.dense(image)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], path: str | os.PathLike, input_names: list[str],
            output_names: list[str], dynamic_shapes: tuple[dict, ...]) -> Path:
    """ONNX graph of ``module`` in one file, by the torch.export-based exporter (``dynamo=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # "axis name m will not be used": inputs that share a dimension, as meant
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        program = torch.onnx.export(module.eval(), example, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=18, verbose=False)
    program.save(str(path), external_data=False)
    return path


def _image_dims(multiple: int) -> dict[int, Any]:
    """Dynamic batch, height and width (multiples of ``multiple``) of an N×C×H×W image input."""
    dim = torch.export.Dim
    return {0: dim("b", min=1, max=1024), 2: multiple * dim("hk", min=1, max=4096),
            3: multiple * dim("wk", min=1, max=4096)}


def export_superpoint(sp: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (640, 480)) -> Path:
    """ONNX graph of SuperPoint's network (image -> heatmap, descriptors), any image size."""
    example = torch.rand(1, 1, size[1] // 8 * 8, size[0] // 8 * 8)
    return _export(_Dense(sp), (example,), path, ["image"], ["heatmap", "descriptors"], (_image_dims(8),))


def export_network(net: nn.Module, path: str | os.PathLike, example: torch.Tensor, multiple: int = 16) -> Path:
    """ONNX graph of a one-input, one-output image network (e.g. DISK's U-Net), dynamic batch and image size
    (multiples of ``multiple``, as a U-Net needs; ``example`` must be one)."""
    return _export(net, (example,), path, ["image"], ["output"], (_image_dims(multiple),))


def quantize_static_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                         calibration: Iterable[np.ndarray], keep_float: Iterable[str] = ("convPb", "convDb"),
                         keep_last: bool = False) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of the convolutions, calibrated on the given images.

    The output layers named in ``keep_float`` (or the graph's last convolution, with ``keep_last``) stay float:
    a detector's logits and descriptors feed a softmax / normalisation whose small differences decide keypoints.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_path)).graph
    exclude = [n.name for n in graph.node if any(k in n.name or any(k in i for i in n.input) for k in keep_float)
               and n.op_type == "Conv"]
    if keep_last:
        exclude.append([n.name for n in graph.node if n.op_type == "Conv"][-1])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": np.ascontiguousarray(x, np.float32)} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=exclude, reduce_range=REDUCE_RANGE)
    return Path(int8_path)


def cpu_session(onnx: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of a graph (a file or its bytes; ``threads``: intra-op threads, default ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    model = onnx if isinstance(onnx, bytes) else str(onnx)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


_MAC_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "Gemm": (0, 1), "Conv": (0, 1), "ConvInteger": (0, 1),
            "Einsum": (0, 1)}


class _MacProbe:
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
            return name in self.const or (node is not None and node.op_type != "DynamicQuantizeLinear"
                                          and all(constant(i) for i in node.input if i))

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


class _OrtModule(nn.Module):
    """A module that runs an ONNX graph in an ONNX Runtime session. It keeps the graph's bytes: checkpoints store
    them (models/checkpoint.py) and copies (deepcopy, pickle) open a new session on them."""

    macs: list[int] | None = None  # set by onnx_macs(): [all, weighted layers'] MACs of the runs while counting
    _probe: _MacProbe | None = None

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The session's outputs on ``feed`` (counted in ``macs`` while ``onnx_macs`` is active)."""
        if self.macs is not None:
            self._probe = self._probe or _MacProbe(self.onnx_bytes)
            for i, v in enumerate(self._probe(feed)):
                self.macs[i] += v
        return self.session.run(None, feed)

    def _open(self, onnx: str | os.PathLike | bytes, threads: int | None) -> None:
        import hashlib

        self.onnx_bytes = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
        self.threads = threads
        self.session = cpu_session(self.onnx_bytes, threads)
        # the graph's hash in the state_dict, so detector fingerprints (feature caches) tell graphs apart
        digest = hashlib.sha1(self.onnx_bytes).digest()
        self.register_buffer("onnx_sha1", torch.tensor(list(digest), dtype=torch.uint8))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "_probe")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.session = cpu_session(self.onnx_bytes, self.threads)


def onnx_modules(model: nn.Module) -> dict[str, _OrtModule]:
    """The parts of ``model`` that run in ONNX Runtime, by module name (e.g. 'matcher', 'detector.unet')."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _OrtModule)}


@contextlib.contextmanager
def onnx_macs(model: nn.Module) -> Iterator[list[int]]:
    """While active, the ONNX Runtime parts of ``model`` add the multiply-accumulates of their graph runs to the
    yielded [all, layers with weights only] (PyTorch's counters do not see inside a session)."""
    parts, counted = onnx_modules(model).values(), [0, 0]
    for part in parts:
        part.macs = counted
    try:
        yield counted
    finally:
        for part in parts:
            part.macs = None


def ort_module(kind: str, original: nn.Module, onnx: bytes) -> _OrtModule:
    """Rebuild an ONNX Runtime part of class name ``kind`` in place of the PyTorch module ``original``."""
    classes = {"OrtSuperPoint": OrtSuperPoint, "OrtMatcherNet": OrtMatcherNet}
    if kind == "OrtNetwork":
        return OrtNetwork(onnx)
    if kind not in classes:
        raise ValueError(f"unknown ONNX Runtime module {kind!r}")
    return classes[kind](original, onnx)


class OrtSuperPoint(_OrtModule):
    """SuperPoint whose network runs in an ONNX Runtime session (fp32 or int8); post-processing unchanged."""

    def __init__(self, sp: nn.Module, onnx: str | os.PathLike | bytes, threads: int | None = None):
        super().__init__()
        self.sp = sp  # for config and post-processing (its weights are not used)
        self._open(onnx, threads)

    @property
    def config(self):
        return self.sp.config

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat, desc = self.run({"image": image.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(heat).to(image.device), torch.from_numpy(desc).to(image.device)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        original = self.sp.dense
        self.sp.dense = self.dense
        try:
            return self.sp(data)
        finally:
            self.sp.dense = original


class OrtNetwork(_OrtModule):
    """A one-input, one-output network run by an ONNX Runtime session (fp32 or int8) in place of PyTorch."""

    def __init__(self, onnx: str | os.PathLike | bytes, threads: int | None = None):
        super().__init__()
        self._open(onnx, threads)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        (out,) = self.run({"image": image.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(out).to(image.device)


def int8_detector(matcher: nn.Module, calibration: list[torch.Tensor], folder: str | os.PathLike,
                  threads: int | None = None, quantize: bool = True) -> nn.Module:
    """A copy of ``matcher`` whose detector network runs in ONNX Runtime, int8 (or fp32 with ``quantize=False``).

    Supports SuperPoint (its dense network) and DISK (its U-Net); post-processing stays in PyTorch.
    ``calibration``: images as the detector sees them (1×C×H×W in [0, 1]).
    """
    import copy

    folder = Path(folder)
    m = copy.deepcopy(matcher).eval()
    det = m.detector
    kind = type(det).__name__
    if kind == "SuperPoint":
        path = export_superpoint(det, folder / "superpoint.onnx", tuple(calibration[0].shape[-1:-3:-1]))
        keep = {"keep_float": ("convPb", "convDb")}
    elif kind == "DISK":  # kornia zero-pads DISK's input to multiples of 16 at the bottom and right: so here
        calibration = [F.pad(x, (0, -x.shape[-1] % 16, 0, -x.shape[-2] % 16)) for x in calibration]
        path = export_network(det.unet, folder / "disk_unet.onnx", calibration[0])
        keep = {"keep_float": (), "keep_last": True}
    else:
        raise ValueError(f"no ONNX Runtime path for a {kind} detector (SuperPoint and DISK are supported)")
    if quantize:
        path = quantize_static_onnx(path, path.with_name(path.stem + "_int8.onnx"),
                                    [x.cpu().numpy() for x in calibration], **keep)
    if kind == "SuperPoint":
        m.detector = OrtSuperPoint(det, path, threads)
    else:
        det.unet = OrtNetwork(path, threads)
    m.onnx_path = path
    return m


class _LightGlueNet(nn.Module):
    """kornia LightGlue as a fixed graph: normalized keypoints and descriptors -> log assignment (all layers run:
    early stopping and point pruning are data-dependent control flow, which a graph cannot hold)."""

    def __init__(self, lg: nn.Module):
        super().__init__()
        self.lg = lg

    def forward(self, kpts0, kpts1, desc0, desc1):
        lg = self.lg
        desc0, desc1 = lg.input_proj(desc0), lg.input_proj(desc1)
        enc0, enc1 = lg.posenc(kpts0), lg.posenc(kpts1)
        for layer in lg.transformers:
            desc0, desc1 = layer(desc0, desc1, enc0, enc1)
        return lg.log_assignment[-1](desc0, desc1)[0]


class _SuperGlueNet(nn.Module):
    def __init__(self, sg: nn.Module):
        super().__init__()
        self.sg = sg

    def forward(self, kpts0, kpts1, scores0, scores1, desc0, desc1):
        return self.sg.assign(kpts0, kpts1, scores0, scores1, desc0, desc1)


def _lightglue_inputs(data: dict) -> dict[str, torch.Tensor]:
    from kornia.feature.lightglue import normalize_keypoints

    out = {}
    for i in (0, 1):
        d = data[f"image{i}"]
        out[f"kpts{i}"] = normalize_keypoints(d["keypoints"], d["image_size"])
        out[f"desc{i}"] = d["descriptors"]
    return out


def _superglue_inputs(data: dict) -> dict[str, torch.Tensor]:
    from models.superglue import image_size, normalize_keypoints

    out = {f"kpts{i}": normalize_keypoints(data[f"keypoints{i}"], image_size(data, i, data[f"keypoints{i}"]))
           for i in (0, 1)}
    out.update({f"scores{i}": data[f"scores{i}"] for i in (0, 1)})
    out.update({f"desc{i}": data[f"descriptors{i}"] for i in (0, 1)})
    return out


# per matcher network: graph wrapper, its input names with the axis that counts keypoints, inputs from the data
_MATCHER_GRAPHS = {
    "LightGlue": (_LightGlueNet, {"kpts0": 1, "kpts1": 1, "desc0": 1, "desc1": 1}, _lightglue_inputs),
    "SuperGlue": (_SuperGlueNet, {"kpts0": 1, "kpts1": 1, "scores0": 1, "scores1": 1, "desc0": 2, "desc1": 2},
                  _superglue_inputs),
}


def matcher_feed(kind: str, data: dict) -> dict[str, np.ndarray]:
    """The graph inputs of a ``kind`` network ('LightGlue', 'SuperGlue') for the data dict it is called with."""
    return {k: v.detach().cpu().float().numpy() for k, v in _MATCHER_GRAPHS[kind][2](data).items()}


def export_matcher(net: nn.Module, path: str | os.PathLike, example: dict[str, torch.Tensor]) -> Path:
    """ONNX graph of a matcher network (LightGlue or SuperGlue), any number of keypoints per image; constants
    folded so that every weight is an initializer the quantizer can see."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    wrapper, axes, _ = _MATCHER_GRAPHS[type(net).__name__]
    path = Path(path)
    m, n = torch.export.Dim("m", min=2, max=1 << 16), torch.export.Dim("n", min=2, max=1 << 16)
    shapes = tuple({axis: (m if name.endswith("0") else n)} for name, axis in axes.items())
    raw = _export(wrapper(net), tuple(example[k] for k in axes), path.with_name(path.stem + "_raw.onnx"),
                  list(axes), ["log_assignment"], shapes)
    quant_pre_process(str(raw), str(path), skip_symbolic_shape=True)
    raw.unlink()
    model = onnx.load(str(path))
    _share_equal_weights(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _share_equal_weights(graph) -> None:
    """One initializer for equal constants. Folding batch norms into the convolutions copies the weights of a
    layer once per call (SuperGlue runs each layer on both images): without this its graph is 1.4x larger."""
    import hashlib

    from onnx import numpy_helper

    first, rename, keep = {}, {}, []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        key = (array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)


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


def quantize_matcher_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                          calibration: Iterable[dict[str, np.ndarray]] | None = None) -> Path:
    """int8 weights for every MatMul/Conv with a weight (per channel), except the layers that read keypoint
    coordinates; products of two activations stay float.

    With ``calibration`` (graph inputs of sample pairs): static QDQ with calibrated uint8 activations; without:
    dynamic quantization (activation ranges measured on every call).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    graph = onnx.load(str(fp32_path)).graph
    weights = {i.name for i in graph.initializer}
    ops = ["MatMul", "Conv"]
    exclude = [n.name for n in graph.node if n.op_type in ops and not any(i in weights for i in n.input)]
    exclude += coordinate_layers(graph)
    if calibration is None:
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=ops, nodes_to_exclude=exclude, reduce_range=REDUCE_RANGE)
        return Path(int8_path)
    items = iter(list(calibration))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(items, None)

    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=ops,
                    nodes_to_exclude=exclude, reduce_range=REDUCE_RANGE)
    return Path(int8_path)


class OrtMatcherNet(_OrtModule):
    """A LightGlue or SuperGlue whose network runs in an ONNX Runtime session; same inputs and outputs.

    Matches are read from the log assignment as the PyTorch module reads them (LightGlue: its
    ``filter_threshold``, all layers run; SuperGlue: mutual nearest neighbours above ``match_threshold``).
    ``net``: the PyTorch module, for its settings only (its weights are not used).
    """

    def __init__(self, net: nn.Module, onnx: str | os.PathLike | bytes, threads: int | None = None):
        super().__init__()
        self.net = net
        self.kind = type(net).__name__
        self._open(onnx, threads)

    @property
    def conf(self):  # LightGlue's settings
        return self.net.conf

    @property
    def config(self):  # SuperGlue's settings
        return self.net.config

    def forward(self, data: dict) -> dict:
        feed = matcher_feed(self.kind, data)
        (b, m), n = feed["kpts0"].shape[:2], feed["kpts1"].shape[1]
        device = self.onnx_sha1.device  # follows .to()
        if not (m and n):  # nothing to match: every keypoint goes to the dustbin with certainty
            none = lambda k: torch.full((b, k), -1, dtype=torch.long, device=device)  # noqa: E731
            return {"log_assignment": torch.zeros((b, m + 1, n + 1), device=device), "matches0": none(m),
                    "matches1": none(n), "matching_scores0": torch.zeros((b, m), device=device),
                    "matching_scores1": torch.zeros((b, n), device=device)}
        scores = torch.from_numpy(self.run(feed)[0]).to(device)
        if self.kind == "SuperGlue":
            from models.superglue import matches_from_log_assignment

            return {**matches_from_log_assignment(scores, self.net.config["match_threshold"]),
                    "log_assignment": scores}
        from kornia.feature.lightglue import filter_matches

        m0, m1, s0, s1 = filter_matches(scores, self.net.conf.filter_threshold)
        return {"log_assignment": scores, "matches0": m0, "matches1": m1, "matching_scores0": s0,
                "matching_scores1": s1}


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


def int8_matcher(matcher: nn.Module, calibration: list[dict], folder: str | os.PathLike,
                 threads: int | None = None, mode: str = "auto") -> nn.Module:
    """A copy of ``matcher`` whose matcher network (SuperGlue, LightGlue) runs in ONNX Runtime.

    ``mode``: 'dynamic' (int8 weights, activations quantized per call), 'static' (activations calibrated on
    ``calibration``: the data dicts the network receives for a few sample pairs), 'fp32' (no quantization) or
    'auto': the faster int8 mode measured on CPU (benchmarks/int8_matcher.py): static for SuperGlue (its 1×1
    convolutions become QLinearConv; dynamic ConvInteger is slower than fp32), dynamic for LightGlue (MatMulInteger).
    """
    import copy

    if mode not in ("auto", "dynamic", "static", "fp32"):
        raise ValueError(f"int8 matcher mode must be auto, dynamic, static or fp32, got {mode!r}")
    m = copy.deepcopy(matcher).eval()
    net = m.matcher
    kind = type(net).__name__
    if kind not in _MATCHER_GRAPHS:
        raise ValueError(f"no ONNX Runtime path for a {kind} matcher (SuperGlue and LightGlue are supported)")
    if mode == "auto":
        mode = "static" if kind == "SuperGlue" else "dynamic"
    if not calibration:
        raise ValueError("int8_matcher needs at least one sample pair's data to trace the graph")
    with torch.no_grad():
        path = export_matcher(net, Path(folder) / f"{kind.lower()}.onnx", _MATCHER_GRAPHS[kind][2](calibration[0]))
    if mode != "fp32":
        feeds = [matcher_feed(kind, d) for d in calibration]
        path = quantize_matcher_onnx(path, path.with_name(f"{path.stem}_int8_{mode}.onnx"),
                                     feeds if mode == "static" else None)
    m.matcher = OrtMatcherNet(net, path, threads)
    m.onnx_path = path
    return m
