"""Pruning toolkit: fine-grained magnitude pruning, channel pruning, sensitivity scans. Transforms models only.

Importing it imports each of its modules, so their compression methods register ('fine-grained', 'channel').
"""

import importlib
import pkgutil

# every module of the package, so that a new one registers by existing
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
