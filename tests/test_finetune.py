"""finetune.py: resumes exactly, keeps sparsity, skips NaN steps, runs data-parallel, fails clearly."""

import csv
import io
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from data.pairs import make_pairs
from helper import InputError, merge_config, to_tensor
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from models.superpoint import SuperPoint
from pipeline import training as finetune
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pruning.fine_grained import prune_fine_grained, sparsity_report

TINY = {
    "steps": 4,
    "lr": 3e-4,
    "matcher_config": {"detector": {"max_keypoints": 64}, "matcher": EVERY_LAYER},
    "train": {"num_pairs": 3, "size": [160, 120]},
    "val": {"num_pairs": 2, "size": [160, 120], "every": 2},
}


def config(out, **extra):
    return merge_config(merge_config(finetune.DEFAULTS, TINY), {"out": str(out), **extra})


def weights(path):
    return load_checkpoint(path).matcher.state_dict()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    straight = finetune.finetune(config(tmp_path / "a"), progress=False)
    assert straight["step"] == 4
    killed = finetune.finetune(config(tmp_path / "b"), stop_after=3, progress=False)  # dies after step 3
    assert killed["step"] == 3
    resumed = finetune.finetune(config(tmp_path / "b"), progress=False)  # restarts from step 2's checkpoint
    assert resumed["step"] == 4
    a, b = weights(tmp_path / "a" / "last.pth"), weights(tmp_path / "b" / "last.pth")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(
        not torch.equal(a[k], v) for k, v in build_matcher("aliked+lightglue").matcher.state_dict().items() if k in a
    )  # it did train
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "2", "4"]  # no duplicated rows after the resume


@pytest.mark.slow
def test_a_run_folder_is_bound_to_the_config_and_checkpoint_that_started_it(tmp_path):
    import yaml

    from helper import InputError

    m = build_matcher("aliked+lightglue", TINY["matcher_config"])
    a = save_checkpoint(m, tmp_path / "a.pth")
    prune_fine_grained(m.matcher, 0.5)
    b = save_checkpoint(m, tmp_path / "b.pth")
    out = tmp_path / "ft"
    assert finetune.finetune(config(out, checkpoint=str(a)), stop_after=1, progress=False)["step"] == 1  # killed
    record = (out / "config.yaml").read_text()
    with pytest.raises(InputError, match="another config .*checkpoint"):
        finetune.finetune(config(out, checkpoint=str(b)), progress=False)
    with pytest.raises(InputError, match="another config .*lr"):
        finetune.finetune(config(out, checkpoint=str(a), lr=1e-3), progress=False)
    original = a.read_bytes()
    a.write_bytes(b.read_bytes())  # the same path with other bytes: refused too
    with pytest.raises(InputError, match="checkpoint file's content"):
        finetune.finetune(config(out, checkpoint=str(a)), progress=False)
    a.write_bytes(original)
    assert (out / "config.yaml").read_text() == record  # the record still says what the folder holds
    beside = finetune.finetune(config(out, checkpoint=str(b), lr=1e-3), progress=False, new=True)
    assert beside["out"] == str(tmp_path / "ft-2") and beside["step"] == 4
    assert yaml.safe_load((tmp_path / "ft-2" / "config.yaml").read_text())["lr"] == 1e-3
    resumed = finetune.finetune(config(out, checkpoint=str(a)), progress=False)  # the same inputs resume
    assert resumed["out"] == str(out) and resumed["step"] == 4
    again = finetune.finetune(config(out, checkpoint=str(b), lr=1e-3), progress=False, new=True)
    assert again["out"] == str(tmp_path / "ft-2")  # --new finds the folder of its own config


def test_unreadable_resume_state_is_reported(tmp_path):
    from helper import InputError

    out = tmp_path / "ft"
    finetune.finetune(config(out), stop_after=1, progress=False)
    state = (out / "state.pt").read_bytes()
    (out / "state.pt").write_bytes(state[: len(state) // 3])
    with pytest.raises(InputError, match="state.pt"):
        finetune.finetune(config(out), progress=False)
    good = torch.load(io.BytesIO(state), weights_only=True)
    for field, value in (("step", "abc"), ("step", -3), ("best", None), ("masks", [1, 2]), ("optimizer", {"x": 1})):
        torch.save({**good, field: value}, out / "state.pt")
        with pytest.raises(InputError, match=f"cannot resume.*state.pt.*{field if field != 'optimizer' else 'fit'}"):
            finetune.finetune(config(out), progress=False)
    (out / "state.pt").write_bytes(state)  # nothing else was changed: the run still resumes
    assert finetune.finetune(config(out), progress=False)["step"] == 4


def test_fine_grained_sparsity_stays_exact(tmp_path):
    m = build_matcher("aliked+lightglue", TINY["matcher_config"])
    prune_fine_grained(m.matcher, {"*transformers*": 0.8})
    before = sparsity_report(m.matcher)
    save_checkpoint(m, tmp_path / "pruned.pth")
    finetune.finetune(config(tmp_path / "ft", checkpoint=str(tmp_path / "pruned.pth")), progress=False)
    after = sparsity_report(load_checkpoint(tmp_path / "ft" / "last.pth").matcher)
    assert after == before


def test_nan_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    real = finetune.matching_nll
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(finetune, "matching_nll", sometimes_nan)
    result = finetune.finetune(config(tmp_path / "n"), progress=False)
    assert result["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "n" / "last.pth").values())


def test_a_run_that_diverges_stops_there_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    real = finetune.enforce

    def blow_up(net):  # after the optimizer's step 3: one weight no longer finite
        real(net)
        if len(calls) == 2:
            next(iter(net.parameters())).data[0] = float("inf")
        calls.append(1)

    calls = []
    monkeypatch.setattr(finetune, "enforce", blow_up)
    with pytest.raises(InputError, match=r"diverged at step 3: input_proj\.weight is no longer finite"):
        finetune.finetune(config(tmp_path / "w"), progress=False)
    back = weights(tmp_path / "w" / "last.pth")  # step 2's, validated
    assert all(torch.isfinite(v).all() for v in back.values()) and load_checkpoint(tmp_path / "w" / "last.pth")
    monkeypatch.setattr(finetune, "matching_nll", lambda *args, **kwargs: torch.tensor(float("nan")))
    with pytest.raises(InputError, match="not finite for 10 steps in a row"):
        finetune.finetune(config(tmp_path / "n", steps=20, val={"every": 5}), progress=False)


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_checkpoint(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"out: {tmp_path / 'ddp'}\nsteps: 2\n"
        "matcher_config: {detector: {max_keypoints: 64},"
        " matcher: {depth_confidence: -1, width_confidence: -1}}\n"
        "train: {num_pairs: 2, size: [160, 120]}\nval: {num_pairs: 1, size: [160, 120], every: 2}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "finetune.py",
            "--config",
            str(cfg),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pth")) == ["best.pth", "last.pth"]
    assert load_checkpoint(tmp_path / "ddp" / "last.pth").name == "aliked+lightglue"


@pytest.mark.parametrize(
    "override,message",
    [
        ("checkpoint=/nope/pruned.pth", "checkpoint not found"),
        ("train.source=/nope/coco.zip", "image source not found"),
        ("prune.sparsity={'nope.*': 0.5}", "prune.sparsity: sparsity pattern 'nope.*' matches no"),
        ("prune.sparsity=1.5", "prune.sparsity"),
        ("lr=.inf", "lr' must be a finite number"),
        ("train.tier=pose", "train.tier 'pose': finetuning trains on homography tiers only"),
    ],
)
def test_bad_input_is_one_line(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "finetune.py", "--set", f"out={tmp_path}", "--set", override],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_detector_can_be_trained_too(tmp_path):
    before = build_matcher("aliked+lightglue").detector.state_dict()
    finetune.finetune(config(tmp_path / "d", steps=2, train_detector=True, val={"every": 2}), progress=False)
    after = load_checkpoint(tmp_path / "d" / "last.pth").detector.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


@pytest.mark.slow
def test_qat_run_resumes_with_its_float_shadows(tmp_path):
    from pipeline.evaluation import evaluate
    from quantization.linear import quantize_linear

    m = build_matcher("aliked+lightglue", TINY["matcher_config"])
    calib = make_pairs(merge_config(finetune.DEFAULTS["train"], TINY["train"]), augment=0.0)
    quantize_linear(m.matcher, lambda: evaluate(m, calib, progress=False), 8, 8)
    save_checkpoint(m, tmp_path / "int8.pth")
    cfg = lambda out: config(tmp_path / out, checkpoint=str(tmp_path / "int8.pth"), lr=1e-3)  # noqa: E731
    finetune.finetune(cfg("a"), progress=False)
    finetune.finetune(cfg("b"), stop_after=3, progress=False)
    finetune.finetune(cfg("b"), progress=False)
    a, b = weights(tmp_path / "a" / "last.pth"), weights(tmp_path / "b" / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)  # on the grid and identical
    w = a["transformers.0.self_attn.Wqkv.weight"]
    assert all(torch.unique(row).numel() <= 255 for row in w[:4])
    assert not torch.equal(
        w, load_checkpoint(tmp_path / "int8.pth").matcher.state_dict()["transformers.0.self_attn.Wqkv.weight"]
    )  # QAT moved some weights to other grid points


@pytest.mark.parametrize("name", ["aliked+lightglue", "superpoint+superglue"])
def test_distillation_trains_only_the_pruned_detector_towards_its_teacher(tmp_path, name):
    from pruning.channel import prune_channels

    if name == "aliked+lightglue":
        settings = TINY["matcher_config"]
    else:  # random weights (the teacher's from a file, as the official ones would be): the wiring Colab runs
        torch.manual_seed(0)
        torch.save(SuperPoint({"weights": None}).state_dict(), tmp_path / "teacher.pth")
        settings = {
            "superpoint": {"weights": str(tmp_path / "teacher.pth"), "max_keypoints": 64},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"]},
        }
    teacher = build_matcher(name, settings)
    student = build_matcher(name, settings)
    if name == "superpoint+superglue":  # pruning a random network changes little: start the student elsewhere
        student.detector.load_state_dict(SuperPoint({"weights": None}).state_dict())
    prune_channels(student.detector, {"block1": 0.5, "block2": 0.5} if name == "aliked+lightglue" else {"conv1b": 0.5})
    save_checkpoint(student, tmp_path / "pruned.pth")
    pairs = make_pairs({"num_pairs": 1, "size": [160, 120]})
    image = to_tensor(pairs.image(pairs[0], 0)[1])

    def gap(m):  # how far the student's dense outputs are from the teacher's, at the teacher's keypoints
        with torch.no_grad():
            t = teacher.distill_outputs(image)
            s = m.distill_outputs(image, t["keypoints"])
        cosine = (s["descriptors"] * t["descriptors"]).sum(0)
        score = torch.nn.functional.binary_cross_entropy(s["score_map"], t["score_map"])
        return float(score), float((1 - cosine).mean())

    cfg = config(tmp_path / "run", matcher=name, checkpoint=str(tmp_path / "pruned.pth"), steps=10, lr=1e-4,
                 distill={"enabled": True})  # fmt: skip
    finetune.finetune(finetune.checked_config({**cfg, "matcher_config": settings}), progress=False)
    after = load_checkpoint(tmp_path / "run" / "last.pth")
    assert all(torch.equal(v, student.matcher.state_dict()[k]) for k, v in after.matcher.state_dict().items())
    before_gap, after_gap = gap(student), gap(after)
    assert after_gap[1] < before_gap[1]  # descriptors
    if name == "aliked+lightglue":  # a random SuperPoint's heatmap is flat (1/65 per pixel): nothing to learn there
        assert after_gap[0] < before_gap[0]


def test_an_adaptive_lightglue_checkpoint_trains_on_every_layer_and_keeps_its_settings(tmp_path):
    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 64}})  # stock: adaptive depth and width
    save_checkpoint(m, tmp_path / "adaptive.pth")
    finetune.finetune(config(tmp_path / "run", checkpoint=str(tmp_path / "adaptive.pth"), steps=2), progress=False)
    after = load_checkpoint(tmp_path / "run" / "last.pth").matcher.conf
    assert (after.depth_confidence, after.width_confidence) == (m.matcher.conf.depth_confidence, 0.99)
    with m.every_layer():
        assert (m.matcher.conf.depth_confidence, m.matcher.conf.width_confidence) == (-1, -1)
    assert m.matcher.conf.depth_confidence == 0.95


def test_cubic_schedule_rises_fast_then_slow_and_reaches_the_target():
    from pruning.gradual import cubic_sparsity

    s = [cubic_sparsity(t, 100, 0.8, 0.1, 0.6) for t in range(101)]
    assert s[:11] == [0.0] * 11 and s[60:] == [0.8] * 41
    rises = [b - a for a, b in zip(s[10:60], s[11:61])]
    assert all(r >= 0 for r in rises) and rises[0] > rises[-1] > 0  # Zhu & Gupta: fast first, slow last
    assert s[35] == pytest.approx(0.8 * (1 - 0.5**3))


def test_gradual_pruning_ramps_to_exact_targets_never_regrows_and_resumes_exactly(tmp_path):
    from compression.tensors import prunable_weights

    prune = {"sparsity": {"*transformers*": 0.8}, "start": 0.0, "end": 0.5, "every": 2}
    ramp = merge_config(TINY, {"steps": 8, "log_every": 1, "val": {"every": 4}, "prune": prune})
    straight = finetune.finetune(config(tmp_path / "a", **ramp), progress=False)
    m = load_checkpoint(tmp_path / "a" / "last.pth").matcher
    report = sparsity_report(m)
    targets = {n: w.numel() for n, w in prunable_weights(m).items() if "transformers" in n}
    assert all(round(report[n] * k) == round(0.8 * k) for n, k in targets.items())  # exact, as one-shot pruning
    assert all(report[n] == 0 for n in report if n != "total" and n not in targets)
    assert straight["sparsity"] == report["total"]
    log = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    ramped = [float(r["sparsity"]) for r in log[1:]]
    assert ramped == sorted(ramped) and ramped[0] < ramped[3] == ramped[-1]  # rising, then held from step 4
    # killed after step 5 (between two pruning steps): resumes from step 4's checkpoint to the same weights
    finetune.finetune(config(tmp_path / "b", **ramp), stop_after=5, progress=False)
    finetune.finetune(config(tmp_path / "b", **ramp), progress=False)
    a, b = weights(tmp_path / "a" / "last.pth"), weights(tmp_path / "b" / "last.pth")
    assert all(torch.equal(a[k] == 0, b[k] == 0) and torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradual_pruning_of_a_quantized_model_is_refused_and_an_unpruned_config_resumes_old_runs(tmp_path):
    from helper import InputError
    from pruning.gradual import GradualPruning
    from quantization.kmeans import quantize_kmeans

    m = build_matcher("aliked+lightglue", TINY["matcher_config"])
    quantize_kmeans(m.matcher, {"*transformers.0.*": 4})
    with pytest.raises(InputError, match="already quantized"):
        GradualPruning(m.matcher, 0.5, 10, 0.0, 0.5, 1)
    with pytest.raises(InputError, match="prune.sparsity"):
        GradualPruning(m.matcher, {"no-such-layer": 0.5}, 10, 0.0, 0.5, 1)
    old = {k: v for k, v in config(tmp_path / "x").items() if k != "prune"}  # a config of an older version
    assert finetune.run_identity(old) == finetune.run_identity(config(tmp_path / "x"))


def test_gradual_pruning_to_a_global_ranking_prunes_each_tensor_to_its_own_share():
    """deep_compression.py --ranking global: the dense matching network's one magnitude ranking gives each tensor its
    target (per-name levels), which the ramp reaches exactly, LightGlue's and SuperGlue's names alike."""
    from compression.tensors import prunable_weights
    from pruning.fine_grained import global_sparsities
    from pruning.gradual import GradualPruning

    pipelines = {"aliked+lightglue": TINY["matcher_config"],
                 "superpoint+superglue": {"superpoint": {"weights": None}, "superglue": {"weights": None}}}  # fmt: skip
    for name, cfg in pipelines.items():
        net = build_matcher(name, cfg).matcher
        targets = global_sparsities(net, 0.83)
        assert len({round(s, 2) for s in targets.values()}) > 5  # a spread, not one sparsity
        pruner = GradualPruning(net, targets, 10, 0.0, 0.5, 1)
        assert pruner.targets == {n: s for n, s in targets.items() if s > 0}
        pruner(5)  # the ramp's end: every target reached
        report, sizes = sparsity_report(net), {n: w.numel() for n, w in prunable_weights(net).items()}
        assert all(round(report[n] * k) == round(targets[n] * k) for n, k in sizes.items())
        assert report["total"] == pytest.approx(0.83, abs=1e-4)


def test_batch_norm_statistics_are_re_estimated_as_the_average_over_images():
    """A student's batch norms (layers before them changed) get the plain average of each image's statistics, its
    weights and the norms' momentum untouched, and it is left in eval mode."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3))
    net[1].running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "batches" not in k}
    images = [torch.rand(1, 3, 12, 10) * (i + 1) for i in range(3)]
    finetune.recalibrate_batch_norms(net, images)
    with torch.no_grad():
        outs = [net[0](x) for x in images]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(1, unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5) and torch.allclose(net[1].running_var, var, atol=1e-5)
    assert not net.training and net[1].momentum == 0.3
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())


def test_a_relu_student_ramps_from_its_teachers_activation_and_resumes_on_the_ramp(tmp_path):
    """distill.activation_ramp: the ReLU ALIKED starts as the teacher's function (SELU) and computes ReLU from the
    end of the ramp on; a resumed run is where the step puts it; best.pth only after the ramp."""
    from helper import InputError

    settings = TINY["matcher_config"]
    student = build_matcher("aliked+lightglue", merge_config(settings, {"detector": {"activation": "relu"}}))
    save_checkpoint(student, tmp_path / "relu.pth")
    cfg = finetune.checked_config(
        config(
            tmp_path / "run",
            checkpoint=str(tmp_path / "relu.pth"),
            steps=4,
            distill={"enabled": True, "activation_ramp": 0.75},
            val={"every": 1},
        )  # fmt: skip
    )
    run = finetune.Run(cfg, torch.device("cpu"))
    assert run.ramp_end == 3 and run.matcher.detector.gate.mix == 0.0
    image = to_tensor(run.train_pairs.image(run.train_pairs[0], 0)[1])
    with torch.no_grad():  # at mix 0 the student is its teacher's function
        assert torch.allclose(run.matcher.distill_outputs(image)["score_map"],
                              run.teacher.distill_outputs(image)["score_map"], atol=1e-6)  # fmt: skip
    finetune.finetune(cfg, stop_after=2, progress=False)  # saved after steps 1 and 2 (every: 1), then killed
    assert finetune.Run(cfg, torch.device("cpu")).matcher.detector.gate.mix == pytest.approx(2 / 3)
    assert not (tmp_path / "run" / "best.pth").exists()  # not during the ramp
    finetune.finetune(cfg, progress=False)
    assert (tmp_path / "run" / "best.pth").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pth").detector.gate.mix == 1.0  # ReLU, as the config says
    save_checkpoint(build_matcher("aliked+lightglue", settings), tmp_path / "selu.pth")
    for bad in ({"checkpoint": str(tmp_path / "selu.pth")}, {"distill": {"enabled": False, "activation_ramp": 0.5}}):
        bad_cfg = {**cfg, "out": str(tmp_path / "bad"), "distill": {**cfg["distill"], **bad.pop("distill", {})}, **bad}
        with pytest.raises(InputError, match="activation_ramp"):
            finetune.Run(bad_cfg, torch.device("cpu"))
