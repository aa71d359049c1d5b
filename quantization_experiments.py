"""Quantization experiments: baseline -> k-means / linear int8 quantization (of the dense model or of a pruned
variant) -> finetuning -> evaluation -> profiling -> figures and report.md (resumable; see experiments.py).

    python quantization_experiments.py                              # the demo: configs/demo.yaml -> runs/demo
    python quantization_experiments.py --config configs/coco.yaml --out runs/coco
    python quantization_experiments.py --dry-run                     # print the plan
"""

from helper import run_cli
from pipeline.experiment import main as run_experiment


def main(argv: list[str] | None = None) -> None:
    run_experiment(("quantization",), __doc__.split("\n")[0], argv)


def cli() -> None:
    """The console script (see pyproject.toml): ``main`` behind the one-line error boundary."""
    run_cli(main)


if __name__ == "__main__":
    cli()
