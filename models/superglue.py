"""SuperGlue matcher, state_dict-compatible with the official ``superglue_{indoor,outdoor}.pth``.

Sarlin, DeTone, Malisiewicz, Rabinovich: SuperGlue: Learning Feature Matching with Graph Neural Networks,
CVPR 2020. Besides the official outputs, ``forward`` returns ``log_assignment`` (B×(M+1)×(N+1), dustbins
included), which training needs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .graphs import MatcherGraph, register_graph
from .weights import load_weights


def MLP(channels: list[int], do_bn: bool = True) -> nn.Sequential:
    """1×1 Conv1d layers with BatchNorm and ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[i - 1], channels[i], kernel_size=1, bias=True))
        if i < len(channels) - 1:
            if do_bn:
                layers.append(nn.BatchNorm1d(channels[i]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def image_size(data: dict[str, Any], i: int, like: torch.Tensor) -> torch.Tensor:
    """(W, H) of image ``i`` from ``image{i}`` (…×H×W) or ``image_size{i}`` ((W, H) or B×2, equal over the batch)."""
    if f"image{i}" in data:
        h, w = data[f"image{i}"].shape[-2:]
        return like.new_tensor([w, h])
    size = torch.as_tensor(data[f"image_size{i}"]).to(like)
    return size.reshape(-1, 2)[0]


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Centre B×N×2 pixel keypoints and scale by 0.7 × the longer side of the (W, H) image, as the official code."""
    center = size / 2
    scaling = size.max() * 0.7
    return (kpts - center) / scaling


class KeypointEncoder(nn.Module):
    """MLP lifting (x, y, score) to the descriptor dimension."""

    def __init__(self, feature_dim: int, layers: list[int]):
        super().__init__()
        self.encoder = MLP([3] + list(layers) + [feature_dim])
        nn.init.constant_(self.encoder[-1].bias, 0.0)

    def forward(self, kpts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([kpts.transpose(1, 2), scores.unsqueeze(1)], dim=1))


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention on B×dim×heads×N tensors (the official layout)."""
    dim = query.shape[1]
    scores = torch.einsum("bdhn,bdhm->bhnm", query, key) / dim**0.5
    prob = F.softmax(scores, dim=-1)
    return torch.einsum("bhnm,bdhm->bdhn", prob, value), prob


class MultiHeadedAttention(nn.Module):
    """Multi-head attention with 1×1 Conv1d projections.

    Heads are interleaved as in the official code: ``view(b, dim, heads, n)`` puts channel c in head
    c mod heads. Pruning must cut q, k, v and merge consistently in this layout.
    """

    def __init__(self, num_heads: int, d_model: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.dim = d_model // num_heads
        self.num_heads = num_heads
        self.merge = nn.Conv1d(d_model, d_model, kernel_size=1)
        self.proj = nn.ModuleList([copy.deepcopy(self.merge) for _ in range(3)])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b = query.size(0)
        query, key, value = [
            layer(x).view(b, self.dim, self.num_heads, -1) for layer, x in zip(self.proj, (query, key, value))
        ]
        x, _ = attention(query, key, value)
        return self.merge(x.contiguous().view(b, self.dim * self.num_heads, -1))


class AttentionalPropagation(nn.Module):
    """One message-passing layer: attention to a source set, then an MLP on [x, message]."""

    def __init__(self, feature_dim: int, num_heads: int):
        super().__init__()
        self.attn = MultiHeadedAttention(num_heads, feature_dim)
        self.mlp = MLP([feature_dim * 2, feature_dim * 2, feature_dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        message = self.attn(x, source, source)
        return self.mlp(torch.cat([x, message], dim=1))


class AttentionalGNN(nn.Module):
    """Alternating self- and cross-attention layers with residual updates."""

    def __init__(self, feature_dim: int, layer_names: list[str], num_heads: int = 4):
        super().__init__()
        unknown = set(layer_names) - {"self", "cross"}
        if unknown:
            raise ValueError(f"GNN_layers may only contain 'self' and 'cross', got {sorted(unknown)}")
        self.layers = nn.ModuleList([AttentionalPropagation(feature_dim, num_heads) for _ in layer_names])
        self.names = list(layer_names)

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, name in zip(self.layers, self.names):
            src0, src1 = (desc1, desc0) if name == "cross" else (desc0, desc1)
            delta0, delta1 = layer(desc0, src0), layer(desc1, src1)
            desc0, desc1 = desc0 + delta0, desc1 + delta1
        return desc0, desc1


def log_sinkhorn_iterations(Z: torch.Tensor, log_mu: torch.Tensor, log_nu: torch.Tensor, iters: int) -> torch.Tensor:
    """Sinkhorn normalisation in log space."""
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(Z + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(Z + u.unsqueeze(2), dim=1)
    return Z + u.unsqueeze(2) + v.unsqueeze(1)


def log_optimal_transport(scores: torch.Tensor, alpha: torch.Tensor, iters: int) -> torch.Tensor:
    """Differentiable optimal transport with a dustbin row and column; returns the B×(M+1)×(N+1) log assignment."""
    b, m, n = scores.shape
    one = scores.new_tensor(1)
    ms, ns = (m * one).to(scores), (n * one).to(scores)
    couplings = torch.cat(
        [torch.cat([scores, alpha.expand(b, m, 1)], -1), torch.cat([alpha.expand(b, 1, n), alpha.expand(b, 1, 1)], -1)],
        1,
    )
    norm = -(ms + ns).log()
    log_mu = torch.cat([norm.expand(m), ns.log()[None] + norm])[None].expand(b, -1)
    log_nu = torch.cat([norm.expand(n), ms.log()[None] + norm])[None].expand(b, -1)
    Z = log_sinkhorn_iterations(couplings, log_mu, log_nu, iters)
    return Z - norm  # probabilities scaled by M+N, as in the official code


def arange_like(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.new_ones(x.shape[dim]).cumsum(0) - 1


def matches_from_log_assignment(scores: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Mutual nearest neighbours of the inner log assignment whose probability exceeds ``threshold``."""
    max0, max1 = scores[:, :-1, :-1].max(2), scores[:, :-1, :-1].max(1)
    indices0, indices1 = max0.indices, max1.indices
    mutual0 = arange_like(indices0, 1)[None] == indices1.gather(1, indices0)
    mutual1 = arange_like(indices1, 1)[None] == indices0.gather(1, indices1)
    zero = scores.new_tensor(0)
    mscores0 = torch.where(mutual0, max0.values.exp(), zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, indices1), zero)
    valid0 = mutual0 & (mscores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, indices1)
    return {
        "matches0": torch.where(valid0, indices0, indices0.new_tensor(-1)),
        "matches1": torch.where(valid1, indices1, indices1.new_tensor(-1)),
        "matching_scores0": mscores0,
        "matching_scores1": mscores1,
    }


class SuperGlue(nn.Module):
    """SuperGlue: keypoint encoder, attentional GNN, final projection and optimal transport with dustbins."""

    default_config: dict[str, Any] = {
        "descriptor_dim": 256,
        "weights": "indoor",  # 'indoor', 'outdoor', a path, or None for random initialisation
        "keypoint_encoder": [32, 64, 128, 256],
        "GNN_layers": ["self", "cross"] * 9,
        "sinkhorn_iterations": 100,
        "match_threshold": 0.2,
    }

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**self.default_config, **(config or {})}
        dim = self.config["descriptor_dim"]
        self.kenc = KeypointEncoder(dim, self.config["keypoint_encoder"])
        self.gnn = AttentionalGNN(dim, self.config["GNN_layers"])
        self.final_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=True)
        self.register_parameter("bin_score", nn.Parameter(torch.tensor(1.0)))

        weights = self.config["weights"]
        if weights is not None:
            load_weights(self, f"superglue_{weights}" if weights in ("indoor", "outdoor") else weights)

    def forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Match B×N×2 keypoints, B×N scores and B×D×N descriptors of two images."""
        desc0, desc1 = data["descriptors0"], data["descriptors1"]
        kpts0, kpts1 = data["keypoints0"], data["keypoints1"]
        b, m, n = kpts0.shape[0], kpts0.shape[1], kpts1.shape[1]

        if m == 0 or n == 0:
            # Nothing to match: every keypoint goes to the dustbin with certainty (log-probability 0).
            return {
                "matches0": kpts0.new_full((b, m), -1, dtype=torch.long),
                "matches1": kpts1.new_full((b, n), -1, dtype=torch.long),
                "matching_scores0": kpts0.new_zeros((b, m)),
                "matching_scores1": kpts1.new_zeros((b, n)),
                "log_assignment": kpts0.new_zeros((b, m + 1, n + 1)),
            }

        kpts0 = normalize_keypoints(kpts0, image_size(data, 0, kpts0))
        kpts1 = normalize_keypoints(kpts1, image_size(data, 1, kpts1))
        scores = self.assign(kpts0, kpts1, data["scores0"], data["scores1"], desc0, desc1)
        return {**matches_from_log_assignment(scores, self.config["match_threshold"]), "log_assignment": scores}

    def assign(
        self,
        kpts0: torch.Tensor,
        kpts1: torch.Tensor,
        scores0: torch.Tensor,
        scores1: torch.Tensor,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
    ) -> torch.Tensor:
        """The network: normalized keypoints, scores and descriptors -> B×(M+1)×(N+1) log assignment."""
        desc0 = desc0 + self.kenc(kpts0, scores0)
        desc1 = desc1 + self.kenc(kpts1, scores1)
        desc0, desc1 = self.gnn(desc0, desc1)
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        scores = torch.einsum("bdn,bdm->bnm", mdesc0, mdesc1) / self.config["descriptor_dim"] ** 0.5
        return log_optimal_transport(scores, self.bin_score, iters=self.config["sinkhorn_iterations"])


class _AssignmentNetwork(nn.Module):
    """SuperGlue's network as a module: normalized keypoints, scores and descriptors -> log assignment."""

    def __init__(self, sg: SuperGlue):
        super().__init__()
        self.sg = sg

    def forward(self, kpts0, kpts1, scores0, scores1, desc0, desc1):
        return self.sg.assign(kpts0, kpts1, scores0, scores1, desc0, desc1)


def _graph_feed(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {
        f"kpts{i}": normalize_keypoints(data[f"keypoints{i}"], image_size(data, i, data[f"keypoints{i}"]))
        for i in (0, 1)
    }
    out.update({f"scores{i}": data[f"scores{i}"] for i in (0, 1)})
    out.update({f"desc{i}": data[f"descriptors{i}"] for i in (0, 1)})
    return out


register_graph(
    SuperGlue,
    MatcherGraph(
        _AssignmentNetwork,
        {"kpts0": 1, "kpts1": 1, "scores0": 1, "scores1": 1, "desc0": 2, "desc1": 2},
        _graph_feed,
        lambda sg, scores: {
            **matches_from_log_assignment(scores, sg.config["match_threshold"]),
            "log_assignment": scores,
        },
    ),
)
