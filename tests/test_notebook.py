"""The Colab-first notebook is stored without outputs and executes end to end outside Colab (tiny settings)."""

import json

import nbformat
import pytest
from conftest import FIXTURES, ROOT
from fake_hpatches import make_release
from nbclient import NotebookClient

from pipeline.experiment import experiment_config

NOTEBOOK = ROOT / "notebooks" / "efficient_feature_matching.ipynb"
TINY = experiment_config([str(ROOT / "configs" / "demo.yaml"), str(FIXTURES / "tiny_experiment.yaml")])


def test_notebook_is_stored_without_outputs_and_has_a_parameter_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # The real-int8 variant (a minute of ONNX export) is covered by tests/test_experiments.py; not again here.
    variants = [s for s in TINY["quantization"] if s["method"] != "int8-onnxruntime"]
    params.source += (
        f'\nEXTRA_CONFIGS = ["tests/fixtures/tiny_experiment.yaml"]\nOUT = {str(tmp_path / "run")!r}\n'
        f"OVERRIDES = [{'quantization=' + json.dumps(variants)!r}]\n"
        f"HPATCHES = {str(make_release(tmp_path))!r}\n"
    )
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| fine-grained+kmeans-4bit |" in report and "| dense |" in report and "| int8-onnxruntime |" not in report
    shown = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "MB on disk" in shown
    assert "dense                    AUC@1/3/5/10px" in shown and "sift+nn (classical)      AUC@1/3/5/10px" in shown
    assert list((tmp_path / "run" / "match_pairs").glob("*_matches.png"))
