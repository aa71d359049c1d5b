"""Sensitivity scan of a matcher network, the automatic per-group sparsity choice, and a uniform control.

    python benchmarks/sensitivity_choice.py [--out runs/sensitivity-aliked] [--budget 0.01]

Scans each transformer block of aliked+lightglue's LightGlue (adaptive depth and width off, so every layer
runs and per-layer damage is not hidden by early exits) on fixed validation pairs of the sample photos;
detector outputs are cached, so only LightGlue runs per evaluation, and the scan CSV resumes if killed.
Then it chooses per-group sparsities on the scan's smoothest signal (agreement: the share of the dense model's
matches each pruned variant keeps), verifies the choice by a real AUC@3px evaluation (tightening
the predicted budget while the real drop exceeds it), and evaluates one uniform sparsity that removes the
same number of parameters, side by side.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from data.pairs import make_pairs
from helper import ArgumentParser, float_in, positive_int, run_cli, write_json
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.evaluation import FeatureCache, evaluate
from pruning.fine_grained import prune_fine_grained, sparsity_report
from pruning.sensitivity import choose_verified, expand, group_sizes, groups_by_prefix, scan


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--out", default="runs/sensitivity-aliked")
    p.add_argument("--num_pairs", type=positive_int, default=30)
    p.add_argument("--budget", type=float_in(0, 1), default=0.01, help="allowed predicted AUC@3px drop")
    p.add_argument("--sparsities", type=float_in(0, 0.999), nargs="+", default=[0.3, 0.6, 0.9])
    p.add_argument(
        "--choose_metric",
        default="agreement",
        help="scan metric the choice is made on (agreement: share of the dense model's matches kept)",
    )
    p.add_argument(
        "--choose_budget", type=float_in(0, 1e6), default=0.2, help="allowed predicted drop of --choose_metric"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()

    pairs = make_pairs(split="val", val_fraction=0.5, num_pairs=args.num_pairs, seed=1)
    matcher = build_matcher("aliked+lightglue", {"matcher": EVERY_LAYER})
    cache = FeatureCache()
    net = matcher.matcher
    groups = groups_by_prefix(net, 3, include=["transformers.*"])
    dense_predictions = evaluate(matcher, pairs, cache, progress=False)["predictions"]
    rows = scan(
        net,
        groups,
        args.sparsities,
        lambda: evaluate(matcher, pairs, cache, progress=False, reference=dense_predictions)["summary"],
        out / "scan.csv",
    )
    t_scan = time.perf_counter() - start

    def evaluate_spec(spec: dict[str, float]) -> dict:
        variant = copy.deepcopy(matcher)
        prune_fine_grained(variant.matcher, spec)
        zeros, params = sparsity_report(variant.matcher), dict(variant.matcher.named_parameters())
        removed = sum(zeros[n] * params[n].numel() for names in groups.values() for n in names)
        return {**evaluate(variant, pairs, cache, progress=False)["summary"], "removed_params": removed}

    choice, chosen, history = choose_verified(
        rows,
        args.budget,
        lambda c: evaluate_spec(expand(groups, c)),
        choose_metric=args.choose_metric,
        choose_budget=args.choose_budget,
    )
    sizes = group_sizes(net, groups)
    uniform = chosen["removed_params"] / sum(sizes.values())
    results = {
        "dense": evaluate(matcher, pairs, cache, progress=False)["summary"],
        "chosen": chosen,
        "uniform": evaluate_spec({n: uniform for names in groups.values() for n in names}),
    }
    print(
        f"scan: {len(rows)} evaluations of {len(pairs)} pairs, {t_scan:.0f} s "
        f"(detector runs: {cache.misses}, cache hits: {cache.hits})"
    )
    for h in history:
        print(
            f"  predicted {h['choose_metric']} drop <= {h['predicted_budget']:.4f} -> real AUC@3px {h['auc@3px']:.3f}"
        )
    print(
        f"chosen per-group sparsities (budget {args.budget} AUC@3px): "
        + ", ".join(f"{g.split('.', 1)[1]}={s}" for g, s in sorted(choice.items()))
    )
    print(f"uniform control: {uniform:.3f} on all {len(groups)} groups")
    print(f"{'variant':<9}{'removed':>10}{'AUC@1px':>9}{'AUC@3px':>9}{'AUC@5px':>9}{'prec':>7}{'recall':>8}")
    for name, s in results.items():
        print(
            f"{name:<9}{int(s.get('removed_params', 0)):>10,}{s['auc@1px']:>9.3f}{s['auc@3px']:>9.3f}"
            f"{s['auc@5px']:>9.3f}{s['precision']:>7.3f}{s['recall']:>8.3f}"
        )
    write_json(
        out / "choice.json",
        {"choice": choice, "uniform": uniform, "results": results, "history": history, "args": vars(args)},
    )


if __name__ == "__main__":
    run_cli(main)
