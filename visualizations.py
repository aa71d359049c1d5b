"""Figures of the report, each from result files on disk (nothing is recomputed), plus match visualisations.

    python visualizations.py --scan runs/sens/scan.csv --results runs/demo/results.json \
        --sweep runs/prof/sweep.csv --checkpoints dense.pth pruned.pth --tensor matcher.transformers.0.ffn.0.weight \
        --out figures/

Every figure is written as PNG (README) and PDF (papers), with markers so it reads without colour.
"""

from __future__ import annotations

from pathlib import Path

from helper import ArgumentParser, run_cli, writable_location
from pipeline.figures import (
    make_gif,
    plot_latency_vs_keypoints,
    plot_sensitivity,
    plot_tradeoff,
    plot_weight_histograms,
)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Regenerate the report's figures from result files")
    p.add_argument("--out", default="figures")
    p.add_argument("--scan", help="sensitivity scan CSV (pruning/sensitivity.py)")
    p.add_argument("--results", help="results.json: list of variants with name, method, auc@3px, size_bytes, …")
    p.add_argument("--sweep", help="profiling.py --csv output (keypoint sweep)")
    p.add_argument("--checkpoints", nargs="*", default=[])
    p.add_argument("--tensor", default=None, help="weight to histogram, e.g. matcher.transformers.0.ffn.0.weight")
    p.add_argument(
        "--gif",
        nargs="*",
        default=[],
        metavar="MATCH_DIR",
        help="match_pairs.py output folders (dense first) to animate side by side",
    )
    p.add_argument(
        "--gif_pairs", default=None, help="the pairs file they matched (default: FIRST_DIR/sequence_pairs/pairs.txt)"
    )
    args = p.parse_args(argv)
    out = writable_location(args.out, folder=True, what="--out")
    written = []
    if args.scan:
        written += plot_sensitivity(args.scan, out / "sensitivity")
    if args.results:
        for x in ("size_bytes", "macs", "latency_ms"):
            written += plot_tradeoff(args.results, out / f"tradeoff_{x}", x=x)
    if args.sweep:
        written += plot_latency_vs_keypoints(args.sweep, out / "latency_vs_keypoints")
    if args.checkpoints and args.tensor:
        written += plot_weight_histograms(args.checkpoints, args.tensor, out / "weights")
    if args.gif:
        pairs_file = args.gif_pairs or Path(args.gif[0]) / "sequence_pairs" / "pairs.txt"
        written.append(make_gif(args.gif, pairs_file, out / "dense_vs_compressed"))
    print("\n".join(str(p) for p in written))


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
