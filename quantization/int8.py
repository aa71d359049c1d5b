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


def quantize_static_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                         calibration: Iterable[np.ndarray], keep_float: Iterable[str] = ("convPb", "convDb")) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of the convolutions, calibrated on the given images.

    The output layers named in ``keep_float`` stay float: the detector's 65-way logits and the descriptors
    feed a softmax / normalisation whose small differences decide keypoints.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_path)).graph
    exclude = [n.name for n in graph.node if any(k in n.name or any(k in i for i in n.input) for k in keep_float)
               and n.op_type == "Conv"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": np.ascontiguousarray(x, np.float32)} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=exclude)
    return Path(int8_path)


class OrtSuperPoint(nn.Module):
    """SuperPoint whose network runs in an ONNX Runtime session (fp32 or int8); post-processing unchanged."""

    def __init__(self, sp: nn.Module, onnx_path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.sp = sp  # for config and post-processing

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
