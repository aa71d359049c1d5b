"""Deterministic, machine-independent weights for equivalence tests (no official weights needed)."""

from __future__ import annotations

import numpy as np
import torch


def generated_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A plausible state_dict for the given key -> shape table: He-uniform weights, small biases, sane BN stats.

    Built from numpy's PCG64 uniform stream, which is stable across machines and versions, so the
    reference fixtures (made with the official code) and the tests see the same numbers.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0, dtype=torch.long)
            continue
        u = rng.random(int(np.prod(shape, dtype=np.int64)))
        if name.endswith("running_var"):
            values = 0.5 + u
        elif name.endswith("running_mean"):
            values = 0.2 * (2 * u - 1)
        elif len(shape) == 0:  # SuperGlue's dustbin score
            values = 1.0 + 0 * u
        elif len(shape) == 1 and name.endswith("weight"):  # BatchNorm scale
            values = 0.5 + u
        elif len(shape) == 1:  # biases
            values = 0.1 * (2 * u - 1)
        else:
            fan_in = int(np.prod(shape[1:]))
            values = (2 * u - 1) * np.sqrt(6.0 / fan_in)
        state[name] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return state


def generated_superglue_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Generated SuperGlue weights in a regime that really matches: a damped GNN and a near-identity projection.

    Plain He-initialised weights make the 18-layer residual stream explode (log assignments of 1e16) and
    give no matches, which would make an equivalence test vacuous.
    """
    state = generated_state_dict(shapes, seed)
    for name, value in state.items():
        if value.ndim >= 2:
            value.mul_(0.3)
    proj = state["final_proj.weight"]
    proj[:, :, 0] += 3.0 * proj.shape[0] ** 0.25 * torch.eye(proj.shape[0])  # scores ~ 9 cos(d0, d1)
    return state
