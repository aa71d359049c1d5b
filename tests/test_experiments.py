"""The experiment pipeline: every stage runs, a killed run resumes without redoing finished stages, changed
settings redo only what depends on them, and the report lists every variant with its measured costs."""

import json
import math
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from compression.state import get
from compression.tensors import owner, prunable_weights
from helper import InputError, load_config
from pipeline import experiment as experiments
from pipeline.checkpoint import load_checkpoint, stored_bytes
from pipeline.experiment import DEFAULTS, experiment_config, run
from pipeline.report import README_END, README_START, update_readme
from pipeline.tiers import verdict
from pruning.fine_grained import sparsity_report
from quantization.kmeans import quantized_layers

TINY = experiment_config([str(ROOT / "configs" / "demo.yaml"), str(FIXTURES / "tiny_experiment.yaml")])
KEYS = (
    "name",
    "method",
    "sparsity",
    "bits",
    "finetuned",
    "auc@1px",
    "auc@3px",
    "auc@5px",
    "precision",
    "recall",
    "size_bytes",
    "macs",
    "latency_ms",
)


def stage_times(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}


@pytest.mark.slow
def test_killed_experiment_resumes_and_reports_every_variant(tmp_path, monkeypatch):
    real_finetune = experiments.finetune

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were killed while finetuning

    monkeypatch.setattr(experiments, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, tmp_path, ("pruning",), progress=False)
    done = stage_times(tmp_path)
    assert {"baseline.json", "sensitivity.json", "variant-fine-grained.json"} <= set(done)

    monkeypatch.setattr(experiments, "finetune", real_finetune)
    assert run(TINY, tmp_path, ("pruning",), progress=False, report=False) == []  # as the README's main job does
    after = stage_times(tmp_path)
    assert all(after[name] == t for name, t in done.items())  # finished stages were not redone
    assert "finetune-fine-grained.json" in after
    assert "profile.json" not in after and not (tmp_path / "report.md").exists()  # the next script profiles all

    rows = run(TINY, tmp_path, ("quantization",), progress=False)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {
        "dense",
        "fine-grained",
        "fine-grained +ft",
        "channel-ffn25",
        "channel-ffn25 +ft",
        "linear-int8",
        "int8-onnxruntime",
        "detector-onnxruntime",
        "lightglue-fast",
        "fast-pipeline",
        "kmeans-4bit",
        "kmeans-mixed",
        "fine-grained+kmeans-4bit",
        "kmeans-mixed+aliked-4bit",
        *(r["name"] for r in TINY["references"]),  # other pipelines (anchors, operating points) beside them
    }
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved] == [r["name"] for r in rows]
    for r in saved:
        assert all(k in r for k in KEYS), r["name"]
        assert math.isfinite(r["latency_ms"]) and r["latency_ms"] > 0
    dense, combined = by_name["dense"], by_name["fine-grained+kmeans-4bit"]
    assert by_name["fine-grained"]["sparsity"] > 0 and combined["sparsity"] == by_name["fine-grained +ft"]["sparsity"]
    assert combined["finetuned"] and combined["bits"] == 4
    assert by_name["kmeans-4bit"]["size_bytes"] < dense["size_bytes"] / 4
    assert 2 <= by_name["kmeans-mixed"]["bits"] < 4  # the budget lets the scanned layers go to 2 bits
    assert by_name["kmeans-mixed"]["size_bytes"] < by_name["kmeans-4bit"]["size_bytes"]
    assert combined["size_bytes"] < by_name["kmeans-4bit"]["size_bytes"]
    whole = by_name["kmeans-mixed+aliked-4bit"]  # ALIKED shared by k-means too: the smallest file of the run
    assert stored_bytes(whole["checkpoint"], "detector.") < stored_bytes(dense["checkpoint"], "detector.") / 4
    assert whole["size_bytes"] == min(r["size_bytes"] for r in saved if r["method"] != "reference")
    assert quantized_layers(load_checkpoint(whole["checkpoint"]).detector) == 26  # all of ALIKED's layers
    assert by_name["channel-ffn25"]["macs"] < dense["macs"]
    real_int8 = by_name["int8-onnxruntime"]  # LightGlue's graph in the checkpoint, run by ONNX Runtime
    # the graph holds no early exit: every layer's MACs, at least what the adaptive dense LightGlue spends
    assert real_int8["macs"] >= dense["macs"] and real_int8["size_bytes"] < dense["size_bytes"] / 2
    graph = by_name["detector-onnxruntime"]  # ALIKED's dense part as an fp32 graph: the same detections
    assert graph["execution"] == "fp32 ONNX Runtime graph for the detector" and graph["bits"] == 32
    assert graph["auc@3px"] == pytest.approx(dense["auc@3px"], abs=1e-6)
    fast = load_checkpoint(by_name["fast-pipeline"]["checkpoint"])  # the ORT detector and LightGlue's fast settings
    assert type(fast.detector).__name__ == "GraphDetector" and fast.detector.backend == "onnxruntime"
    assert (fast.matcher.conf.depth_confidence, fast.matcher.conf.width_confidence) == (0.8, 0.95)
    # one graph, one detector: the two share the detector outputs cached (the PyTorch copy a graph keeps is not it)
    assert fast.detector_fingerprint() == load_checkpoint(graph["checkpoint"]).detector_fingerprint()
    for r in saved:  # every accuracy with its interval; every variant judged against dense on the same pairs
        assert all(r["intervals"][k][0] <= r[k] <= r["intervals"][k][1] for k in ("auc@3px", "precision", "recall"))
        if r["name"] != "dense":
            d = r["vs_dense"]["auc@3px"]
            assert d["difference"] == pytest.approx(r["auc@3px"] - dense["auc@3px"])
            assert d["within_noise"] == (d["interval"][0] <= 0 <= d["interval"][1])
    xfeat = by_name["xfeat"]  # a reference: judged on the same pairs, timed in the same profile, no compression
    assert xfeat["method"] == "reference" and xfeat["sparsity"] is None and xfeat["execution"] == "fp32"
    assert load_checkpoint(xfeat["checkpoint"]).name == "xfeat" and xfeat["latency_ms"] > 0
    assert by_name["dense-256kp"]["weights"] != dense["weights"]  # another keypoint budget: another pipeline
    more = load_checkpoint(by_name["dense-256kp"]["checkpoint"])  # its keypoint budget: its file says so
    assert more.config["detector"]["max_keypoints"] == 256
    assert "pairs" not in saved[0]  # the dense per-pair values stay in the baseline stage
    assert (
        len(json.loads((tmp_path / "stages" / "baseline.json").read_text())["result"]["pairs"])
        == TINY["val"]["num_pairs"]
    )
    assert (tmp_path / "cache" / "features.pt").is_file()  # the second script matched without extracting again
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in report for name in by_name)
    assert "| within noise |" in report and "How sure:" in report
    readme = tmp_path / "README.md"  # --update-readme: the ready pipelines' table, the report beside it
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nafter\n")
    update_readme(tmp_path, readme, tmp_path / "docs" / "results", tmp_path / "docs" / "demo")
    text = readme.read_text()
    assert text.startswith(f"intro\n{README_START}\n") and text.endswith(f"{README_END}\nafter\n") and "old" not in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert "| **fast** (detector-onnxruntime) |" in text and "| xfeat |" in text and len(table) == 2 + 3 + 3
    assert all(line.count("|") == 9 for line in table)  # 8 columns: the two verdict tiers' metric and Δ
    assert "](../demo/" in (tmp_path / "docs" / "results" / "demo.md").read_text()
    assert "int8 kernels (ONNX Runtime) for the matcher" in report and "References are other pipelines" in report
    assert "## Deep compression (benchmarks/deep_compression.py)" in report  # the demo's deep_compression report
    assert report.index("## Deep compression") > report.index("![")  # after the figures: the README's cut omits it
    assert all(
        (tmp_path / "figures" / f"{f}.png").is_file()
        for f in ("auc_vs_size", "auc_vs_latency", "sensitivity", "sensitivity-bits", "weights")
    )
    assert "dense_vs_compressed.gif" in report and (tmp_path / "figures" / "dense_vs_compressed.gif").is_file()
    assert (tmp_path / "config.yaml").read_text().count("git_commit") == 1
    # every model on every tier, against dense on the same pairs; the verdict from the verdict tiers
    tiers = [TINY["val"]["tier"], *TINY["tiers"]]
    assert tiers[0] == "hard" and sorted(tiers) == ["easy", "hard", "pose"]  # val's tier first, then the config's
    assert TINY["verdict"]["tiers"] == ["hard", "pose"]
    for r in saved:
        assert list(r["tiers"]) == tiers, r["name"]
        pose = r["tiers"]["pose"]
        assert pose["kind"] == "pose" and pose["num_pairs"] == TINY["tiers"]["pose"]["num_pairs"]
        assert 0 <= pose["auc@10deg"] <= 1 and "auc@3px" not in pose
        assert r["tiers"]["hard"]["auc@3px"] == r["auc@3px"]  # val's tier: the row's own numbers
        if r["name"] != "dense":
            assert r["verdict"]["holds"] in ("within", "loss", "unresolved")
            assert set(r["verdict"]["tiers"]) == {"hard", "pose"}
            d = pose["vs_dense"]["auc@10deg"]
            assert d["difference"] == pytest.approx(pose["auc@10deg"] - dense["tiers"]["pose"]["auc@10deg"])
    assert by_name["detector-onnxruntime"]["verdict"]["holds"] == "within"  # the same detections: no difference
    assert "## Every tier" in report and report.index("## Every tier") < report.index("![")  # in the README's cut

    # Nothing to redo; a changed quantization setting redoes that variant (and the profile) only.
    before = stage_times(tmp_path)
    run(TINY, tmp_path, ("quantization",), progress=False)
    assert stage_times(tmp_path) == before
    changed = experiments.merge_config(TINY, {})
    changed["quantization"] = [dict(s, bits=3) if s["name"] == "kmeans-4bit" else s for s in TINY["quantization"]]
    run(changed, tmp_path, ("quantization",), progress=False)
    redone = {n for n, t in stage_times(tmp_path).items() if before.get(n) != t}
    tier_stages = {f"tier-{t}-kmeans-4bit.json" for t in TINY["tiers"]}  # its new checkpoint on the other tiers
    assert (
        {"variant-kmeans-4bit.json", "profile.json", *tier_stages}
        <= redone
        <= {"variant-kmeans-4bit.json", "profile.json", "animation.json", *tier_stages}
    )  # if it is the smallest


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    run(TINY, tmp_path / "run", dry_run=True)
    plan = capsys.readouterr().out
    assert "to do: baseline" in plan and "to do: finetune-fine-grained" in plan and "report.md" in plan
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tiers": {"hard": {"num_pairs": 2}}}, "already the 'hard' tier"),
        ({"tiers": {"a/b": {}}}, "tier name"),
        ({"tiers": {"x": {"tier": "medium"}}}, "tiers.x.tier"),
        ({"tiers": {"x": {"num_pairs": 0}}}, "tiers.x.num_pairs"),
        ({"tiers": {"x": {"tier": "pose", "estimator": "dlt"}}}, "not dlt"),
        ({"tiers": {"x": {"pairs": 3}}}, "unknown setting 'tiers.x.pairs'"),
        ({"verdict": {"tiers": ["nope"]}}, "no tier 'nope'"),
    ],
)
def test_bad_tiers_are_one_line_errors(change, message):
    with pytest.raises(InputError, match=message):
        experiment_config([], [], base=experiments.merge_config(TINY, change))


def test_the_verdict_rests_on_the_verdict_tiers():
    def row(**intervals):
        tiers = {
            name: {
                "kind": "pose" if name == "pose" else "homography",
                "vs_dense": {metric: {"difference": (lo + hi) / 2, "interval": [lo, hi]}},
            }
            for name, (lo, hi) in intervals.items()
            for metric in ["auc@10deg" if name == "pose" else "auc@3px"]
        }
        return {"tiers": tiers}

    settings = {"tiers": ["hard", "pose"], "within": 0.01}
    holds = lambda r: verdict(r, settings)["holds"]  # noqa: E731
    assert holds(row(hard=(-0.005, 0.004), pose=(-0.01, 0.02), easy=(-0.5, -0.4))) == "within"  # easy: no say
    assert holds(row(hard=(-0.008, -0.002), pose=(0.0, 0.01))) == "within"  # a loss shown, but under a point
    assert holds(row(hard=(-0.02, 0.01), pose=(-0.005, 0.005))) == "unresolved"  # could be more than a point
    assert holds(row(hard=(-0.03, -0.011), pose=(-0.005, 0.005))) == "loss"
    assert holds(row(hard=(-0.03, -0.001), pose=(-0.05, 0.02))) == "loss"  # past the point and below 0 somewhere
    assert verdict(row(hard=(-0.02, 0.01), pose=(0, 0)), settings)["tiers"]["pose"]["metric"] == "auc@10deg"
    assert verdict({"tiers": {}}, settings)["holds"] is None  # dense: nothing to compare with


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"name": "x", "method": "magic"}, "unknown method"),
        ({"name": "x", "method": "kmeans"}, "needs 'bits'"),
        ({"name": "x", "method": "fine-grained+kmeans", "base": "nope", "bits": 4}, "base 'nope'"),
        ({"name": "x", "method": "int8-onnxruntime+kmeans", "bits": 4}, "last step"),
        ({"name": "x", "method": "fine-grained", "sparsity": {"*attn*": 0.5}, "ranking": "global"}, "one overall"),
        ({"name": "x", "method": "fine-grained", "sparsity": 0.5, "ranking": "best"}, "ranking"),
        ({"reference": {"name": "dense", "matcher": "xfeat"}}, "reference 'dense'"),
        ({"reference": {"name": "r", "matcher": "xfeat", "matcher_config": {"x": 3}}}, "r.matcher_config"),
    ],
)
def test_bad_variants_are_one_line_errors(tmp_path, variant, message):
    if "reference" in variant:
        config = {**TINY, "references": [variant["reference"]]}
    else:
        config = {**TINY, "pruning": [], "quantization": [variant]}
    with pytest.raises(InputError, match=message):
        run(config, tmp_path, ("quantization",), dry_run=True)


@pytest.mark.slow
def test_coco_preset_runs_end_to_end_with_random_weights(tmp_path):
    # The official weights and COCO are not here: the same preset on random weights and the sample photos checks
    # its wiring (SuperGlue fine-grained and channel pruning, SuperPoint channel pruning with detector finetuning).
    config = load_config(
        [str(ROOT / "configs" / "coco.yaml"), str(FIXTURES / "tiny_experiment.yaml")],
        [
            "source=sample",
            "matcher_config.superpoint.weights=null",
            "matcher_config.superglue.weights=null",
            "matcher_config.superglue.GNN_layers=[self, cross]",  # two layers: the wiring, in a fraction of the time
            'sensitivity.include=["gnn.layers.0.*"]',
            "sensitivity.depth=3",
            "val.val_fraction=0.5",
            "finetune.train.val_fraction=0.5",
            "calibration.val_fraction=0.5",
            "finetune.val.every=1",
            "animation=null",
        ],
        DEFAULTS,
    )
    coco = load_config(str(ROOT / "configs" / "coco.yaml"))  # its own variants and references, not the fixture's
    config["quantization"] = coco.get("quantization", DEFAULTS["quantization"])
    config["references"] = coco.get("references", DEFAULTS["references"])
    # the tiny fixture's keypoint budget is ALIKED's ('detector'); SuperPoint's lives under 'superpoint'
    config["matcher_config"]["superpoint"]["max_keypoints"] = config["matcher_config"].pop("detector")["max_keypoints"]
    config["tiers"], config["verdict"]["tiers"] = {}, []  # the seed's val pairs alone (the demo's test runs tiers)
    config = experiment_config([], [], base=config)
    deep = (
        "superglue-gradual83+kmeans-2bit",
        "deep-compression",
        "superglue-gradual90+kmeans-2bit",
        "deep-compression-90",
    )
    deep_4bit = "deep-compression-sp4bit"  # the 83 % recipe with SuperPoint at 4 bits instead of 3
    deep_grid = "deep-compression-grid"  # ... or on the entropy-coded grid
    kept = (*deep, deep_4bit, deep_grid)
    config["quantization"] = [
        s for s in config["quantization"] if "int8-onnxruntime" in s["method"] or s["name"] in kept
    ]
    config["references"] = []  # (the demo's test runs references)
    for s in config["quantization"]:  # the preset's own step counts are Colab's; the wiring needs the fixture's two
        if isinstance(s.get("finetune"), dict):
            s["finetune"] = {**s["finetune"], "steps": config["finetune"]["steps"]}
    rows = {r["name"]: r for r in run(config, tmp_path, progress=False)}
    fast = ("superglue-sinkhorn10-int8", "fast-pipeline-int8")
    assert set(rows) == {"dense", "superglue-int8-onnxruntime", "superpoint-int8-onnxruntime", *fast} | {
        f"{n}{ft}"
        for n in ("superglue-attn80-mlp80", "superglue-auto", "superpoint-channel50", "superglue-channel50", *deep[::2])
        for ft in ("", " +ft")
    } | {f"superglue-gradual{n} +ft" for n in ("83", "90", "83-global")} | {*deep[1::2], *kept[4:]}  # gradual: no row
    gradual = load_checkpoint(rows["superglue-gradual83 +ft"]["checkpoint"]).superglue
    assert sparsity_report(gradual)["total"] == pytest.approx(0.83, abs=1e-3)  # reached while it trained
    spread = sparsity_report(load_checkpoint(rows["superglue-gradual83-global +ft"]["checkpoint"]).superglue)
    assert spread["total"] == pytest.approx(0.83, abs=1e-3)  # 83 % overall, each tensor its share of the ranking:
    assert max(spread.values()) - min(s for s in spread.values() if s > 0) > 0.1  # not one sparsity
    smallest = rows["deep-compression"]
    assert smallest["sparsity"] == 0 and smallest["part"] == "detector"  # its detector's weights: k-means, not pruned
    # each part shrinks by what its bits allow: SuperPoint at 3 bits (8 for two small layers) at most ~10x, SuperGlue
    # 83 % pruned at 2 bits far more (measured: 8.5x and 24x); with two GNN layers SuperPoint is half the dense file,
    # so the whole is 13x here (nine layers: 20.7x, benchmarks/deep_compression.py --random-weights)
    dense, small = (Path(rows[n]["checkpoint"]) for n in ("dense", "deep-compression"))
    assert stored_bytes(dense, "detector.") / stored_bytes(small, "detector.") > 7
    assert stored_bytes(dense, "matcher.") / stored_bytes(small, "matcher.") > 20
    assert rows["dense"]["size_bytes"] / smallest["size_bytes"] > 11
    four = Path(rows[deep_4bit]["checkpoint"])  # the same matcher, SuperPoint's large layers at 4 bits: larger
    assert stored_bytes(four, "matcher.") == stored_bytes(small, "matcher.")
    assert stored_bytes(small, "detector.") < 0.85 * stored_bytes(four, "detector.")
    grid = load_checkpoint(rows[deep_grid]["checkpoint"])  # the same matcher, SuperPoint on its grids
    assert stored_bytes(Path(rows[deep_grid]["checkpoint"]), "matcher.") == stored_bytes(small, "matcher.")
    assert all(get(owner(grid.superpoint, n), "linear") is not None for n in prunable_weights(grid.superpoint))
    assert 1 < rows[deep_grid]["bits"] < 8  # its codes' entropy per weight
    for name in ("superglue-int8-onnxruntime", "superpoint-int8-onnxruntime"):  # both parts in real int8
        assert rows[name]["macs"] == rows["dense"]["macs"] and rows[name]["size_bytes"] < rows["dense"]["size_bytes"]
    fast_pipeline = load_checkpoint(rows["fast-pipeline-int8"]["checkpoint"])  # both parts in int8, 10 iterations
    assert {type(fast_pipeline.detector).__name__, type(fast_pipeline.matcher).__name__} == {
        "GraphDetector",
        "GraphMatcher",
    }
    assert fast_pipeline.config["superglue"]["sinkhorn_iterations"] == 10
    pruned = sparsity_report(load_checkpoint(rows["superglue-attn80-mlp80"]["checkpoint"]).superglue)
    assert pruned["gnn.layers.0.attn.merge.weight"] == pytest.approx(0.8, abs=1e-3)  # attention and MLPs at 80 %
    assert pruned["gnn.layers.1.mlp.0.weight"] == pytest.approx(0.8, abs=1e-3) and pruned["final_proj.weight"] == 0
    assert rows["superpoint-channel50 +ft"]["macs"] < rows["dense"]["macs"] / 2  # the detector lost its channels
    assert rows["superglue-channel50"]["matcher_macs"] < rows["dense"]["matcher_macs"]
