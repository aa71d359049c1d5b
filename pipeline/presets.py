"""The ready pipelines users load by name (``efm.load("fast")``): each the demo experiment's dense pipeline or one of
its variants (configs/demo.yaml), so that the demo's report is their measurement (the README's table)."""

from __future__ import annotations

PRESETS: dict[str, str | None] = {  # preset -> the demo's variant it is (None: the dense pipeline)
    "accurate": None,  # ALIKED + LightGlue with LightGlue's shipped adaptive depth and width
    "fast": "detector-onnxruntime",  # ALIKED's dense part as an fp32 ONNX Runtime graph: the same detections
    "small": "int8-onnxruntime",  # LightGlue as an int8 ONNX Runtime graph: a small file (it runs every layer)
}
