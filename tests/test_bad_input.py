"""Every command line against hostile-but-fair input: exit status 2, one line on stderr that names the culprit,
no traceback, nothing half-written and no other file changed; output locations are checked before any work."""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

from helper import file_sha1, run_cli

TINY_MATCHER = {"pretrained": False, "matcher": {"n_layers": 1}, "detector": {"max_keypoints": 64}}


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder of bad inputs (and the few good ones they are mixed with)."""
    from models.matching import build_matcher
    from pipeline.checkpoint import checkpoint_entries, save_checkpoint

    h = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    good = _png(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    (h / "images").mkdir()
    (h / "images" / "good.png").write_bytes(good)
    (h / "images" / "empty.png").write_bytes(b"")
    (h / "images" / "noise.png").write_bytes(rng.bytes(3000))
    (h / "images" / "dot.png").write_bytes(_png(np.zeros((1, 1, 3), np.uint8)))
    (h / "pairs_empty_image.txt").write_text("good.png empty.png\n")
    (h / "pairs_noise_image.txt").write_text("good.png noise.png\n")
    (h / "pairs_dot.txt").write_text("good.png dot.png\n")
    (h / "pairs_latin1.txt").write_bytes("café.png good.png\n".encode("latin-1"))
    (h / "a_file").write_text("not a folder\n")
    (h / "a_dir").mkdir()
    (h / "zero.pth").write_bytes(b"")
    (h / "random.pth").write_bytes(rng.bytes(5000))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {h / 'PWNED'}",))

    torch.save(Payload(), h / "pickle.pth")
    ckpt = save_checkpoint(build_matcher("aliked+lightglue", TINY_MATCHER), h / "tiny.pth")
    (h / "truncated.pth").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    packed = torch.load(ckpt, weights_only=True)  # crafted below as version 5 (entries pickled one by one)
    payload = {
        **{k: v for k, v in packed.items() if k != "packed"},
        "version": 5,
        "tensors": checkpoint_entries(packed),
    }

    def crafted(name, change):
        p = {**payload, "tensors": dict(payload["tensors"])}
        change(p)
        torch.save(p, h / name)

    crafted("unknown_matcher.pth", lambda p: p.update(matcher="nope+nope"))
    crafted("no_config.pth", lambda p: p.pop("config"))
    first = next(iter(payload["tensors"]))
    crafted("entry_without_kind.pth", lambda p: p["tensors"].update({first: {"tensor": torch.zeros(1)}}))
    crafted("wrong_shape.pth", lambda p: p["tensors"].update({first: {"kind": "dense", "tensor": torch.zeros(3, 3)}}))
    crafted("future.pth", lambda p: p.update(version=99))
    save_checkpoint(build_matcher("sift+nn"), h / "sift.pth")
    tampered_checkpoints(h, torch.load(ckpt, weights_only=True))
    (h / "escaping_reference.yaml").write_text("references:\n  - {name: ../../../escaped-ref, matcher: sift+nn}\n")
    (h / "escaping_variant.yaml").write_text("quantization:\n  - {name: ../v, method: kmeans, bits: 4}\n")
    lol = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    (h / "alias_bomb.yaml").write_text(
        f"l0: &l0 [x]\n{lol}quantization:\n  - {{name: q, method: kmeans, bits: 4, set: *l8}}\n"
    )
    (h / "bad_set_key.yaml").write_text(
        "quantization:\n  - {name: q, method: settings, part: detector, set: {max_keypointz: 5}}\n"
    )
    (h / "bad_pattern.yaml").write_text("pruning:\n  - {name: p, method: fine-grained, sparsity: {nope.*: 0.5}}\n")
    (h / "string_auc.json").write_text('[{"name": "dense", "auc@3px": "high", "size_bytes": 5}]\n')
    (h / "target.json").write_text("{}\n")
    (h / "link.json").symlink_to(h / "target.json")
    os.mkfifo(h / "fifo.json")
    (h / "broken.yaml").write_text("steps: 3\nlr: [1e-4\nseed: 1\n")
    (h / "list.yaml").write_text("- steps\n")
    (h / "broken.json").write_text('[{"name": "dense", "auc@3px": 0.5,\n')
    (h / "scan.csv").write_text("model,group,sparsity\nm,a,0.5\n")
    (h / "bad_method.yaml").write_text("quantization:\n  - {name: q, method: kmeanz, bits: 4}\n")
    (h / "bad_variant_key.yaml").write_text("quantization:\n  - {name: q, method: kmeans, bitz: 4}\n")
    (h / "bad_base.yaml").write_text("quantization:\n  - {name: q, method: fine-grained+kmeans, base: p, bits: 4}\n")
    return h


def tampered_checkpoints(h: Path, packed: dict) -> None:
    """Checkpoints crafted by someone who knows the format (digests recomputed): each must be refused on load."""
    import hashlib
    import zlib

    from onnx import TensorProto, helper

    from pipeline.checkpoint import _pack, checkpoint_entries

    def save(name, change=lambda e: None, **fields):
        entries = {k: dict(v) for k, v in checkpoint_entries(packed).items()}
        change(entries)
        torch.save({**packed, "packed": _pack(entries), **fields}, h / name)

    def half_as_int16(entries):
        name = next(k for k, e in entries.items() if e.get("half"))
        field = entries[name]["half"][0]
        entries[name][field] = entries[name][field].view(torch.int16)

    def linear_halved(entries):  # a layer (weight and bias) of another width: it loads, the next layer cannot take it
        from compression.coding import decode

        def is_linear(k):
            return k.startswith("matcher.") and k.endswith(".weight") and f"{k[:-7]}.bias" in entries

        name = next(
            k[:-7] for k in entries if is_linear(k) and decode(entries[k]).get("tensor", torch.zeros(0)).ndim == 2
        )
        w = decode(entries[f"{name}.weight"])["tensor"]
        entries[f"{name}.weight"] = {"kind": "dense", "tensor": torch.zeros(w.shape[0] // 2, w.shape[1])}
        entries[f"{name}.bias"] = {"kind": "dense", "tensor": torch.zeros(w.shape[0] // 2)}

    save("int16_for_float16.pth", half_as_int16)
    save("linear_halved.pth", linear_halved)
    save("huge_shape.pth", lambda e: e.update(x={"kind": "sparse", "shape": [1 << 40], "mask": torch.zeros(1),
                                                  "values": torch.zeros(1)}))  # fmt: skip
    save("attrs_forward.pth", attrs={"matcher": {"forward": 0}})
    bomb = zlib.compress(b" " * (80 << 20), 9)  # an index of 80 MB of spaces, 80 kB on disk
    torch.save(
        {**packed, "packed": {**packed["packed"], "index": torch.frombuffer(bytearray(bomb), dtype=torch.uint8),
                              "index_sha256": hashlib.sha256(bomb).hexdigest()}},
        h / "index_bomb.pth",
    )  # fmt: skip
    flipped = packed["packed"]["data"].clone()
    flipped[len(flipped) // 2] ^= 1
    torch.save({**packed, "packed": {**packed["packed"], "data": flipped}}, h / "bit_flip.pth")
    secret = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    secret.ClearField("float_data")
    secret.data_location = TensorProto.EXTERNAL
    secret.external_data.add(key="location", value="secret.txt")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [secret])  # fmt: skip
    data = helper.make_model(graph).SerializeToString()
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    onnx_part = {
        "class": "GraphMatcher",
        "backend": "onnxruntime",
        "graph": raw,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    save("external_data.pth", onnx={"matcher": onnx_part}, version=7)


# What work already begun shows before its input turns out bad: tqdm bars, and log records (from a shell)
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[|^(INFO|WARNING) [\w.]+: ")


def shown(stderr: str) -> list[str]:
    """The lines of ``stderr`` a terminal shows, progress bars and log records left out."""
    lines = (line.split("\r")[-1].strip() for line in stderr.split("\n"))
    return [line for line in lines if line and not PROGRESS.search(line)]


def snapshot(*folders: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(f.rglob("*"))}


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def boom(*args, **kwargs):
    raise AssertionError("the work started before the bad input was found")


E, M, P, F, X = "evaluate", "match_pairs", "profiling", "finetune", "pruning_experiments"
RUN = "pipeline.training.Run"  # a finetuning run: bad input must stop before one starts
SIFT = ["--matcher", "sift+nn"]
# (id, command, arguments ({H}: the hostile folder, {W}: an empty work folder), what the error line must name,
#  functions that must not run: the input is refused before that work)
CASES = [
    # the tiers' pairs and MegaDepth-1500
    (
        "pose pairs with the homography-only DLT estimator",
        E,
        ["--tier", "pose", "--estimator", "dlt", "--num_pairs", "2", *SIFT, "--output", "{W}/o"],
        ["--estimator dlt", "pose pairs"],
        ["evaluate.evaluate"],
    ),
    (
        "MegaDepth-1500 with two --resize numbers",
        E,
        ["--megadepth", "{W}/md", "--resize", "640", "480", *SIFT],
        ["--megadepth takes one --resize number"],
        ["evaluate.fetch_megadepth"],
    ),
    # images
    (
        "0-byte image in a pairs file",
        M,
        ["--input_pairs", "{H}/pairs_empty_image.txt", "--input_dir", "{H}/images", *SIFT, "--output_dir", "{W}/o"],
        ["empty.png", "empty"],
        [],
    ),
    (
        "0-byte image in a pairs file (evaluate)",
        E,
        ["--input_pairs", "{H}/pairs_empty_image.txt", "--input_dir", "{H}/images", *SIFT, "--output", "{W}/o"],
        ["empty.png"],
        [],
    ),
    (
        "undecodable image",
        M,
        ["--input_pairs", "{H}/pairs_noise_image.txt", "--input_dir", "{H}/images", *SIFT, "--output_dir", "{W}/o"],
        ["noise.png"],
        [],
    ),
    (
        "1x1 image with DISK",
        M,
        [
            "--input_pairs",
            "{H}/pairs_dot.txt",
            "--input_dir",
            "{H}/images",
            "--matcher",
            "disk+lightglue",
            "--resize",
            "-1",
            "--output_dir",
            "{W}/o",
        ],
        ["dot.png", "1×1"],
        [],
    ),
    (
        "non-UTF-8 pairs file",
        M,
        ["--input_pairs", "{H}/pairs_latin1.txt", *SIFT, "--output_dir", "{W}/o"],
        ["pairs_latin1.txt", "UTF-8"],
        ["match_pairs.build_from_args"],
    ),
    (
        "non-UTF-8 pairs file (evaluate)",
        E,
        ["--input_pairs", "{H}/pairs_latin1.txt", *SIFT],
        ["pairs_latin1.txt", "UTF-8"],
        ["evaluate.build_from_args"],
    ),
    # values
    ("--resize 0 0", M, ["--resize", "0", "0", *SIFT], ["--resize"], ["match_pairs.read_pairs"]),
    (
        "--resize 0 0 (evaluate)",
        E,
        ["--input_pairs", "{H}/pairs_empty_image.txt", "--resize", "0", "0"],
        ["--resize"],
        ["evaluate.build_from_args"],
    ),
    ("--size 0 0", E, ["--size", "0", "0", *SIFT], ["--size"], ["evaluate.make_pairs"]),
    (
        "--size too large for memory",
        E,
        ["--size", "100000", "100000", *SIFT],
        ["--size", "8192"],
        ["evaluate.make_pairs"],
    ),
    (
        "--hpatches is a file",
        E,
        ["--hpatches", "{H}/a_file", *SIFT],
        ["a_file", "is a file"],
        ["evaluate.evaluate", "data.hpatches.download"],
    ),
    ("--num_pairs 0", E, ["--num_pairs", "0", *SIFT], ["--num_pairs"], ["evaluate.make_pairs"]),
    ("--threshold inf", E, ["--threshold", "inf", *SIFT], ["--threshold", "inf"], ["evaluate.make_pairs"]),
    ("--max_keypoints 0", M, ["--max_keypoints", "0", *SIFT], ["--max_keypoints"], ["match_pairs.read_pairs"]),
    ("--max_keypoints -5", E, ["--max_keypoints", "-5", *SIFT], ["--max_keypoints"], ["evaluate.make_pairs"]),
    ("--num_keypoints 0", P, ["--num_keypoints", "0", *SIFT], ["--num_keypoints"], ["profiling.profile_matcher"]),
    ("--repeats 0", P, ["--repeats", "0", *SIFT], ["--repeats"], ["profiling.profile_matcher"]),
    ("--resize 0 0 (profiling)", P, ["--resize", "0", "0", *SIFT], ["--resize"], ["profiling.profile_matcher"]),
    ("--threads 0", P, ["--threads", "0", *SIFT], ["--threads"], ["profiling.profile_matcher"]),
    # output locations, before any work
    (
        "--output is a file",
        E,
        ["--output", "{H}/a_file", *SIFT, "--num_pairs", "1"],
        ["a_file", "not a folder"],
        ["evaluate.make_pairs", "evaluate.evaluate"],
    ),
    ("--output inside a file", E, ["--output", "{H}/a_file/out", *SIFT], ["a_file"], ["evaluate.evaluate"]),
    ("--json is a folder", P, ["--json", "{H}/a_dir", *SIFT], ["a_dir", "not a file"], ["profiling.profile_matcher"]),
    ("--csv inside a file", P, ["--csv", "{H}/a_file/sweep.csv", *SIFT], ["a_file"], ["profiling.profile_matcher"]),
    ("--output_dir is a file", M, ["--output_dir", "{H}/a_file", *SIFT], ["a_file"], ["match_pairs.read_pairs"]),
    ("finetune out is a file", F, ["--set", "out={H}/a_file"], ["a_file"], [RUN]),
    ("experiment --out is a file", X, ["--out", "{H}/a_file"], ["a_file"], ["pipeline.experiment.Experiment.baseline"]),
    (
        "experiment --update-readme without a report",
        X,
        ["--no-report", "--update-readme"],
        ["--update-readme", "--no-report"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "visualizations --out is a file",
        "visualizations",
        ["--out", "{H}/a_file", "--results", "{H}/broken.json"],
        ["a_file"],
        ["visualizations.plot_tradeoff"],
    ),
    # checkpoints
    ("0-byte checkpoint", M, ["--checkpoint", "{H}/zero.pth", "--output_dir", "{W}/o"], ["zero.pth", "empty"], []),
    ("random-bytes checkpoint", E, ["--checkpoint", "{H}/random.pth"], ["random.pth", "not a PyTorch"], []),
    ("truncated checkpoint", P, ["--checkpoint", "{H}/truncated.pth"], ["truncated.pth", "damaged"], []),
    ("pickle that runs code", E, ["--checkpoint", "{H}/pickle.pth"], ["pickle.pth", "refused"], []),
    (
        "checkpoint naming an unknown matcher",
        M,
        ["--checkpoint", "{H}/unknown_matcher.pth", "--output_dir", "{W}/o"],
        ["unknown_matcher.pth", "nope+nope"],
        [],
    ),
    ("checkpoint without its config", P, ["--checkpoint", "{H}/no_config.pth"], ["no_config.pth", "config"], []),
    (
        "checkpoint entry without its kind",
        E,
        ["--checkpoint", "{H}/entry_without_kind.pth"],
        ["entry_without_kind.pth", "kind"],
        [],
    ),
    ("checkpoint entry of another shape", E, ["--checkpoint", "{H}/wrong_shape.pth"], ["wrong_shape.pth"], []),
    (
        "--max_keypoints beside --checkpoint",
        M,
        ["--checkpoint", "{H}/tiny.pth", "--max_keypoints", "256", "--output_dir", "{W}/o"],
        ["--max_keypoints", "--checkpoint"],
        ["pipeline.checkpoint.load_checkpoint", "match_pairs.read_pairs"],
    ),
    (
        "--match_threshold beside --checkpoint",
        M,
        ["--checkpoint", "{H}/tiny.pth", "--match_threshold", "0.5", "--output_dir", "{W}/o"],
        ["--match_threshold", "does not apply"],
        ["pipeline.checkpoint.load_checkpoint"],
    ),
    (
        "--max_keypoints beside --checkpoint (evaluate)",
        E,
        ["--checkpoint", "{H}/tiny.pth", "--max_keypoints", "256"],
        ["--max_keypoints", "does not apply"],
        ["pipeline.checkpoint.load_checkpoint", "evaluate.evaluate"],
    ),
    # checkpoints crafted with their digests recomputed
    (
        "int16 where float16 is declared",
        E,
        ["--checkpoint", "{H}/int16_for_float16.pth"],
        ["int16_for_float16.pth", "float16"],
        [],
    ),
    (
        "a layer that loads but does not chain",
        E,
        ["--checkpoint", "{H}/linear_halved.pth"],
        ["linear_halved.pth", "does not run"],
        [],
    ),
    ("a declared shape past any matcher", E, ["--checkpoint", "{H}/huge_shape.pth"], ["huge_shape.pth", "refused"], []),
    ("attrs that set a method", E, ["--checkpoint", "{H}/attrs_forward.pth"], ["attrs_forward.pth", "forward"], []),
    ("zlib bomb as the index", E, ["--checkpoint", "{H}/index_bomb.pth"], ["index_bomb.pth", "index"], []),
    ("one bit flipped", P, ["--checkpoint", "{H}/bit_flip.pth"], ["bit_flip.pth", "digest"], []),
    (
        "graph with external data",
        E,
        ["--checkpoint", "{H}/external_data.pth"],
        ["external_data.pth", "external data"],
        [],
    ),
    (
        "checkpoint of a newer version",
        F,
        ["--set", "checkpoint={H}/future.pth", "--set", "out={W}/ft"],
        ["future.pth", "version"],
        ["pipeline.training.Run.loss"],
    ),
    (
        "0-byte checkpoint (finetune)",
        F,
        ["--set", "checkpoint={H}/zero.pth", "--set", "out={W}/ft"],
        ["zero.pth"],
        ["pipeline.training.Run.loss"],
    ),
    (
        "--matcher contradicts --checkpoint",
        E,
        ["--matcher", "disk+lightglue", "--checkpoint", "{H}/sift.pth"],
        ["--matcher", "sift+nn"],
        ["evaluate.evaluate"],
    ),
    # configs
    ("unknown key", F, ["--set", "stpes=1", "--set", "out={W}/ft"], ["stpes", "'steps'"], [RUN]),
    (
        "unknown nested key",
        F,
        ["--set", "val.num_pairz=1", "--set", "out={W}/ft"],
        ["val.num_pairz", "val.num_pairs"],
        [RUN],
    ),
    ("wrong type", F, ["--set", "steps=ten", "--set", "out={W}/ft"], ["steps", "integer", "ten"], [RUN]),
    ("out of range", F, ["--set", "val.num_pairs=0", "--set", "out={W}/ft"], ["val.num_pairs"], [RUN]),
    (
        "unknown matcher setting",
        F,
        ["--set", "matcher_config.matcher.depth_confidance=-1", "--set", "out={W}/ft"],
        ["depth_confidance", "depth_confidence"],
        [RUN],
    ),
    ("YAML syntax error", F, ["--config", "{H}/broken.yaml", "--set", "out={W}/ft"], ["broken.yaml:3:"], [RUN]),
    ("YAML that is not a mapping", F, ["--config", "{H}/list.yaml"], ["list.yaml", "mapping"], [RUN]),
    ("malformed --set", F, ["--set", "steps"], ["key.sub=value"], [RUN]),
    (
        "unknown experiment key",
        X,
        ["--set", "val.num_pairz=1", "--out", "{W}/run"],
        ["val.num_pairz"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "unknown experiment method",
        X,
        ["--config", "{R}/configs/demo.yaml", "{H}/bad_method.yaml", "--out", "{W}/run"],
        ["kmeanz"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "unknown variant key",
        X,
        ["--config", "{R}/configs/demo.yaml", "{H}/bad_variant_key.yaml", "--out", "{W}/run"],
        ["bitz", "bits"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "variant with a missing base",
        X,
        ["--config", "{R}/configs/demo.yaml", "{H}/bad_base.yaml", "--out", "{W}/run"],
        ["base", "'p'"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    # names from a config that would become paths outside the run folder
    (
        "reference named ../../../escaped-ref",
        X,
        ["--config", "{R}/configs/demo.yaml", "{H}/escaping_reference.yaml", "--out", "{W}/a/b/run"],
        ["references name", "escaped-ref"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "variant named ../v",
        X,
        ["--config", "{R}/configs/demo.yaml", "{H}/escaping_variant.yaml", "--out", "{W}/run"],
        ["quantization name", "../v"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    ("YAML alias bomb", X, ["--config", "{H}/alias_bomb.yaml", "--out", "{W}/run"], ["alias_bomb.yaml", "aliases"], []),
    (
        "--json is a symlink",
        P,
        ["--json", "{H}/link.json", *SIFT],
        ["link.json", "symlink"],
        ["profiling.profile_matcher"],
    ),
    ("--json is a FIFO", P, ["--json", "{H}/fifo.json", *SIFT], ["fifo.json", "FIFO"], ["profiling.profile_matcher"]),
    ("--set lr=.inf", F, ["--set", "lr=.inf", "--set", "out={W}/ft"], ["lr", "finite"], [RUN]),
    ("negative seed", F, ["--set", "seed=-5", "--set", "out={W}/ft"], ["seed", "-5"], [RUN]),
    ("seed past NumPy's", X, ["--set", "val.seed=99999999999", "--out", "{W}/run"], ["val.seed"], []),
    # settings a matcher cannot be built or run with
    (
        "heads that do not divide the width",
        F,
        ["--set", "matcher_config.matcher.num_heads=3", "--set", "out={W}/ft"],
        ["matcher_config", "num_heads"],
        [RUN],
    ),
    (
        "layers the pretrained weights do not have",
        F,
        ["--set", "matcher_config.matcher.n_layers=3", "--set", "out={W}/ft"],
        ["matcher_config", "transformers.3"],
        [RUN],
    ),
    (
        "negative NMS radius",
        X,
        ["--set", "matcher_config.detector.nms_radius=-1", "--out", "{W}/run"],
        ["matcher_config", "number of steps must be non-negative"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "a variant's set: key its part does not have",
        X,
        ["--config", "{H}/bad_set_key.yaml", "--out", "{W}/run"],
        ["max_keypointz", "max_keypoints"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    (
        "a sparsity pattern that names no layer",
        X,
        ["--config", "{H}/bad_pattern.yaml", "--out", "{W}/run"],
        ["variant p", "nope.*"],
        ["pipeline.experiment.Experiment.baseline"],
    ),
    # result files given to visualizations.py
    ("broken JSON", "visualizations", ["--results", "{H}/broken.json", "--out", "{W}/fig"], ["broken.json:2:"], []),
    (
        "CSV without the columns",
        "visualizations",
        ["--scan", "{H}/scan.csv", "--out", "{W}/fig"],
        ["scan.csv", "auc@3px"],
        [],
    ),
    (
        "unknown tensor",
        "visualizations",
        ["--checkpoints", "{H}/tiny.pth", "--tensor", "matcher.transformers.0.fnn", "--out", "{W}/fig"],
        ["matcher.transformers.0.fnn", "did you mean"],
        [],
    ),
    (
        "a string where a number belongs",
        "visualizations",
        ["--results", "{H}/string_auc.json", "--out", "{W}/fig"],
        ["string_auc.json", "auc@3px", "'high'"],
        [],
    ),
    (
        "--int8_matcher without a graph",
        P,
        ["--int8_matcher", *SIFT],
        ["--int8_matcher", "graph adapter"],
        ["profiling.profile_matcher"],
    ),
    ("missing results file", "visualizations", ["--sweep", "{H}/nothing.csv", "--out", "{W}/fig"], ["nothing.csv"], []),
]


def is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_status_2_and_changes_nothing(case, hostile, work, capsys, monkeypatch):
    _, module, argv, culprits, forbidden = case
    argv = [a.replace("{H}", str(hostile)).replace("{W}", str(work)).replace("{R}", str(ROOT)) for a in argv]
    for target in forbidden:  # "module.function" or "module.Class.method"
        parts = target.split(".")
        k = next(k for k in range(len(parts) - 1, 0, -1) if is_module(".".join(parts[:k])))
        owner = importlib.import_module(".".join(parts[:k]))  # the longest module prefix, imported if it was not
        for part in parts[k:-1]:
            owner = getattr(owner, part)
        monkeypatch.setattr(owner, parts[-1], boom)
    main = importlib.import_module(module).main
    before = snapshot(hostile, work)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    err = shown(capsys.readouterr().err)
    assert exit_.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for culprit in culprits:
        assert culprit in err[0], (culprit, err[0])
    assert "weights_only=False" not in err[0] and "Traceback" not in err[0]
    assert snapshot(hostile, work) == before  # nothing written, nothing half-written, nothing else touched
    assert not (hostile / "PWNED").exists()


def test_command_lines_report_in_one_line_from_a_shell(hostile, tmp_path):
    """The same boundary at the real entry points (a fresh interpreter per command)."""
    for script, args, culprit in (
        ("match_pairs.py", ["--input_pairs", str(hostile / "pairs_latin1.txt")], "UTF-8"),
        ("quantization_experiments.py", ["--set", "seed=x", "--out", str(tmp_path / "r")], "seed"),
    ):
        proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = shown(proc.stderr)
        assert proc.returncode == 2 and len(lines) == 1 and culprit in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def test_sizes_too_large_for_memory_are_one_line(tmp_path):
    import resource

    def limit():  # 6 GB of address space: what a smaller machine has
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--matcher",
            "aliked+lightglue",
            "--size",
            "4096",
            "4096",
            "--num_pairs",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    lines = shown(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "out of memory" in lines[0] and "--size" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_read_only_run_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import finetune as finetune_cli
    from pipeline import training

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: make the folder immutable instead
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i")
    else:
        folder.chmod(0o555)
    try:
        monkeypatch.setattr(training, "Run", boom)
        with pytest.raises(SystemExit) as exit_:
            run_cli(finetune_cli.main, ["--set", f"out={folder}"])
        err = shown(capsys.readouterr().err)
        assert exit_.value.code == 2 and len(err) == 1 and str(folder) in err[0], err
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)])
        folder.chmod(0o755)


def test_folder_and_zip_sources_skip_and_count_unreadable_images(tmp_path, caplog):
    from data.images import open_source, readable_images

    rng = np.random.default_rng(1)
    good = _png(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in (("a.png", good), ("b.png", good), ("empty.png", b""), ("noise.jpg", rng.bytes(999))):
        (folder / name).write_bytes(data)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("a.png", "b.png", "empty.png"):
            z.write(folder / name, name)
        z.writestr("damaged.png", good * 3)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("damaged.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10 : start + 40] = b"\x00" * 30  # the member's compressed bytes, not its header
    archive.write_bytes(bytes(data))
    for spec, skipped in ((folder, 2), (archive, 2)):
        source = open_source(spec)
        with caplog.at_level("WARNING"):
            read = [name for name, _ in readable_images(source, source.names)]
        assert read == ["a.png", "b.png"]
        assert f"skipped {skipped} unreadable image(s)" in caplog.text
        caplog.clear()


def test_pairs_file_with_a_byte_order_mark_reads_its_names(tmp_path):
    from data.pairs import read_pairs

    path = tmp_path / "pairs.txt"
    path.write_bytes("\ufeffa.png b.png\n".encode("utf-8"))
    assert read_pairs(path)[0].name0 == "a.png"


def test_set_values_take_the_type_of_their_default_and_configs_merge_in_order(tmp_path):
    import finetune

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("steps: 7\nval: {num_pairs: 3}\n")
    b.write_text("lr: 1e-4\nval: {every: 2}\n")  # YAML 1.1 reads 1e-4 as a string
    config, _ = finetune.command_line(
        ["--config", str(a), "--config", str(b), "--set", "weight_decay=1e-2", "--set", "clip=2"]
    )
    assert config["steps"] == 7 and config["val"]["num_pairs"] == 3 and config["val"]["every"] == 2
    assert config["lr"] == 1e-4 and isinstance(config["lr"], float) and config["weight_decay"] == 0.01
    assert config["clip"] == 2.0 and isinstance(config["clip"], float)


def test_unreadable_stage_record_is_recomputed_and_said(tmp_path, caplog):
    from pipeline.experiment import DEFAULTS, Experiment

    exp = Experiment(DEFAULTS, tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "x.json").write_bytes(b'{"key": "abc", "resu')
    with caplog.at_level("WARNING"):
        assert exp.stage("x", {"a": 1}, lambda: {"value": 3}) == {"value": 3}
    assert "unreadable" in caplog.text
    assert exp.stage("x", {"a": 1}, boom) == {"value": 3}  # now stored
    record = json.loads((tmp_path / "stages" / "x.json").read_text())
    (tmp_path / "stages" / "x.json").write_text(json.dumps({**record, "result": {"value": "garbage"}}))  # its key kept
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert exp.stage("x", {"a": 1}, lambda: {"value": 3}) == {"value": 3}
    assert "does not match its digest" in caplog.text
    ckpt = tmp_path / "v.pth"
    ckpt.write_bytes(b"weights")
    row = {"checkpoint": str(ckpt), "checkpoint_sha1": file_sha1(ckpt)}
    assert exp.stage("y", {}, lambda: row) == row
    ckpt.unlink()  # the stage's checkpoint deleted: the stage is done again, not read back
    assert exp.stage("y", {}, lambda: {**row, "again": True})["again"]


def test_killed_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    """kill -9 in the middle of an atomic write; a write by a live process is never touched."""
    from helper import write_json

    target = tmp_path / "model.pth"
    code = (
        "import sys, time\nfrom helper import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'x' * 10**6)\n"
        "    print('writing', flush=True)\n    time.sleep(120)\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for w in writers:
        assert w.stdout.readline().strip() == "writing"
    writers[0].kill()
    writers[0].wait()
    temps = lambda: sorted(tmp_path.glob(".model.pth.*.tmp"))  # noqa: E731
    assert len(temps()) == 2
    try:
        write_json(target, {"ok": True})
        left = temps()
        assert len(left) == 1 and f"-{writers[1].pid}." in left[0].name  # the dead one's is gone, the live one's kept
    finally:
        writers[1].kill()
        writers[1].wait()
    write_json(target, {"ok": True})
    assert temps() == [] and target.read_text().strip().startswith("{")


def test_bad_cached_matches_are_recomputed(tmp_path, caplog):
    import match_pairs

    out = tmp_path / "o"
    match_pairs.main(
        [
            "--input_pairs",
            "sample",
            "--matcher",
            "sift+nn",
            "--max_length",
            "1",
            "--output_dir",
            str(out),
            "--resize",
            "160",
            "120",
        ]
    )
    cached = next(out.glob("*_matches.npz"))
    good = dict(np.load(cached))
    cached.write_bytes(b"PK\x03\x04 not really a zip")
    with caplog.at_level("WARNING"):
        match_pairs.main(
            [
                "--input_pairs",
                "sample",
                "--matcher",
                "sift+nn",
                "--max_length",
                "1",
                "--output_dir",
                str(out),
                "--resize",
                "160",
                "120",
                "--cache",
            ]
        )
    assert "unreadable" in caplog.text
    again = dict(np.load(cached))
    assert all(np.array_equal(good[k], again[k]) for k in good)
    rerun = ["--input_pairs", "sample", *SIFT, "--max_length", "1", "--output_dir", str(out), "--resize", "160", "120"]
    for damage, why in (
        ({"keypoints0": good["keypoints0"] * 1e9}, "not pixels"),
        ({"match_confidence": good["match_confidence"] * np.nan}, "not finite"),
    ):
        np.savez(cached, **{**good, **damage})
        caplog.clear()
        with caplog.at_level("WARNING"):
            match_pairs.main([*rerun, "--cache"])
        assert why in caplog.text and all(np.array_equal(good[k], np.load(cached)[k]) for k in good)


def test_an_exif_rotated_jpeg_is_read_as_stored_so_its_ground_truth_holds():
    import struct

    from helper import decode_image

    image = np.zeros((40, 60, 3), np.uint8)
    image[:10, :20] = 255
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHII", 1, 0x0112, 3, 1, 6 << 16) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff  # one tag: Orientation = 6 (shown rotated 90° clockwise)
    tagged = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    assert cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR).shape == (60, 40, 3)  # the tag is there
    np.testing.assert_array_equal(decode_image(tagged, "tagged.jpg"), decode_image(jpeg, "plain.jpg"))


def test_images_of_one_base_name_in_two_folders_keep_their_own_outputs_and_exports(tmp_path):
    import match_pairs
    from data.pairs import make_pairs, read_pairs, unique_file_names

    rng = np.random.default_rng(3)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png"):
            (tmp_path / folder / name).write_bytes(_png(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("x/a.png x/b.png\ny/a.png y/b.png\n")
    out = tmp_path / "out"
    run = ["--input_pairs", str(pairs), "--input_dir", str(tmp_path), *SIFT, "--output_dir", str(out)]
    match_pairs.main([*run, "--resize", "160", "120"])
    written = sorted(out.glob("*_matches.npz"))
    assert len(written) == 2 and all(w.name.startswith("a_b-") for w in written)
    first = {k: v.copy() for k, v in np.load(written[0]).items()}
    match_pairs.main([*run, "--resize", "160", "120", "--cache"])  # each pair reads back its own matches
    assert all(np.array_equal(first[k], np.load(written[0])[k]) for k in first)
    assert not np.array_equal(np.load(written[0])["keypoints0"], np.load(written[1])["keypoints0"])

    names = unique_file_names(["x/a.png", "y/a.png", "with space.png", "new\nline.jpg"])
    assert len(set(names.values())) == 4 and all(" " not in n and "\n" not in n for n in names.values())
    assert names["x/a.png"] != names["y/a.png"] and names["with space.png"] == "with_space.png"
    synthetic = make_pairs(num_pairs=3, size=(96, 64))
    back = read_pairs(synthetic.export(tmp_path / "export"))  # what match_pairs.py reads: every image is there
    assert [p.line().split()[2:] for p in back] == [p.line().split()[2:] for p in synthetic.pairs]
    assert all((tmp_path / "export" / n).is_file() for p in back for n in (p.name0, p.name1))


@pytest.mark.parametrize("writer", ["npz", "torch"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_half_written_output(
    tmp_path, capsys, monkeypatch, writer
):
    """ENOSPC from a write to a file object (no file name in the error) and torch.save's writer error (a
    RuntimeError) both end as one line that names the output and says what to do."""
    import errno as errno_

    import match_pairs
    import pipeline.checkpoint

    def full(*args, **kwargs):
        if writer == "npz":
            raise OSError(errno_.ENOSPC, os.strerror(errno_.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(np, "savez", full)
    monkeypatch.setattr(pipeline.checkpoint.torch, "save", full)
    monkeypatch.setattr("helper.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    argv = ["--input_pairs", "sample", *SIFT, "--max_length", "1", "--resize", "160", "120"]
    with pytest.raises(SystemExit) as exit_:
        if writer == "npz":
            run_cli(match_pairs.main, [*argv, "--output_dir", str(tmp_path / "o")])
        else:
            from models.matching import build_matcher
            from pipeline.checkpoint import save_checkpoint

            run_cli(lambda _: save_checkpoint(build_matcher("sift+nn"), tmp_path / "m.pth"), [])
    err = shown(capsys.readouterr().err)
    assert exit_.value.code == 2 and len(err) == 1, err
    assert ("_matches.npz" if writer == "npz" else "m.pth") in err[0] and "No space left" in err[0], err
    assert "write elsewhere" in err[0]
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "m.pth").exists()


def test_an_image_file_past_any_image_size_is_refused_before_it_is_read(tmp_path, monkeypatch, caplog):
    import data.images
    import helper
    from data.images import open_source, readable_images

    good = _png(np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(good)
    (folder / "huge.png").write_bytes(good + b"\0" * 5000)  # past the (lowered) limit
    with zipfile.ZipFile(tmp_path / "photos.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", good)
        z.writestr("huge.png", good + b"\0" * 5000)  # 5 kB that deflate to a few bytes: a small zip bomb
    monkeypatch.setattr(helper, "MAX_IMAGE_BYTES", len(good) + 100)
    monkeypatch.setattr(data.images, "MAX_IMAGE_BYTES", len(good) + 100)
    for spec in (folder, tmp_path / "photos.zip"):
        source = open_source(spec)
        with caplog.at_level("WARNING"):
            assert [name for name, _ in readable_images(source, source.names)] == ["a.png"]
        assert "skipped 1 unreadable image(s)" in caplog.text
        caplog.clear()
    with pytest.raises(helper.InputError, match="huge.png.*more than an image file"):
        helper.read_image(folder / "huge.png")


def test_opencv_out_of_memory_is_one_line_with_advice(capsys):
    def main(_):
        raise cv2.error(
            "OpenCV(5.0.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 805306368 bytes"
        )

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    err = shown(capsys.readouterr().err)
    assert exit_.value.code == 2 and len(err) == 1 and "out of memory" in err[0] and "--resize" in err[0], err
