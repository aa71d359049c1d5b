"""Match image pairs and evaluate them: the official SuperGlue command line, extended to the whole zoo.

    python match_pairs.py left.jpg right.jpg --viz   # two images: their matches and a picture of them
    python match_pairs.py --eval --viz          # offline: sample pairs, the default matcher
    python match_pairs.py --input_pairs pairs.txt --input_dir images/ --matcher sift+nn --eval
    python match_pairs.py --checkpoint runs/demo/pruned.pth --input_pairs ... --eval

Pairs files take the official pose format or the homography format (see data/pairs.py). Outputs per pair
are named as the official script names them: {stem0}_{stem1}_matches.npz and, with --eval,
{stem0}_{stem1}_evaluation.npz; two different pairs that would share a name (images of one base name in two folders)
get a digest of their line after it.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import efm
from data.images import open_source
from data.pairs import FilePairs, Pair, SequencePairs, make_pairs, output_stems, read_pairs
from helper import (
    MAX_SIDE,
    ArgumentParser,
    InputError,
    check_resize,
    first_line,
    float_in,
    int_in,
    keypoint_limit,
    pick_device,
    read_image,
    run_cli,
    save_npz,
    writable_location,
)
from models.matching import available_matchers
from pipeline.evaluation import SETTING_FLAGS, build_from_args, predict
from pipeline.figures import plot_prediction
from pipeline.metrics import (
    HOMOGRAPHY_THRESHOLDS,
    POSE_THRESHOLDS,
    correct_matches,
    pair_metrics,
    summarize,
)
from pipeline.presets import PRESETS

logger = logging.getLogger("match_pairs")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Image pair matching and evaluation", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two images to match (instead of --input_pairs)")
    p.add_argument(
        "--input_pairs",
        default=None,
        help="pairs file, or 'sample' (the default without IMAGEs): fixed homography pairs of the sample photos, or "
        "'sequence': a sample photo against 12 frames of a smooth camera motion (both exported first)",
    )
    p.add_argument("--input_dir", default=None, help="folder of the images (default: the pairs file's folder)")
    p.add_argument("--output_dir", default="dump_match_pairs/")
    p.add_argument(
        "--max_length", type=int_in(1, also=(-1,)), default=-1, help="maximum number of pairs to evaluate (-1: all)"
    )
    p.add_argument(
        "--resize",
        type=int,
        nargs="+",
        default=[640, 480],
        help="as the official script: two numbers resize every image to exactly W H (the aspect is not kept: "
        "640 480 by default); one number: the longer side to that many px, keeping the aspect; -1: as given. "
        "Keypoints and matches are in the resized images' pixels",
    )
    p.add_argument("--resize_float", action="store_true", help="resize after casting uint8 to float")
    p.add_argument(
        "--matcher",
        default=None,
        choices=available_matchers(),
        help="default: superpoint+superglue when its weights are local, else aliked+lightglue",
    )
    p.add_argument("--checkpoint", default=None, help="a pruned or quantized model written by this project")
    p.add_argument(
        "--pipeline",
        choices=list(PRESETS),
        default=None,
        help="a ready pipeline (efm.load): accurate = ALIKED+LightGlue as shipped; fast = its detector in ONNX Runtime "
        "(the same matches, faster); small = LightGlue in int8 ONNX Runtime kernels (a smaller file)",
    )
    p.add_argument(
        "--superglue",
        choices=["indoor", "outdoor"],
        default=None,
        help="SuperGlue weights (implies --matcher superpoint+superglue; the official weights must be local or "
        "downloadable, else a one-line error says where to put them; default: indoor)",
    )
    # default None: beside --checkpoint (whose config sets them) a given flag is refused (SETTING_FLAGS: defaults)
    p.add_argument("--max_keypoints", type=keypoint_limit, help="maximum keypoints per image (-1: all; default 1024)")
    p.add_argument("--keypoint_threshold", type=float_in(0, 1), help="SuperPoint detector threshold (default 0.005)")
    p.add_argument("--nms_radius", type=int_in(0, 64), help="SuperPoint NMS radius (default 4)")
    p.add_argument("--sinkhorn_iterations", type=int_in(0, 10000), help="SuperGlue Sinkhorn iterations (default 20)")
    p.add_argument("--match_threshold", type=float_in(0, 1), help="SuperGlue match threshold (default 0.2)")
    p.add_argument("--viz", action="store_true", help="visualise the matches and write the plots")
    p.add_argument("--eval", action="store_true", help="evaluate (needs homography or pose ground truth)")
    p.add_argument("--fast_viz", action="store_true", help="faster visualisation with OpenCV")
    p.add_argument("--cache", action="store_true", help="reuse existing _matches.npz files")
    p.add_argument("--show_keypoints", action="store_true", help="plot the keypoints too")
    p.add_argument("--viz_extension", default="png", choices=["png", "pdf"])
    p.add_argument("--shuffle", action="store_true", help="shuffle the pairs before processing")
    p.add_argument("--force_cpu", action="store_true")
    args = p.parse_args(argv)
    if args.images and (len(args.images) != 2 or args.input_pairs is not None):
        raise InputError(
            f"give two images to match, or --input_pairs (got {len(args.images)} image(s)"
            + (f" and --input_pairs {args.input_pairs})" if args.input_pairs is not None else ")")
        )
    if args.input_pairs is None and not args.images:
        args.input_pairs = "sample"
    if args.pipeline is not None:
        given = [
            f"--{f}" for f in ("matcher", "checkpoint", "superglue", *SETTING_FLAGS) if getattr(args, f) is not None
        ]
        if given:
            raise InputError(f"--pipeline {args.pipeline} is a ready pipeline with its own settings: drop {given[0]}")
    if args.superglue is not None and (args.checkpoint or args.matcher not in (None, "superpoint+superglue")):
        other = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--matcher {args.matcher}"
        raise InputError(f"--superglue chooses SuperGlue's weights: it does not apply to {other}")
    if args.fast_viz and not args.viz:
        raise InputError("--fast_viz needs --viz")
    if args.fast_viz and args.viz_extension == "pdf":
        raise InputError("--fast_viz cannot write pdf")
    args.resize = check_resize(args.resize)
    return args


def cached_matches(path: Path) -> dict[str, np.ndarray] | None:
    """The predictions a previous run saved at ``path``; None (recompute) if there is none or it is unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            pred = {
                "keypoints0": saved["keypoints0"],
                "keypoints1": saved["keypoints1"],
                "matches0": saved["matches"],
                "matching_scores0": saved["match_confidence"],
            }
        if len(pred["matches0"]) != len(pred["keypoints0"]) or pred["matches0"].max(initial=-1) >= len(
            pred["keypoints1"]
        ):
            raise ValueError("matches do not index its keypoints")
        for k in ("keypoints0", "keypoints1"):  # pixels of an image of at most MAX_SIDE px a side
            if pred[k].ndim != 2 or pred[k].shape[1] != 2 or not np.all((pred[k] >= -1) & (pred[k] <= MAX_SIDE)):
                raise ValueError(f"its {k} are not pixels of an image (N×2, within 0-{MAX_SIDE})")
        if pred["matches0"].min(initial=-1) < -1 or not np.all(np.isfinite(pred["matching_scores0"])):
            raise ValueError("its matches or confidences are not valid (index below -1, or not finite)")
        return pred
    except Exception as e:  # a cache: whatever is wrong with it (truncated zip, foreign file), it is redone
        logger.warning("cached matches %s are unreadable (%s): matching this pair again", path, first_line(e))
        return None


@torch.no_grad()  # as the official script, but only while it runs: importing this module changes nothing
def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = writable_location(args.output_dir, folder=True, what="--output_dir")
    made = args.input_pairs in ("sample", "sequence")
    if args.images:  # the two images the command names, read from where they are
        for image in args.images:
            read_image(image)  # a missing or unreadable image is an error before any work
        pairs_file, input_dir = None, Path(args.input_dir or ".")
        pairs = [Pair(*(str(Path(image).resolve()) for image in args.images))]
    elif not made:  # inputs first (cheap), then the model; nothing is written before both are good
        pairs_file, input_dir = Path(args.input_pairs), Path(args.input_dir or Path(args.input_pairs).parent)
        pairs = read_pairs(pairs_file)
    device = pick_device(args.force_cpu)
    matcher = (efm.load(args.pipeline) if args.pipeline else build_from_args(args)).to(device)
    if made:
        made = (
            make_pairs(num_pairs=30, size=(640, 480))
            if args.input_pairs == "sample"
            else SequencePairs(open_source("sample"), "astronaut.png", 12, (640, 480))
        )
        pairs_file = made.export(output_dir / f"{args.input_pairs}_pairs")
        input_dir = Path(args.input_dir or pairs_file.parent)
        logger.info("exported the %s pairs to %s", args.input_pairs, pairs_file)
        pairs = read_pairs(pairs_file)
    if args.max_length > -1:
        pairs = pairs[: args.max_length]
    if args.shuffle:
        random.Random(0).shuffle(pairs)
    if args.eval:
        missing = [p for p in pairs if p.kind == "none"]
        if missing:
            where = f"{pairs_file} has pairs" if pairs_file else "two images come"
            raise InputError(
                f"--eval needs ground truth, but {where} without it (e.g. '{missing[0].name0} {missing[0].name1}'): "
                "give a pairs file with a homography or pose per pair"
            )
    pairset = FilePairs(pairs, input_dir, args.resize, args.resize_float)
    variant = Path(args.checkpoint).name if args.checkpoint else args.pipeline  # the file or the preset
    label = matcher.name + (f" ({variant})" if variant else "")
    source = f"from {pairs_file} " if pairs_file else ""
    print(f"Matching {len(pairs)} pair(s) {source}with {label} on {device}; writing to {output_dir}")

    rows = {"homography": [], "pose": []}
    for pair, stem in zip(tqdm(pairs, desc="pairs"), output_stems(pairs)):
        stem0, stem1 = pair.stems
        matches_path = output_dir / f"{stem}_matches.npz"
        pred = cached_matches(matches_path) if args.cache else None
        if pred is None:
            pred = predict(matcher, pairset, pair, device=device)
            save_npz(
                matches_path,
                keypoints0=pred["keypoints0"],
                keypoints1=pred["keypoints1"],
                matches=pred["matches0"],
                match_confidence=pred["matching_scores0"],
            )
        need_images = args.eval or args.viz
        image0 = pairset.image(pair, 0)[1] if need_images else None
        image1 = pairset.image(pair, 1)[1] if need_images else None

        correct, text = (
            None,
            [
                label,
                f"Keypoints: {len(pred['keypoints0'])}:{len(pred['keypoints1'])}",
                f"Matches: {int((pred['matches0'] > -1).sum())}",
            ],
        )
        if args.eval:
            gt = pairset.ground_truth(pair)
            metrics = pair_metrics(gt, pred, image0.shape, image1.shape)
            rows[gt.kind].append(metrics)
            if gt.kind == "homography":
                save_npz(
                    output_dir / f"{stem}_evaluation.npz",
                    **{k: metrics[k] for k in ("precision", "recall", "matching_score", "num_correct", "corner_error")},
                )
                text.append(f"Corner error: {metrics['corner_error']:.2f} px")
            else:
                save_npz(
                    output_dir / f"{stem}_evaluation.npz",
                    **{
                        k: metrics[k]
                        for k in ("error_t", "error_R", "precision", "matching_score", "num_correct", "epipolar_errors")
                    },
                )
                text.append(f"dR: {metrics['error_R']:.1f} deg  dt: {metrics['error_t']:.1f} deg")
            text.append(f"Precision: {metrics['precision']:.3f}")
            correct = correct_matches(gt, pred, metrics)
        if args.viz:
            plot_prediction(
                image0,
                image1,
                pred,
                text,
                output_dir / f"{stem}_matches.{args.viz_extension}",
                correct,
                args.show_keypoints,
                args.fast_viz,
                [f"Image pair: {stem0}:{stem1}"],
            )

    summaries = {kind: summarize(r) for kind, r in rows.items() if r}
    for kind, s in summaries.items():
        thresholds = (
            [f"auc@{t}px" for t in HOMOGRAPHY_THRESHOLDS]
            if kind == "homography"
            else [f"auc@{t}deg" for t in POSE_THRESHOLDS]
        )
        cols = thresholds + ["precision", "matching_score"]
        print(f"Evaluation results ({kind}, mean over {s['num_pairs']} pairs, {s['failures']} failures):")
        print("\t".join(c.upper() if c.startswith("auc") else c for c in cols))
        print("\t".join(f"{100 * s[c]:.2f}" for c in cols))
    return summaries


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
