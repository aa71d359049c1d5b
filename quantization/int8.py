"""Real int8 execution on CPU through ONNX Runtime: export a network's dense part, quantize it statically
(QDQ, per-channel int8 weights, uint8 activations calibrated on sample images) and run it in place of
PyTorch. Fake quantization is never faster; this is the backend that is.

Why ONNX Runtime: torch.ao.quantization is deprecated, torchao's PT2E flow needs torch.compile lowering and
does not cover Conv1d; ORT's int8 Conv/MatMul kernels use VNNI on these CPUs (see benchmarks/int8_superpoint.py).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


class _Dense(nn.Module):
    def __init__(self, sp: nn.Module):
        super().__init__()
        self.sp = sp

    def forward(self, image: torch.Tensor):
        return self.sp.dense(image)


def export_superpoint(sp: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (640, 480)) -> Path:
    """ONNX graph of SuperPoint's network (image -> heatmap, descriptors), dynamic image size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 1, size[1], size[0])
    torch.onnx.export(_Dense(sp).eval(), (example,), str(path), input_names=["image"],
                      output_names=["heatmap", "descriptors"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "heatmap": {0: "b", 1: "H", 2: "W"},
                                    "descriptors": {0: "b", 2: "h8", 3: "w8"}})
    return path


def export_network(net: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """ONNX graph of a one-input, one-output image network (e.g. DISK's U-Net), dynamic batch and image size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net.eval(), (example,), str(path), input_names=["image"], output_names=["output"],
                      opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "output": {0: "b", 2: "h", 3: "w"}})
    return path


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
                    nodes_to_exclude=exclude)
    return Path(int8_path)


def cpu_session(onnx_path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session of a graph (``threads``: intra-op threads, default ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _identify(module: nn.Module, onnx_path: str | os.PathLike) -> None:
    """Put the ONNX file's hash in the state_dict, so detector fingerprints (feature caches) tell graphs apart."""
    import hashlib

    digest = hashlib.sha1(Path(onnx_path).read_bytes()).digest()
    module.register_buffer("onnx_sha1", torch.tensor(list(digest), dtype=torch.uint8))


class OrtSuperPoint(nn.Module):
    """SuperPoint whose network runs in an ONNX Runtime session (fp32 or int8); post-processing unchanged."""

    def __init__(self, sp: nn.Module, onnx_path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.session = cpu_session(onnx_path, threads)
        self.sp = sp  # for config and post-processing
        _identify(self, onnx_path)

    @property
    def config(self):
        return self.sp.config

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat, desc = self.session.run(None, {"image": image.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(heat).to(image.device), torch.from_numpy(desc).to(image.device)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        original = self.sp.dense
        self.sp.dense = self.dense
        try:
            return self.sp(data)
        finally:
            self.sp.dense = original


class OrtNetwork(nn.Module):
    """A one-input, one-output network run by an ONNX Runtime session (fp32 or int8) in place of PyTorch."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.session = cpu_session(onnx_path, threads)
        _identify(self, onnx_path)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {"image": image.detach().cpu().numpy().astype(np.float32)})
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
    elif kind == "DISK":
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
