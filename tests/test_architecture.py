"""The house rules of docs/ARCHITECTURE.md: arrows that point one way, and a new method that needs one file."""

import ast
import json

import pytest
import torch
from conftest import FIXTURES, ROOT

# Lower layers never import higher ones; modules of one layer may import each other (no cycles, checked below).
LAYERS = [
    {"helper"},
    {"models", "data"},
    {"compression"},
    {"pruning", "quantization", "backends"},
    {"pipeline"},
    {"efm"},  # the public Python interface: a thin layer over the pipeline
    {
        "evaluate",
        "finetune",
        "match_pairs",
        "profiling",
        "pruning_experiments",
        "quantization_experiments",
        "visualizations",
    },  # the command lines: they import the pipeline, never each other
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def project_modules() -> dict[str, set[str]]:
    """Every module of the installed project (not tests, benchmarks) -> the project modules it imports."""
    files = [p for p in ROOT.glob("*.py")] + [p for d in LAYER for p in (ROOT / d).glob("*.py")]
    graph = {}
    for path in files:
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else ".".join(rel.parts[:-1])
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this file is in
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m.split(".")[0] in LAYER}
    return graph


def test_imports_point_down_the_layers():
    graph = project_modules()
    assert len(graph) > 40 and set(LAYER) <= {m.split(".")[0] for m in graph}
    upward = [
        f"{m} -> {d}" for m, deps in graph.items() for d in deps if LAYER[d.split(".")[0]] > LAYER[m.split(".")[0]]
    ]
    scripts = LAYERS[-1]
    sideways = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if m in scripts and d.split(".")[0] in scripts and d.split(".")[0] != m
    ]
    assert upward == [] and sideways == []


def test_no_import_cycles():
    graph = project_modules()
    modules = set(graph)
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    for m in modules:  # a package's __init__ importing its own submodules is how it registers them: not a cycle
        edges[m] = {d for d in edges[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d) :] + [d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.slow
def test_the_architecture_page_names_every_registry_and_module():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    diagram = page.split("```")[1]  # the layer diagram
    registries, modules = [], []
    for package in (d for d in LAYER if (ROOT / d).is_dir()):
        for path in sorted((ROOT / package).glob("*.py")):
            if path.stem != "__init__":
                modules.append((package, path.stem))
            for node in ast.parse(path.read_text()).body:  # a module-level dict that starts empty: a registry
                if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                    continue
                target, value = node.target if isinstance(node, ast.AnnAssign) else node.targets[0], node.value
                if (
                    isinstance(target, ast.Name)
                    and target.id.isupper()
                    and not target.id.startswith("_")  # a private cache, not a registry
                    and isinstance(value, ast.Dict)
                    and not value.keys
                ):
                    registries.append(target.id)
    assert {"MATCHERS", "METHODS", "STATES", "BACKENDS", "MODULES", "GRAPHS", "PRUNERS", "GENERATORS"} <= set(
        registries
    )
    assert [r for r in registries if f"`{r}`" not in page] == []
    assert [f"{p}/{m}" for p, m in modules if m not in diagram] == []


def test_a_new_method_in_one_file_runs_through_experiment_checkpoint_and_finetuning(tmp_path):
    import toy_method  # noqa: F401  (registers 'toy-ternary': its state, its checkpoint form, its method)

    from compression.state import get
    from pipeline.checkpoint import load_checkpoint
    from pipeline.experiment import experiment_config, run

    config = experiment_config(
        [str(ROOT / "configs" / "demo.yaml"), str(FIXTURES / "tiny_experiment.yaml")], ["animation=null"]
    )
    # SuperPoint + a two-layer SuperGlue on random weights: the wiring is the test, not the accuracy
    config.update(
        matcher="superpoint+superglue",
        matcher_config={
            "superpoint": {"weights": None, "max_keypoints": 64},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"], "sinkhorn_iterations": 5},
        },
    )
    config["pruning"] = [{"name": "ternary", "method": "toy-ternary", "threshold": 0.5, "finetune": True}]
    config["quantization"] = config["references"] = []
    rows = {r["name"]: r for r in run(config, tmp_path, ("pruning",), progress=False)}
    assert set(rows) == {"dense", "ternary", "ternary +ft"}
    # SuperGlue (about half the file) on 2-bit codes, SuperPoint as it was
    assert rows["ternary"]["bits"] == 2 and rows["ternary"]["size_bytes"] < 0.6 * rows["dense"]["size_bytes"]
    for name in ("ternary", "ternary +ft"):  # the checkpoint round trip: its own form, its state back on load
        m = load_checkpoint(rows[name]["checkpoint"])
        layer = m.matcher.gnn.layers[0].mlp[0]
        state = get(layer, "toy-ternary")
        assert state is not None and set(torch.unique(layer.weight.abs()).tolist()) <= {0.0, state.scale.item()}
    before = load_checkpoint(rows["ternary"]["checkpoint"]).matcher.state_dict()
    after = load_checkpoint(rows["ternary +ft"]["checkpoint"]).matcher.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # finetuning moved weights, kept them ternary
    report = (tmp_path / "report.md").read_text()
    assert "| ternary | toy-ternary |" in report
    assert json.loads((tmp_path / "results.json").read_text())[1]["method"] == "toy-ternary"
    with pytest.raises(Exception, match="threshold"):  # its settings are checked with the plan
        experiment_config(
            [str(ROOT / "configs" / "demo.yaml")], ["pruning=[{name: t, method: toy-ternary, threshold: 5.0}]"]
        )
