"""profiling.py: the command-line contract, and MACs that include attention and match a hand count."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from helper import count_macs
from models.superglue import SuperGlue
from pipeline.costs import module_macs

KEYS = {"params", "nonzero_params", "macs", "size_bytes", "latency_ms", "latency_ms_iqr"}


def superglue_hand_count(n: int, d: int = 256, layers: int = 18, kenc=(3, 32, 64, 128, 256)) -> int:
    """MACs of SuperGlue on n + n keypoints, counted from the architecture."""
    enc = sum(a * b for a, b in zip(kenc, kenc[1:] + (d,))) + d * d  # 3->32->…->256->256 (last layer is d->d)
    per_layer = 4 * d * d * n + 2 * n * n * d + (2 * d * 2 * d + 2 * d * d) * n  # q,k,v,merge; QK, AV; MLP
    return 2 * (enc * n + layers * per_layer + d * d * n) + n * n * d  # both images, final proj, scores


def test_superglue_macs_include_attention_and_match_the_hand_count():
    import torch

    sg = SuperGlue({"weights": None, "sinkhorn_iterations": 3}).eval()
    n = 128
    data = {
        "keypoints0": torch.rand(1, n, 2) * 100,
        "keypoints1": torch.rand(1, n, 2) * 100,
        "scores0": torch.rand(1, n),
        "scores1": torch.rand(1, n),
        "descriptors0": torch.randn(1, 256, n),
        "descriptors1": torch.randn(1, 256, n),
        "image_size0": (100, 100),
        "image_size1": (100, 100),
    }
    macs = count_macs(lambda: sg(data))
    modules = module_macs(sg, lambda: sg(data))
    hand = superglue_hand_count(n)
    assert abs(macs - hand) / hand < 0.01
    attention = 18 * 2 * 2 * n * n * 256 + n * n * 256  # einsums that module hooks cannot see
    assert macs - modules == attention


def test_attention_on_cpu_is_counted():
    import torch

    q, k, v = torch.rand(2, 4, 57, 64), torch.rand(2, 4, 33, 64), torch.rand(2, 4, 33, 48)
    # scores (57×33 of length-64 dot products) and their weighted sums of 48-long values, per batch and head
    assert count_macs(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * 4 * 57 * 33 * (64 + 48)


def test_command_line_contract(tmp_path):
    out = tmp_path / "prof.json"
    proc = subprocess.run(
        [
            sys.executable,
            "profiling.py",
            "--matcher",
            "superpoint+superglue",
            "--random-weights",
            "--num_keypoints",
            "64",
            "--resize",
            "160",
            "120",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result) == 1
    r = result[0]
    for part in ("detector", "matcher", "total"):
        assert KEYS <= set(r[part]), part
    assert r["keypoints_real"] == [64, 64]
    assert r["detector"]["params"] == 1_300_865 and r["matcher"]["params"] == 12_023_297
    assert r["total"]["macs"] == 2 * r["detector"]["macs"] + r["matcher"]["macs"]
    assert r["detector"]["macs"] == 84_804 * 160 * 120  # SuperPoint: 84,804 MACs per pixel
    assert r["matcher"]["macs"] > r["matcher"]["macs_modules"]
    # the checkpoint file: float32 weights entropy-coded by byte planes (their 3 low bytes are noise, so ≥ 3 bytes each)
    assert 3 * r["total"]["params"] < r["total"]["size_bytes"] < 4 * r["total"]["params"]
    assert "| superpoint+superglue (random weights) |" in proc.stdout


@pytest.mark.slow
def test_int8_detector_and_matcher_are_profiled_in_their_real_backend(tmp_path):
    out = tmp_path / "prof.json"
    proc = subprocess.run(
        [
            sys.executable,
            "profiling.py",
            "--matcher",
            "superpoint+superglue",
            "--random-weights",
            "--int8_detector",
            "--int8_matcher",
            "--num_keypoints",
            "64",
            "--resize",
            "160",
            "120",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fp32, int8 = json.loads(out.read_text())
    assert int8["name"].endswith("(int8 detector+matcher, onnxruntime)")
    for part in ("detector", "matcher"):
        assert int8[part]["macs"] == fp32[part]["macs"]  # same arithmetic, int8 kernels
        assert int8[part]["size_bytes"] < fp32[part]["size_bytes"] / 2  # the int8 ONNX graph
        assert int8[part]["latency_ms"] > 0
    assert int8["keypoints_real"] == [64, 64]
