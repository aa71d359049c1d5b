"""What an experiment's run folder reports: results.json, the figures and report.md (and the README's demo table).

Reads the stage records the experiment engine wrote (pipeline/experiment.py); never runs a stage itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from compression.tensors import prunable_weights
from helper import InputError, atomic_path, git_commit, write_json
from pipeline.checkpoint import load_checkpoint
from pipeline.figures import plot_sensitivity, plot_tradeoff, plot_weight_histograms

ROOT = Path(__file__).resolve().parents[1]  # the checkout: README.md, docs/demo


def with_costs(exp: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants with the costs the profile stage measured for their very checkpoints."""
    prof = json.loads((exp.out / "stages" / "profile.json").read_text())["result"]
    dense = prof["models"]["dense"]
    measured = {m["checkpoint_sha1"]: m for m in prof["models"].values()}
    rows = [dict(r) for r in rows]
    for r in rows:  # ratios: to the dense model measured in the same run
        if r["checkpoint_sha1"] in measured:
            r.update(measured[r["checkpoint_sha1"]], threads=prof["threads"])
            r["latency_ratio"] = r["latency_ms"] / dense["latency_ms"]
            r["matcher_latency_ratio"] = r["matcher_latency_ms"] / dense["matcher_latency_ms"]
    return rows


def write_report(exp: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.json, the figures and report.md of the run folder, from the current variants' stage results."""
    rows = with_costs(exp, rows)
    write_json(exp.out / "results.json", rows)
    figures = exp.out / "figures"
    made = []
    for x in ("size_bytes", "macs", "latency_ms"):
        if any(x in r for r in rows[1:]):
            made += plot_tradeoff(rows, figures / f"auc_vs_{x.split('_')[0]}", x=x)[:1]
    for name, xlabel, dense_at in (
        ("sensitivity", "sparsity of the group", 0.0),
        ("sensitivity-bits", "k-means bits of the group", None),
    ):
        stage = exp.out / "stages" / f"{name}.json"
        if stage.exists():
            made += plot_sensitivity(
                json.loads(stage.read_text())["result"]["scan_csv"], figures / name, xlabel=xlabel, dense_at=dense_at
            )[:1]
    shown = {}  # one checkpoint per method whose weights stay in shape: the finetuned one when there is one
    for r in rows:
        if r["method"] in ("dense", "fine-grained", "kmeans", "fine-grained+kmeans"):
            shown[r["method"]] = r
    gif = exp.out / "figures" / "dense_vs_compressed.gif"
    if gif.exists():
        made.append(gif)
    if len(shown) > 1:
        made += plot_weight_histograms(
            [r["checkpoint"] for r in shown.values()], histogram_tensor(list(shown.values())), figures / "weights"
        )[:1]
    text = report_markdown(exp.cfg, rows, [p.relative_to(exp.out) for p in made])
    with atomic_path(exp.out / "report.md") as tmp:
        tmp.write_text(text)
    return rows


def histogram_tensor(rows: list[dict[str, Any]]) -> str:
    """The weight of the compressed part with the most zeros in the sparsest of these checkpoints."""
    part = next((r["part"] for r in rows if r["method"] != "dense"), "matcher")
    sparsest = max(rows, key=lambda r: r["sparsity"])
    weights = prunable_weights(getattr(load_checkpoint(sparsest["checkpoint"]), part))
    name = max(weights, key=lambda n: (int((weights[n] == 0).sum()), -list(weights).index(n)))
    return f"{part}.{name}"


def report_markdown(cfg: dict[str, Any], rows: list[dict[str, Any]], figures: list[Path]) -> str:
    dense = rows[0]
    fmt = lambda v, f: "—" if v is None else format(float(v), f)  # noqa: E731
    lines = [
        f"# Experiment `{cfg['name']}`: what compression costs and buys",
        "",
        f"Matcher `{cfg['matcher']}`{' from ' + cfg['checkpoint'] if cfg['checkpoint'] else ''}; "
        f"{cfg['val']['num_pairs']} fixed homography pairs of `{cfg['val']['source']}` "
        f"({cfg['val']['split']} split, {cfg['val']['size'][0]}×{cfg['val']['size'][1]}); AUC of the corner "
        "error, failures count as infinite error. Size = bytes of the checkpoint file on disk "
        "(sparse + packed codes). MACs and latency: one image pair, "
        f"{cfg['profile']['num_keypoints']} keypoints per image, {rows[0].get('threads', '?')} threads, "
        "median of repeats (IQR); ratios to the dense model profiled in the same run.",
        "",
        "| variant | method | finetuned | sparsity | bits | AUC@1px | AUC@3px | AUC@5px | precision | recall | "
        "size MB | size × | GMACs pair (matcher) | latency ms pair (IQR) | matcher ms (IQR) | latency × pair "
        "(matcher) | execution |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        g = lambda k: r[k] / 1e9 if k in r else None  # noqa: E731
        lines.append(
            f"| {r['name']} | {r['method']} | {'yes' if r['finetuned'] else 'no'} | {r['sparsity']:.2f} | "
            f"{r['bits']:.3g} | "
            f"{r['auc@1px']:.3f} | {r['auc@3px']:.3f} | {r['auc@5px']:.3f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['size_bytes'] / 1e6:.2f} | {dense['size_bytes'] / r['size_bytes']:.1f} | "
            f"{fmt(g('macs'), '.2f')} ({fmt(g('matcher_macs'), '.2f')}) | "
            f"{fmt(r.get('latency_ms'), '.0f')} ({fmt(r.get('latency_ms_iqr'), '.0f')}) | "
            f"{fmt(r.get('matcher_latency_ms'), '.0f')} ({fmt(r.get('matcher_latency_ms_iqr'), '.0f')}) | "
            f"{fmt(r.get('latency_ratio'), '.2f')} ({fmt(r.get('matcher_latency_ratio'), '.2f')}) | "
            f"{r.get('execution', '—')} |"
        )
    lines += [
        "",
        "Size × is how many times smaller than the dense checkpoint. Fine-grained sparsity and k-means "
        "codes shrink the file but run on dense fp32 kernels (no speed-up on CPU); channel pruning removes "
        "MACs and time; int8-onnxruntime runs the weighted layers in int8 kernels (attention stays fp32). "
        "Accuracy differences of about 0.02 AUC are within the noise of this many pairs.",
        "",
    ]
    lines += [f"![{p.stem}]({p.as_posix()})" for p in figures]
    lines += [
        "",
        f"Config: `config.yaml` in this folder (git commit {git_commit()}). Per-variant numbers: "
        "`results.json`; stage records: `stages/`.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

README_START, README_END = "<!-- demo results: generated by --update-readme -->", "<!-- end of demo results -->"


def update_readme(out: Path, readme: Path = ROOT / "README.md", figures: Path = ROOT / "docs" / "demo") -> None:
    """Put a run's report table and figures into the README between its markers (generated, never typed)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise InputError(f"{readme} has no '{README_START}' … '{README_END}' section")
    report = (out / "report.md").read_text().split("\n![")[0].split("\n", 2)[2].strip()
    figures.mkdir(parents=True, exist_ok=True)
    links = []
    for png in sorted([*(out / "figures").glob("*.png"), *(out / "figures").glob("*.gif")]):
        shutil.copyfile(png, figures / png.name)
        links.append(f"![{png.stem}]({(figures / png.name).relative_to(readme.parent).as_posix()})")
    head, rest = text.split(README_START, 1)
    body = f"{README_START}\n{report}\n\n{' '.join(links)}\n"
    with atomic_path(readme) as tmp:
        tmp.write_text(head + body + README_END + rest.split(README_END, 1)[1])
