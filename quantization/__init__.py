"""Quantization toolkit: k-means weight sharing, linear (integer-grid) quantization, real int8 through ONNX Runtime.

Importing it imports each of its modules, so their compression methods register ('kmeans', 'linear-int8',
'int8-onnxruntime').
"""

import importlib
import pkgutil

# every module of the package, so that a new one registers by existing
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
