"""Float16 for the small float tensors of a network: biases, norms, batch-norm statistics and k-means codebooks.

Deep Compression's files are mostly codes; what is left in float32 (LightGlue's biases and layer norms, ALIKED's
batch norms, every codebook) becomes a visible share of a 20× smaller file. ``half_floats`` rounds those tensors to
float16 values in place (they stay float32 tensors, so every kernel runs as before); checkpoints then store them in
float16 and give back the very same values (compression/coding.py). Weight tensors (two or more dimensions) are left
as they are: they are the ones that would lose accuracy, and pruning or k-means is what shrinks them.
"""

from __future__ import annotations

import torch
from torch import nn

from compression.methods import Job, register_method
from compression.state import compressed_layers


@torch.no_grad()
def half_floats(model: nn.Module) -> int:
    """Round ``model``'s small float tensors to float16 values in place; returns how many tensors it rounded."""
    rounded = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and t.ndim <= 1:  # biases, norms, statistics, scalars
            t.copy_(t.half().float())
            rounded += 1
    for _, layer, found in compressed_layers(model):
        codebook = found.get("kmeans")
        if codebook is not None:  # shared values: the codebook in float16, the weight it describes again
            codebook.codebook.copy_(codebook.codebook.half().float())
            layer.weight.copy_(codebook.values(layer.weight))
            rounded += 1
        grid = found.get("linear")
        if grid is not None:  # its scales in float16: the weight on that grid again (the same codes)
            grid.snap(layer)
    return rounded


@register_method("half-floats")
def half_floats_method(job: Job) -> None:
    """Biases, norms and codebooks of the whole pipeline in float16 values (a last step after pruning and k-means:
    they are a share of the file, whichever part the variant compresses)."""
    half_floats(job.matcher)
