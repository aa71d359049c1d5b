"""Every report figure renders from small fake result files, by one command."""
import csv
import json
import subprocess
import sys

from conftest import ROOT
from models.checkpoint import save_checkpoint
from models.matching import build_matcher
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
                w.writerow({"model": "m", "group": g, "sparsity": s, "params": 100, "auc@3px": 0.6 - s / 4,
                            "recall": 0.9 - s / 5})
    results = tmp_path / "results.json"
    results.write_text(json.dumps([
        {"name": "dense", "method": "dense", "auc@3px": 0.6, "size_bytes": 5e7, "macs": 6e10, "latency_ms": 1500},
        {"name": "pruned 80%", "method": "fine-grained", "auc@3px": 0.58, "size_bytes": 1.2e7, "macs": 6e10,
         "latency_ms": 1500},
        {"name": "channel 50%", "method": "channel", "auc@3px": 0.55, "size_bytes": 2e7, "macs": 2e10,
         "latency_ms": 700}]))
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
    return scan, results, sweep


def test_every_figure_renders_from_files(tmp_path):
    scan, results, sweep = fake_results(tmp_path)
    out = tmp_path / "figures"
    proc = subprocess.run([sys.executable, "visualizations.py", "--out", str(out), "--scan", str(scan), "--results",
                           str(results), "--sweep", str(sweep), "--checkpoints", str(tmp_path / "dense.pth"),
                           str(tmp_path / "pq.pth"), "--tensor", "matcher.gnn.layers.0.mlp.0.weight"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {"sensitivity", "tradeoff_size_bytes", "tradeoff_macs", "tradeoff_latency_ms", "latency_vs_keypoints",
             "weights"}
    for name in names:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 5000, name
