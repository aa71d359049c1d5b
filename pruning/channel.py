"""Channel (structured) pruning: smaller dense networks, so MACs, latency and file size all fall.

Importance is the L2 norm of what a channel feeds (the next layers' input slices, as in the efficientml.ai
lab), summed over every consumer, or the same norm of first-order Taylor scores (w · dL/dw)² accumulated on
data (``taylor_scores``); the kept channels are taken in order of importance (the lab's reordering).
Layers are replaced by smaller ones; head counts and dims are updated on the modules and recorded by the
checkpoint format, which rebuilds them on load.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping, Sequence, Union

import torch
from kornia.feature import ALIKED, LightGlue
from torch import nn

from compression.methods import Job, register_method
from compression.tensors import resized
from helper import Check, InputError
from models.superglue import SuperGlue
from models.superpoint import SuperPoint

logger = logging.getLogger(__name__)

Ratio = Union[float, Mapping[str, float]]
Scores = Mapping[nn.Module, torch.Tensor]  # per-weight importance (e.g. Taylor); None means the weights' L2 norm


def _slice(layer: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A copy of a Conv1d/Conv2d/Linear layer keeping the given output and input channels."""
    w = layer.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new = resized(layer, w.shape)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach() if out_idx is None else layer.bias.detach()[out_idx])
    return new.train(layer.training)


def _slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A BatchNorm or LayerNorm keeping channels ``idx`` (statistics and affine parameters)."""
    new = resized(norm, (len(idx),))
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(norm, name, None)
            if src is not None:
                getattr(new, name).copy_(src.detach()[idx])
        if getattr(norm, "num_batches_tracked", None) is not None:
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new.train(norm.training)


def _values(layer: nn.Module, scores: Scores | None) -> torch.Tensor:
    """What importance is read from: the weights (L2 criterion) or accumulated Taylor scores (their sqrt)."""
    return layer.weight.detach() if scores is None else scores[layer].sqrt()


def input_importance(consumers: Sequence[nn.Module], scores: Scores | None = None) -> torch.Tensor:
    """L2 norm of each input channel's weights (or scores), summed over the layers that read the channel."""
    total = 0
    for layer in consumers:
        w = _values(layer, scores)
        total = total + w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return total


def taylor_scores(model: nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int) -> dict[nn.Module, torch.Tensor]:
    """First-order Taylor importance: (w · dL/dw)² per weight, summed over ``steps`` calls of ``loss_fn``."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    scores = {m: torch.zeros_like(m.weight) for m in layers}
    with torch.enable_grad():
        for _ in range(steps):
            model.zero_grad()
            loss_fn().backward()
            for m in layers:
                if m.weight.grad is not None:
                    scores[m] += (m.weight.detach() * m.weight.grad) ** 2
    model.zero_grad()
    return scores


def keep_count(n: int, ratio: float) -> int:
    """Channels kept when pruning ``ratio`` of ``n`` (at least one)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"channel pruning ratio must be in [0, 1), got {ratio}")
    return max(1, int(round(n * (1 - ratio))))


def top_channels(importance: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.argsort(importance, descending=True, stable=True)[:keep]


def _ratio(spec: Ratio, name: str, default: float = 0.0) -> float:
    return float(spec) if isinstance(spec, (int, float)) else float(spec.get(name, default))


# ----------------------------------------------------------------------------- SuperPoint

SUPERPOINT_LAYERS = ("conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b", "convPa", "convDa")


def _superpoint_consumers(name: str) -> tuple[str, ...]:
    chain = SUPERPOINT_LAYERS[:8]
    if name == "conv4b":
        return ("convPa", "convDa")  # both heads read the encoder output: cut consistently
    if name == "convPa":
        return ("convPb",)
    if name == "convDa":
        return ("convDb",)
    return (chain[chain.index(name) + 1],)


PRUNERS: dict[type, Callable[..., object]] = {}


def channel_pruner(network: type) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: ``fn(net, ratio, scores=None)`` channel-prunes networks of class ``network`` (and subclasses)."""

    def decorate(fn: Callable[..., object]) -> Callable[..., object]:
        PRUNERS[network] = fn
        return fn

    return decorate


def prune_channels(net: nn.Module, ratio: Ratio, scores: Scores | None = None) -> object:
    """Structured channel pruning of ``net`` by the pruner registered for its class."""
    pruner = next((PRUNERS[c] for c in type(net).__mro__ if c in PRUNERS), None)
    if pruner is None:
        raise InputError(f"channel pruning supports {', '.join(c.__name__ for c in PRUNERS)}, not {type(net).__name__}")
    return pruner(net, ratio, scores)


@channel_pruner(SuperPoint)
def prune_superpoint_channels(sp: nn.Module, ratio: Ratio, scores: Scores | None = None) -> dict[str, int]:
    """Remove ``ratio`` of the output channels of SuperPoint's encoder convs and head hidden layers, in place.

    ``ratio`` is one fraction for every layer or a dict layer -> fraction. The 65 detector outputs and the
    descriptor dimension stay. Returns the kept channel count of each layer.
    """
    kept = {}
    for name in SUPERPOINT_LAYERS:
        r = _ratio(ratio, name)
        layer = getattr(sp, name)
        if r == 0:
            kept[name] = layer.out_channels
            continue
        consumers = _superpoint_consumers(name)
        idx = top_channels(
            input_importance([getattr(sp, c) for c in consumers], scores), keep_count(layer.out_channels, r)
        )
        setattr(sp, name, _slice(layer, out_idx=idx))
        for c in consumers:
            setattr(sp, c, _slice(getattr(sp, c), in_idx=idx))
        kept[name] = len(idx)
    return kept


# ----------------------------------------------------------------------------- ALIKED (kornia's, or models/aliked.py)


def _cut(owner: nn.Module, attr: str, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    layer = getattr(owner, attr)
    if hasattr(layer, "regular_conv"):  # a deformable conv: its outputs are regular_conv's, its inputs both read
        if out_idx is not None:
            _cut(layer, "regular_conv", out_idx=out_idx)
        if in_idx is not None:
            _cut(layer, "regular_conv", in_idx=in_idx)
            _cut(layer, "offset_conv", in_idx=in_idx)
        return
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        setattr(owner, attr, _slice_norm(layer, out_idx))
    else:
        setattr(owner, attr, _slice(layer, out_idx=out_idx, in_idx=in_idx))


def aliked_groups(net: nn.Module) -> dict[str, tuple[list[tuple[nn.Module, str]], list[tuple[nn.Module, str]]]]:
    """ALIKED's prunable channel groups: name -> (the layers that make the channels, those that read them).

    ``blockN.mid`` is the hidden width of block N, ``blockN`` its output (for the residual blocks, the sum of its
    second conv and its 1×1 shortcut, cut with one index). The four 1×1 projections to the descriptor map, the score
    head and SDDH keep their widths: the map they make is what the pretrained LightGlue reads."""
    blocks = [net.block1, net.block2, net.block3, net.block4]
    groups = {}
    for i, block in enumerate(blocks, start=1):
        groups[f"block{i}.mid"] = ([(block, "conv1"), (block, "bn1")], [(block, "conv2")])
        makers = [(block, "conv2"), (block, "bn2")] + ([(block, "downsample")] if i > 1 else [])
        readers = [(net, f"conv{i}")]
        if i < 4:
            readers += [(blocks[i], "conv1"), (blocks[i], "downsample")]
        groups[f"block{i}"] = (makers, readers)
    return groups


def _reader_layers(readers: list[tuple[nn.Module, str]]) -> list[nn.Module]:
    layers = []
    for owner, attr in readers:
        layer = getattr(owner, attr)
        layers += [layer.regular_conv, layer.offset_conv] if hasattr(layer, "regular_conv") else [layer]
    return layers


@channel_pruner(ALIKED)
def prune_aliked_channels(net: nn.Module, ratio: Ratio, scores: Scores | None = None) -> dict[str, int]:
    """Remove ``ratio`` of the channels of each of ALIKED's groups (``aliked_groups``), in place.

    ``ratio``: one fraction for every group or a dict group -> fraction ('block2', 'block1.mid', …). A channel's
    importance is the L2 norm of the weights that read it. Returns the kept channel count of each group."""
    if isinstance(ratio, Mapping):
        unknown = set(ratio) - set(aliked_groups(net))
        if unknown:
            raise InputError(
                f"ALIKED has no channel group {sorted(unknown)[0]!r} (its groups: {', '.join(aliked_groups(net))})"
            )
    kept = {}
    for name, (makers, readers) in aliked_groups(net).items():
        first = getattr(*makers[0])
        channels = (first.regular_conv if hasattr(first, "regular_conv") else first).out_channels
        r = _ratio(ratio, name)
        if r == 0:
            kept[name] = channels
            continue
        idx = top_channels(input_importance(_reader_layers(readers), scores), keep_count(channels, r))
        for owner, attr in makers:
            _cut(owner, attr, out_idx=idx)
        for owner, attr in readers:
            _cut(owner, attr, in_idx=idx)
        kept[name] = len(idx)
    return kept


# ----------------------------------------------------------------------------- SuperGlue


def _prune_mlp_hidden(mlp: nn.Sequential, conv_index: int, ratio: float, scores: Scores | None = None) -> int:
    """Prune the output channels of ``mlp[conv_index]`` (followed by BatchNorm, ReLU and the next conv)."""
    conv, norm, nxt = mlp[conv_index], mlp[conv_index + 1], mlp[conv_index + 3]
    idx = top_channels(input_importance([nxt], scores), keep_count(conv.out_channels, ratio))
    mlp[conv_index] = _slice(conv, out_idx=idx)
    mlp[conv_index + 1] = _slice_norm(norm, idx)
    mlp[conv_index + 3] = _slice(nxt, in_idx=idx)
    return len(idx)


def prune_attention(
    attn: nn.Module, dim_ratio: float = 0.0, head_ratio: float = 0.0, scores: Scores | None = None
) -> tuple[int, int]:
    """Prune per-head dims and/or whole heads of an official-layout MultiHeadedAttention, in place.

    Channel c belongs to head c % heads at position c // heads (``view(b, dim, heads, n)``), so q, k, v and
    merge are cut with one index list in that layout. Queries are rescaled so that the attention's
    1/sqrt(dim) temperature is unchanged. Returns (heads, dim) after pruning.
    """
    heads, dim = attn.num_heads, attn.dim
    q, k, v = attn.proj
    score = sum(_values(layer, scores).reshape(layer.weight.shape[0], -1).norm(dim=1) ** 2 for layer in (q, k, v))
    score = (score + _values(attn.merge, scores).reshape(attn.merge.weight.shape[0], -1).norm(dim=0) ** 2).sqrt()
    per_head = score.view(dim, heads)  # [position j, head h] = channel j * heads + h
    new_heads = keep_count(heads, head_ratio)
    head_keep = torch.sort(top_channels(per_head.sum(0), new_heads)).values
    new_dim = keep_count(dim, dim_ratio)
    positions = [torch.sort(top_channels(per_head[:, h], new_dim)).values for h in head_keep.tolist()]
    idx = torch.tensor(
        [positions[i][j].item() * heads + h for j in range(new_dim) for i, h in enumerate(head_keep.tolist())]
    )
    new_q = _slice(q, out_idx=idx)
    with torch.no_grad():  # keep q·k / sqrt(dim) at the same scale with the smaller dim
        new_q.weight.mul_(math.sqrt(new_dim / dim))
        if new_q.bias is not None:
            new_q.bias.mul_(math.sqrt(new_dim / dim))
    attn.proj = nn.ModuleList([new_q, _slice(k, out_idx=idx), _slice(v, out_idx=idx)])
    attn.merge = _slice(attn.merge, in_idx=idx)
    attn.num_heads, attn.dim = new_heads, new_dim
    return new_heads, new_dim


@channel_pruner(SuperGlue)
def prune_superglue_channels(sg: nn.Module, ratio: Ratio, scores: Scores | None = None) -> dict[str, object]:
    """Channel-prune SuperGlue in place: keypoint-encoder hidden layers, GNN MLP hidden widths, attention.

    ``ratio``: one fraction for kenc, mlp and per-head attention dims, or a dict with any of 'kenc', 'mlp',
    'attn_dim', 'heads'. The residual width (descriptor_dim) is left intact. Returns the new widths.
    """
    out: dict[str, object] = {}
    r_kenc, r_mlp = _ratio(ratio, "kenc"), _ratio(ratio, "mlp")
    r_dim, r_heads = _ratio(ratio, "attn_dim"), _ratio(ratio, "heads")
    enc = sg.kenc.encoder
    convs = [i for i, m in enumerate(enc) if isinstance(m, nn.Conv1d)]
    if r_kenc:
        out["kenc"] = [_prune_mlp_hidden(enc, i, r_kenc, scores) for i in convs[:-1]]
    widths, attn = [], []
    for layer in sg.gnn.layers:
        if r_mlp:
            widths.append(_prune_mlp_hidden(layer.mlp, 0, r_mlp, scores))
        if r_dim or r_heads:
            attn.append(prune_attention(layer.attn, r_dim, r_heads, scores))
    out.update(mlp=widths, attention=attn)
    return out


# ----------------------------------------------------------------------------- LightGlue (kornia)


@channel_pruner(LightGlue)
def prune_lightglue_ffn(lightglue: nn.Module, ratio: float, scores: Scores | None = None) -> list[int]:
    """Prune the hidden width (2d) of every feed-forward block of a kornia LightGlue, in place."""
    ratio = float(ratio)
    widths = []
    for layer in lightglue.transformers:
        for block in (layer.self_attn, layer.cross_attn):
            ffn = block.ffn
            idx = top_channels(input_importance([ffn[3]], scores), keep_count(ffn[0].out_features, ratio))
            ffn[0], ffn[1], ffn[3] = _slice(ffn[0], out_idx=idx), _slice_norm(ffn[1], idx), _slice(ffn[3], in_idx=idx)
            widths.append(len(idx))
    return widths


FRACTIONS = Check(kind=(float, dict), lo=0, hi=1, open=True, values=Check(kind=float, lo=0, hi=1, open=True))


@register_method("channel", settings={"ratio": 0.5}, checks={"ratio": FRACTIONS}, needs=("ratio",))
def channel_method(job: Job) -> None:
    """Structured pruning of the part's channels (a smaller dense network: fewer MACs, less time)."""
    prune_channels(job.net, job.spec["ratio"])
