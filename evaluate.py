"""Honest matching metrics on homography and pose pairs, with detector outputs cached per image and model.

``evaluate(matcher, pairs)`` is the one function everything else calls (sensitivity scans call it hundreds
of times). A pair whose homography or pose cannot be estimated counts as a failure (infinite error); no
pair is ever dropped from an average.

    python evaluate.py --matcher aliked+lightglue --source photos --split val --num_pairs 200 --output runs/eval
    python evaluate.py --matcher aliked+lightglue --hpatches data/hpatches      # real scenes (downloads 1.3 GB)
"""

from __future__ import annotations

from pathlib import Path

from data.hpatches import HPatchesPairs, fetch_hpatches
from data.pairs import TIERS, FilePairs, make_pairs, read_pairs
from helper import (
    ArgumentParser,
    InputError,
    check_resize,
    float_in,
    image_side,
    int_in,
    pick_device,
    positive_int,
    run_cli,
    writable_location,
    write_csv,
    write_json,
)
from pipeline.evaluation import (
    PUBLISHED,
    FeatureCache,
    add_matcher_args,
    build_from_args,
    evaluate,
    homography_protocol,
)
from pipeline.metrics import BOOTSTRAP, format_summary


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_matcher_args(parser)
    parser.add_argument(
        "--source",
        default="sample",
        help="'photos' (187 photographs from packages, see data/photos.csv), 'sample' (scikit-image's), 'opencv' "
        "(OpenCV's sample photos), an image folder or a .zip archive",
    )
    parser.add_argument("--split", default="all", choices=["all", "train", "val"])
    parser.add_argument("--num_pairs", type=positive_int, default=100)
    parser.add_argument("--size", type=image_side, nargs=2, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0)
    parser.add_argument(
        "--tier",
        default="easy",
        choices=list(TIERS),
        help="synthetic pairs' tier: easy (the seed's mild warps), hard (HPatches-like viewpoint and light change) or "
        "pose (two-view 3D scenes, relative pose: AUC@5/10/20 degrees)",
    )
    parser.add_argument("--difficulty", type=float_in(0, 1), default=0.7)
    parser.add_argument("--augment", type=float_in(0, 10), default=0.0, help="photometric change strength (0: none)")
    parser.add_argument("--input_pairs", default=None, help="evaluate a pairs file instead of synthetic pairs")
    parser.add_argument("--input_dir", default=".", help="folder of the images of --input_pairs")
    parser.add_argument(
        "--hpatches",
        default=None,
        metavar="DIR",
        help="evaluate HPatches (image 1 against 2-6 of each scene) in DIR with glue-factory's protocol (shorter "
        "side 480, DLT / OpenCV RANSAC / PoseLib, inlier threshold swept 0.5-3 px); downloaded there (1.3 GB) "
        "if missing",
    )
    parser.add_argument(
        "--hpatches_subset",
        default="all",
        choices=["all", "v", "i"],
        help="viewpoint (v) or illumination (i) scenes only",
    )
    parser.add_argument(
        "--resize",
        type=int,
        nargs="+",
        default=None,
        help="as match_pairs.py (default: 640 480 for --input_pairs; --hpatches: shorter side 480, glue-factory's)",
    )
    parser.add_argument("--estimator", default="ransac", choices=["ransac", "magsac", "poselib", "dlt"])
    parser.add_argument("--threshold", type=float_in(1e-6), default=3.0, help="correctness threshold, px")
    parser.add_argument(
        "--ransac_threshold",
        type=float_in(1e-6),
        default=None,
        help="inlier threshold of the estimator, px (default: 3 for homographies, 1 for poses)",
    )
    parser.add_argument("--output", default=None, help="folder for summary.json and pairs.csv")
    parser.add_argument("--export_pairs", default=None, help="write the synthetic pairs (images + pairs.txt) here")
    parser.add_argument("--force_cpu", action="store_true")
    args = parser.parse_args(argv)

    if args.input_pairs and args.hpatches:
        raise InputError("give --input_pairs or --hpatches, not both")
    if args.tier == "pose" and args.estimator == "dlt" and not (args.input_pairs or args.hpatches):
        raise InputError("--estimator dlt estimates homographies: the pose tier takes ransac, magsac or poselib")
    if args.resize is not None:
        args.resize = check_resize(args.resize)
    for flag in ("output", "export_pairs"):  # where the results go, checked before the work
        if getattr(args, flag):
            writable_location(getattr(args, flag), folder=True, what=f"--{flag}")
    if args.input_pairs:
        pairs = FilePairs(read_pairs(args.input_pairs), args.input_dir, args.resize or [640, 480])
    elif args.hpatches:
        pairs = HPatchesPairs(fetch_hpatches(args.hpatches), args.resize, args.hpatches_subset)
    else:
        pairs = make_pairs(
            source=args.source,
            split=args.split,
            num_pairs=args.num_pairs,
            size=args.size,
            seed=args.seed,
            tier=args.tier,
            difficulty=args.difficulty,
            augment=args.augment,
        )
    if args.export_pairs:
        if not hasattr(pairs, "export"):
            raise InputError("--export_pairs exports synthetic pairs; drop --input_pairs / --hpatches")
        print(f"exported {len(pairs)} pairs to {pairs.export(args.export_pairs)}")
    matcher = build_from_args(args).to(pick_device(args.force_cpu))
    result = evaluate(
        matcher, pairs, FeatureCache(), args.threshold, args.estimator, ransac_threshold=args.ransac_threshold
    )
    summary = {"matcher": matcher.name, **result["summary"]}
    level = BOOTSTRAP["level"]
    print(f"{len(pairs)} pairs; [..] = {level:.0%} bootstrap interval over pairs ({BOOTSTRAP['resamples']} resamples)")
    print(format_summary(summary))
    protocol = homography_protocol(pairs, result["predictions"]) if args.hpatches else None
    if protocol:
        print(protocol_table(protocol, len(pairs)))
    if args.output:
        out = Path(args.output)
        write_csv(out / "pairs.csv", result["rows"])
        extra = {"hpatches_protocol": protocol} if protocol else {}
        write_json(out / "summary.json", {"summary": summary, **extra, "args": vars(args)})


def protocol_table(rows: list[dict], num_pairs: int) -> str:
    """glue-factory's HPatches table (AUC@1/3/5 px, in %) for these predictions, the published numbers beside."""
    names = {"dlt": "DLT (confidence-weighted)", "ransac": "OpenCV RANSAC", "poselib": "PoseLib LO-RANSAC"}
    published = lambda m, k: "/".join(f"{v:.1f}" for v in PUBLISHED[m].get(k, ())) or "—"  # noqa: E731
    lines = [
        f"HPatches, glue-factory's protocol ({num_pairs} pairs, shorter side 480; AUC of the mean corner error, %; "
        f"[..] = {BOOTSTRAP['level']:.0%} interval of AUC@3px)",
        f"{'estimator':<27}{'threshold':<22}{'AUC@1/3/5 px':<20}{'AUC@3px interval':<18}"
        "published SP+LightGlue  SP+SuperGlue",
    ]
    for r in rows:
        where = "—" if r["threshold"] is None else f"{r['threshold']:g} px {r['setting']}"
        aucs = "/".join(f"{100 * r[f'auc@{a}px']:.1f}" for a in (1, 3, 5))
        low, high = r["intervals"]["auc@3px"]
        line = f"{names[r['estimator']]:<27}{where:<22}{aucs:<20}{f'[{100 * low:.1f}, {100 * high:.1f}]':<18}"
        if r["setting"] != "fixed":  # the published numbers are the DLT and the best of the sweep
            line += f"{published('superpoint+lightglue', r['estimator']):<23}"
            line += published("superpoint+superglue", r["estimator"])
        lines.append(line.rstrip())
    return "\n".join(lines)


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
