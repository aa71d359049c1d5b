"""Deep compression of a whole pipeline (Han et al. 2016): gradual pruning, trained k-means, a k-means detector and
entropy-coded files; its size against its accuracy.

    python benchmarks/deep_compression.py [--sparsity 0.83] [--bits 2] [--detector_bits auto] [--target 20]
        [--detector grid --detector_step auto]
        [--steps 1200] [--prune_end 0.6] [--kmeans_steps 100] [--detector_steps 0] [--assignment 4.0]
        [--ranking layer] [--train_pairs 400] [--seed 0] [--num_pairs 150] [--out runs/deep_compression]
    python benchmarks/deep_compression.py --matcher superpoint+superglue --random-weights   # the file sizes only

The recipe, on the demo's matcher (aliked+lightglue, 512 keypoints, every layer):

1. the matching network pruned gradually during finetuning (pruning/gradual.py: the cubic schedule of Zhu & Gupta,
   from 0 to ``--sparsity`` over the first ``--prune_end`` of ``--steps``, then recovery at it), each weight tensor to
   ``--sparsity`` by its own magnitude ranking or, with ``--ranking global``, to its share of one ranking of the dense
   network's weights, trained on ``--train_pairs`` homography pairs of the training photos with the ground-truth loss
   plus, with ``--assignment``, the dense matcher's assignment as soft targets;
2. its non-zero weights shared by k-means at ``--bits`` and the codebooks finetuned (``--kmeans_steps``);
3. the detector's weights shared by k-means at ``--detector_bits`` (its convolutions and ALIKED's descriptor
   aggregation), untrained, but its tensors of fewer than ``--detector_small`` weights at 8 bits (its first layers,
   heads and deformable offsets: what 4 bits break). ``--detector_bits auto`` (the default) gives the detector the
   most bits (8 down to 2) whose finished file is still ``--target`` times smaller than the dense one: the detector is
   untrained, so every bit the size budget leaves it is accuracy. ``--detector grid`` puts its weights on a uniform
   grid instead (``quantization.linear.quantize_grid``: per output channel, ``--detector_step`` times its RMS apart,
   8-bit codes that the file codes at about their entropy; auto: the finest step that keeps ``--target``). With
   ``--detector_steps N`` the detector is then distilled from the dense one for N steps, the matching network frozen;
4. the biases, norms and codebooks in float16 values (``quantization/half.py``);
5. each stage saved in the project's checkpoint format (entropy-coded, bit-exact on load).

It prints, for each stage, the file's size and its ratio to the dense file, the matching network's share alone (the
number the original course project reported), bits per weight of the pipeline, how far the file's coded symbol
streams are above their empirical entropy, and on ``--num_pairs`` val pairs of the demo (640×480, PoseLib LO-RANSAC)
AUC@1/3/5 px with 95 % intervals and the paired difference of AUC@3px to dense (over pairs, then photos), and draws
the size-vs-accuracy figures ``<out>/<matcher>/size_vs_auc.png`` (the whole file; with ``--results``, an
experiment's variants or another run's stages beside them) and ``matcher_size_vs_auc.png`` (the matching network's
tensors alone), and writes every number to ``<out>/<matcher>/report.json`` (an experiment's report.md shows its
stages: ``deep_compression`` in the experiment's config, as configs/demo.yaml). Finetuning runs and evaluations resume
after a kill (under ``--out``). With ``--random-weights`` (superpoint+superglue here: the official weights are
Colab's) the same recipe runs for a few steps and only the sizes are printed (the detector's bit width chosen by the
same rule); the accuracy is Colab's (``configs/coco.yaml``). What each choice measured (seeds, rankings, detector
bits, the grid, distillation): docs/results/deep-compression.md.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from end_to_end import CALIBRATION, ESTIMATOR, VAL, accuracy_columns  # a sibling script

from compression.tensors import prunable_weights
from data.pairs import make_pairs
from helper import (
    ArgumentParser,
    InputError,
    config_digest,
    file_sha1,
    float_in,
    git_commit,
    int_in,
    positive_int,
    read_json,
    run_cli,
    writable_location,
    write_json,
)
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher, fingerprint
from pipeline.checkpoint import coding_summary, load_checkpoint, save_checkpoint, stored_bytes
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.figures import plot_tradeoff
from pipeline.training import DEFAULTS, checked_config, finetune
from pruning.fine_grained import global_sparsities
from quantization.half import half_floats
from quantization.kmeans import quantize_kmeans, share_other_weights
from quantization.linear import grid_other_weights, quantize_grid

TRAIN = {**CALIBRATION, "augment": 1.0}  # training photos (never val), photometric changes; --train_pairs of them


def stage_points(report: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """The figure's points of a report (this run's or another's ``--json``): one per stage, dense first."""
    return [
        {"name": "dense" if n == "dense" else f"{tag}: {n}", "method": "dense" if n == "dense" else "deep",
         "size_bytes": r["file_bytes"], "matcher_bytes": r["matcher_bytes"], **r["summary"]}
        for n, r in report["rows"].items()
    ]  # fmt: skip


def run_tag(args: dict[str, Any]) -> str:
    """A run's name on the figures: its sparsity (and ranking), and its seed if not the first."""
    ranking = " global" if args.get("ranking") == "global" else ""
    return f"{args['sparsity']:.0%}{ranking}" + (f" seed {args['seed']}" if args.get("seed") else "")


def other_points(path: str) -> list[dict[str, Any]]:
    """Points for the size figures from an experiment's results.json or another run's ``--json``."""
    data = read_json(path, "--results")
    if isinstance(data, dict) and all("summary" in r and "matcher_bytes" in r for r in data.get("rows", {}).values()):
        return stage_points(data, run_tag(data["args"]))
    if isinstance(data, list) and all(isinstance(r, dict) and "size_bytes" in r and "name" in r for r in data):
        # its variants (the references, other pipelines' weight files, are the latency figure's anchors)
        variants = [r for r in data if r.get("method") != "reference"]
        return [{**r, "name": f"{r['name']} ({Path(path).parent.name})"} for r in variants]
    raise InputError(f"--results: {path} is neither an experiment's results.json nor a report of this script (--json)")


def auto_or(parse: Any) -> Any:
    """An option's value: ``parse``'s, or auto (None: the finest level that keeps ``--target``)."""

    def parsed(text: str) -> Any:
        if text == "auto":
            return None
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"auto or {e}") from None

    return parsed


GRID_STEPS = [2 ** (k / 4) / 64 for k in range(25)]  # a quarter of a bit per weight apart, 1/64 to 1 times the RMS


def pipeline_config(matcher: str, pretrained: bool) -> dict[str, Any]:
    if matcher == "aliked+lightglue":
        return {"detector": {"max_keypoints": 512}, "matcher": dict(EVERY_LAYER)}
    weights = {} if pretrained else {"weights": None}
    return {"superpoint": {**weights, "max_keypoints": 512}, "superglue": weights}


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--matcher", default="aliked+lightglue", choices=["aliked+lightglue", "superpoint+superglue"])
    p.add_argument("--random-weights", "--random_weights", dest="random_weights", action="store_true",
                   help="random weights: the recipe's wiring and file sizes only")  # fmt: skip
    p.add_argument(
        "--sparsity", type=float_in(0, 1), default=0.83, help="final sparsity of the matching network's weights"
    )
    p.add_argument("--ranking", choices=["layer", "global"], default="layer",
                   help="the magnitude ranking that prunes: each weight tensor's own (--sparsity each), or one of the "
                   "dense matching network's weights over all its tensors (--sparsity overall)")  # fmt: skip
    p.add_argument("--bits", type=int_in(1, 8), default=2, help="k-means bits of the matching network")
    p.add_argument("--detector", choices=["kmeans", "grid"], default="kmeans",
                   help="the detector's quantizer: k-means codebooks of a bit width, or a uniform grid whose codes "
                   "the file codes at about their entropy")  # fmt: skip
    p.add_argument(
        "--detector_step",
        type=auto_or(float_in(1e-4, 16)),
        default=None,
        help="--detector grid: its step × each channel's RMS; auto: the finest that keeps --target",
    )
    p.add_argument("--detector_bits", type=auto_or(int_in(1, 8)), default=None,
                   help="--detector kmeans: its bits; auto: the most that keep --target")  # fmt: skip
    p.add_argument(
        "--target", type=float_in(1, 1e6), default=20.0, help="size ratio to dense that the detector's auto keeps"
    )
    p.add_argument("--detector_small", type=int_in(0, 10**9), default=32768,
                   help="--detector kmeans: its tensors of fewer weights keep 8 bits (first layers)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=1200, help="gradual pruning steps (one training pair each)")
    p.add_argument("--prune_end", type=float_in(0, 1), default=0.6,
                   help="share of --steps where the sparsity reaches --sparsity (the rest recovers at it)")  # fmt: skip
    p.add_argument("--kmeans_steps", type=positive_int, default=100, help="codebook finetuning steps")
    p.add_argument("--detector_steps", type=int_in(0, 10**6), default=0,
                   help="steps distilling the detector's codebooks from the dense one (0: untrained)")  # fmt: skip
    p.add_argument("--lr", type=float_in(1e-12, 1), default=1e-4)
    p.add_argument(
        "--assignment", type=float_in(0, 1e6), default=4.0, help="weight of the dense assignment as soft targets"
    )
    p.add_argument("--train_pairs", type=int_in(1, 100_000), default=400, help="training pairs (homographies of the "
                   "training photos, each with its own seeded photometric changes)")  # fmt: skip
    p.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0, help="of the training pairs' order")
    p.add_argument("--num_pairs", type=int_in(2, 10_000), default=150, help="val pairs for accuracy")
    p.add_argument("--out", default="runs/deep_compression")
    p.add_argument("--results", nargs="+", default=[], metavar="JSON",
                   help="on the size figures too: an experiment's results.json (e.g. runs/demo/results.json, the same "
                   "val pairs) or another run's --json (e.g. another --sparsity)")  # fmt: skip
    p.add_argument("--json", default=None, help="write every number here too")
    args = p.parse_args(argv)
    if not 0 < args.sparsity < 1:
        raise InputError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    if not 0 < args.prune_end <= 1:
        raise InputError(f"--prune_end must be in (0, 1], got {args.prune_end}")
    if not args.target > 1:
        raise InputError(f"--target must be a size ratio above 1, got {args.target}")
    pretrained = not args.random_weights
    others = [other_points(path) for path in args.results]  # read first: a bad file loses no work
    if args.matcher == "superpoint+superglue" and pretrained:
        raise InputError("the official SuperPoint/SuperGlue weights are not here: add --random-weights")
    if args.json:  # where the numbers go, checked before an hour of work
        writable_location(args.json, what="--json")
    out = writable_location(Path(args.out) / args.matcher, folder=True, what="--out")
    steps, kmeans_steps = (args.steps, args.kmeans_steps) if pretrained else (4, 2)
    base = {
        "matcher": args.matcher,
        "matcher_config": pipeline_config(args.matcher, pretrained),
        "lr": args.lr,
        "seed": args.seed,
        "distill": {**DEFAULTS["distill"], "assignment": args.assignment},
        "train": {**TRAIN, "num_pairs": args.train_pairs}
        if pretrained
        else {**TRAIN, "num_pairs": 2, "size": [160, 120]},
        "val": {**VAL, "num_pairs": 16} if pretrained else {**VAL, "num_pairs": 2, "size": [160, 120]},
    }

    def tuned(name: str, checkpoint: Path | None, n: int, **extra: Any) -> Path:
        cfg = {**DEFAULTS, **base, "checkpoint": str(checkpoint) if checkpoint else None, "out": str(out / name),
               "steps": n, "val": {**base["val"], "every": max(1, n // 3)}, **extra}  # fmt: skip
        finetune(checked_config(cfg))
        path = out / f"{name}-trained.pth"  # beside its input (kmeans.pth), never over it
        shutil.copyfile(out / name / "last.pth", path)  # the last, not the best: the val pairs pick that one
        return path

    checked_config({**DEFAULTS, **base, "out": str(out / "pruned"), "steps": steps})  # every setting, before any work
    out.mkdir(parents=True, exist_ok=True)
    dense = build_matcher(args.matcher, base["matcher_config"])
    paths = {"dense": save_checkpoint(dense, out / "dense.pth")}
    targets = global_sparsities(dense.matcher, args.sparsity) if args.ranking == "global" else args.sparsity
    prune = {"sparsity": targets, "start": 0.0, "end": args.prune_end, "every": max(1, steps // 50)}
    ranking = " (global ranking)" if args.ranking == "global" else ""
    paths[f"gradual pruning {args.sparsity:.0%}{ranking}"] = pruned = tuned("pruned", None, steps, prune=prune)
    shared = out / "kmeans.pth"  # its finetuning run is bound to these bytes: made again only from other weights
    made_from = {"source_sha1": file_sha1(pruned), "bits": args.bits}
    record = out / "kmeans.json"
    if not (shared.is_file() and record.is_file() and read_json(record) == made_from):
        m = load_checkpoint(pruned)
        quantize_kmeans(m.matcher, args.bits)
        save_checkpoint(m, shared)
        write_json(record, made_from)
    paths[f"+ k-means {args.bits} bits, trained"] = kmeans = tuned("kmeans", shared, kmeans_steps)
    m = load_checkpoint(kmeans)
    small = {n: 8 for n, w in prunable_weights(m.detector).items() if w.numel() < args.detector_small}
    grid = args.detector == "grid"

    def with_detector(level: float) -> Any:  # the pipeline with its detector's weights on a grid or shared
        d = copy.deepcopy(m)
        if grid:
            quantize_grid(d.detector, level)
        else:
            quantize_kmeans(d.detector, {"*": int(level), **small})
            share_other_weights(d.detector, int(level))
        return d

    dense_bytes = paths["dense"].stat().st_size
    level, trials = args.detector_step if grid else args.detector_bits, {}
    if level is None:  # the finest level whose finished file (float16 values too) keeps the target ratio
        with tempfile.TemporaryDirectory() as folder:
            for level in GRID_STEPS if grid else range(8, 1, -1):
                shared_detector = with_detector(level)
                finished = copy.deepcopy(shared_detector)
                half_floats(finished)
                size = save_checkpoint(finished, Path(folder) / "trial.pth").stat().st_size
                trials[f"{level:.4g}"] = ratio = dense_bytes / size
                if ratio >= args.target:
                    break
        tried = ", ".join(f"{k}: {r:.1f}×" for k, r in trials.items())
        print(f"detector {'step' if grid else 'bits'}: {level:.4g}, the finest that keeps the file {args.target:g}× "
              f"smaller ({tried})")  # fmt: skip
        if ratio < args.target:
            print(f"  (no detector level reaches {args.target:g}×: the matching network's share is too large)")
        m = shared_detector  # the last trial's, not computed again
    else:
        m = with_detector(level)
    if grid:
        detector = f"+ detector grid {level:.3g} × RMS"
    else:
        detector = f"+ detector k-means {level} bits" + (f" (8: {len(small)} small)" if small else "")
    paths[detector] = shared = save_checkpoint(m, out / "detector.pth")
    if args.detector_steps:  # trained by distillation from the dense detector, the matching network frozen
        n = args.detector_steps if pretrained else min(args.detector_steps, 2)
        m = load_checkpoint(tuned("detector", shared, n, distill={**base["distill"], "enabled": True}))
        if grid:  # those trained as floats (no layer state keeps them on their grid or shared): again
            grid_other_weights(m.detector, level)
        else:
            share_other_weights(m.detector, level)
        paths[f"+ detector distilled {n} steps"] = save_checkpoint(m, out / "detector-distilled.pth")
    half_floats(m)
    paths["+ float16 biases, norms, codebooks"] = save_checkpoint(m, out / "final.pth")

    weights = sum(p.numel() for p in dense.parameters())
    dense_matcher = stored_bytes(paths["dense"], "matcher.")
    report: dict[str, Any] = {"args": vars(args), "git_commit": git_commit(), "matcher": args.matcher,
                              "val": {**VAL, "num_pairs": args.num_pairs} if pretrained else None, "weights": weights,
                              "detector": {"quantizer": args.detector, "step" if grid else "bits": level,
                                           "trials": trials}, "rows": {}}  # fmt: skip
    rows: dict[str, list[dict]] = {}
    if pretrained:
        val = {**VAL, "num_pairs": args.num_pairs}
        pairs, cache = make_pairs(val), FeatureCache()
        for name, path in paths.items():
            model = load_checkpoint(path)
            # keyed by its weights, as an experiment's stages, not by the file's bytes (they hold the git commit)
            key = {"weights": fingerprint(model, {**model.config}), "val": val, "estimator": ESTIMATOR}
            record = out / f"evaluation-{config_digest(key)}.json"  # by what it measured: stages come and go
            saved = read_json(record) if record.is_file() else None
            if saved is not None and saved.get("key") == key:  # these very weights on these pairs: read back
                rows[name] = saved["rows"]
                continue
            rows[name] = evaluate(model, pairs, cache, desc=name, **ESTIMATOR)["rows"]
            write_json(record, {"key": key, "rows": rows[name]})
    accuracy = f"; accuracy on {args.num_pairs} val pairs at 640×480" if pretrained else " (random weights)"
    print(f"{args.matcher}: {weights / 1e6:.2f} M weights; sizes are the checkpoint files{accuracy}")
    header = f"{'stage':40} {'MB':>6} {'× dense':>8} {'matcher ×':>9} {'bits/w':>6} {'> entropy':>9}"
    accuracy_header = f"  {'AUC@1/3/5 px':17} {'AUC@3px [95 %]':>19} {'Δ AUC@3px [95 %]':>22} {'by photo':>16}"
    print(header + (accuracy_header if pretrained else ""))
    for name, path in paths.items():
        size, coded = path.stat().st_size, coding_summary(path)
        row = {
            "file_bytes": size,
            "ratio": dense_bytes / size,
            "matcher_bytes": stored_bytes(path, "matcher."),
            "matcher_ratio": dense_matcher / max(1, stored_bytes(path, "matcher.")),
            "bits_per_weight": 8 * size / weights,
            # how far its codes and masks are above their entropy (none to speak of in a dense file)
            "above_entropy": coded["code_bytes"] / coded["code_entropy_bytes"] - 1
            if coded["code_bytes"] > 1024
            else None,
            "coding": coded,
        }
        above = "—" if row["above_entropy"] is None else f"{row['above_entropy']:.1%}"
        line = (f"{name:40} {size / 1e6:6.2f} {row['ratio']:7.1f}× {row['matcher_ratio']:8.1f}× "
                f"{row['bits_per_weight']:6.2f} {above:>9}")  # fmt: skip
        if pretrained:
            text, s, d = accuracy_columns(rows[name], rows["dense"])
            line += "  " + text
            row.update(summary=s, auc3_difference=d)
        print(line)
        report["rows"][name] = row
    if pretrained:  # size against accuracy, the whole file and the matching network alone: these stages and others
        points = stage_points(report, run_tag(vars(args)))  # dense first, then this run's stages
        points += [p for ps in others for p in ps if p["method"] != "dense"]
        floor = points[0]["auc@3px"] - 0.1  # a zoom on what is near dense: the far-off ones, named, are left off
        if off := [p["name"] for p in points if p["auc@3px"] < floor]:
            print(f"left off the figures (AUC@3px under {floor:.3f}): {', '.join(off)}")
        points = [p for p in points if p["auc@3px"] >= floor]
        alone = [p for p in points if "matcher_bytes" in p]  # experiments' variants record no such split
        report["figures"] = [
            str(plot_tradeoff(points, out / "size_vs_auc")[0]),
            str(plot_tradeoff(alone, out / "matcher_size_vs_auc", x="matcher_bytes")[0]),
        ]
        print("figures: " + ", ".join(report["figures"]))
    write_json(out / "report.json", report)  # an experiment's report.md shows it (its config's deep_compression)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run_cli(main)
