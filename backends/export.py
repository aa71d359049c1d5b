"""ONNX export of the networks that run in a runtime backend (ONNX Runtime reads these graphs; OpenVINO can too).

Which module is exported and with which inputs comes from the network's adapter (models/graphs.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.graphs import DetectorGraph, MatcherGraph, graph_adapter, supported


def export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict, ...],
    optimize: bool = True,
    opset: int = 18,
) -> Path:
    """ONNX graph of ``module`` in one file, by the torch.export-based exporter (``dynamo=True``); ``optimize``:
    onnxscript's graph optimizer (constant folding, rewrites); ``opset``: the ONNX opset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    optimizer = logging.getLogger("onnxscript")  # its notes on folds it skips: noise to a user, kept with DEBUG on
    level = optimizer.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        optimizer.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # "axis name m will not be used": inputs that share a dimension, as meant
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
            program = torch.onnx.export(
                module.eval(),
                example,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                opset_version=opset,
                verbose=False,
                optimize=optimize,
            )
    finally:
        optimizer.setLevel(level)
    program.save(str(path), external_data=False)
    return path


def _image_dims(multiple: int) -> dict[int, Any]:
    """Dynamic batch, height and width (multiples of ``multiple``) of an N×C×H×W image input."""
    dim = torch.export.Dim
    return {
        0: dim("b", min=1, max=1024),
        2: multiple * dim("hk", min=1, max=4096),
        3: multiple * dim("wk", min=1, max=4096),
    }


def export_detector(detector: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """ONNX graph of a detector's dense network (its adapter's: image -> outputs), dynamic batch and image size
    (multiples of the adapter's ``multiple``; ``example``, an image, is cropped to one)."""
    adapter = graph_adapter(detector, DetectorGraph)
    if adapter is None:
        raise ValueError(
            f"no graph adapter for a {type(detector).__name__} detector ({supported(DetectorGraph)} have one)"
        )
    k = adapter.multiple
    example = example[..., : example.shape[-2] // k * k, : example.shape[-1] // k * k]
    return export(
        adapter.network(detector),
        (example,),
        path,
        ["image"],
        list(adapter.outputs),
        (_image_dims(k),),
        opset=adapter.opset,
    )


def export_matcher(
    net: nn.Module, adapter: MatcherGraph, path: str | os.PathLike, example: dict[str, torch.Tensor]
) -> Path:
    """ONNX graph of a matching network, any number of keypoints per image; constants folded so that every weight
    is an initializer a quantizer can see. ``example``: graph inputs (``adapter.feed`` of a data dict)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    m, n = torch.export.Dim("m", min=2, max=1 << 16), torch.export.Dim("n", min=2, max=1 << 16)
    axes = adapter.axes
    shapes = tuple({axis: (m if name.endswith("0") else n)} for name, axis in axes.items())
    raw = export(
        adapter.wrapper(net),
        tuple(example[k] for k in axes),
        path.with_name(path.stem + "_raw.onnx"),
        list(axes),
        ["log_assignment"],
        shapes,
        # onnxscript's optimizer took 60 % of a LightGlue export (59 s -> 33 s without it, 9 layers): ONNX Runtime's
        # optimizer in quant_pre_process folds the same constants (the graph came out 0.3 % larger)
        optimize=False,
    )
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
