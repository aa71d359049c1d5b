"""Figures of the report, each from result files on disk (nothing is recomputed), plus match visualisations.

Every figure is written as PNG (README) and PDF (papers), with markers so it reads without colour. The command
line over them is visualizations.py.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from helper import InputError, atomic_path, first_line, read_json, read_text  # noqa: E402

CORRECT, WRONG = (0.1, 0.8, 0.1, 1.0), (0.9, 0.1, 0.1, 1.0)
MARKERS = "osD^v<>pPh"  # "*" is the dense model, "X" a reference


def save_figure(fig: "plt.Figure", out: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``out``.png and ``out``.pdf atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(out).with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


def read_csv(path: str | os.PathLike, columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a results CSV, numbers as floats; a missing file or ``columns`` is an InputError naming it."""
    rows = list(csv.DictReader(io.StringIO(read_text(path, "CSV file"), newline="")))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise InputError(f"{path} has no rows with a '{missing[0]}' column: not the CSV this figure is drawn from")
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def plot_sensitivity(
    scan_csv: str | os.PathLike,
    out: str | os.PathLike,
    metric: str = "auc@3px",
    xlabel: str = "sparsity of the group",
    dense_at: float | None = 0.0,
) -> list[Path]:
    """Per-group sensitivity curves (metric vs sparsity, or bits) from a scan CSV, with the dense baseline (as a
    line, and as the curves' first point at ``dense_at``)."""
    rows = read_csv(scan_csv, ("group", "sparsity", metric))
    dense = [r for r in rows if r["group"] == "__dense__"]
    groups = sorted({r["group"] for r in rows} - {"__dense__"})
    low, high = f"diff_{metric}_low", f"diff_{metric}_high"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, g in enumerate(groups):
        mine = sorted((r for r in rows if r["group"] == g), key=lambda r: r["sparsity"])
        x, y = [r["sparsity"] for r in mine], [r[metric] for r in mine]
        # error bars: the paired 95 % interval of the difference to dense, drawn around the point
        has_bars = bool(dense) and all(k in r for r in mine for k in (low, high, "diff_" + metric))
        bars = [[0.0] * len(mine), [0.0] * len(mine)]
        if has_bars:
            bars = [[r["diff_" + metric] - r[low] for r in mine], [r[high] - r["diff_" + metric] for r in mine]]
        if dense and dense_at is not None:
            x, y = [dense_at, *x], [dense[0][metric], *y]
            bars = [[0.0, *bars[0]], [0.0, *bars[1]]]
        shift = (i - len(groups) / 2) * 0.004 * (max(x) - min(x) or 1)  # bars of groups side by side
        ax.errorbar(
            [v + shift for v in x],
            y,
            yerr=bars if has_bars else None,
            marker=MARKERS[i % len(MARKERS)],
            linewidth=1,
            markersize=4,
            capsize=2,
            elinewidth=0.6,
            label=g,
        )
    if dense:
        ax.axhline(dense[0][metric], color="k", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title("Sensitivity: one group compressed at a time (bars: paired 95 % interval to dense)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_tradeoff(
    results: str | os.PathLike | list[dict[str, Any]], out: str | os.PathLike, x: str = "size_bytes", y: str = "auc@3px"
) -> list[Path]:
    """Accuracy against a cost (size, MACs or latency) for all variants; the Pareto front is drawn."""
    variants = read_json(results, "results file") if not isinstance(results, list) else results
    if not isinstance(variants, list) or not all(isinstance(v, dict) and "name" in v for v in variants):
        raise InputError(f"{results} is not a results.json (a list of variants with a 'name')")
    variants = [v for v in variants if v.get(x) is not None and v.get(y) is not None]
    for v in variants:
        for key in (x, y):
            if not isinstance(v[key], (int, float)) or isinstance(v[key], bool) or not math.isfinite(v[key]):
                raise InputError(f"{results}: variant {v['name']!r} has {key} {v[key]!r}, not a finite number")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, v in enumerate(variants):
        dense, reference = v.get("method") == "dense", v.get("method") == "reference"
        span = v.get("intervals", {}).get(y)  # 95 % bootstrap interval over pairs
        if span:
            ax.errorbar(v[x], v[y], yerr=[[v[y] - span[0]], [span[1] - v[y]]], color="0.6", linewidth=0.8, capsize=2)
        ax.scatter(
            v[x],
            v[y],
            marker="*" if dense else "X" if reference else MARKERS[i % len(MARKERS)],
            s=120 if dense else 60 if reference else 40,
            label=f"{v['name']} (reference)" if reference else v["name"],
            edgecolors="k",
            linewidths=0.5,
            zorder=3,
        )
    front, best = [], -np.inf
    for v in sorted(variants, key=lambda v: v[x]):
        if v[y] > best:
            front.append(v)
            best = v[y]
    ax.plot([v[x] for v in front], [v[y] for v in front], "k:", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    readable_log_ticks(
        ax, {"size_bytes": (1e6, " MB"), "matcher_bytes": (1e6, " MB"), "macs": (1e9, " G")}.get(x, (1.0, ""))
    )
    labels = {"size_bytes": "size on disk", "matcher_bytes": "matching network's tensors on disk", "macs": "MACs"}
    ax.set_xlabel({**labels, "latency_ms": "latency (ms)"}.get(x, x))
    ax.set_ylabel(y)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no point
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, out)


def readable_log_ticks(ax, unit: tuple[float, str] = (1.0, ""), axis: str = "x", most: int = 7) -> None:
    """Tick labels a reader can read on a log axis: round values of the 1-2-5 series (or 1-9, or the span cut in
    four when that is too coarse) as plain numbers in ``unit`` (scale, suffix), no minor labels — matplotlib's own
    labels a span shorter than a decade with overlapping "1.45×10³" minor ticks."""
    lo, hi = (ax.get_xlim if axis == "x" else ax.get_ylim)()
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks: list[float] = []
    for series in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0**d for d in decades for m in series if lo <= m * 10.0**d <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 3:
        ticks = [float(f"{t:.2g}") for t in np.geomspace(lo, hi, 6)[1:-1]]
    ticks = ticks[:: -(-len(ticks) // most)]
    scale, suffix = unit
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    target.set_minor_locator(matplotlib.ticker.NullLocator())
    target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / scale:g}{suffix}"))


def plot_finetune_log(log_csv: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """A finetuning run's curves from its log.csv: the training loss, and the validation AUC@3px on a second axis."""
    rows = read_csv(log_csv, ("step", "loss"))
    trained = [r for r in rows if isinstance(r["loss"], float) and np.isfinite(r["loss"])]
    checked = [r for r in rows if isinstance(r.get("auc@3px"), float)]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot([r["step"] for r in trained], [r["loss"] for r in trained], "o-", markersize=3, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean since the row before)")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot([r["step"] for r in checked], [r["auc@3px"] for r in checked], "s--", color="C1", label="val AUC@3px")
    right.set_ylabel("val AUC@3px (progress check)")
    handles = [*ax.get_legend_handles_labels()[0], *right.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="center right")
    return save_figure(fig, out)


def plot_pair(pairs: Any, pair: Any, pred: dict[str, Any], path: str | os.PathLike, title: str) -> Path:
    """One pair's matches over its images (pipeline.evaluation.predict's ``pred``), green for those right under
    the pair's ground truth and red for the wrong ones, with the pair's metrics written on it."""
    from pipeline.metrics import correct_matches, pair_metrics

    image0, image1 = pairs.image(pair, 0)[1], pairs.image(pair, 1)[1]
    gt = pairs.ground_truth(pair)
    metrics = pair_metrics(gt, pred, image0.shape, image1.shape)
    valid = pred["matches0"] > -1
    correct = correct_matches(gt, pred, metrics)
    text = [title, f"Keypoints: {len(pred['keypoints0'])}:{len(pred['keypoints1'])}"]
    text += [f"Matches: {int(valid.sum())}, correct: {int(correct.sum())}"]
    if "corner_error" in metrics:
        text.append(f"Corner error: {metrics['corner_error']:.2f} px")
    return plot_prediction(image0, image1, pred, text, path, correct, small_text=[f"{pair.name0} : {pair.name1}"])


def plot_prediction(
    image0: np.ndarray,
    image1: np.ndarray,
    pred: dict[str, Any],
    text: Sequence[str],
    path: str | os.PathLike,
    correct: np.ndarray | None = None,
    show_keypoints: bool = False,
    fast_viz: bool = False,
    small_text: Sequence[str] = (),
) -> Path:
    """A prediction's matches over its two images: green/red by ``correct`` when given, else by confidence."""
    valid = pred["matches0"] > -1
    make_matching_plot(
        image0,
        image1,
        pred["keypoints0"],
        pred["keypoints1"],
        pred["keypoints0"][valid],
        pred["keypoints1"][pred["matches0"][valid]],
        match_colors(pred["matching_scores0"][valid], correct),
        text,
        path,
        show_keypoints,
        fast_viz,
        small_text,
    )
    return Path(path)


def plot_latency_vs_keypoints(sweep_csv: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Detector and matcher latency stacked against the number of keypoints, one panel per model."""
    rows = read_csv(sweep_csv, ("model", "num_keypoints", "detector_ms", "matcher_ms"))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        pts = sorted((r["num_keypoints"], r["detector_ms"], r["matcher_ms"]) for r in rows if r["model"] == model)
        n, det, mat = (np.array(v) for v in zip(*pts))
        ax.stackplot(n, 2 * det, mat, labels=["detector (2 images)", "matcher"], alpha=0.7)
        ax.plot(n, 2 * det + mat, "k-o", markersize=3, linewidth=1)
        ax.set_title(model)
        ax.set_xlabel("keypoints per image")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_weight_histograms(
    checkpoints: Sequence[str | os.PathLike], tensor: str, out: str | os.PathLike, bins: int = 120
) -> list[Path]:
    """Histogram of one weight tensor in several checkpoints (dense, pruned, quantized: codebook marked)."""
    from compression.state import get
    from pipeline.checkpoint import load_checkpoint

    fig, axes = plt.subplots(len(checkpoints), 1, figsize=(6.5, 2.2 * len(checkpoints)), sharex=True, squeeze=False)
    for ax, path in zip(axes[:, 0], checkpoints):
        model = load_checkpoint(path)
        state = model.state_dict()
        if tensor not in state:
            near = difflib.get_close_matches(tensor, list(state), n=1, cutoff=0.5)
            raise InputError(f"{path} has no tensor {tensor!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        w = state[tensor].flatten().float().numpy()
        nonzero = w[w != 0]
        ax.hist(nonzero, bins=bins, color="0.4")
        codebook = get(model.get_submodule(tensor.rsplit(".", 1)[0]), "kmeans")
        if codebook is not None:
            for c in codebook.codebook.numpy():
                ax.axvline(c, color="r", linewidth=0.8)
        ax.set_title(
            f"{Path(path).parent.name}/{Path(path).name}: {tensor} ({(w == 0).mean():.0%} zeros, "
            f"{len(np.unique(nonzero))} values)",
            fontsize=8,
        )
        ax.set_yscale("log")
    axes[-1, 0].set_xlabel("weight value")
    return save_figure(fig, out)


def match_colors(conf: np.ndarray, correct: np.ndarray | None = None) -> np.ndarray:
    """RGBA per match: green/red by correctness when ground truth is known, else jet by confidence."""
    if correct is not None:
        return np.array([CORRECT if c else WRONG for c in correct]).reshape(-1, 4)
    return plt.get_cmap("jet")(np.clip(conf, 0, 1))


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image


def make_matching_plot(
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    mkpts0: np.ndarray,
    mkpts1: np.ndarray,
    color: np.ndarray,
    text: Sequence[str],
    path: str | os.PathLike,
    show_keypoints: bool = False,
    fast_viz: bool = False,
    small_text: Sequence[str] = (),
) -> None:
    """Side-by-side pair with match lines, written atomically to ``path`` (png or pdf)."""
    image0, image1 = _gray_rgb(image0), _gray_rgb(image1)
    path = Path(path)
    if fast_viz:
        _fast_plot(image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, path, show_keypoints, small_text)
        return
    h, w0, w1 = max(image0.shape[0], image1.shape[0]), image0.shape[1], image1.shape[1]
    gap = 0.02 * (w0 + w1)
    fig = plt.figure(figsize=(12, 12 * h / (w0 + w1 + gap)), dpi=100)
    total = w0 + w1 + gap
    axes = [fig.add_axes((0, 0, w0 / total, 1)), fig.add_axes(((w0 + gap) / total, 0, w1 / total, 1))]
    for ax, img in zip(axes, (image0, image1)):
        ax.imshow(img)
        ax.set_axis_off()
    if show_keypoints:
        axes[0].scatter(kpts0[:, 0], kpts0[:, 1], c="w", s=2)
        axes[1].scatter(kpts1[:, 0], kpts1[:, 1], c="w", s=2)
    fig.canvas.draw()
    for p0, p1, c in zip(mkpts0, mkpts1, color):
        con = matplotlib.patches.ConnectionPatch(
            xyA=p1, xyB=p0, coordsA="data", coordsB="data", axesA=axes[1], axesB=axes[0], color=c, linewidth=1.0
        )
        axes[1].add_artist(con)
    for ax, pts in ((axes[0], mkpts0), (axes[1], mkpts1)):
        ax.scatter(pts[:, 0], pts[:, 1], c=color[:, :3] if len(color) else "g", s=4)
    fig.text(
        0.01,
        0.99,
        "\n".join(text),
        transform=fig.axes[0].transAxes,
        fontsize=13,
        va="top",
        ha="left",
        color="w",
        bbox=dict(facecolor="k", alpha=0.5, linewidth=0),
    )
    if small_text:
        fig.text(
            0.01,
            0.01,
            "\n".join(small_text),
            transform=fig.axes[0].transAxes,
            fontsize=7,
            va="bottom",
            ha="left",
            color="w",
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _fast_plot(image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, path, show_keypoints, small_text):
    out = _fast_canvas(image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, show_keypoints, small_text)
    ok, buf = cv2.imencode(path.suffix or ".png", out)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _fast_canvas(
    image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, show_keypoints=False, small_text=()
) -> np.ndarray:
    """The pair side by side with match lines and text, drawn with OpenCV (BGR uint8)."""
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    margin = 10
    out = np.full((max(h0, h1), w0 + w1 + margin, 3), 255, np.uint8)
    out[:h0, :w0], out[:h1, w0 + margin :] = image0, image1
    out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    if show_keypoints:
        for x, y in np.round(kpts0).astype(int):
            cv2.circle(out, (x, y), 2, (255, 255, 255), -1, cv2.LINE_AA)
        for x, y in np.round(kpts1).astype(int):
            cv2.circle(out, (x + margin + w0, y), 2, (255, 255, 255), -1, cv2.LINE_AA)
    for (x0, y0), (x1, y1), c in zip(np.round(mkpts0).astype(int), np.round(mkpts1).astype(int), color):
        bgr = tuple(int(v * 255) for v in c[2::-1])
        cv2.line(out, (x0, y0), (x1 + margin + w0, y1), bgr, 1, cv2.LINE_AA)
    for i, line in enumerate(text):
        cv2.putText(out, line, (8, 24 + 24 * i), cv2.FONT_HERSHEY_DUPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    for i, line in enumerate(reversed(list(small_text))):
        cv2.putText(out, line, (8, out.shape[0] - 8 - 14 * i), cv2.FONT_HERSHEY_DUPLEX, 0.4, (255, 255, 255), 1)
    return out


def make_gif(
    match_dirs: Sequence[str | os.PathLike],
    pairs_file: str | os.PathLike,
    out: str | os.PathLike,
    input_dir: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    resize: Sequence[int] = (640, 480),
    scale: float = 0.5,
    frame_ms: int = 400,
) -> Path:
    """Animation of a sequence of pairs: one row per model (dense on top, compressed below), drawn from the
    ``*_matches.npz`` files that match_pairs.py wrote into each folder (correct green, wrong red)."""
    from PIL import Image

    from data.pairs import FilePairs, read_pairs
    from pipeline.metrics import symmetric_reprojection_error

    pairs_file = Path(pairs_file)
    pairs = FilePairs(read_pairs(pairs_file), input_dir or pairs_file.parent, list(resize))
    labels = list(labels or [Path(d).name for d in match_dirs])
    frames = []
    for pair in pairs:
        gt, rows = pairs.ground_truth(pair), []
        images = [pairs.image(pair, i)[1] for i in (0, 1)]
        for folder, label in zip(match_dirs, labels):
            path = Path(folder) / f"{pair.stems[0]}_{pair.stems[1]}_matches.npz"
            if not path.is_file():
                raise InputError(f"{path} is missing: run match_pairs.py on {pairs_file} into {folder}")
            try:
                with np.load(path) as saved:
                    m = {k: saved[k] for k in ("keypoints0", "keypoints1", "matches", "match_confidence")}
            except Exception as e:  # truncated or foreign npz
                raise InputError(f"{path} is not a match file of match_pairs.py ({first_line(e)})") from None
            valid = m["matches"] > -1
            k0, k1 = m["keypoints0"][valid], m["keypoints1"][m["matches"][valid]]
            correct = symmetric_reprojection_error(k0, k1, gt.H) < 3.0 if gt.kind == "homography" else None
            text = [
                label,
                f"matches: {int(valid.sum())}"
                + ("" if correct is None else f"  correct: {correct.mean() if len(correct) else 0:.0%}"),
            ]
            rows.append(
                _fast_canvas(
                    *images,
                    m["keypoints0"],
                    m["keypoints1"],
                    k0,
                    k1,
                    match_colors(m["match_confidence"][valid], correct),
                    text,
                )
            )
        frame = cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_BGR2RGB)
        frames.append(Image.fromarray(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)))
    out = Path(out).with_suffix(".gif")
    with atomic_path(out) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return out
