"""efm, the public Python interface: the README's example as written, presets, compress / save / load, evaluate."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

import efm
from data.images import open_source
from helper import InputError, read_image

TINY = {"pretrained": False, "matcher": {"n_layers": 1}, "detector": {"max_keypoints": 64}}


def sample_pair(folder):
    """The sample source's stereo pair (Middlebury's motorcycle) written as a user's own JPEG files."""
    source = open_source("sample")
    paths = []
    for side in ("left", "right"):
        rgb = source.read(f"motorcycle_{side}.png")
        cv2.imwrite(str(folder / f"{side}.jpg"), cv2.resize(rgb, (640, 440))[:, :, ::-1])
        paths.append(folder / f"{side}.jpg")
    return paths


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 8 and "left.jpg" in code and "right.jpg" in code
    sample_pair(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(re.search(r"(\d+) matches", proc.stdout).group(1)) > 0, proc.stdout


def test_match_gives_plain_arrays_that_index_the_keypoints(tmp_path):
    pipeline = efm.load("aliked+lightglue", **TINY)
    left, right = sample_pair(tmp_path)
    m = efm.match(pipeline, left, right)
    assert m.points0.shape == m.points1.shape == (len(m), 2) and m.indices.shape == (len(m), 2)
    assert np.array_equal(m.points0, m.keypoints0[m.indices[:, 0]])
    assert np.array_equal(m.points1, m.keypoints1[m.indices[:, 1]])
    assert len(np.unique(m.indices[:, 1])) == len(m)  # one-to-one
    assert ((m.scores >= 0) & (m.scores <= 1)).all() and m.points0.dtype == np.float32
    image = read_image(left)  # the same pixels given as an array: the same matches
    again = efm.match(pipeline, image, right)
    assert np.array_equal(again.indices, m.indices) and np.array_equal(again.points1, m.points1)
    as_float = efm.match(pipeline, image.astype(np.float32) / 255, right)
    assert np.allclose(as_float.keypoints0, m.keypoints0, atol=1e-3)
    for bad, what in (
        (np.zeros((4, 4, 4), np.uint8), "shape"),
        (image.astype(np.float32), r"\[0, 1\]"),
        (image.astype(np.int32), "uint8"),
        ([[0, 1]], "path or a NumPy array"),
    ):
        with pytest.raises(InputError, match=what):
            efm.match(pipeline, bad, right)


def test_compress_returns_a_new_pipeline_that_saves_and_loads_bit_exact(tmp_path):
    pipeline = efm.load("aliked+lightglue", **TINY)
    before = {k: v.clone() for k, v in pipeline.state_dict().items()}
    small = efm.compress(pipeline, "kmeans", bits=2)
    assert all(torch.equal(before[k], v) for k, v in pipeline.state_dict().items())  # left as it was
    weight = small.matcher.transformers[0].self_attn.Wqkv.weight
    assert weight.unique().numel() <= 4
    path = efm.save(small, tmp_path / "small.pth")
    loaded = efm.load(path)
    assert all(torch.equal(small.state_dict()[k], v) for k, v in loaded.state_dict().items())
    left, right = sample_pair(tmp_path)
    assert np.array_equal(efm.match(loaded, left, right).indices, efm.match(small, left, right).indices)
    pruned = efm.compress(pipeline, "fine-grained", sparsity=0.5)
    assert (pruned.matcher.transformers[0].self_attn.Wqkv.weight == 0).float().mean() >= 0.5
    assert "kmeans" in efm.methods() and {"accurate", "fast", "small", "aliked+lightglue"} <= set(efm.pipelines())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: efm.compress(p, "kmeans", bitz=4), "did you mean 'bits'"),
        (lambda p: efm.compress(p, "kmeanz", bits=4), "unknown method 'kmeanz'"),
        (lambda p: efm.compress(p, "kmeans", bits="auto"), "sensitivity scan"),
        (lambda p: efm.compress(p, "kmeans", bits=4, finetune=True), "experiments"),
        (lambda p: efm.compress(p, "fine-grained"), "needs 'sparsity'"),
        (lambda p: efm.load("no-such-pipeline"), "neither a pipeline"),
        (lambda p: efm.load("fast", detector={"max_keypoints": 5}), "fixed"),
        (lambda p: efm.load("aliked+lightglue", detectr={}), "did you mean"),
        (lambda p: efm.evaluate(p, tier="medium", num_pairs=1), "unknown tier"),
    ],
)
def test_bad_calls_are_one_line_input_errors(call, message):
    with pytest.raises(InputError, match=message):
        call(efm.load("aliked+lightglue", **TINY))


def test_evaluate_gives_intervals_and_the_paired_difference():
    pipeline = efm.load("aliked+lightglue", **TINY)
    summary = efm.evaluate(pipeline, tier="easy", num_pairs=2, against=pipeline, progress=False)
    low, high = summary["intervals"]["auc@3px"]
    assert summary["num_pairs"] == 2 and low <= summary["auc@3px"] <= high
    assert summary["vs"]["auc@3px"]["difference"] == 0 and summary["vs"]["auc@3px"]["within_noise"]


@pytest.mark.slow
def test_presets_build_from_the_installed_weights_and_keep_their_promises(tmp_path):
    left, right = sample_pair(tmp_path)
    accurate, fast, small = (efm.load(name) for name in ("accurate", "fast", "small"))
    reference = efm.match(accurate, left, right)
    same = efm.match(fast, left, right)  # ALIKED's graph: the same detections, so the same matches
    assert np.allclose(same.keypoints0, reference.keypoints0, atol=1e-3)
    assert len(np.intersect1d(same.indices[:, 0], reference.indices[:, 0])) >= 0.99 * len(reference)
    assert len(efm.match(small, left, right)) > 0.8 * len(reference)
    saved = {name: efm.save(p, tmp_path / f"{name}.pth") for name, p in (("accurate", accurate), ("small", small))}
    assert saved["small"].stat().st_size < saved["accurate"].stat().st_size / 3  # LightGlue's int8 graph in it


def test_every_preset_is_a_variant_the_demo_measures():
    from pipeline.experiment import experiment_config
    from pipeline.presets import PRESETS

    demo = experiment_config([str(ROOT / "configs" / "demo.yaml")])
    assert {v for v in PRESETS.values() if v} <= {s["name"] for s in demo["pruning"] + demo["quantization"]}
    assert demo["verdict"]["tiers"] == ["hard", "pose"]  # the README's table reads these two
