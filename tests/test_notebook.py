"""The Colab-first notebook is stored without outputs and executes end to end outside Colab (tiny settings)."""

import copy
import json
from pathlib import Path

import nbformat
import pytest
from conftest import FIXTURES, ROOT
from fake_hpatches import make_release

from pipeline.experiment import Experiment, experiment_config
from pipeline.notebook import execute, render_markdown
from pruning.fine_grained import prune_fine_grained

NOTEBOOK = ROOT / "notebooks" / "efficient_feature_matching.ipynb"
TINY = experiment_config([str(ROOT / "configs" / "demo.yaml"), str(FIXTURES / "tiny_experiment.yaml")])


def test_notebook_is_stored_without_outputs_and_has_a_parameter_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters_and_each_walkthrough_step_shows_its_result(tmp_path):
    # The real-int8 variant (a minute of ONNX export) is covered by tests/test_experiments.py; not again in part 1.
    variants = [s for s in TINY["quantization"] if s["method"] != "int8-onnxruntime"]
    nb = execute(
        {
            "EXTRA_CONFIGS": ["tests/fixtures/tiny_experiment.yaml"],
            "OUT": str(tmp_path / "run"),
            "OVERRIDES": ["quantization=" + json.dumps(variants)],
            "HPATCHES": str(make_release(tmp_path)),
            "FINETUNE_STEPS": 2,
        },
        timeout=900,
    )
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| fine-grained+kmeans-4bit |" in report and "| dense |" in report and "| int8-onnxruntime |" not in report
    code = [c for c in nb.cells if c.cell_type == "code"]
    shown = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "MB on disk" in shown
    assert "dense                    AUC@1/3/5/10px" in shown and "sift+nn (classical)      AUC@1/3/5/10px" in shown
    assert list((tmp_path / "run" / "match_pairs").glob("*_matches.png"))
    # part 2: every step cell shows what its tags promise, inline
    steps = [c for c in code if "step" in c.metadata.get("tags", [])]
    assert len(steps) >= 7
    for c in steps:
        kinds = {k for o in c.outputs for k in o.get("data", {})}
        wanted = {"figure": "image/png", "table": "text/markdown"}
        missing = [w for t, w in wanted.items() if t in c.metadata["tags"] and w not in kinds]
        assert not missing, f"{c.source.splitlines()[1]!r} shows no {missing}"
        assert "Wall time" in "".join(o.get("text", "") for o in c.outputs)  # %%time: the step's time
    tables = [o["data"]["text/markdown"] for c in steps for o in c.outputs if "text/markdown" in o.get("data", {})]
    assert any("| pruned+ft |" in t for t in tables) and any("| int8-onnxruntime |" in t for t in tables)
    assert any("pair latency ×" in t for t in tables)
    assert "the reloaded model matches as the one saved: True" in shown
    # the scan's choice pruned by hand has the weights of part 1's fine-grained variant: read back, not re-judged
    record = json.loads((tmp_path / "run" / "stages" / "walkthrough-pruned.json").read_text())
    assert Path(record["result"]["checkpoint"]).name == "fine-grained.pth"
    walk = tmp_path / "run" / "walkthrough"
    assert (walk / "smallest.pth").is_file() and list(walk.glob("finetune-*/log.csv"))
    # the rendered copy: Markdown with the figures beside it
    md = render_markdown(nb, tmp_path / "docs" / "notebook.md")
    text = md.read_text()
    figures = list((tmp_path / "docs" / "notebook_files").glob("*.png"))
    assert len(figures) >= 5 and all(f"notebook_files/{f.name}" in text for f in figures)
    assert "| pruned+ft |" in text and "\r" not in text
    bars = [line for line in text.splitlines() if "finetune:" in line and "%|" in line]
    assert bars and all("100%|" in line for line in bars)  # each finetuning's bar in its last state only


def test_the_rendered_copy_shows_a_progress_bar_in_its_last_state(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\rsteps: {p}%|") for p in (0, 50, 100)]
    cell.outputs = [
        *bar,
        nbformat.v4.new_output("stream", name="stderr", text="\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    nb.cells = [cell]
    text = render_markdown(nb, tmp_path / "nb.md").read_text()
    assert "steps: 100%|" in text and "steps: 50%" not in text and "steps: 0%" not in text and "done" in text


def test_a_rerun_of_a_walkthrough_step_reads_its_evaluation_back(tmp_path, monkeypatch):
    exp = Experiment(TINY, tmp_path / "run", progress=False)
    model = copy.deepcopy(exp.dense())
    prune_fine_grained(model.matcher, {"transformers.0.*": 0.5})
    row = exp.judged(model, "pruned")
    assert row["sparsity"] > 0 and "vs_dense" in row and Path(row["checkpoint"]).is_file()
    again = Experiment(TINY, tmp_path / "run", progress=False)
    monkeypatch.setattr(again, "judge", lambda *a, **k: pytest.fail("evaluated again"))
    assert again.judged(copy.deepcopy(model), "pruned") == row
    other = copy.deepcopy(model)
    prune_fine_grained(other.matcher, {"transformers.1.*": 0.5})
    with pytest.raises(pytest.fail.Exception):  # other weights: evaluated, not read back
        again.judged(other, "pruned")


def test_render_command_names_a_bad_parameter_in_one_line(tmp_path):
    import subprocess
    import sys

    for bad in ("PRESET", "PRESET=demo", "1X=2", "PRESETT='demo'", "--timeout=-1"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.notebook",
                *(["--param"] if bad[0] != "-" else []),
                bad,
                "--dest",
                str(tmp_path / "nb.md"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert bad.split("=")[0].lstrip("-") in done.stderr
        if bad.startswith("PRESETT"):
            assert "did you mean PRESET?" in done.stderr
    assert not (tmp_path / "nb.md").exists()


def test_the_rendered_copy_keeps_each_progress_bar_in_its_last_state_only():
    from pipeline.notebook import final_progress

    stream = (
        "start\nscan:   0%|   | 0/12 [00:00<?, ?it/s]\x1b[A\nscan:  50%|█  | 6/12 [00:01<00:01]\x1b[A\n"
        "outer:  10%|x| 1/10\router:  20%|x| 2/10\nscan: 100%|███| 12/12 [00:02<00:00]\ndone\nscan:  90%|██| 9/10"
    )
    assert final_progress(stream) == (
        "start\nscan: 100%|███| 12/12 [00:02<00:00]\nouter:  20%|x| 2/10\ndone\nscan:  90%|██| 9/10"
    )
