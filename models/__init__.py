"""Feature matchers: SuperPoint, SuperGlue, the offline zoo and the Matcher interface they share.

Importing the package imports each of its modules, so every matcher of the zoo registers
(``models.matching.register_matcher``) and every network's graph adapter too (``models.graphs``).
"""

import importlib
import pkgutil

# every module of the package, so that a new one registers by existing
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
