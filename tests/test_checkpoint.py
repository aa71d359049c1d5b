"""Checkpoints written by this project rebuild pruned networks without the caller knowing their shapes."""

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from models.matching import build_matcher
from models.weights import WeightsError
from pipeline import checkpoint
from pipeline.checkpoint import checkpoint_entries, load_checkpoint, save_checkpoint, stored_bytes


def shrink_superglue_head(matcher, keep):
    """Emulate channel pruning of one attention block: per-head dim 64 -> keep."""
    attn = matcher.superglue.gnn.layers[0].attn
    inner = keep * attn.num_heads
    attn.merge = torch.nn.Conv1d(inner, 256, 1)
    for i in range(3):
        attn.proj[i] = torch.nn.Conv1d(256, inner, 1)
    attn.dim = keep


def test_pruned_matcher_round_trips_exactly(tmp_path):
    m = build_matcher(
        "superpoint+superglue",
        {
            "superpoint": {"weights": None, "max_keypoints": 100},
            "superglue": {"weights": None, "GNN_layers": ["self", "cross"]},
        },
    )
    m.superpoint.conv1b = torch.nn.Conv2d(64, 40, 3, padding=1)
    m.superpoint.conv2a = torch.nn.Conv2d(40, 64, 3, padding=1)
    shrink_superglue_head(m, 48)
    path = save_checkpoint(m, tmp_path / "pruned.pth", meta={"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.superpoint.conv1b.out_channels == 40 and loaded.superglue.gnn.layers[0].attn.dim == 48
    assert loaded.config["superpoint"]["max_keypoints"] == 100
    x = torch.rand(1, 1, 96, 128)
    a, b = m({"image0": x, "image1": x.flip(-1)}), loaded({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(a["keypoints0"][0], b["keypoints0"][0]) and torch.equal(a["matches0"], b["matches0"])
    assert not list(tmp_path.glob("*.tmp"))


def test_offline_matcher_round_trips(tmp_path):
    m = build_matcher("aliked+lightglue", {"detector": {"max_num_keypoints": 128}})
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "a.pth"))
    x = torch.rand(1, 3, 96, 128)
    assert torch.equal(m.extract(x)["descriptors"][0], loaded.extract(x)["descriptors"][0])


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pth")
    with pytest.raises(WeightsError, match="not a checkpoint written by this project"):
        load_checkpoint(tmp_path / "sd.pth")


def test_version_1_checkpoints_still_load(tmp_path):
    from pipeline.checkpoint import FORMAT

    m = build_matcher("superpoint+superglue", {"superpoint": {"weights": None}, "superglue": {"weights": None}})
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "matcher": m.name,
            "config": m.config,
            "attrs": {},
            "state_dict": m.state_dict(),
            "meta": {},
        },
        tmp_path / "v1.pth",
    )
    loaded = load_checkpoint(tmp_path / "v1.pth")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in m.state_dict().items())


def test_checkpoints_written_before_compression_state_objects_load_bit_exact():
    # tests/fixtures/checkpoint_v2.pth was written by commit 287366a (compression kept as loose module attributes):
    # ALIKED-t16 pruned 50 % + 2-bit k-means, a one-layer LightGlue linear-quantized (2-bit weights, 8-bit inputs)
    import hashlib

    from compression.state import get

    expected = torch.load(FIXTURES / "checkpoint_v2_expected.pt", weights_only=True)
    m = load_checkpoint(FIXTURES / "checkpoint_v2.pth")
    # values bit for bit; the sign of a zero is not recorded (-0.0 == 0.0 in every computation)
    state = {k: v + 0 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    assert {k: hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()} == expected["sha1"]
    kinds = {kind for layer in m.modules() for kind in ("mask", "kmeans", "linear", "activation") if get(layer, kind)}
    assert kinds == {"kmeans", "linear", "activation"}  # codes, grids and input quantizers are back on their layers
    x = expected["image"]
    out = m({"image0": x, "image1": x.flip(-1)})
    assert torch.equal(out["matches0"], expected["matches0"])  # runs as it was evaluated (inputs fake-quantized)
    assert torch.equal(out["matching_scores0"], expected["matching_scores0"])


def test_entropy_coded_entries_decode_bit_exact_and_uncoded_checkpoints_still_load(tmp_path, monkeypatch):
    from compression import coding
    from compression.methods import Job, method
    from compression.tensors import pack_bits
    from models.weights import read_state_dict

    g = torch.Generator().manual_seed(0)
    skewed = torch.multinomial(torch.tensor([0.6, 0.2, 0.1, 0.05, 0.03, 0.02, 0.0, 0.0]), 5000, True, generator=g)
    entry = {
        "kind": "kmeans",
        "shape": [100, 80],
        "bits": 3,  # symbols straddle bytes
        "count": 5000,
        "codes": pack_bits(skewed, 3),
        "mask": pack_bits(torch.rand(8000, generator=g) < 0.625, 1),
        "codebook": torch.randn(8, generator=g),
        "values": torch.randn(300, 7, generator=g).half(),
    }
    coded = coding.code(entry)
    assert set(coded["coded"]) == {"codes", "values"}  # the codebook is too small to code, the mask is 1 bit/bit
    assert coded["codes"].numel() < entry["codes"].numel()  # skewed symbols: below 3 bits each
    back = coding.decode(coded)
    assert back.keys() == entry.keys()
    for k, v in entry.items():
        assert torch.equal(back[k], v) and back[k].dtype == v.dtype if isinstance(v, torch.Tensor) else back[k] == v
    entropy = coding.stream_entropy_bytes(entry, "codes")  # 5000 symbols of entropy 1.72 bits (of 3)
    assert abs(entropy - 5000 * 1.72 / 8) < 40 and entropy <= coded["codes"].numel() < 1.08 * entropy + 32

    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}})
    kmeans = method("kmeans")
    kmeans.apply(Job(m, "matcher", {**kmeans.settings, "method": "kmeans", "bits": 4}))
    packed_file = save_checkpoint(m, tmp_path / "packed.pth")
    assert read_state_dict(packed_file)["version"] == 7
    monkeypatch.setattr(checkpoint, "_pack", lambda entries: None)  # what version 4 wrote: entries pickled one by one
    coded_file = save_checkpoint(m, tmp_path / "coded.pth")
    assert read_state_dict(coded_file)["version"] == 4
    monkeypatch.setattr(coding, "code", lambda e: e)  # what version 2 wrote
    monkeypatch.setattr(
        coding, "code_bytes", lambda data: {"graph": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    )
    plain_file = save_checkpoint(m, tmp_path / "plain.pth")
    monkeypatch.undo()
    assert read_state_dict(plain_file)["version"] == 2
    assert coded_file.stat().st_size < 0.97 * plain_file.stat().st_size
    assert packed_file.stat().st_size < coded_file.stat().st_size - 100 * len(m.state_dict())  # no per-tensor headers
    assert stored_bytes(packed_file) == stored_bytes(coded_file)  # the same coded tensors
    for path in (packed_file, coded_file, plain_file):
        back = load_checkpoint(path).state_dict()
        for k, v in m.state_dict().items():
            assert torch.equal(back[k], v), (path.name, k)


def test_a_damaged_entropy_coded_field_is_one_clear_error(tmp_path):
    from models.weights import read_state_dict

    m = build_matcher("superpoint+superglue", {"superpoint": {"weights": None}, "superglue": {"weights": None}})
    payload = read_state_dict(save_checkpoint(m, tmp_path / "m.pth"))
    entries = checkpoint_entries(payload)
    name = next(k for k, e in entries.items() if "coded" in e)
    field = next(iter(entries[name]["coded"]))
    entries[name][field] = entries[name][field][: len(entries[name][field]) // 2]
    unpacked = {k: v for k, v in payload.items() if k != "packed"}
    torch.save({**unpacked, "version": 5, "tensors": entries}, tmp_path / "damaged.pth")
    with pytest.raises(WeightsError, match="damaged checkpoint"):
        load_checkpoint(tmp_path / "damaged.pth")
    short = {**payload["packed"], "data": payload["packed"]["data"][:-100].clone()}  # the packed stream cut short
    torch.save({**payload, "packed": short}, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match="damaged checkpoint.*past the end"):
        load_checkpoint(tmp_path / "short.pth")


def test_a_detector_shared_by_kmeans_is_stored_as_codes_and_loads_bit_exact(tmp_path):
    from compression.methods import Job, method
    from models.weights import read_state_dict

    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}})
    dense_file = save_checkpoint(m, tmp_path / "dense.pth")
    kmeans = method("kmeans")
    kmeans.apply(Job(m, "detector", {**kmeans.settings, "method": "kmeans", "bits": 4, "other_bits": 4}))
    agg = m.detector.desc_head.agg_weights
    assert torch.unique(agg).numel() <= 16  # ALIKED's aggregation weights: no layer's, shared too
    path = save_checkpoint(m, tmp_path / "shared.pth")
    payload = read_state_dict(path)
    assert payload["version"] == 7 and checkpoint_entries(payload)["detector.desc_head.agg_weights"]["kind"] == "shared"
    back = load_checkpoint(path)
    for k, v in m.state_dict().items():  # bit for bit (signed zeros too)
        assert torch.equal(back.state_dict()[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    assert stored_bytes(path, "detector.") < stored_bytes(dense_file, "detector.") / 6  # 4 bits of 32, entropy-coded
    with torch.no_grad():
        agg.view(-1)[:2] = torch.tensor([0.0, -0.0])  # +0 and -0 are one value but two bit patterns: stored as floats
    assert (
        checkpoint_entries(read_state_dict(save_checkpoint(m, tmp_path / "zeros.pth")))[
            "detector.desc_head.agg_weights"
        ]["kind"]
        != "shared"
    )
    back = load_checkpoint(tmp_path / "zeros.pth").detector.desc_head.agg_weights
    assert torch.equal(back.view(torch.uint8), agg.detach().contiguous().view(torch.uint8))


def test_biases_norms_and_codebooks_in_float16_values_are_stored_in_float16_and_load_bit_exact(tmp_path):
    from compression import coding
    from models.weights import read_state_dict
    from quantization.half import half_floats
    from quantization.kmeans import quantize_kmeans

    m = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}})
    quantize_kmeans(m.matcher, 2)
    before = save_checkpoint(m, tmp_path / "fp32.pth")
    weights = {k: v.clone() for k, v in m.state_dict().items() if v.ndim >= 2}
    assert half_floats(m) > 0
    after = m.state_dict()
    for k, v in after.items():
        if v.is_floating_point() and v.ndim <= 1:
            assert coding.exactly_half(v), k
    changed = [k for k, v in weights.items() if not torch.equal(after[k], v)]
    assert changed and all(k.startswith("matcher.") for k in changed)  # k-means weights: their codebooks rounded
    path = save_checkpoint(m, tmp_path / "fp16.pth")
    entry = checkpoint_entries(read_state_dict(path))["matcher.transformers.0.self_attn.ffn.1.bias"]
    assert entry["half"] == ["tensor"]  # stored in float16 (then entropy-coded by byte planes where smaller)
    assert entry.get("tensor.dtype", str(entry["tensor"].dtype).split(".")[-1]) == "float16"
    assert path.stat().st_size < before.stat().st_size - 50_000  # ~50k float32 biases and norms: half the bytes
    back = load_checkpoint(path).state_dict()
    for k, v in after.items():
        assert back[k].dtype == v.dtype and torch.equal(
            back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)
        ), k


def test_packed_entries_give_back_every_field_and_fall_back_when_json_cannot():
    """Version 6 packs every tensor into one stream (dtype, shape, bytes kept: empty, 0-d and bool ones too); an entry
    with a value JSON would change (a tuple, a NumPy number) leaves the file in the one-entry-per-tensor layout."""
    import numpy as np

    entries = {
        "w": {"kind": "sparse", "shape": [2, 3], "mask": torch.tensor([True, False]), "values": torch.arange(6.0)},
        "e": {"kind": "dense", "tensor": torch.zeros(0, 4, dtype=torch.int8), "coded": {"tensor": "zlib"}},
        "s": {"kind": "dense", "tensor": torch.tensor(-0.0, dtype=torch.float16), "half": ["tensor"]},
    }
    back = checkpoint._unpack(checkpoint._pack(entries))
    assert list(back) == list(entries)
    for name, entry in entries.items():
        assert list(back[name]) == list(entry)
        for field, value in entry.items():
            got = back[name][field]
            if torch.is_tensor(value):
                assert got.dtype == value.dtype and got.shape == value.shape
                assert torch.equal(got.reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8))
            else:
                assert got == value
    assert checkpoint._pack({"w": {"kind": "x", "shape": (2, 3)}}) is None
    assert checkpoint._pack({"w": {"kind": "x", "scale": np.float32(0.5)}}) is None


def test_a_fuzzed_checkpoint_loads_as_saved_or_is_one_line_naming_the_file(tmp_path):
    """Bit flips, truncations and overwritten byte runs anywhere in the file (a seeded loop): loading gives back the
    saved weights or a WeightsError of one line that names the file; never another exception, never other weights."""
    m = build_matcher(
        "aliked+lightglue", {"pretrained": False, "matcher": {"n_layers": 1}, "detector": {"max_keypoints": 64}}
    )
    good = save_checkpoint(m, tmp_path / "good.pth").read_bytes()
    saved = m.state_dict()
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(40):
        data = bytearray(good)
        if trial % 4 == 0:
            data = data[: rng.integers(1, len(data))]
        elif trial % 4 == 1:
            start = rng.integers(0, len(data) - 64)
            data[start : start + 64] = rng.bytes(64)
        else:
            for at in rng.integers(0, len(data), 1 + trial % 3):
                data[at] ^= 1 << rng.integers(0, 8)
        path = tmp_path / f"fuzzed{trial}.pth"
        path.write_bytes(bytes(data))
        try:
            back = load_checkpoint(path).state_dict()
        except WeightsError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            outcomes["refused"] += 1
            continue
        assert all(torch.equal(back[k], v) for k, v in saved.items()), trial  # a flip in unused bytes changes nothing
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 30, outcomes
