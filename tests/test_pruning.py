"""Fine-grained pruning keeps exact sparsity through training; channel pruning gives smaller, equivalent nets."""

import copy

import pytest
import torch

from compression.state import enforce
from compression.tensors import resolve_levels
from models.matching import build_matcher
from models.superglue import SuperGlue
from models.superpoint import SuperPoint
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pruning.channel import prune_attention, prune_lightglue_ffn, prune_superglue_channels, prune_superpoint_channels
from pruning.fine_grained import (
    global_sparsities,
    magnitude_mask,
    prune_fine_grained,
    remove_masks,
    sparsity_report,
)
from pruning.sensitivity import DENSE, choose_sparsities, choose_verified, expand, groups_by_prefix, loss_bound, scan


def small_superglue(**kw):
    return SuperGlue({"weights": None, "GNN_layers": ["self", "cross"], **kw})


def sg_input(m=40, n=30, d=256):
    g = torch.Generator().manual_seed(1)
    return {
        "keypoints0": torch.rand(1, m, 2, generator=g) * 100,
        "keypoints1": torch.rand(1, n, 2, generator=g) * 100,
        "scores0": torch.rand(1, m, generator=g),
        "scores1": torch.rand(1, n, generator=g),
        "descriptors0": torch.randn(1, d, m, generator=g),
        "descriptors1": torch.randn(1, d, n, generator=g),
        "image_size0": (100, 100),
        "image_size1": (100, 100),
    }


@pytest.mark.parametrize("numel", [1, 3, 7, 10, 1000])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.8, 0.99])
def test_magnitude_mask_is_exact_at_every_level_and_size(numel, sparsity):
    w = torch.randn(numel)
    w[: numel // 2] = 0.5  # ties
    mask = magnitude_mask(w, sparsity)
    assert (~mask).sum().item() == round(sparsity * numel)
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()


def test_patterns_and_global_ranking():
    sg = small_superglue()
    sp = resolve_levels(sg, {"*attn*": 0.5, "*mlp*": 0.7, "gnn.layers.1.mlp.3.weight": 0.1})
    assert sp["gnn.layers.0.attn.merge.weight"] == 0.5 and sp["gnn.layers.0.mlp.0.weight"] == 0.7
    assert sp["gnn.layers.1.mlp.3.weight"] == 0.1 and "final_proj.weight" not in sp
    with pytest.raises(ValueError, match="matches no prunable weight"):
        resolve_levels(sg, {"*nothing*": 0.5})
    g = global_sparsities(sg, 0.6)
    sizes = {n: p.numel() for n, p in sg.named_parameters() if n in g}
    assert sum(g[n] * sizes[n] for n in g) == pytest.approx(0.6 * sum(sizes.values()), abs=1)
    assert len(set(round(v, 3) for v in g.values())) > 1  # layers get different sparsities


def test_the_fine_grained_method_spreads_one_sparsity_by_a_global_ranking():
    """A variant's ``ranking: global``: each tensor pruned to its share of one magnitude ranking of them all."""
    from types import SimpleNamespace

    from compression.methods import Job, method

    sg = small_superglue()
    expected = global_sparsities(sg, 0.7)
    method("fine-grained").apply(Job(SimpleNamespace(matcher=sg), "matcher", {"sparsity": 0.7, "ranking": "global"}))
    report, sizes = sparsity_report(sg), {n: p.numel() for n, p in sg.named_parameters() if n in expected}
    assert all(round(report[n] * k) == round(expected[n] * k) for n, k in sizes.items())
    assert report["total"] == pytest.approx(0.7, abs=1e-4) and len({round(report[n], 2) for n in sizes}) > 1


def test_80_percent_sparsity_stays_exact_through_finetuning():
    sg = small_superglue().train()
    prune_fine_grained(sg, {"*attn*": 0.8, "*mlp*": 0.8})
    before = sparsity_report(sg)
    assert before["gnn.layers.0.attn.proj.0.weight"] == pytest.approx(0.8, abs=1 / 65536)  # round(0.8 × numel)
    opt = torch.optim.AdamW(sg.parameters(), lr=1e-2, weight_decay=0.1)
    with torch.enable_grad():
        for _ in range(5):
            loss = -sg(sg_input())["log_assignment"].diagonal(dim1=1, dim2=2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            enforce(sg)  # what the training loop does after each step
    after = sparsity_report(sg)
    for name, value in before.items():
        assert after[name] == pytest.approx(value, abs=1e-9), name
    # Any optimizer, even one stepping gradients set by hand (no backward, so no masked gradient): the training
    # loop's enforce() zeroes them again.
    sgd = torch.optim.SGD(sg.parameters(), lr=1.0)
    for p in sg.parameters():
        p.grad = torch.ones_like(p)
    sgd.step()
    enforce(sg)
    assert sparsity_report(sg)["gnn.layers.1.mlp.0.weight"] == pytest.approx(0.8, abs=1e-6)
    # Masks travel with the model but not into its state_dict (official keys stay).
    assert not [k for k in sg.state_dict() if "compression" in k or "mask" in k]
    remove_masks(sg)
    sgd.step()
    enforce(sg)
    assert sparsity_report(sg)["gnn.layers.1.mlp.0.weight"] < 0.8


def test_fine_grained_works_on_every_zoo_model():
    for name in ("aliked+lightglue", "sift+nn"):
        m = build_matcher(name)
        applied = prune_fine_grained(m, 0.5)
        if name == "sift+nn":
            assert applied == {}
        else:
            assert sparsity_report(m.matcher)["total"] == pytest.approx(0.5, abs=1e-3)
            assert sparsity_report(m.detector)["total"] == pytest.approx(0.5, abs=1e-3)
    sp = SuperPoint({"weights": None})
    prune_fine_grained(sp, 0.9, global_ranking=True)
    assert sparsity_report(sp)["total"] == pytest.approx(0.9, abs=1e-6)


def test_scan_resumes_and_restores_the_model(tmp_path):
    sg = small_superglue().eval()
    groups = groups_by_prefix(sg, 3, include=["gnn.*"])
    assert set(groups) == {"gnn.layers.0", "gnn.layers.1"}
    original = copy.deepcopy(sg.state_dict())
    calls = []

    def evaluate_fn():
        calls.append(1)
        w = sg.gnn.layers[0].mlp[0].weight
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-scan
        return {"auc@3px": 1.0 - (w == 0).float().mean().item(), "precision": 1.0}

    csv_path = tmp_path / "scan.csv"
    with pytest.raises(KeyboardInterrupt):
        scan(sg, groups, [0.5, 0.9], evaluate_fn, csv_path, progress=False)
    assert all(torch.equal(v, sg.state_dict()[k]) for k, v in original.items())  # restored even when killed
    assert len(csv_path.read_text().splitlines()) == 1 + 2
    rows = scan(sg, groups, [0.5, 0.9], evaluate_fn, csv_path, progress=False)
    assert len(calls) == 3 + 3  # only the missing evaluations ran
    assert len(rows) == 5 and {r["group"] for r in rows} == {DENSE, *groups}
    layer0 = {r["sparsity"]: r["auc@3px"] for r in rows if r["group"] == "gnn.layers.0"}
    assert layer0[0.9] < layer0[0.5] < 1.0


def test_choose_sparsities_maximises_removed_params_within_budget():
    rows = [{"group": DENSE, "sparsity": 0.0, "params": 0, "auc@3px": 0.80}]
    for g, params, drops in (
        ("a", 1000, {0.5: 0.001, 0.9: 0.02}),
        ("b", 100, {0.5: 0.0, 0.9: 0.004}),
        ("c", 5000, {0.5: 0.008, 0.9: 0.05}),
    ):
        rows += [{"group": g, "sparsity": s, "params": params, "auc@3px": 0.80 - d} for s, d in drops.items()]
    # Within 0.01: c@0.5 + a@0.5 + b@0.5 (drop 0.009, 3050 params); b@0.9 would push the drop to 0.013.
    choice = choose_sparsities(rows, budget=0.01)
    assert choice == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert choose_sparsities(rows, budget=0.013) == {"a": 0.5, "b": 0.9, "c": 0.5}
    assert choose_sparsities(rows, budget=0.0) == {"b": 0.5}
    assert expand({"a": ["x"], "b": ["y"], "c": ["z"]}, choice) == {"x": 0.5, "y": 0.5, "z": 0.5}


def test_a_group_that_improves_by_noise_is_charged_its_interval_not_read_as_free():
    rows = [{"group": DENSE, "sparsity": 0.0, "params": 0, "auc@3px": 0.80, "diff_auc@3px": 0.0,
             "diff_auc@3px_low": 0.0, "diff_auc@3px_high": 0.0}]  # fmt: skip
    for g, (point, low, high) in (("lucky", (0.01, -0.012, 0.03)), ("solid", (-0.002, -0.004, 0.0))):
        rows.append({"group": g, "sparsity": 0.5, "params": 1000, "auc@3px": 0.80 + point, "diff_auc@3px": point,
                     "diff_auc@3px_low": low, "diff_auc@3px_high": high})  # fmt: skip
    assert loss_bound(rows[1], "auc@3px", 0.80) == pytest.approx(0.012)  # its point estimate "gains" 0.01
    assert choose_sparsities(rows, budget=0.005) == {"solid": 0.5}
    assert choose_sparsities(rows, budget=0.02) == {"lucky": 0.5, "solid": 0.5}
    without = [{k: v for k, v in r.items() if not k.startswith("diff_")} for r in rows]
    assert choose_sparsities(without, budget=0.005) == {"lucky": 0.5, "solid": 0.5}  # the point estimate is fooled
    # The verified choice is accepted on the lower bound of its real paired interval, not on its point estimate.
    tries = []

    def evaluate_choice(choice):
        tries.append(choice)
        bound = -0.03 if len(choice) == 2 else -0.004
        return {"auc@3px": 0.80, "diff_auc@3px": 0.0, "diff_auc@3px_low": bound, "diff_auc@3px_high": 0.03}

    choice, result, history = choose_verified(rows, 0.01, evaluate_choice, choose_budget=0.02)
    assert tries[0] == {"lucky": 0.5, "solid": 0.5} and choice == {"solid": 0.5}
    assert [h["loss_bound"] for h in history] == pytest.approx([0.03, 0.004])


def test_bit_width_choice_prefers_fewer_bits_where_they_cost_nothing():
    # Levels are k-means bit widths: fewer bits save more; groups left out stay at the base width (4).
    rows = [{"group": DENSE, "sparsity": 0.0, "params": 0, "auc@3px": 0.80}]
    for g, drops in (("robust", {2: 0.002, 3: 0.0}), ("fragile", {2: 0.05, 3: 0.004})):
        rows += [{"group": g, "sparsity": b, "params": 1000, "auc@3px": 0.80 - d} for b, d in drops.items()]
    gain = lambda bits: 4 - bits  # noqa: E731
    assert choose_sparsities(rows, budget=0.007, gain=gain) == {"robust": 2, "fragile": 3}
    assert choose_sparsities(rows, budget=0.003, gain=gain) == {"robust": 2}
    # Monotone in compression: 2 bits never predicts less damage than 3 bits of the same group.
    rows.append({"group": "odd", "sparsity": 3, "params": 1000, "auc@3px": 0.70})
    rows.append({"group": "odd", "sparsity": 2, "params": 1000, "auc@3px": 0.80})
    assert "odd" not in choose_sparsities(rows, budget=0.05, gain=gain)


def test_kmeans_scan_transform_restores_the_weights(tmp_path):
    from quantization.kmeans import kmeans_values

    sg = SuperGlue({"weights": None, "GNN_layers": ["self", "cross"]})
    before = {k: v.clone() for k, v in sg.state_dict().items()}
    groups = groups_by_prefix(sg, 3, ["gnn.layers.*"])
    seen = []
    w = dict(sg.named_parameters())["gnn.layers.0.mlp.0.weight"]
    distinct = len(torch.unique(w))
    rows = scan(
        sg,
        groups,
        [2],
        lambda: seen.append(len(torch.unique(w))) or {"auc@3px": 0.5},
        tmp_path / "bits.csv",
        progress=False,
        transform=kmeans_values,
    )
    assert sorted(seen) == [4, distinct, distinct]  # only while its group is scanned: 2^2 shared values
    assert len(rows) == 3 and all(torch.equal(v, sg.state_dict()[k]) for k, v in before.items())


def test_superpoint_channel_pruning_removes_exactly_the_unused_channels():
    sp = SuperPoint({"weights": None, "max_keypoints": 200}).eval()
    with torch.no_grad():  # channels nobody reads: pruning them must not change anything
        sp.conv2a.weight[:, 32:] = 0
        sp.convPa.weight[:, 64:] = 0
        sp.convDa.weight[:, 64:] = 0
        sp.convPb.weight[:, 128:] = 0
    image = torch.rand(1, 1, 96, 128)
    dense = sp({"image": image})
    kept = prune_superpoint_channels(sp, {"conv1b": 0.5, "conv4b": 0.5, "convPa": 0.5})
    assert kept["conv1b"] == 32 and kept["conv4b"] == 64 and kept["convPa"] == 128 and kept["conv1a"] == 64
    assert sp.conv2a.in_channels == 32 and sp.convPa.in_channels == 64 and sp.convDa.in_channels == 64
    pruned = sp({"image": image})
    assert torch.equal(dense["keypoints"][0], pruned["keypoints"][0])
    assert torch.allclose(dense["descriptors"][0], pruned["descriptors"][0], atol=1e-5)


def test_attention_pruning_respects_interleaved_heads():
    sg = small_superglue().eval()
    attn = sg.gnn.layers[0].attn
    heads, dim = attn.num_heads, attn.dim
    unused = torch.tensor([j * heads + h for j in range(dim // 2, dim) for h in range(heads)])  # c = j*heads + h
    with torch.no_grad():
        for layer in (*attn.proj,):
            layer.weight[unused] = 0
            layer.bias[unused] = 0
        attn.merge.weight[:, unused] = 0
    data = sg_input()
    dense = sg(data)
    assert prune_attention(attn, dim_ratio=0.5) == (heads, dim // 2)
    pruned = sg(data)
    assert torch.allclose(dense["log_assignment"], pruned["log_assignment"], atol=1e-4)
    assert torch.equal(dense["matches0"], pruned["matches0"])


def test_superglue_mlp_and_encoder_pruning_and_checkpoint_round_trip(tmp_path):
    m = build_matcher(
        "superpoint+superglue",
        {
            "superpoint": {"weights": None, "max_keypoints": 128},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"]},
        },
    )
    with torch.no_grad():  # hidden MLP channels 256.. are read by nobody
        for layer in m.superglue.gnn.layers:
            layer.mlp[3].weight[:, 256:] = 0
    data = sg_input()
    dense = m.superglue(data)
    widths = prune_superglue_channels(m.superglue, {"mlp": 0.5})
    assert widths["mlp"] == [256, 256]
    assert torch.allclose(dense["log_assignment"], m.superglue(data)["log_assignment"], atol=1e-4)
    prune_superglue_channels(m.superglue, {"kenc": 0.5, "attn_dim": 0.5, "heads": 0.25})
    prune_superpoint_channels(m.superpoint, 0.5)
    params = sum(p.numel() for p in m.parameters())
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "pruned.pth"))
    assert sum(p.numel() for p in loaded.parameters()) == params
    assert loaded.superglue.gnn.layers[0].attn.num_heads == 3 and loaded.superglue.gnn.layers[0].attn.dim == 32
    x = torch.rand(1, 1, 96, 128)
    a, b = m({"image0": x, "image1": x.flip(-1)}), loaded({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(a["matches0"], b["matches0"]) and torch.isfinite(b["matching_scores0"]).all()


def test_lightglue_ffn_pruning_runs_and_round_trips(tmp_path):
    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}})
    widths = prune_lightglue_ffn(m.matcher, 0.5)
    assert set(widths) == {256}  # 2d = 512 hidden channels, halved
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "lg.pth"))
    x = torch.rand(1, 3, 96, 128)
    a, b = m({"image0": x, "image1": x.flip(-1)}), loaded({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(a["matches0"], b["matches0"])


def test_aliked_channel_pruning_removes_exactly_the_unused_channels_and_round_trips(tmp_path):
    from pruning.channel import aliked_groups, prune_aliked_channels

    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}, "pretrained": False})
    net = m.detector
    for bn in (x for x in net.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # not the identity
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():  # in every group, the last 3 channels are read by nobody (deformable offsets included)
        for _, readers in aliked_groups(net).values():
            for owner, attr in readers:
                layer = getattr(owner, attr)
                for w in (
                    [layer.regular_conv.weight, layer.offset_conv.weight]
                    if hasattr(layer, "offset_conv")
                    else [layer.weight]
                ):
                    w[:, -3:] = 0
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        dense = net(image)[0]
    widths = {"block1": 16, "block1.mid": 16, "block2": 32, "block3.mid": 64, "block4": 128}
    kept = prune_aliked_channels(net, {name: 3 / n for name, n in widths.items()})
    assert kept["block1"] == 13 and kept["block3.mid"] == 61 and kept["block4"] == 125 and kept["block2.mid"] == 32
    assert net.block2.conv1.in_channels == 13 and net.block3.conv1.offset_conv.in_channels == 29
    assert net.conv4.in_channels == 125 and net.desc_head.sf_conv.in_channels == 128  # the descriptor map stays
    with torch.no_grad():
        pruned = net(image)[0]
    assert torch.allclose(dense.keypoints, pruned.keypoints, atol=1e-4)
    assert torch.allclose(dense.descriptors, pruned.descriptors, atol=1e-5)
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "aliked.pth"))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.detector(image)[0].descriptors, pruned.descriptors)


def test_an_operating_point_changes_settings_keeps_weights_and_survives_the_checkpoint(tmp_path):
    from compression.methods import Job, method

    m = build_matcher(
        "superpoint+superglue",
        {"superpoint": {"weights": None}, "superglue": {"weights": None, "GNN_layers": ["self", "cross"]}},
    )
    settings = method("settings")
    job = Job(m, "matcher", {**settings.settings, "method": "settings", "set": {"sinkhorn_iterations": 10}})
    settings.apply(job)
    assert job.matcher.superglue.config["sinkhorn_iterations"] == 10 and m.superglue.config["sinkhorn_iterations"] != 10
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in job.matcher.state_dict().items())
    loaded = load_checkpoint(save_checkpoint(job.matcher, tmp_path / "fast.pth"))
    assert loaded.superglue.config["sinkhorn_iterations"] == 10
    detector = Job(loaded, "detector", {**settings.settings, "method": "settings", "set": {"max_keypoints": 64}})
    settings.apply(detector)
    assert detector.matcher.superpoint.config["max_keypoints"] == 64
    from helper import InputError

    with pytest.raises(InputError, match="sinkhorn_iteration"):
        settings.apply(Job(m, "matcher", {"method": "settings", "set": {"sinkhorn_iteration": 10}}))
