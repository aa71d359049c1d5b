"""Every report figure renders from small fake result files, by one command."""

import csv
import json
import subprocess
import sys

import numpy as np
from conftest import ROOT
from PIL import Image

from data.homographies import warp_points
from data.images import open_source
from data.pairs import SequencePairs
from models.matching import build_matcher
from pipeline.checkpoint import save_checkpoint
from pruning.fine_grained import prune_fine_grained
from quantization.kmeans import quantize_kmeans


def fake_results(tmp_path):
    scan = tmp_path / "scan.csv"
    with open(scan, "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "group", "sparsity", "params", "auc@3px", "recall"])
        w.writeheader()
        w.writerow({"model": "m", "group": "__dense__", "sparsity": 0, "params": 0, "auc@3px": 0.6, "recall": 0.9})
        for g in ("layer0", "layer1"):
            for s in (0.5, 0.9):
                w.writerow(
                    {
                        "model": "m",
                        "group": g,
                        "sparsity": s,
                        "params": 100,
                        "auc@3px": 0.6 - s / 4,
                        "recall": 0.9 - s / 5,
                    }
                )
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            [
                {
                    "name": "dense",
                    "method": "dense",
                    "auc@3px": 0.6,
                    "size_bytes": 5e7,
                    "macs": 6e10,
                    "latency_ms": 1500,
                },
                {
                    "name": "pruned 80%",
                    "method": "fine-grained",
                    "auc@3px": 0.58,
                    "size_bytes": 1.2e7,
                    "macs": 6e10,
                    "latency_ms": 1500,
                },
                {
                    "name": "channel 50%",
                    "method": "channel",
                    "auc@3px": 0.55,
                    "size_bytes": 2e7,
                    "macs": 2e10,
                    "latency_ms": 700,
                },
            ]
        )
    )
    sweep = tmp_path / "sweep.csv"
    with open(sweep, "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "num_keypoints", "detector_ms", "matcher_ms"])
        w.writeheader()
        for n in (128, 256, 512):
            w.writerow({"model": "a", "num_keypoints": n, "detector_ms": 300, "matcher_ms": n / 2})
    config = {"superpoint": {"weights": None}, "superglue": {"weights": None, "GNN_layers": ["self", "cross"]}}
    dense = build_matcher("superpoint+superglue", config)
    save_checkpoint(dense, tmp_path / "dense.pth")
    prune_fine_grained(dense.matcher, 0.8)
    quantize_kmeans(dense.matcher, 4)
    save_checkpoint(dense, tmp_path / "pq.pth")
    seq = SequencePairs(open_source("sample"), "astronaut.png", 3)
    pairs_file = seq.export(tmp_path / "dense" / "sequence_pairs")
    rng = np.random.default_rng(0)
    for folder, wrong in (("dense", 0), ("compressed", 20)):
        (tmp_path / folder).mkdir(exist_ok=True)
        for pair in seq:
            k0 = rng.uniform([50, 50], [590, 430], (60, 2))
            k1 = warp_points(k0, pair.H)
            k1[:wrong] += 40  # wrong matches are drawn red
            np.savez(
                tmp_path / folder / f"{pair.stems[0]}_{pair.stems[1]}_matches.npz",
                keypoints0=k0,
                keypoints1=k1,
                matches=np.arange(60),
                match_confidence=np.ones(60),
            )
    return scan, results, sweep, pairs_file


def test_every_figure_renders_from_files(tmp_path):
    scan, results, sweep, pairs_file = fake_results(tmp_path)
    out = tmp_path / "figures"
    proc = subprocess.run(
        [
            sys.executable,
            "visualizations.py",
            "--out",
            str(out),
            "--scan",
            str(scan),
            "--results",
            str(results),
            "--sweep",
            str(sweep),
            "--checkpoints",
            str(tmp_path / "dense.pth"),
            str(tmp_path / "pq.pth"),
            "--tensor",
            "matcher.gnn.layers.0.mlp.0.weight",
            "--gif",
            str(tmp_path / "dense"),
            str(tmp_path / "compressed"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {
        "sensitivity",
        "tradeoff_size_bytes",
        "tradeoff_macs",
        "tradeoff_latency_ms",
        "latency_vs_keypoints",
        "weights",
    }
    for name in names:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 5000, name
    gif = Image.open(out / "dense_vs_compressed.gif")
    assert gif.n_frames == 3 and gif.size == (645, 480)  # two rows of 1290×480 pairs, at half size


def test_log_axes_carry_plain_readable_tick_labels(tmp_path):
    import matplotlib.pyplot as plt

    from pipeline.figures import readable_log_ticks

    for lo, hi, unit in ((1400, 1600, (1.0, "")), (2e5, 9e6, (1e6, " MB")), (3.0, 3000.0, (1.0, ""))):
        fig, ax = plt.subplots()
        ax.scatter([lo, hi], [0.5, 0.6])
        ax.set_xscale("log")
        readable_log_ticks(ax, unit)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert 3 <= len(labels) <= 7, labels
        assert not any("10^" in x or "times" in x or "×" in x or "e+" in x for x in labels), labels
        assert all(x.endswith(unit[1]) for x in labels)
        assert not [t for t in ax.xaxis.get_minor_ticks() if t.label1.get_text()]
        plt.close(fig)
