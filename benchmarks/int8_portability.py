"""Do the int8 matcher graphs compute the same on CPUs without VNNI? Pretrained LightGlue in ONNX Runtime int8
(dynamic and static, 8-bit and 7-bit weights), run on this CPU and on an emulated AVX2 CPU without VNNI.

    python benchmarks/int8_portability.py [--num_pairs 4] [--cpu EPYC-Rome]

Needs Debian's qemu-user (``apt-get install qemu-user``): ``qemu-x86_64 -cpu EPYC-Rome`` runs the same Python and
ONNX Runtime on an emulated AMD Zen 2 (AVX2, no AVX-512, no VNNI), where ONNX Runtime multiplies uint8 x int8 with
VPMADDUBSW, whose int16 pair sums saturate with full-range int8 weights. Prints, per graph and CPU, the share of
the PyTorch fp32 matches the graph makes too (the emulated run is slow: about a minute per graph and pair).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import quantization.int8 as int8
from backends.modules import graph_feed
from data.pairs import make_pairs
from helper import ArgumentParser, merge_config, positive_int, run_cli
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.evaluation import FeatureCache, evaluate, extract_pair
from pipeline.training import DEFAULTS

# Runs under the emulator too: ONNX Runtime and NumPy only.
CHILD = """
import sys, numpy as np, onnxruntime as ort
folder = sys.argv[1]
data = np.load(f"{folder}/feeds.npz")
n = int(data["count"])
for graph in sys.argv[2:]:
    s = ort.InferenceSession(f"{folder}/{graph}.onnx", providers=["CPUExecutionProvider"])
    same, total = 0, 0
    for i in range(n):
        feed = {x.name: data[f"{i}/{x.name}"] for x in s.get_inputs()}
        la = [o for o in s.run(None, feed) if o.ndim == 3][0][0, :-1, :-1]
        ref = data[f"{i}/matches0"]
        valid = ref >= 0
        same += int((la.argmax(1)[valid] == ref[valid]).sum())
        total += int(valid.sum())
    print(f"{graph} {same / max(total, 1):.3f}", flush=True)
"""


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_pairs", type=positive_int, default=4)
    p.add_argument("--calibration_pairs", type=positive_int, default=8)
    p.add_argument("--num_keypoints", type=positive_int, default=512)
    p.add_argument("--cpu", default="EPYC-Rome", help="qemu CPU model without VNNI (qemu-x86_64 -cpu help)")
    args = p.parse_args(argv)
    qemu = shutil.which("qemu-x86_64")
    dense = build_matcher(
        "aliked+lightglue", {"detector": {"max_keypoints": args.num_keypoints}, "matcher": EVERY_LAYER}
    )
    cache = FeatureCache()
    calib = make_pairs(merge_config(DEFAULTS["train"], {"num_pairs": args.calibration_pairs, "augment": 0.0}))
    recorded = int8.recorded_inputs(dense.matcher, lambda: evaluate(dense, calib, cache, progress=False))
    val = make_pairs(merge_config(DEFAULTS["val"], {"num_pairs": args.num_pairs}))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = int8.int8_matcher(dense, recorded, folder / "export", mode="fp32").onnx_path
        calibration = [graph_feed(dense.matcher, d) for d in recorded]
        graphs = []
        for bits, reduce in ((8, False), (7, True)):
            int8.REDUCE_RANGE = reduce
            for mode in ("dynamic", "static"):
                name = f"{mode}-{bits}bit"
                int8.quantize_matcher_onnx(fp32, folder / f"{name}.onnx", calibration if mode == "static" else None)
                graphs.append(name)
        feeds = {"count": np.array(len(val))}
        for i, pair in enumerate(val):
            data, out = extract_pair(dense, val, pair, cache), []
            network_input = int8.recorded_inputs(dense.matcher, lambda: out.append(dense.match(data)))[0]
            feeds[f"{i}/matches0"] = out[0]["matches0"][0].numpy()
            feeds.update({f"{i}/{k}": v for k, v in graph_feed(dense.matcher, network_input).items()})
        np.savez(folder / "feeds.npz", **feeds)
        (folder / "child.py").write_text(CHILD)
        runs = {"this CPU": [sys.executable]}
        if qemu:
            runs[f"qemu {args.cpu} (no VNNI)"] = [qemu, "-cpu", args.cpu, sys.executable]
        else:
            print("qemu-x86_64 not found (apt-get install qemu-user): this CPU only")
        print(
            f"LightGlue (pretrained, every layer), {args.num_pairs} val pairs, {args.num_keypoints} keypoints: "
            "share of the fp32 matches each int8 graph makes"
        )
        for label, command in runs.items():
            out = subprocess.run(
                [*command, str(folder / "child.py"), str(folder), *graphs], capture_output=True, text=True, check=True
            ).stdout.split()
            print(f"{label:28}" + "  ".join(f"{g} {a}" for g, a in zip(out[::2], out[1::2])), flush=True)


if __name__ == "__main__":
    run_cli(main)
