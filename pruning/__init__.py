"""Pruning toolkit: fine-grained magnitude pruning, channel pruning, sensitivity scans. Transforms models only.

Importing it registers its compression methods ('fine-grained', 'channel') with compression.methods.
"""

from . import channel, fine_grained  # noqa: F401
