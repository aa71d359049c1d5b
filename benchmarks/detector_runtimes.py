"""Which runtime runs each detector fastest on this CPU, and at what accuracy: one image at 640×480 (a val photo),
every detector × runtime timed round-robin in one process.

    python benchmarks/detector_runtimes.py [--detectors aliked disk superpoint] [--repeats 10] [--compile]
        [--op_profile]

Runtimes: PyTorch eager; ``torch.compile`` of the dense part (``--compile``: its compile time is printed apart);
ONNX Runtime fp32 and static int8 (QDQ, calibrated on 8 training photos; the layers the adapter names stay float);
OpenVINO fp32 and int8 (the same graphs) when ``openvino`` is installed. Post-processing (NMS, keypoint selection,
ALIKED's sparse descriptor head) stays in PyTorch everywhere. Accuracy is agreement with the PyTorch eager output
on 8 val photos: the share of its keypoints found within 1 px and the median cosine of their descriptors.
``aliked (kornia)`` is kornia's ALIKED with its dense descriptor map: the stock reference of the ratio column.
SuperPoint runs on random weights unless the official ones are here (its latency does not depend on them).
``--op_profile``: where each ONNX Runtime fp32 graph spends its time, by operator type (ONNX Runtime's profiler, one
thread: a pair's two images run on one thread each), layout reorders and fused nodes included.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from end_to_end import CALIBRATION, VAL, calibration_images  # noqa: E402  (a sibling script)

from backends.modules import GraphModule
from backends.onnxruntime import op_times
from data.pairs import make_pairs
from helper import ArgumentParser, Timer, positive_int, run_cli, to_tensor
from models.graphs import DetectorGraph, graph_adapter
from models.matching import Matcher, build_matcher, to_channels
from pipeline.costs import interleaved_latency
from pipeline.evaluation import official_weights_available
from quantization.int8 import int8_detector


def detectors() -> dict[str, Callable[[], Matcher]]:
    sp = {} if official_weights_available() else {"weights": None}
    return {
        "aliked (kornia)": lambda: build_matcher("aliked+lightglue", {"detector": {"dense_map": True}}),
        "aliked": lambda: build_matcher("aliked+lightglue"),
        "disk": lambda: build_matcher("disk+lightglue"),
        "superpoint": lambda: build_matcher(
            "superpoint+superglue", {"superpoint": {**sp, "max_keypoints": 1024}, "superglue": {"weights": None}}
        ),
    }


def on_backend(m: Matcher, backend: str) -> Matcher:
    """A copy whose graph parts run in ``backend`` (the same graph bytes)."""
    m = copy.deepcopy(m)
    for part in m.modules():
        if isinstance(part, GraphModule):
            part._open(part.graph_bytes, part.threads, backend)
    return m


def agreement(ref: dict, out: dict) -> tuple[float, float]:
    """Share of the reference keypoints found within 1 px, and the median cosine of their descriptors."""
    k0, k1 = ref["keypoints"][0], out["keypoints"][0]
    if len(k0) == 0 or len(k1) == 0:
        return 0.0, 0.0
    dist = torch.cdist(k0, k1).min(1)
    near = dist.values < 1
    cos = (ref["descriptors"][0][:, near] * out["descriptors"][0][:, dist.indices[near]]).sum(0)
    return float(near.float().mean()), float(cos.median()) if near.any() else 0.0


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--detectors", nargs="+", default=["aliked", "disk", "superpoint"], choices=["aliked", "disk", "superpoint"]
    )
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--compile", action="store_true", help="also torch.compile the dense part (slow to compile)")
    p.add_argument("--op_profile", action="store_true", help="also the ONNX Runtime fp32 graphs' time per operator")
    args = p.parse_args(argv)
    openvino = importlib.util.find_spec("openvino") is not None
    zoo = detectors()
    val = make_pairs({**VAL, "num_pairs": 8})
    photos = [to_tensor(val.image(q, 0)[1]) for q in val]
    rows: dict[str, Matcher] = {}
    notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for det in args.detectors:
            names = ["aliked (kornia)", "aliked"] if det == "aliked" else [det]
            for name in names:
                rows[f"{name} | eager"] = zoo[name]()
            m = rows[f"{det} | eager"]
            if args.compile:
                compiled = copy.deepcopy(m)
                target = compiled.detector
                sub = graph_adapter(target, DetectorGraph).submodule  # what the graph holds: compile the same
                with Timer() as t:
                    if sub:
                        setattr(target, sub, torch.compile(getattr(target, sub), dynamic=False))
                    else:
                        target.dense = torch.compile(target.dense, dynamic=False)
                    with torch.no_grad():
                        compiled.extract(photos[0])
                rows[f"{det} | torch.compile"] = compiled
                notes[f"{det} | torch.compile"] = f"compiled in {t.seconds:.0f} s"
            calib = [to_channels(x, m.channels) for x in calibration_images(3)]
            graphs = {
                "onnxruntime fp32": int8_detector(m, calib[:1], Path(tmp) / det / "fp32", quantize=False),
                "onnxruntime int8": int8_detector(m, calib, Path(tmp) / det / "int8"),
            }
            rows.update({f"{det} | {k}": v for k, v in graphs.items()})
            if openvino:
                for k, v in graphs.items():
                    name = f"{det} | {k.replace('onnxruntime', 'openvino')}"
                    try:
                        rows[name] = on_backend(v, "openvino")
                    except RuntimeError as e:  # e.g. an op its ONNX frontend does not convert
                        skipped[name] = next((x for x in str(e).splitlines() if "No conversion rule" in x), str(e))
        # each row is compared with the PyTorch eager output of its detector ("aliked (kornia)" with ours)
        family = {name: name.split(" | ")[0].split(" (")[0] for name in rows}
        with torch.no_grad():
            refs = {det: [rows[f"{det} | eager"].extract(x) for x in photos] for det in set(family.values())}
            quality = {
                name: np.mean([agreement(r, m.extract(x)) for r, x in zip(refs[family[name]], photos)], axis=0)
                for name, m in rows.items()
            }
        image = photos[0]
        times = interleaved_latency({name: (lambda m=m: m.extract(image)) for name, m in rows.items()}, args.repeats)
        profiles = {}
        for det in args.detectors if args.op_profile else []:
            m = rows[f"{det} | onnxruntime fp32"]
            graph = next(part for part in m.modules() if isinstance(part, GraphModule))
            feed = {"image": to_channels(image, m.channels).numpy()}
            profiles[det] = op_times(graph.graph_bytes, feed, rounds=args.repeats)
    stock = times.get("aliked (kornia) | eager", {}).get("latency_ms")
    print(f"one {photos[0].shape[-1]}×{photos[0].shape[-2]} image, {args.repeats} rounds round-robin, "
          f"{torch.get_num_threads()} threads; agreement with PyTorch eager on {len(photos)} val photos "
          f"(calibration: {CALIBRATION['num_pairs'] * 2} training photos)")  # fmt: skip
    print(f"{'detector | runtime':36} {'ms':>7} {'IQR':>6} {'× kornia ALIKED':>16} {'kp ≤1px':>8} {'desc cos':>9}")
    for name in rows:
        ms, iqr = times[name]["latency_ms"], times[name]["latency_ms_iqr"]
        ratio = f"{ms / stock:16.2f}" if stock else f"{'':16}"
        found, cos = quality[name]
        print(f"{name:36} {ms:7.0f} {iqr:6.0f} {ratio} {found:8.3f} {cos:9.4f}  {notes.get(name, '')}")
    for name, why in skipped.items():
        print(f"{name:36} not run: {why.strip()}")
    if not openvino:
        print("(openvino is not installed: pip install openvino adds its two rows per detector)")
    for det, ops in profiles.items():
        total = sum(ms for ms, _ in ops.values())
        print(f"\n{det}, ONNX Runtime fp32 graph on one thread: {total:.0f} ms by its profiler; per operator type:")
        for op, (ms, nodes) in ops.items():
            if ms >= 0.01 * total:
                print(f"  {op:24} {ms:7.1f} ms {ms / total:5.0%}  ({nodes} nodes)")
        rest = [ms for ms, _ in ops.values() if ms < 0.01 * total]
        print(f"  {f'{len(rest)} others':24} {sum(rest):7.1f} ms {sum(rest) / total:5.0%}")


if __name__ == "__main__":
    run_cli(main)
