"""Evaluation speed with and without cached detector outputs, measured side by side in one run.

    python benchmarks/evaluation_cache.py [--num_pairs 100] [--matcher aliked+lightglue]

1. evaluates N fixed sample pairs at 640×480 from scratch (cold cache);
2. changes only the matcher network (its weights are perturbed, as a pruning step would) and evaluates the
   same pairs again with the same cache: the detector must not run again.
Prints both wall times, their ratio and the cache hits.
"""

from __future__ import annotations

import time

import torch

from data.pairs import make_pairs
from helper import ArgumentParser, positive_int, run_cli
from models.matching import build_matcher
from pipeline.evaluation import FeatureCache, evaluate


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--matcher", default="aliked+lightglue")
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(num_pairs=args.num_pairs, size=(640, 480))
    matcher = build_matcher(args.matcher)
    cache = FeatureCache()

    start = time.perf_counter()
    cold = evaluate(matcher, pairs, cache, desc="cold")
    t_cold = time.perf_counter() - start
    misses = cache.misses

    with torch.no_grad():  # only the matcher changes, e.g. after pruning it
        for param in matcher.matcher.parameters():
            param.mul_(1 + 0.01 * torch.randn_like(param))
    start = time.perf_counter()
    warm = evaluate(matcher, pairs, cache, desc="warm")
    t_warm = time.perf_counter() - start

    print(f"{args.matcher}, {len(pairs)} pairs at 640x480, {torch.get_num_threads()} threads")
    print(f"cold (detector + matcher): {t_cold:7.1f} s   detector runs: {misses}")
    print(
        f"warm (matcher only):       {t_warm:7.1f} s   detector runs: {cache.misses - misses}  cache hits: {cache.hits}"
    )
    print(f"speed-up from the cache: {t_cold / t_warm:.1f}x")
    for name, r in (("cold", cold), ("warm", warm)):
        s = r["summary"]
        print(
            f"{name}: auc@3px={s['auc@3px']:.3f} precision={s['precision']:.3f} recall={s['recall']:.3f} "
            f"failures={s['failures']}"
        )


if __name__ == "__main__":
    run_cli(main)
