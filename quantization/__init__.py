"""Quantization toolkit: k-means weight sharing, linear (integer-grid) quantization, real int8 through ONNX Runtime.

Importing it registers its compression methods ('kmeans', 'linear-int8', 'int8-onnxruntime').
"""

from . import int8, kmeans, linear  # noqa: F401
