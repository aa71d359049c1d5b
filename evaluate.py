"""Honest matching metrics on homography and pose pairs, with detector outputs cached per image and model.

``evaluate(matcher, pairs)`` is the one function everything else calls (sensitivity scans call it hundreds
of times). A pair whose homography or pose cannot be estimated counts as a failure (infinite error); no
pair is ever dropped from an average.

    python evaluate.py --matcher aliked+lightglue --source photos --split val --num_pairs 200 --output runs/eval
    python evaluate.py --matcher aliked+lightglue --hpatches data/hpatches      # real scenes (downloads 1.3 GB)
    python evaluate.py --matcher aliked+lightglue --megadepth data              # MegaDepth-1500 relative pose
"""

from __future__ import annotations

from pathlib import Path

from data.hpatches import HPatchesPairs, fetch_hpatches
from data.megadepth import MegaDepthPairs, fetch_megadepth
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
    PROTOCOL_AUCS,
    PUBLISHED,
    FeatureCache,
    add_matcher_args,
    build_from_args,
    evaluate,
    protocol,
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
        "--megadepth",
        default=None,
        metavar="DIR",
        help="evaluate MegaDepth-1500 in DIR with glue-factory's protocol (longer side 1600, OpenCV RANSAC / PoseLib, "
        "inlier threshold swept 0.5-3 px, AUC@5/10/20 degrees); downloaded there if missing",
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

    if sum(bool(x) for x in (args.input_pairs, args.hpatches, args.megadepth)) > 1:
        raise InputError("give one of --input_pairs, --hpatches and --megadepth")
    if args.resize is not None:
        args.resize = check_resize(args.resize)
    for flag in ("output", "export_pairs"):  # where the results go, checked before the work
        if getattr(args, flag):
            writable_location(getattr(args, flag), folder=True, what=f"--{flag}")
    if args.input_pairs:
        pairs = FilePairs(read_pairs(args.input_pairs), args.input_dir, args.resize or [640, 480])
    elif args.hpatches:
        pairs = HPatchesPairs(fetch_hpatches(args.hpatches), args.resize, args.hpatches_subset)
    elif args.megadepth:
        if args.resize and (len(args.resize) != 1 or args.resize[0] < 1):
            raise InputError(f"--megadepth takes one --resize number, the longer side (got {args.resize})")
        pairs = MegaDepthPairs(fetch_megadepth(args.megadepth), *(args.resize or []))
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
    if args.estimator == "dlt" and any(p.kind == "pose" for p in pairs):
        raise InputError("--estimator dlt estimates homographies: pose pairs take ransac, magsac or poselib")
    if args.export_pairs:
        if not hasattr(pairs, "export"):
            raise InputError("--export_pairs exports synthetic pairs; drop --input_pairs / --hpatches / --megadepth")
        print(f"exported {len(pairs)} pairs to {pairs.export(args.export_pairs)}")
    matcher = build_from_args(args).to(pick_device(args.force_cpu))
    result = evaluate(
        matcher, pairs, FeatureCache(), args.threshold, args.estimator, ransac_threshold=args.ransac_threshold
    )
    summary = {"matcher": matcher.name, **result["summary"]}
    level = BOOTSTRAP["level"]
    print(f"{len(pairs)} pairs; [..] = {level:.0%} bootstrap interval over pairs ({BOOTSTRAP['resamples']} resamples)")
    print(format_summary(summary))
    rows = protocol(pairs, result["predictions"]) if args.hpatches or args.megadepth else None
    if rows:
        size = f"longer side {pairs.resize[0]}" if args.megadepth else f"shorter side {pairs.short_side}"
        if args.hpatches and args.resize:
            size = f"--resize {' '.join(map(str, args.resize))}"
        benchmark = "HPatches" if args.hpatches else "MegaDepth-1500"
        print(protocol_table(rows, f"{len(pairs)} pairs, {size}", benchmark, matcher.name))
    if args.output:
        out = Path(args.output)
        write_csv(out / "pairs.csv", result["rows"])
        extra = {"protocol": rows} if rows else {}
        write_json(out / "summary.json", {"summary": summary, **extra, "args": vars(args)})


def protocol_table(rows: list[dict], setting: str, benchmark: str, matcher: str) -> str:
    """glue-factory's table for these predictions (AUC@1/3/5 px of the mean corner error for HPatches, AUC@5/10/20°
    of the pose error for MegaDepth-1500, in %), the published numbers beside."""
    names = {"dlt": "DLT (confidence-weighted)", "ransac": "OpenCV RANSAC", "poselib": "PoseLib LO-RANSAC"}
    pose = benchmark != "HPatches"
    keys, middle = PROTOCOL_AUCS["pose" if pose else "homography"], "auc@10deg" if pose else "auc@3px"
    shown = [matcher] if pose else ["superpoint+lightglue", "superpoint+superglue"]
    published = lambda m, k: "/".join(f"{v:.1f}" for v in PUBLISHED.get(m, {}).get(k, ())) or "—"  # noqa: E731
    lines = [
        f"{benchmark}, glue-factory's protocol ({setting}; AUC, %; [..] = {BOOTSTRAP['level']:.0%} interval of "
        f"{middle})",
        f"{'estimator':<27}{'threshold':<22}{'AUC ' + '/'.join(k[4:] for k in keys):<24}{'interval':<18}"
        "published " + "  ".join(shown),
    ]
    for r in rows:
        where = "—" if r["threshold"] is None else f"{r['threshold']:g} px {r['setting']}"
        aucs = "/".join(f"{100 * r[k]:.1f}" for k in keys)
        low, high = r["intervals"][middle]
        line = f"{names[r['estimator']]:<27}{where:<22}{aucs:<24}{f'[{100 * low:.1f}, {100 * high:.1f}]':<18}"
        if r["setting"] != "fixed":  # the published numbers are the DLT and the best of the sweep
            line += "  ".join(f"{published(m, ('pose ' if pose else '') + r['estimator']):<20}" for m in shown)
        lines.append(line.rstrip())
    return "\n".join(lines)


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
