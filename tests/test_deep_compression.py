"""benchmarks/deep_compression.py end to end on SuperPoint + SuperGlue's random weights: the recipe's sizes (#18's
20x for that pipeline; its accuracy is Colab's), and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression.state import get
from compression.tensors import owner, prunable_weights
from pipeline.checkpoint import load_checkpoint
from pipeline.report import deep_compression_markdown
from pruning.fine_grained import sparsity_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmarks" / "deep_compression.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_recipe_makes_superpoint_superglue_20x_smaller(tmp_path):
    proc = run("--matcher", "superpoint+superglue", "--random-weights", "--detector_steps", "2",
               "--out", str(tmp_path / "out"), "--json", str(tmp_path / "report.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    distilled_name = "+ detector distilled 2 steps"
    distilled = report["rows"].pop(distilled_name)  # the detector's codebooks trained: no smaller
    rows = list(report["rows"].values())
    sizes = [r["file_bytes"] for r in rows]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # each stage makes the file smaller
    assert distilled["file_bytes"] == pytest.approx(rows[-2]["file_bytes"], rel=0.01)
    out = tmp_path / "out" / "superpoint+superglue"
    shared, trained = (load_checkpoint(out / f).superpoint for f in ("detector.pth", "detector-distilled.pth"))
    before, after = prunable_weights(shared), prunable_weights(trained)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # distillation moved its shared values
    assert all(len(after[n].unique()) <= len(before[n].unique()) for n in before)  # and kept them shared
    # the detector gets the most bits that keep the target: 3 for SuperPoint (4 bits measured 19.3x)
    assert report["detector"]["bits"] == 3 and report["detector"]["trials"]["4"] < 20 <= rows[-1]["ratio"]
    assert all(r["above_entropy"] < 0.05 for r in rows[1:])  # codes and masks coded within 5 % of their entropy
    final = load_checkpoint(out / "final.pth")
    assert sparsity_report(final.superglue)["total"] == pytest.approx(0.83, abs=0.01)
    large = [w for w in prunable_weights(final.superpoint).values() if w.numel() >= 32768]
    assert large and all(len(w.unique()) <= 2**3 for w in large)  # its large layers at 3 bits: 8 values each
    # its report beside its files, as an experiment's report.md shows it (deep_compression in the config)
    assert json.loads((out / "report.json").read_text())["rows"].keys() == {*report["rows"], distilled_name}
    cfg = {"matcher": "superpoint+superglue", "deep_compression": str(out / "report.json"), "val": {}}
    table = "\n".join(deep_compression_markdown(cfg, tmp_path))
    for name, r in report["rows"].items():
        assert f"| {name} | {r['file_bytes'] / 1e6:.2f} | {r['ratio']:.1f} |" in table
    assert "random weights" in table and "git commit" in table
    missing = "\n".join(deep_compression_markdown({**cfg, "deep_compression": str(tmp_path / "none.json")}, tmp_path))
    assert (
        "no report of the script on superpoint+superglue" in missing
        and "python benchmarks/deep_compression.py" in missing
    )
    other = "\n".join(deep_compression_markdown({**cfg, "matcher": "aliked+lightglue"}, tmp_path))  # not its matcher
    assert "not a report of the script on aliked+lightglue" in other
    # the detector on the entropy-coded grid instead (the training read back): the finest step that keeps the target
    proc = run("--matcher", "superpoint+superglue", "--random-weights", "--detector", "grid",
               "--out", str(tmp_path / "out"), "--json", str(tmp_path / "grid.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = json.loads((tmp_path / "grid.json").read_text())
    detector, trials = grid["detector"], list(grid["detector"]["trials"].values())
    grid_rows = list(grid["rows"].values())
    assert detector["quantizer"] == "grid" and trials == sorted(trials)  # coarser steps, smaller files
    assert trials[-2] < 20 <= grid_rows[-1]["ratio"]  # (SuperPoint: 0.354 x RMS measured 20.03x, 0.297 19.7x)
    assert [r["file_bytes"] for r in grid_rows][1:3] == sizes[1:3]  # the same training, read back
    final = load_checkpoint(out / "final.pth").superpoint
    for name, w in prunable_weights(final).items():  # every layer on its per-channel grid
        scale = get(owner(final, name), "linear").scale.view(-1, *[1] * (w.ndim - 1))
        assert torch.equal(torch.round(w / scale) * scale, w)
    table = "\n".join(deep_compression_markdown({**cfg, "deep_compression": str(out / "report.json")}, tmp_path))
    assert f"the detector on a grid {detector['step']:.3g} × RMS" in table


@pytest.mark.slow
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path):
    (tmp_path / "a_file").write_text("not a folder\n")
    for args, culprit in (
        (["--sparsity", "1.5"], "--sparsity"),
        (["--target", "1"], "--target"),
        (["--prune_end", "0"], "--prune_end"),
        (["--detector_step", "0"], "--detector_step"),
        (["--detector_bits", "9"], "--detector_bits"),
        (["--matcher", "superpoint+superglue"], "--random-weights"),  # the official weights are not here
        (["--results", str(tmp_path / "none.json")], "none.json"),
        (["--random-weights", "--lr", "nan"], "--lr"),  # before dense.pth is written
        (["--random-weights", "--json", str(tmp_path / "a_file" / "r.json")], "a_file"),  # before an hour of work
    ):
        proc = run(*args, "--out", str(tmp_path / "out"))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and culprit in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
