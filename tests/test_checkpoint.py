"""Checkpoints written by this project rebuild pruned networks without the caller knowing their shapes."""

import pytest
import torch
from conftest import FIXTURES

from models.matching import build_matcher
from models.weights import WeightsError
from pipeline.checkpoint import load_checkpoint, save_checkpoint


def shrink_superglue_head(matcher, keep):
    """Emulate channel pruning of one attention block: per-head dim 64 -> keep."""
    attn = matcher.superglue.gnn.layers[0].attn
    inner = keep * attn.num_heads
    attn.merge = torch.nn.Conv1d(inner, 256, 1)
    for i in range(3):
        attn.proj[i] = torch.nn.Conv1d(256, inner, 1)
    attn.dim = keep


def test_pruned_matcher_round_trips_exactly(tmp_path):
    m = build_matcher(
        "superpoint+superglue",
        {
            "superpoint": {"weights": None, "max_keypoints": 100},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"]},
        },
    )
    m.superpoint.conv1b = torch.nn.Conv2d(64, 40, 3, padding=1)
    m.superpoint.conv2a = torch.nn.Conv2d(40, 64, 3, padding=1)
    shrink_superglue_head(m, 48)
    path = save_checkpoint(m, tmp_path / "pruned.pth", meta={"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.superpoint.conv1b.out_channels == 40 and loaded.superglue.gnn.layers[0].attn.dim == 48
    assert loaded.config["superpoint"]["max_keypoints"] == 100
    x = torch.rand(1, 1, 96, 128)
    a, b = m({"image0": x, "image1": x.flip(-1)}), loaded({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(a["keypoints0"][0], b["keypoints0"][0]) and torch.equal(a["matches0"], b["matches0"])
    assert not list(tmp_path.glob("*.tmp"))


def test_offline_matcher_round_trips(tmp_path):
    m = build_matcher("aliked+lightglue", {"detector": {"max_num_keypoints": 128}})
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "a.pth"))
    x = torch.rand(1, 3, 96, 128)
    assert torch.equal(m.extract(x)["descriptors"][0], loaded.extract(x)["descriptors"][0])


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pth")
    with pytest.raises(WeightsError, match="not a checkpoint written by this project"):
        load_checkpoint(tmp_path / "sd.pth")


def test_version_1_checkpoints_still_load(tmp_path):
    from pipeline.checkpoint import FORMAT

    m = build_matcher("superpoint+superglue", {"superpoint": {"weights": None}, "superglue": {"weights": None}})
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "matcher": m.name,
            "config": m.config,
            "attrs": {},
            "state_dict": m.state_dict(),
            "meta": {},
        },
        tmp_path / "v1.pth",
    )
    loaded = load_checkpoint(tmp_path / "v1.pth")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in m.state_dict().items())


def test_checkpoints_written_before_compression_state_objects_load_bit_exact():
    # tests/fixtures/checkpoint_v2.pth was written by commit 287366a (compression kept as loose module attributes):
    # ALIKED-t16 pruned 50 % + 2-bit k-means, a one-layer LightGlue linear-quantized (2-bit weights, 8-bit inputs)
    import hashlib

    from compression.state import get

    expected = torch.load(FIXTURES / "checkpoint_v2_expected.pt", weights_only=True)
    m = load_checkpoint(FIXTURES / "checkpoint_v2.pth")
    # values bit for bit; the sign of a zero is not recorded (-0.0 == 0.0 in every computation)
    state = {k: v + 0 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    assert {k: hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()} == expected["sha1"]
    kinds = {kind for layer in m.modules() for kind in ("mask", "kmeans", "linear", "activation") if get(layer, kind)}
    assert kinds == {"kmeans", "linear", "activation"}  # codes, grids and input quantizers are back on their layers
    x = expected["image"]
    out = m({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(out["matches0"], expected["matches0"])  # runs as it was evaluated (inputs fake-quantized)
    assert torch.equal(out["matching_scores0"], expected["matching_scores0"])
