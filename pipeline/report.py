"""What an experiment's run folder reports: results.json, the figures and report.md (and, for the demo, the README's
table and docs/results/demo.md).

Reads the stage records the experiment engine wrote (pipeline/experiment.py); never runs a stage itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from compression.tensors import prunable_weights
from helper import InputError, atomic_path, git_commit, load_config, write_json
from models.lightglue import DEFAULT_MATCHER
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import VERDICT
from pipeline.figures import plot_sensitivity, plot_tradeoff, plot_weight_histograms
from pipeline.presets import PRESETS
from pipeline.tiers import sections

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
    for x in ("size_bytes", "macs", "latency_ms"):  # the references (other pipelines) on the latency figure only
        shown_rows = rows if x == "latency_ms" else [r for r in rows if r["method"] != "reference"]
        if any(x in r for r in shown_rows[1:]):
            made += plot_tradeoff(shown_rows, figures / f"auc_vs_{x.split('_')[0]}", x=x)[:1]
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
    text = report_markdown(exp.cfg, rows, [p.relative_to(exp.out) for p in made], exp.out)
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


def with_interval(row: dict[str, Any], metric: str) -> str:
    """'0.575 [0.52, 0.63]': a metric and its 95 % bootstrap interval over pairs (the value alone without one)."""
    span = row.get("intervals", {}).get(metric)
    return f"{row[metric]:.3f}" + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span else "")


EQUAL = 1e-4  # a difference to dense whose whole paired interval is smaller reads "equal"


def versus_dense(row: dict[str, Any], metric: str = "auc@3px") -> tuple[str, str]:
    """(difference to dense with its paired 95 % interval, 'yes'/'no': within noise = the interval contains 0)."""
    d = row.get("vs_dense", {}).get(metric)
    if d is None:
        return "—", "—"
    low, high = d["interval"]
    if max(abs(low), abs(high)) < EQUAL:  # float drift (e.g. the same network in another runtime), not a difference
        return f"{d['difference']:+.3f} [{low:+.3f}, {high:+.3f}]", "equal"
    return f"{d['difference']:+.3f} [{low:+.3f}, {high:+.3f}]", "yes" if low <= 0 <= high else "no"


def half_widths(rows: list[dict[str, Any]], metric: str = "auc@3px") -> list[float]:
    """Half-widths of the paired intervals of each variant's difference to dense."""
    return [(r["vs_dense"][metric]["interval"][1] - r["vs_dense"][metric]["interval"][0]) / 2
            for r in rows if metric in r.get("vs_dense", {}) and r["method"] != "reference"]  # fmt: skip


def variants_markdown(rows: list[dict[str, Any]]) -> str:
    """A short table of results rows (dense first): accuracy with intervals, the paired difference to dense,
    sparsity and size on disk (the notebook's walk-through shows one after each step)."""
    dense = rows[0]
    lines = [
        "| model | sparsity | AUC@1px | AUC@3px | AUC@5px | precision | Δ AUC@3px vs dense | within noise | "
        "size MB | size × |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        delta, noise = versus_dense(r)
        lines.append(
            f"| {r['name']} | {r['sparsity']:.2f} | "
            + " | ".join(with_interval(r, k) for k in ("auc@1px", "auc@3px", "auc@5px", "precision"))
            + f" | {delta} | {noise} | {r['size_bytes'] / 1e6:.2f} | {dense['size_bytes'] / r['size_bytes']:.1f} |"
        )
    return "\n".join(lines)


def tiers_markdown(cfg: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The section of every tier side by side: each row's verdict metric per tier with its interval, the paired
    difference to dense, and the verdict (pipeline/tiers.py)."""
    names = list(rows[0].get("tiers", {}))
    if len(names) < 2:
        return []
    settings = cfg["verdict"]
    metric = lambda t: VERDICT[rows[0]["tiers"][t]["kind"]]["metric"]  # noqa: E731
    label = lambda m: m.replace("deg", "°")  # noqa: E731
    within = f"{settings['within']:g}"
    about = []
    for name, section in sections(cfg).items():
        t = rows[0]["tiers"][name]
        dense = ", ".join(f"{k} {t[k]:.3f}" for k in ("precision", "recall", metric(name)) if k in t)
        about.append(
            f"*{name}*: {t['num_pairs']} {t['kind']} pairs (tier `{section['tier']}`, seed {section['seed']}; "
            f"{section['estimator']} at {section['ransac_threshold']:g} px), dense {label(dense)}"
        )
    verdict_words = (
        f"verdict on {', '.join(settings['tiers'])}: *within* = on every verdict tier the paired interval's lower end "
        f"is at −{within} or above (any loss is smaller, at 95 %); *loss* = on one of them the interval lies below 0 "
        f"and reaches past −{within}; *unresolved* = it holds 0 but reaches past −{within} (too few pairs to tell)"
        if settings["tiers"]
        else "no verdict tiers configured (`verdict.tiers`)"
    )
    lines = [
        "",
        "### Every tier",
        "",
        "Each model judged on each tier's pairs against the dense model on the same pairs: the tier's verdict metric "
        "with its 95 % interval and the paired difference to dense (Δ, paired 95 % interval); "
        + verdict_words
        + ". "
        + "; ".join(about)
        + ".",
        "",
        "| variant | " + " | ".join(f"{n} {label(metric(n))} | Δ {n}" for n in names) + " | verdict |",
        "|---|" + "---:|---:|" * len(names) + "---|",
    ]
    for r in rows:
        cells = []
        for n in names:
            t, m = r["tiers"].get(n, {}), metric(n)
            if m not in t:
                cells += ["—", "—"]
                continue
            cells.append(with_interval(t, m))
            cells.append(versus_dense(t, m)[0])
        v = r.get("verdict") or {}
        states = ", ".join(f"{n} {t['state']}" for n, t in v.get("tiers", {}).items())
        lines.append(
            f"| {r['name']} | "
            + " | ".join(cells)
            + f" | {v.get('holds') or '—'}"
            + (f" ({states})" if states else "")
            + " |"
        )
    return lines


def lightglue_settings(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The LightGlue settings the experiment's models run with (None for other matchers)."""
    if "lightglue" not in cfg["matcher"]:
        return None
    return {**DEFAULT_MATCHER, **cfg["matcher_config"].get("matcher", {})}


def adaptive(cfg: dict[str, Any]) -> bool:
    """Whether the experiment's LightGlue stops early (adaptive depth or width)."""
    conf = lightglue_settings(cfg)
    return conf is not None and (conf["depth_confidence"] > 0 or conf["width_confidence"] > 0)


def depth_words(cfg: dict[str, Any]) -> str:
    """How many LightGlue layers the evaluated and timed models run (nothing for other matchers)."""
    conf = lightglue_settings(cfg)
    if conf is None:
        return ""
    if not adaptive(cfg):
        return " LightGlue runs every layer for every point."
    return (
        f" LightGlue as shipped, adaptive (depth confidence {conf['depth_confidence']:g}, width "
        f"{conf['width_confidence']:g}: it stops early on easy pairs), but ONNX Runtime graphs of it hold no early "
        "exit and run every layer."
    )


def deep_compression_markdown(cfg: dict[str, Any], out: Path) -> list[str]:
    """The section on the deep-compression recipe: the stages of benchmarks/deep_compression.py's report at the
    config's ``deep_compression`` path (its own run, on its own val pairs and LightGlue at every layer), or how to
    run it."""
    path = Path(cfg["deep_compression"])
    lines = ["", "## Deep compression (benchmarks/deep_compression.py)", ""]
    try:
        report = json.loads(path.read_text())
        rows = report["rows"]
        ok = report["matcher"] == cfg["matcher"] and all("ratio" in r and "file_bytes" in r for r in rows.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        what = "not a report of the script on" if path.is_file() else "no report of the script on"
        return lines + [
            f"`{path}`: {what} {cfg['matcher']}. Gradual pruning, trained k-means, the detector's k-means and entropy "
            "coding (1200 training steps) take about an hour on 2 cores, more than an experiment's budget: "
            f"`python benchmarks/deep_compression.py --matcher {cfg['matcher']}` writes it (`--out`: its folder).",
        ]
    val, args = report.get("val"), report.get("args", {})
    same = val == {k: v for k, v in cfg["val"].items() if k in (val or {})} and val is not None
    which = " (these)" if same else " (not the same set as above)"
    pairs = (
        "no accuracy (random weights)"
        if val is None
        else f"{val['num_pairs']} val pairs{which}, LightGlue at every layer (its dense row is its own)"
    )
    detector = report.get("detector") or {"bits": report.get("detector_bits", "?")}  # older reports: k-means bits
    detector_text = f"on a grid {detector['step']:.3g} × RMS" if "step" in detector else f"{detector['bits']} bits"
    lines += [
        f"The whole file's recipe, run on its own (`{path}`, git commit {report.get('git_commit', '?')}; sparsity "
        f"{args.get('sparsity', '?')}, {args.get('bits', '?')} bits, the detector {detector_text}; {pairs}). "
        "Δ AUC@3px: paired 95 % interval over pairs, then over photos.",
        "",
        "| stage | size MB | size × | matcher × | bits/weight | AUC@3px | Δ AUC@3px vs dense | by photo |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        d = r.get("auc3_difference")
        auc = r.get("summary", {}).get("auc@3px")
        delta, photo = "—", "—"
        if d and name != "dense":
            (lo, hi), (plo, phi) = d["interval"], d["interval_by_photo"]
            delta, photo = f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"[{plo:+.3f}, {phi:+.3f}]"
        lines.append(
            f"| {name} | {r['file_bytes'] / 1e6:.2f} | {r['ratio']:.1f} | {r.get('matcher_ratio', 0):.1f} | "
            f"{r.get('bits_per_weight', 0):.2f} | {'—' if auc is None else f'{auc:.3f}'} | {delta} | {photo} |"
        )
    for figure in report.get("figures", [])[:1]:  # the whole file's size against accuracy, beside report.json
        where = Path(os.path.relpath((path.parent / Path(figure).name).resolve(), out.resolve()))
        lines += ["", f"![deep compression]({where.as_posix()})"]
    return lines


def report_markdown(cfg: dict[str, Any], rows: list[dict[str, Any]], figures: list[Path], out: Path) -> str:
    dense = rows[0]
    fmt = lambda v, f: "—" if v is None else format(float(v), f)  # noqa: E731
    val = cfg["val"]
    widths = half_widths(rows)
    lines = [
        f"# Experiment `{cfg['name']}`: what compression costs and buys",
        "",
        f"Matcher `{cfg['matcher']}`{' from ' + cfg['checkpoint'] if cfg['checkpoint'] else ''}; "
        f"{val['num_pairs']} fixed homography pairs of the `{val.get('tier', 'easy')}` tier of `{val['source']}` "
        f"({val['split']} split, {val['size'][0]}×{val['size'][1]}); AUC of the corner "
        f"error of the homography estimated by {val.get('estimator', 'ransac')} "
        f"({val.get('ransac_threshold', 3.0):g} px), failures count as infinite error; [..] = 95 % bootstrap "
        "interval over pairs. Δ AUC@3px: the "
        "variant minus dense on the same pairs, with the paired 95 % interval (pairs resampled, both models "
        "scored on the same draws); *within noise* = that interval contains 0. Size = bytes of the checkpoint "
        "file on disk (sparse + packed codes, entropy-coded); codes × entropy = the bytes its codes and masks take "
        "over their empirical entropy (the least a coder of independent symbols needs). MACs and latency: one image "
        "pair, "
        f"{cfg['profile']['num_keypoints']} keypoints per image, {rows[0].get('threads', '?')} threads, "
        "median of repeats (IQR); ratios to the dense model profiled in the same run." + depth_words(cfg),
        "",
        "| variant | method | finetuned | sparsity | bits | AUC@1px | AUC@3px | AUC@5px | precision | recall | "
        "Δ AUC@3px vs dense | within noise | size MB | size × | codes × entropy | GMACs pair (matcher) | "
        "latency ms pair (IQR) | matcher ms (IQR) | latency × pair (matcher) | execution |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        reference = r["method"] == "reference"  # another pipeline: no compression ratio; MACs only where counted
        g = lambda k: r[k] / 1e9 if r.get(k) or (k in r and not reference) else None  # noqa: E731
        delta, noise = versus_dense(r)
        lines.append(
            f"| {r['name']} | {r['method']} | {'yes' if r['finetuned'] else 'no'} | {fmt(r['sparsity'], '.2f')} | "
            f"{fmt(r['bits'], '.3g')} | "
            + " | ".join(with_interval(r, k) for k in ("auc@1px", "auc@3px", "auc@5px", "precision", "recall"))
            + f" | {delta} | {noise} | {r['size_bytes'] / 1e6:.2f} | "
            f"{fmt(None if reference else dense['size_bytes'] / r['size_bytes'], '.1f')} | "
            f"{fmt(r['code_bytes'] / r['code_entropy_bytes'] if r.get('code_entropy_bytes') else None, '.3f')} | "
            f"{fmt(g('macs'), '.2f')} ({fmt(g('matcher_macs'), '.2f')}) | "
            f"{fmt(r.get('latency_ms'), '.0f')} ({fmt(r.get('latency_ms_iqr'), '.0f')}) | "
            f"{fmt(r.get('matcher_latency_ms'), '.0f')} ({fmt(r.get('matcher_latency_ms_iqr'), '.0f')}) | "
            f"{fmt(r.get('latency_ratio'), '.2f')} ({fmt(r.get('matcher_latency_ratio'), '.2f')}) | "
            f"{r.get('execution', '—')} |"
        )
    if any(r["method"] == "reference" for r in rows):
        lines += [
            "",
            "References are other pipelines judged on the same pairs and timed in the same profile, each as the zoo "
            "runs it (its own keypoint budget): the speed anchors a deployer compares with and the dense model's "
            "own operating points. Their size is their weight files' (no compression), their MACs those PyTorch "
            "counts (none in OpenCV's SIFT); the latency figure holds them beside the variants.",
        ]
    lines += [
        "",
        "Size × is how many times smaller than the dense checkpoint. Fine-grained sparsity and k-means "
        "codes shrink the file but run on dense fp32 kernels (no speed-up on CPU); channel pruning removes "
        "MACs and time; int8-onnxruntime runs the weighted layers in int8 kernels (attention stays fp32)."
        + (
            " With adaptive depth and width, a variant's MACs and time also move with how early its confidence "
            "lets it stop on the timed pair (one test pair: a variant less sure of its matches runs more layers)."
            if adaptive(cfg)
            else ""
        ),
    ]
    if widths and "auc@3px" in dense.get("intervals", {}):
        narrow = sum(w <= 0.01 for w in widths)
        lines += [
            "",
            f"How sure: the paired AUC@3px interval of a variant's difference to dense on these {val['num_pairs']} "
            f"pairs is ±{sorted(widths)[len(widths) // 2]:.3f} wide at the median variant (±{min(widths):.3f} to "
            f"±{max(widths):.3f}; within ±0.010 for {narrow} of {len(widths)}: variants that lose much vary more "
            "from pair to pair); the dense model's own AUC@3px interval is "
            f"±{(dense['intervals']['auc@3px'][1] - dense['intervals']['auc@3px'][0]) / 2:.3f} (unpaired: what a "
            "comparison with a number measured on other pairs would have to beat).",
        ]
    lines += tiers_markdown(cfg, rows)
    lines += ["", *[f"![{p.stem}]({p.as_posix()})" for p in figures]]
    if cfg.get("deep_compression"):
        lines += deep_compression_markdown(cfg, out)
    lines += [
        "",
        f"Config: `config.yaml` in this folder (git commit {git_commit()}). Per-variant numbers: "
        "`results.json`; stage records: `stages/`.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

README_START, README_END = "<!-- demo results: generated by --update-readme -->", "<!-- end of demo results -->"


def presets_markdown(cfg: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The README's table: the ready pipelines (PRESETS) and the references, each with its file size, pair time and
    its verdict metric on every verdict tier with the paired difference to dense (pipeline/tiers.py)."""
    by_name = {r["name"]: r for r in rows}
    shown = [(p, by_name[v or "dense"]) for p, v in PRESETS.items() if (v or "dense") in by_name]
    shown += [(r["name"], r) for r in rows if r["method"] == "reference"]
    names = [t for t in cfg["verdict"]["tiers"] if t in rows[0].get("tiers", {})]
    metric = {t: VERDICT[rows[0]["tiers"][t]["kind"]]["metric"] for t in names}
    head = " | ".join(f"{t} {metric[t].replace('deg', '°')} | Δ {t}" for t in names)
    lines = ["| pipeline | file MB (× smaller) | ms a pair (× dense) | " + head + " | verdict |"]
    lines.append("|---|---:|---:|" + "---:|---:|" * len(names) + "---|")
    dense = rows[0]
    for label, r in shown:
        what = label if label == r["name"] else f"**{label}** ({r['name']})"
        weightless = r["size_bytes"] < 1e4  # a config and no weights (SIFT)
        size = f"{r['size_bytes'] / 1e6:.1f}" + (
            " (no weights)" if weightless else f" ({dense['size_bytes'] / r['size_bytes']:.1f}×)"
        )
        speed = f"{r['latency_ms']:.0f} ({r['latency_ratio']:.2f}×)" if "latency_ratio" in r else "—"
        cells = []
        for t in names:
            found = r["tiers"].get(t, {})
            if metric[t] not in found:
                cells += ["—", "—"]
                continue
            delta, within = versus_dense(found, metric[t])
            cells += [with_interval(found, metric[t]), "equal" if within == "equal" else delta]
        lines.append(
            f"| {what} | {size} | {speed} | "
            + " | ".join(cells)
            + f" | {(r.get('verdict') or {}).get('holds') or '—'} |"
        )
    return lines


def update_readme(
    out: Path,
    readme: Path = ROOT / "README.md",
    results: Path = ROOT / "docs" / "results",
    figures: Path = ROOT / "docs" / "demo",
) -> None:
    """A run's results into the documentation (generated, never typed): its report as ``results/demo.md``, its
    figures into ``figures``, and the table of the ready pipelines into the README between its markers."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise InputError(f"{readme} has no '{README_START}' … '{README_END}' section")
    figures.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    for made in sorted([*(out / "figures").glob("*.png"), *(out / "figures").glob("*.gif")]):
        shutil.copyfile(made, figures / made.name)
    report = (
        (out / "report.md")
        .read_text()
        .replace("](figures/", f"]({Path(os.path.relpath(figures, results)).as_posix()}/")
    )
    with atomic_path(results / "demo.md") as tmp:
        tmp.write_text(
            f"<!-- generated by --update-readme from {out.as_posix()}/report.md: never edited by hand -->\n{report}"
        )
    cfg = load_config(out / "config.yaml")
    rows = json.loads((out / "results.json").read_text())
    page = (results / "demo.md").relative_to(readme.parent).as_posix()
    record = json.loads((out / "stages" / "profile.json").read_text())
    profile = record["result"]
    pc = cfg["profile"]
    timed = (
        f"Times: one pair at {pc['resize'][0]}×{pc['resize'][1]}, {pc['num_keypoints']} keypoints an image, "
        f"{profile['threads']} threads of {profile.get('cpu', profile['device'])}, median of {pc['repeats']} rounds "
        f"timed round-robin in one run (of git commit {str(record.get('git_commit'))[:12]})."
    )
    body = "\n".join(
        [README_START, *presets_markdown(cfg, rows), "", timed, f"The whole report: [{page}]({page}).", ""]
    )
    head, rest = text.split(README_START, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(head + body + README_END + rest.split(README_END, 1)[1])
