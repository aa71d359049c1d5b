"""Cost of matchers, dense or compressed, measured side by side: parameters, MACs, size, latency, memory.

    python profiling.py --matcher aliked+lightglue --num_keypoints 512 --resize 640 480 --json prof.json
    python profiling.py --checkpoint runs/demo/variants/channel-ffn25.pth --num_keypoints 512
    python profiling.py --matcher aliked+lightglue --sweep_keypoints 128 256 512 1024 2048 --csv sweep.csv

(Named profiling.py on purpose: a profile.py here would shadow Python's profile module and break
torch._dynamo.) What it measures and how: pipeline/costs.py.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from backends import graph_modules
from helper import (
    ArgumentParser,
    InputError,
    atomic_path,
    first_line,
    git_commit,
    image_side,
    int_in,
    pick_device,
    positive_int,
    run_cli,
    writable_location,
    write_csv,
    write_json,
)
from models.matching import Matcher, available_matchers, build_matcher
from pipeline.checkpoint import load_checkpoint
from pipeline.costs import int8_copy, interleaved_latency, logger, markdown, prepare, profile_matcher, sweep


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--matcher", nargs="*", default=[], choices=available_matchers())
    p.add_argument("--checkpoint", nargs="*", default=[], help="checkpoints written by this project")
    p.add_argument(
        "--random-weights",
        "--random_weights",
        dest="random_weights",
        action="store_true",
        help="profile the architecture without its weights (cost does not depend on them)",
    )
    p.add_argument(
        "--num_keypoints", type=int_in(1, 100_000), default=512, help="keypoints per image fed to the matcher"
    )
    p.add_argument("--resize", type=image_side, nargs=2, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--threads", type=int_in(1, 1024), default=None, help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--sweep_keypoints", type=int_in(1, 100_000), nargs="*", default=[])
    p.add_argument("--sweep_resize", type=image_side, nargs="*", default=[], help="W H pairs, e.g. 320 240 640 480")
    p.add_argument(
        "--int8_detector",
        action="store_true",
        help="also profile each model with its detector (SuperPoint, DISK) in real int8 (ONNX Runtime, "
        "static QDQ calibrated on sample photos)",
    )
    p.add_argument(
        "--int8_matcher",
        action="store_true",
        help="also profile each model with its matcher network (SuperGlue, LightGlue) in real int8 "
        "(ONNX Runtime; with --int8_detector: both parts in int8)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--csv", default=None, help="sweep rows")
    p.add_argument("--markdown", default=None)
    p.add_argument("--force_cpu", action="store_true")
    args = p.parse_args(argv)
    if not args.matcher and not args.checkpoint:
        raise InputError("give --matcher and/or --checkpoint")
    for flag in ("json", "csv", "markdown"):  # where the results go, checked before the work
        if getattr(args, flag):
            writable_location(getattr(args, flag), what=f"--{flag}")
    if len(args.sweep_resize) % 2:
        raise InputError("--sweep_resize takes W H pairs")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.force_cpu)
    models: list[tuple[str, Matcher]] = []
    for name in args.matcher:
        config = (
            {"superpoint": {"weights": None}, "superglue": {"weights": None}, "pretrained": False}
            if args.random_weights
            else {}
        )
        models.append((name + (" (random weights)" if args.random_weights else ""), build_matcher(name, config)))
    for path in args.checkpoint:
        if not Path(path).is_file():
            raise InputError(f"checkpoint not found: {path}")
        models.append((Path(path).name, load_checkpoint(path)))
    size = tuple(args.resize)
    tmp = tempfile.TemporaryDirectory()
    parts = ("detector",) * args.int8_detector + ("matcher",) * args.int8_matcher
    for i, (name, m) in enumerate(list(models) if parts else []):
        try:
            copied = int8_copy(m, size, Path(tmp.name) / str(i), args.threads, parts)
        except ValueError as e:  # no graph adapter for this network
            raise InputError(f"--int8_{'/--int8_'.join(parts)} with {name}: {first_line(e)}") from None
        models.append((f"{name} (int8 {'+'.join(parts)}, onnxruntime)", copied))
    meta = {"device": str(device), "threads": torch.get_num_threads(), "git_commit": git_commit(), "args": vars(args)}
    results = []
    for i, (name, matcher) in enumerate(models):
        logger.info("profiling %s", name)
        matcher = copy.deepcopy(matcher)
        results.append(
            {
                **profile_matcher(
                    matcher, name, size, args.num_keypoints, args.repeats, device, pair_latency=len(models) == 1
                ),
                "meta": meta,
            }
        )
    if len(models) > 1:  # the pair latencies behind the ratios: timed round-robin, side by side
        pairs = {i: prepare(m, size, args.num_keypoints, device)["pair"] for i, (_, m) in enumerate(models)}
        for i, t in interleaved_latency(pairs, args.repeats).items():
            results[i]["total"].update(t)
    for r, (_, m) in zip(results, models):  # a part in ONNX Runtime weighs its graph (the total: its checkpoint)
        for name, module in graph_modules(m).items():
            r[name.split(".")[0]]["size_bytes"] = len(module.graph_bytes)  # 'detector(.unet)' or 'matcher'
    tmp.cleanup()
    print(markdown(results))
    resizes = [tuple(args.sweep_resize[i : i + 2]) for i in range(0, len(args.sweep_resize), 2)]
    rows = (
        [row for name, m in models for row in sweep(m, name, size, args.sweep_keypoints, resizes, args.repeats, device)]
        if (args.sweep_keypoints or resizes)
        else []
    )
    if args.json:
        write_json(args.json, results)
    if args.csv and rows:
        write_csv(args.csv, rows)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(markdown(results) + "\n")


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
