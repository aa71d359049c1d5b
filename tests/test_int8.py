"""Matcher networks in ONNX Runtime: the fp32 graph computes what PyTorch computes, for any number of keypoints;
int8 graphs are smaller, keep the layers that read coordinates float and still match."""

import copy

import onnx
import onnx.numpy_helper
import pytest
import torch

from backends import graph_macs
from backends.modules import GraphMatcher, graph_feed
from compression import coding
from helper import count_macs
from models.matching import build_matcher, fingerprint
from pipeline.checkpoint import checkpoint_entries, load_checkpoint, save_checkpoint
from pipeline.costs import module_macs
from quantization.int8 import coordinate_layers, int8_detector, int8_matcher, quantize_matcher_onnx, recorded_inputs

pytestmark = pytest.mark.slow  # one ONNX export per network (about 25 s)


def pair(m: int, n: int, seed: int, dim: int = 256) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image0": torch.rand(1, 1, 48, 64, generator=g),
        "image1": torch.rand(1, 1, 48, 64, generator=g),
        "keypoints0": torch.rand(1, m, 2, generator=g) * torch.tensor([63.0, 47.0]),
        "keypoints1": torch.rand(1, n, 2, generator=g) * torch.tensor([63.0, 47.0]),
        "scores0": torch.rand(1, m, generator=g),
        "scores1": torch.rand(1, n, generator=g),
        "descriptors0": torch.nn.functional.normalize(torch.randn(1, dim, m, generator=g), dim=1),
        "descriptors1": torch.nn.functional.normalize(torch.randn(1, dim, n, generator=g), dim=1),
    }


MATCHERS = {
    "superglue": (
        "superpoint+superglue",
        {
            "superpoint": {"weights": None},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"] * 2, "sinkhorn_iterations": 20},
        },
        256,
    ),
    "lightglue": (
        "aliked+lightglue",
        {"pretrained": False, "matcher": {"n_layers": 2, "depth_confidence": -1, "width_confidence": -1}},
        128,
    ),
}


@pytest.fixture(scope="module", params=sorted(MATCHERS))
def graphs(request, tmp_path_factory):
    name, config, dim = MATCHERS[request.param]
    torch.manual_seed(0)
    dense = build_matcher(name, config).eval()
    data = recorded_inputs(dense.matcher, lambda: [dense(pair(40, 30, s, dim)) for s in range(2)])
    folder = tmp_path_factory.mktemp(request.param)
    fp32 = int8_matcher(dense, data, folder, mode="fp32")
    graphs = {"fp32": fp32}
    for mode in ("dynamic", "static"):  # the same graph quantized (int8_matcher would export it again)
        feeds = [graph_feed(dense.matcher, d) for d in data]
        path = quantize_matcher_onnx(fp32.onnx_path, folder / f"{mode}.onnx", feeds if mode == "static" else None)
        graphs[mode] = copy.deepcopy(fp32)
        graphs[mode].matcher = GraphMatcher(dense.matcher, path)
        graphs[mode].onnx_path = path
    return dense, dim, graphs


def test_fp32_graph_equals_pytorch_for_other_keypoint_counts(graphs):
    dense, dim, ort = graphs
    for m, n in ((40, 30), (57, 12), (5, 80)):
        data = pair(m, n, 7, dim)
        with torch.no_grad():
            ref, out = dense(data), ort["fp32"](data)
        assert torch.allclose(out["log_assignment"], ref["log_assignment"], atol=2e-4)
        assert torch.equal(out["matches0"], ref["matches0"]) and torch.equal(out["matches1"], ref["matches1"])


def corresponding(m: int, n: int, seed: int, dim: int) -> tuple[dict, torch.Tensor]:
    """A pair whose second image holds ``n`` of the first image's keypoints (permuted, slightly moved) and
    their descriptors (slightly changed): the true match of each is known, and random-weight matchers find it
    with a margin, so agreement measures quantization error rather than ties of a near-uniform assignment."""
    data, g = pair(m, n, seed, dim), torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(m, generator=g)[:n]
    data["keypoints1"] = data["keypoints0"][:, perm] + 0.5 * torch.randn(1, n, 2, generator=g)
    data["scores1"] = data["scores0"][:, perm]
    data["descriptors1"] = torch.nn.functional.normalize(
        data["descriptors0"][:, :, perm] + 0.05 * torch.randn(1, dim, n, generator=g), dim=1
    )
    return data, perm


def test_int8_graphs_are_smaller_keep_coordinates_float_and_still_match(graphs):
    dense, dim, ort = graphs
    fp32_path = ort["fp32"].onnx_path
    assert len(coordinate_layers(onnx.load(str(fp32_path)).graph)) == 2  # posenc / kenc, once per image
    data, truth = corresponding(40, 30, 11, dim)
    with torch.no_grad():
        ref = dense(data)["log_assignment"][0, :-1, :-1]
    assert (ref.argmax(0) == truth).all()  # fp32 finds every true match
    for mode in ("dynamic", "static"):
        m = ort[mode]
        assert m.onnx_path.stat().st_size < 0.45 * fp32_path.stat().st_size  # int8 weights (+ scales)
        int8 = [
            onnx.numpy_helper.to_array(t)
            for t in onnx.load(str(m.onnx_path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 1
        ]
        assert int8 and max(int(abs(w.astype(int)).max()) for w in int8) <= 64  # 7 bits: no saturation without VNNI
        with torch.no_grad():
            out = m(data)["log_assignment"]
        assert out.shape[1:] == (ref.shape[0] + 1, ref.shape[1] + 1) and torch.isfinite(out).all()
        found = (out[0, :-1, :-1].argmax(0) == truth).float().mean()
        assert found >= 0.9, (mode, found)


def test_graph_macs_are_what_pytorch_counts(graphs):
    dense, dim, ort = graphs
    data = recorded_inputs(dense.matcher, lambda: dense(pair(37, 52, 9, dim)))[0]
    macs, modules = count_macs(lambda: dense.matcher(data)), module_macs(dense.matcher, lambda: dense.matcher(data))
    assert macs > modules  # attention: einsum, and scaled_dot_product_attention on CPU
    for mode, m in ort.items():
        with graph_macs(m) as graph:
            assert count_macs(lambda: m.matcher(data)) == 0  # all of the arithmetic runs in the session
        assert graph == [macs, modules], mode


def test_onnxruntime_modules_survive_deepcopy(graphs):
    _, dim, ort = graphs
    m = ort["dynamic"]
    clone = copy.deepcopy(m)
    data = pair(20, 25, 3, dim)
    with torch.no_grad():
        assert torch.equal(clone(data)["log_assignment"], m(data)["log_assignment"])
    assert torch.equal(clone.matcher.onnx_sha1, m.matcher.onnx_sha1)


def test_checkpoint_stores_the_int8_graph_and_loads_it_back(graphs, tmp_path):
    dense, dim, ort = graphs
    path = save_checkpoint(ort["dynamic"], tmp_path / "int8.pth")
    loaded = load_checkpoint(path)
    assert type(loaded.matcher).__name__ == "GraphMatcher"
    payload = torch.load(path, weights_only=True)
    graph = payload["onnx"]["matcher"]
    assert coding.decode_bytes(graph) == ort["dynamic"].matcher.graph_bytes  # bit-exact, entropy-coded when smaller
    assert graph["graph"].numel() <= len(ort["dynamic"].matcher.graph_bytes)
    tensors = sum(
        v.numel() * v.element_size()
        for e in checkpoint_entries(payload).values()
        for v in e.values()
        if torch.is_tensor(v)
    )
    assert path.stat().st_size < tensors + 1.02 * graph["graph"].numel() + 100_000  # stored as bytes, not as text
    for m, n in ((30, 20), (1, 9), (0, 4)):  # one keypoint runs in the graph; none matches nothing
        data = pair(m, n, 5, dim)
        with torch.no_grad():
            ref, out = ort["dynamic"](data), loaded(data)
        assert torch.equal(out["log_assignment"], ref["log_assignment"]) and torch.equal(
            out["matches0"], ref["matches0"]
        )
    assert (out["matches0"] == -1).all() and out["matches1"].shape == (1, 4)
    # the same graph is the same network however it was loaded (the PyTorch copy it keeps for settings never runs)
    assert fingerprint(loaded, loaded.config) == fingerprint(load_checkpoint(path), loaded.config)


def test_bad_mode_and_unsupported_network_are_clear_errors():
    dense = build_matcher("sift+nn", {})
    with pytest.raises(ValueError, match="mode"):
        int8_matcher(dense, [{}], "unused", mode="int4")
    with pytest.raises(ValueError, match="no graph adapter for a MutualNearestNeighbour"):
        int8_matcher(dense, [{}], "unused")
    from compression.methods import Job
    from helper import InputError
    from quantization.int8 import int8_method

    with pytest.raises(InputError, match="runtime: openvino runs detector graphs"):  # LightGlue's int8 graph is ORT's
        int8_method(Job(dense, "matcher", {"runtime": "openvino"}))


def test_graphs_saved_under_their_old_class_names_still_load(graphs, tmp_path):
    # before the backends registry, checkpoints named the graph part's class (OrtMatcherNet) and no backend
    dense, dim, ort = graphs
    payload = torch.load(save_checkpoint(ort["dynamic"], tmp_path / "new.pth"), weights_only=True)
    payload["onnx"] = {  # and stored the graph's bytes as they are
        name: {
            "class": "OrtMatcherNet",
            "graph": torch.frombuffer(bytearray(coding.decode_bytes(g)), dtype=torch.uint8),
        }
        for name, g in payload["onnx"].items()
    }
    payload["version"] = 6  # and had no digests
    torch.save(payload, tmp_path / "old.pth")
    loaded = load_checkpoint(tmp_path / "old.pth")
    data = pair(12, 10, 6, dim)
    with torch.no_grad():
        assert torch.equal(loaded(data)["log_assignment"], ort["dynamic"](data)["log_assignment"])


def test_op_times_splits_a_graph_by_operator_type():
    """ONNX Runtime's profiler, per operator type: each node counted once per run, the warm-up run left out."""
    import numpy as np
    from onnx import TensorProto, helper

    from backends.onnxruntime import op_times

    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 16, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Elu", ["a"], ["b"], alpha=1.6),
            helper.make_node("Conv", ["b", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Elu", ["c"], ["out"], alpha=1.6),
        ],
        "two_blocks",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 32, 32])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"image": np.random.default_rng(1).random((1, 16, 32, 32), dtype=np.float32)}
    ops = op_times(model.SerializeToString(), feed, rounds=2)
    assert ops["Elu"][1] == 2 and ops["Elu"][0] > 0
    assert sum(n for op, (_, n) in ops.items() if "Conv" in op) == 2  # as Conv, or fused/reordered by ORT
    assert list(ops) == sorted(ops, key=lambda op: -ops[op][0])  # slowest first


@pytest.mark.parametrize("name", ["superpoint+superglue", "aliked+lightglue"])  # a graph network / a graph detector
def test_a_detector_graph_is_one_detector_however_its_checkpoint_was_loaded(name, tmp_path):
    config = {"superpoint": {"weights": None}, "superglue": {"weights": None}} if "superglue" in name else {}
    matcher = build_matcher(name, config).eval()
    graph = int8_detector(matcher, [torch.rand(1, matcher.channels, 64, 80)], tmp_path / "graph", quantize=False)
    path = save_checkpoint(graph, tmp_path / "graph.pth")
    # the feature cache's key: the PyTorch copy a graph keeps for its settings is not stored, so not in it
    assert load_checkpoint(path).detector_fingerprint() == load_checkpoint(path).detector_fingerprint()
    assert load_checkpoint(path).detector_fingerprint() != matcher.detector_fingerprint()
