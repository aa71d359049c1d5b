"""What every compression method shares: the per-layer state objects, the method registry and tensor helpers.

The toolkits (``pruning/``, ``quantization/``) build on this package and register their methods here; the
pipeline (experiments, finetuning, checkpoints) talks to these registries only. See docs/ARCHITECTURE.md.
"""
