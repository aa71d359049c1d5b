"""Finetune a matcher (dense, pruned or quantized) on homography pairs, resumably, on one device or many.

    python finetune.py --config configs/finetune_demo.yaml [--set steps=100 --set lr=3e-4]
    python finetune.py --config configs/finetune_demo.yaml --set checkpoint=runs/demo/variants/fine-grained.pth
    torchrun --nproc_per_node 2 finetune.py --config ...          # data-parallel (gloo on CPU, NCCL on GPUs)

A run folder (``out``) belongs to the config and checkpoint that started it: the same command resumes it, another
config stops with a message (``--new`` starts the run beside it, in ``out-2``, …).

What it runs is pipeline/training.py: the loss, the resume, what compression keeps true after every step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helper import ArgumentParser, InputError, load_config, run_cli
from pipeline.training import DEFAULTS, checked_config, finetune


def command_line(argv: list[str] | None = None) -> tuple[dict[str, Any], Any]:
    """(checked config, parsed arguments) of the command line."""
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        nargs="+",
        action="extend",
        default=[],
        help="YAML config(s), merged in order (configs/finetune_demo.yaml)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. steps=50")
    p.add_argument(
        "--new",
        action="store_true",
        help="if out holds a run of another config, start this one beside it (out-2, …), not stop",
    )
    args = p.parse_args(argv)
    return checked_config(load_config(args.config, args.set, DEFAULTS)), args


def main(argv: list[str] | None = None) -> None:
    config, args = command_line(argv)
    if config["checkpoint"] and not Path(config["checkpoint"]).is_file():
        raise InputError(f"checkpoint not found: {config['checkpoint']}")
    result = finetune(config, new=args.new)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result)


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
