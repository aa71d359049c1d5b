"""End to end on CPU: accuracy and pair latency (two detections + matching) of the stock dense pipeline, our faster
pipelines and the speed anchors, on the demo's validation pairs (640×480 photographs warped by known homographies).

    python benchmarks/end_to_end.py [--num_pairs 100] [--timed_pairs 20] [--repeats 3] [--json out.json]
    python benchmarks/end_to_end.py --matcher superpoint+superglue --random-weights   # latency only

Rows (aliked+lightglue): ``stock`` is what a user runs out of the box — kornia's ALIKED (1024 keypoints) and LightGlue
with its shipped adaptive depth and width, one image after the other as LightGlue's example does; ``stock, every layer``
with LightGlue's adaptive depth and width off. Ours, each row on top of the one above: the same ALIKED without its dense
descriptor map (models/aliked.py, same outputs), its dense part in ONNX Runtime, both images extracted at once
(``Matcher.extract_images``), LightGlue's depth confidence 0.9, its layers compiled (``compile_layers``), depth
confidence 0.8 and width confidence 0.95 (it stops sooner and drops more points), 768 keypoints; then, beside those, 896
keypoints, the images detected at 480 px (``resize: 480``: the longer side, as LightGlue's extractors' ``resize``;
keypoints back in 640×480 pixels), LightGlue's two knobs a step further at 1024 keypoints (depth 0.75, width 0.9), 512
keypoints, LightGlue in int8; the fastest: the 1024- and 896-keypoint pipelines with ALIKED's dense part in OpenVINO
instead (when ``openvino`` is installed; backends/openvino.py); with ``--checkpoint`` (a pipeline whose detector was
distilled, e.g. the ReLU ALIKED of benchmarks/detector_distillation.py), that pipeline as saved, both images at once and
its detector in ONNX Runtime, then with depth 0.8, width 0.95 and compiled layers, then at 768 keypoints. Anchors as
their demos run them (one image after the other): xfeat+lighterglue, xfeat (mutual NN), sift+nn; and xfeat with both
images at once, since it gains from that as much as ours.

Accuracy: every pipeline matches every pair once; AUC@1/3/5 px of the corner error under the demo's estimator
(PoseLib LO-RANSAC, 2 px) with its 95 % bootstrap interval over pairs, and the paired difference to ``stock`` (its
interval over pairs, then over photos).
Latency: the first ``timed_pairs`` pairs, each run by every pipeline in turn (round-robin, ``repeats`` rounds, one
process), so that the machine's drift hits all alike; the median pair time and the paired ratio to ``stock`` (the
median over pairs of each pair's time ratio, with a bootstrap interval). Adaptive LightGlue stops earlier on easy
pairs: timing the val pairs themselves times what the accuracy columns measure.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from data.pairs import TIERS, make_pairs
from helper import (
    ArgumentParser,
    InputError,
    git_commit,
    int_in,
    positive_int,
    read_yaml,
    run_cli,
    to_tensor,
    write_json,
)
from models.lightglue import EVERY_LAYER
from models.matching import Matcher, build_matcher, to_channels, with_settings
from pipeline.checkpoint import load_checkpoint
from pipeline.costs import interleaved_latency
from pipeline.evaluation import PROTOCOL_AUCS, VERDICT, evaluate
from pipeline.metrics import paired_difference, summarize
from quantization.int8 import int8_detector, int8_matcher, recorded_inputs

# the demo's val pairs, calibration photos (training photos, never val) and estimator
_DEMO = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
VAL = {**_DEMO["val"], "source": _DEMO["source"]}
CALIBRATION = {**_DEMO["calibration"], "source": _DEMO["source"]}
ESTIMATOR = {"method": VAL["estimator"], "ransac_threshold": VAL["ransac_threshold"]}
OPENVINO = importlib.util.find_spec("openvino") is not None  # optional: its rows only when installed
FAST_DEPTH = {"depth_confidence": 0.9}  # LightGlue stops a layer earlier on some pairs: -.001 AUC@3px on 300 val pairs
# sooner still, and more points dropped as unmatchable: -.000 [-.003, +.002] AUC@3px at 1024 keypoints on 300 val pairs
FAST_MATCHING = {"depth_confidence": 0.8, "width_confidence": 0.95}
FASTER_MATCHING = {"depth_confidence": 0.75, "width_confidence": 0.9}  # the next step of both: -.002, 0.97x the time


def calibration_images(channels: int, num_pairs: int | None = None) -> list[torch.Tensor]:
    """The calibration pairs' images (training photos; ``num_pairs`` of them, default the demo's)."""
    pairs = make_pairs({**CALIBRATION, "num_pairs": num_pairs or CALIBRATION["num_pairs"]})
    return [to_channels(to_tensor(pairs.image(p, i)[1]), channels) for p in pairs for i in (0, 1)]


def trace_data(matcher: Matcher) -> list[dict]:
    """What the matching network receives on two calibration pairs (to export it)."""
    pairs = make_pairs({**CALIBRATION, "num_pairs": 2})
    images = [[to_tensor(pairs.image(p, i)[1]) for i in (0, 1)] for p in pairs]
    return recorded_inputs(matcher.matcher, lambda: [matcher({"image0": a, "image1": b}) for a, b in images])


def one_at_a_time(m: Matcher) -> Matcher:
    """``m`` extracting the two images one after the other, as the stock code and the anchors' demos do."""
    m.concurrent = False
    return m


def aliked_pipelines(folder: Path, pretrained: bool, checkpoint: str | None = None) -> dict[str, Callable[[], Matcher]]:
    def build(
        detector: dict | None = None, matcher: dict | None = None, concurrent: bool = False, resize: int | None = None
    ) -> Matcher:
        config = {"detector": detector or {}, "matcher": matcher or {}, "pretrained": pretrained, "resize": resize}
        m = build_matcher("aliked+lightglue", config)
        return m if concurrent else one_at_a_time(m)

    def ort(m: Matcher, name: str, backend_name: str = "onnxruntime") -> Matcher:
        """``m`` with its detector's dense part as an fp32 graph in ``backend_name`` (ONNX Runtime by default)."""
        images = calibration_images(m.channels)[:1]
        return int8_detector(m, images, folder / name, quantize=False, backend_name=backend_name)

    def openvino(m: Matcher, name: str) -> Matcher:
        return ort(m, name, "openvino")

    def ours(kp: int) -> Matcher:  # both images at once, LightGlue's fastest settings
        return build({"max_keypoints": kp}, FAST_MATCHING, concurrent=True)

    def ort_int8_matcher(kp: int) -> Matcher:
        m = ort(build({"max_keypoints": kp}, EVERY_LAYER), f"int8lg{kp}")
        return int8_matcher(m, trace_data(m), folder / f"int8lg{kp}-matcher", mode="dynamic")

    def from_checkpoint(name: str, keypoints: int | None = None) -> Matcher:
        """The checkpoint's pipeline, its detector in ONNX Runtime, with the fastest LightGlue settings above."""
        m = load_checkpoint(checkpoint)
        if keypoints:
            m = with_settings(m, "detector", {"max_keypoints": keypoints})
        return ort(with_settings(m, "matcher", FAST_MATCHING), name).compile_layers()

    mine = {}
    if checkpoint:  # a pipeline whose detector was distilled (benchmarks/detector_distillation.py writes one)
        mine = {
            "checkpoint, ORT detector": lambda: ort(load_checkpoint(checkpoint), "checkpoint"),
            "checkpoint + depth 0.8, width 0.95": lambda: from_checkpoint("checkpoint-fast"),
            "checkpoint + 768 kp": lambda: from_checkpoint("checkpoint-768", 768),
        }
    return {
        "stock": lambda: build({"dense_map": True}),
        "stock, every layer": lambda: build({"dense_map": True}, EVERY_LAYER),
        "no dense map": lambda: build(),
        "no dense map, ORT detector": lambda: ort(build(), "ort"),
        "+ both images at once": lambda: ort(build(concurrent=True), "concurrent"),
        "+ depth confidence 0.9": lambda: ort(build(matcher=FAST_DEPTH, concurrent=True), "depth"),
        "+ compiled LightGlue": lambda: ort(build(matcher=FAST_DEPTH, concurrent=True), "compiled").compile_layers(),
        "+ depth 0.8, width 0.95": lambda: ort(build(matcher=FAST_MATCHING, concurrent=True), "fast").compile_layers(),
        "+ 768 kp": lambda: ort(build({"max_keypoints": 768}, FAST_MATCHING, True), "768").compile_layers(),
        "896 kp": lambda: ort(build({"max_keypoints": 896}, FAST_MATCHING, True), "896").compile_layers(),
        **(
            {  # the fastest: OpenVINO runs ALIKED's graph at ~0.85x ONNX Runtime's time (two images at once, 2 cores)
                "OpenVINO detector (1024 kp)": lambda: openvino(ours(1024), "ov").compile_layers(),
                "OpenVINO detector, 896 kp": lambda: openvino(ours(896), "ov896").compile_layers(),
            }
            if OPENVINO
            else {}
        ),
        "detected at 480 px (1024 kp)": lambda: ort(
            build(matcher=FAST_MATCHING, concurrent=True, resize=480), "480"
        ).compile_layers(),
        "depth 0.75, width 0.9 (1024 kp)": lambda: ort(
            build(matcher=FASTER_MATCHING, concurrent=True), "faster"
        ).compile_layers(),
        "ORT detector, 512 kp": lambda: ort(build({"max_keypoints": 512}), "ort512"),
        "ORT detector, 512 kp, int8 LightGlue": lambda: ort_int8_matcher(512),
        **mine,
        "xfeat+lighterglue": lambda: one_at_a_time(build_matcher("xfeat+lighterglue", {"pretrained": pretrained})),
        "xfeat+lighterglue, 1024 kp": lambda: one_at_a_time(
            build_matcher("xfeat+lighterglue", {"pretrained": pretrained, "detector": {"max_keypoints": 1024}})
        ),
        "xfeat": lambda: one_at_a_time(build_matcher("xfeat", {"pretrained": pretrained})),
        "xfeat, both images at once": lambda: build_matcher("xfeat", {"pretrained": pretrained}),
        "sift+nn": lambda: one_at_a_time(build_matcher("sift+nn", {})),
    }


def superglue_pipelines(folder: Path, pretrained: bool) -> dict[str, Callable[[], Matcher]]:
    weights = {} if pretrained else {"weights": None}

    def build(iterations: int = 20, kp: int = 1024, concurrent: bool = False) -> Matcher:
        m = build_matcher(
            "superpoint+superglue",
            {
                "superpoint": {**weights, "max_keypoints": kp},
                "superglue": {**weights, "sinkhorn_iterations": iterations},
            },
        )
        return m if concurrent else one_at_a_time(m)

    def int8(iterations: int = 20, kp: int = 1024, concurrent: bool = False) -> Matcher:
        m = build(iterations, kp, concurrent)
        m = int8_detector(m, calibration_images(m.channels), folder / f"sp{iterations}-{kp}")
        return int8_matcher(m, trace_data(m), folder / f"sg{iterations}-{kp}", mode="static")

    return {
        "stock": build,
        "int8 detector+matcher (ORT)": int8,
        "+ both images at once": lambda: int8(concurrent=True),
        "+ 10 Sinkhorn iterations": lambda: int8(10, concurrent=True),
        "+ 512 kp": lambda: int8(10, 512, concurrent=True),
        "sift+nn": lambda: one_at_a_time(build_matcher("sift+nn", {})),
    }


def pair_timer(matcher: Matcher, images: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], Any]:
    return lambda: matcher({"image0": images[0], "image1": images[1]})


def round_robin(pipelines: dict[str, Matcher], pairs, timed: int, repeats: int) -> dict[str, np.ndarray]:
    """Pair times (ms) of each pipeline on each of the first ``timed`` pairs: per pair, every pipeline in turn,
    ``repeats`` rounds (``interleaved_latency``'s median); one warm-up round on the first pair."""
    times = {name: np.zeros(timed) for name in pipelines}
    for k, pair in enumerate(list(pairs)[:timed]):
        images = tuple(to_tensor(pairs.image(pair, i)[1]) for i in (0, 1))
        fns = {name: pair_timer(m, images) for name, m in pipelines.items()}
        for name, t in interleaved_latency(fns, repeats, warmup=int(k == 0)).items():
            times[name][k] = t["latency_ms"]
    return times


def ratio_interval(mine: np.ndarray, base: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """Median over pairs of the per-pair time ratio, with its 95 % percentile-bootstrap interval."""
    ratios = mine / base
    draws = np.random.default_rng(seed).integers(0, len(ratios), size=(1000, len(ratios)))
    medians = np.median(ratios[draws], axis=1)
    return float(np.median(ratios)), [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def accuracy_columns(
    rows: list[dict], reference: list[dict], kind: str = "homography"
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A pipeline's printed accuracy on per-pair ``rows`` of pairs of ``kind`` ('homography', 'pose'): the protocol's
    three AUCs, the verdict metric (AUC@3px, AUC@10°) with its interval, and its paired difference to ``reference``
    (the same pairs) with its interval over pairs and over photos or scenes (whole photos resampled: the val pairs
    outnumber their photos, so the pair interval alone is optimistic); also the summary and the difference
    (``interval_by_photo`` added)."""
    metric = VERDICT[kind]["metric"]
    s, d = summarize(rows), paired_difference(rows, reference)[metric]
    d["interval_by_photo"] = pi = paired_difference(rows, reference, by="name0")[metric]["interval"]
    ci, di = s["intervals"][metric], d["interval"]
    aucs = "/".join(f"{s[k]:.3f}" for k in PROTOCOL_AUCS[kind])
    text = (
        f"{aucs:17} {s[metric]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {d['difference']:+.3f} [{di[0]:+.3f}, {di[1]:+.3f}]"
        f" [{pi[0]:+.3f}, {pi[1]:+.3f}]"
    )
    return text, s, d


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--matcher", default="aliked+lightglue", choices=["aliked+lightglue", "superpoint+superglue"])
    p.add_argument("--random-weights", "--random_weights", dest="random_weights", action="store_true",
                   help="random weights: latency only (the accuracy of random networks means nothing)")  # fmt: skip
    p.add_argument("--num_pairs", type=int_in(2, 10_000), default=100, help="val pairs for accuracy")
    p.add_argument(
        "--tier", default=VAL.get("tier", "easy"), choices=list(TIERS), help="the val pairs' tier (data/pairs.py)"
    )
    p.add_argument("--timed_pairs", type=int_in(1, 10_000), default=20, help="of those, timed round-robin")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--checkpoint", default=None, help="a compressed aliked+lightglue checkpoint: its rows too")
    p.add_argument("--only", nargs="*", default=None, help="run these rows only (names as printed)")
    p.add_argument("--threads", type=int_in(1, 1024), default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrained = not args.random_weights
    if args.matcher == "superpoint+superglue" and pretrained:
        from pipeline.evaluation import official_weights_available

        if not official_weights_available():
            raise InputError("the official SuperPoint/SuperGlue weights are not here: add --random-weights")
    pairs = make_pairs({**VAL, "num_pairs": args.num_pairs, "tier": args.tier})
    kind = pairs[0].kind
    estimator = (
        {k: VERDICT[kind][k] for k in ("method", "ransac_threshold")}
        if args.tier != VAL.get("tier", "easy")
        else ESTIMATOR
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.matcher == "aliked+lightglue":
            table = aliked_pipelines(Path(tmp), pretrained, args.checkpoint)
        else:
            table = superglue_pipelines(Path(tmp), pretrained)
        if args.only is not None:
            unknown = set(args.only) - set(table)
            if unknown:
                raise InputError(f"--only: unknown rows {sorted(unknown)}; rows: {list(table)}")
            table = {k: v for k, v in table.items() if k == "stock" or k in args.only}
        pipelines = {name: make().eval() for name, make in table.items()}
        rows: dict[str, Any] = {}
        if pretrained:
            for name, m in pipelines.items():
                result = evaluate(m, pairs, desc=name, **estimator)
                rows[name] = [{"name0": q.name0, "name1": q.name1, **r} for q, r in zip(pairs, result["rows"])]
        times = round_robin(pipelines, pairs, min(args.timed_pairs, len(pairs)), args.repeats)
    report = {"matcher": args.matcher, "pretrained": pretrained, "num_pairs": len(pairs), "git_commit": git_commit(),
              "timed_pairs": len(times["stock"]), "repeats": args.repeats, "threads": torch.get_num_threads(),
              "val": {**VAL, "tier": args.tier}, "estimator": estimator, "rows": {}}  # fmt: skip
    accuracy = (
        f"{len(pairs)} val pairs ({args.tier} tier) at 640×480 (accuracy), " if pretrained else "val pairs at 640×480: "
    )
    print(f"{args.matcher}: {accuracy}{report['timed_pairs']} timed round-robin × {args.repeats}, "
          f"{torch.get_num_threads()} threads" + ("" if pretrained else " (random weights: latency only)"))  # fmt: skip
    header = f"{'pipeline':38} {'pair ms':>8} {'× stock [95 %]':>20}"
    if pretrained:
        auc, aucs = VERDICT[kind]["metric"], "/".join(k[4:] for k in PROTOCOL_AUCS[kind])
        header += f"  {'AUC ' + aucs:17} {auc + ' [95 %]':>19} {'Δ ' + auc + ' to stock [95 %]':>28} {'by photo':>16}"
    print(header)
    for name in pipelines:
        ratio, span = ratio_interval(times[name], times["stock"])
        line = f"{name:38} {np.median(times[name]):8.0f} {ratio:6.2f} [{span[0]:.2f}, {span[1]:.2f}]"
        entry: dict[str, Any] = {"pair_ms": float(np.median(times[name])), "time_ratio": ratio, "time_ratio_ci": span}
        if pretrained:
            text, s, d = accuracy_columns(rows[name], rows["stock"], kind)
            line += "  " + text
            entry.update(summary=s, auc3_difference=d)
        print(line)
        report["rows"][name] = entry
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run_cli(main)
