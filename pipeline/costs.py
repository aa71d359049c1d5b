"""Cost of matchers, dense or compressed, measured side by side: parameters, MACs, size, latency, memory.

MACs come from two counters: torch's FlopCounterMode, which sees every matmul/einsum/bmm, and a module-hook
counter (convolutions and linear layers only, as thop counts); their difference is the attention arithmetic
that module counters miss; graph parts run by a runtime backend count their own (backends.graph_macs). The
matcher runs on exactly N real keypoints per image (from a sample photo and a warp of it; topped up with random
ones only if the detector finds fewer). Latencies are timed round-robin in one process (``interleaved_latency``),
so ratios are side by side. The command line over it is profiling.py.
"""

from __future__ import annotations

import io
import logging
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from backends import graph_macs
from data.homographies import HomographyConfig, crop_resize, sample_homography, warp_image
from data.images import open_source
from helper import (
    Timer,
    count_macs,
    measure_latency,
    to_tensor,
)
from models.matching import Matcher
from pipeline.checkpoint import save_checkpoint
from quantization.int8 import int8_detector, int8_matcher, recorded_inputs

logger = logging.getLogger("profiling")


def cpu_name() -> str:
    """The CPU timings ran on, as a report names it: its model and its widest vector units (AVX-512, AVX2), which
    decide the kernels PyTorch and ONNX Runtime pick; what the platform says where there is no /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")), set())
    units = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    units += ", AMX" if "amx_tile" in flags else ", VNNI" if "avx512_vnni" in flags else ""
    return f"{model or platform.machine()}{f' ({units})' if units else ''}"


def module_macs(model: nn.Module, fn: Callable[[], Any]) -> int:
    """MACs of convolution and linear layers only, counted with forward hooks (what thop sees)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            k = int(np.prod(module.kernel_size))
            total += output.numel() * (module.in_channels // module.groups) * k

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return total


def all_macs(model: nn.Module, fn: Callable[[], Any]) -> int:
    """MACs of ``fn``, in PyTorch and inside the ONNX Runtime graphs of ``model``'s int8 parts."""
    with graph_macs(model) as graph:
        macs = count_macs(fn)
    return macs + graph[0]


def part_macs(part: nn.Module, fn: Callable[[], Any]) -> dict[str, int]:
    """MACs of ``fn`` in ``part``: all (``macs``) and those of its conv/linear layers (``macs_modules``), whether
    they run in PyTorch or in an ONNX Runtime graph."""
    with graph_macs(part) as in_graphs:
        modules = module_macs(part, fn)
    return {"macs": all_macs(part, fn), "macs_modules": modules + in_graphs[1]}


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during ``fn`` above what was allocated before (CUDA allocator, or CPU profiler)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


def state_bytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def part_stats(module: nn.Module) -> dict[str, int]:
    params = list(module.parameters())
    return {
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int((p != 0).sum()) for p in params),
        "size_bytes": state_bytes(module),
    }


def test_pair(size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real photo (scikit-image's astronaut) at ``size`` and a seeded homography warp of it."""
    image = crop_resize(open_source("sample").read("astronaut.png"), size)
    H = sample_homography(np.random.default_rng(seed), size, HomographyConfig())
    return image, warp_image(image, H, size)


def exactly_n(feats: dict[str, torch.Tensor], n: int, size: tuple[int, int], seed: int) -> tuple[dict, int]:
    """Top-n keypoints by score; when fewer were found, random ones fill up (returned count = real ones)."""
    k, s, d = feats["keypoints"], feats["scores"], feats["descriptors"]
    real = min(n, len(k))
    order = torch.argsort(s, descending=True)[:real]
    k, s, d = k[order], s[order], d[:, order]
    if real < n:
        g = torch.Generator().manual_seed(seed)
        extra = n - real
        k = torch.cat([k, (torch.rand(extra, 2, generator=g) * torch.tensor(size, dtype=torch.float32)).to(k)])
        s = torch.cat([s, torch.rand(extra, generator=g).to(s)])
        d = torch.cat([d, nn.functional.normalize(torch.randn(d.shape[0], extra, generator=g), dim=0).to(d)], 1)
    return {"keypoints": k, "scores": s, "descriptors": d}, real


def prepare(matcher: Matcher, size: tuple[int, int], num_keypoints: int, device: torch.device) -> dict[str, Any]:
    """Callables running one model's detector (one image), matcher (exactly N keypoints per image) and pair (the
    whole pipeline as a user runs it: the keypoints its detector finds)."""
    matcher = matcher.eval().to(device)
    img0, img1 = (to_tensor(im, device) for im in test_pair(size))
    with torch.no_grad():
        feats = [matcher.extract(img) for img in (img0, img1)]
    data, real = {}, []
    for i, f in enumerate(feats):
        one, n_real = exactly_n({k: v[0] for k, v in f.items()}, num_keypoints, size, i)
        data.update({f"{k}{i}": v[None] for k, v in one.items()})
        data[f"image_size{i}"] = size
        real.append(n_real)
    return {
        "extract": lambda: matcher.extract(img0),
        "match": lambda: matcher.match(data),
        "pair": lambda: matcher({"image0": img0, "image1": img1}),  # as run: its own keypoints, both images at once
        "keypoints_real": real,
    }


def interleaved_latency(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Median and IQR (ms) of several callables timed round-robin, so that drift of the machine (heat, other
    load) hits all of them alike: the right way to measure a ratio side by side."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                with Timer() as t:
                    fn()
                times[k].append(t.seconds * 1000)
    out = {}
    for k, v in times.items():
        q1, median, q3 = np.percentile(v, [25, 50, 75])
        out[k] = {"latency_ms": float(median), "latency_ms_iqr": float(q3 - q1)}
    return out


def side_by_side(
    models: dict[str, Matcher], size: tuple[int, int], num_keypoints: int, repeats: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """MACs and latencies (pair, and matcher alone at exactly ``num_keypoints``) of several models on one test
    pair, timed round-robin in this process: ratios between them are measured side by side."""
    fns, out = {}, {}
    for name, m in models.items():
        run = prepare(m, size, num_keypoints, device)
        fns[name, "pair"], fns[name, "matcher"] = run["pair"], run["match"]
        out[name] = {"macs": all_macs(m, run["pair"]), "matcher_macs": all_macs(m, run["match"])}
    times = interleaved_latency(fns, repeats)
    for name, entry in out.items():
        entry.update(times[name, "pair"])
        entry["matcher_latency_ms"] = times[name, "matcher"]["latency_ms"]
        entry["matcher_latency_ms_iqr"] = times[name, "matcher"]["latency_ms_iqr"]
    return out


def side_by_side_markdown(results: dict[str, dict[str, Any]]) -> str:
    """side_by_side()'s results as a table, with ratios to the first model (the dense one)."""
    base = next(iter(results.values()))
    lines = [
        "| model | GMACs | pair ms (IQR) | matcher ms (IQR) | MACs × | pair latency × | matcher latency × |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['macs'] / 1e9:.2f} | {r['latency_ms']:.0f} ({r['latency_ms_iqr']:.0f}) | "
            f"{r['matcher_latency_ms']:.0f} ({r['matcher_latency_ms_iqr']:.0f}) | {r['macs'] / base['macs']:.2f} | "
            f"{r['latency_ms'] / base['latency_ms']:.2f} | {r['matcher_latency_ms'] / base['matcher_latency_ms']:.2f} |"
        )
    return "\n".join(lines)


def profile_matcher(
    matcher: Matcher,
    name: str,
    size: tuple[int, int],
    num_keypoints: int,
    repeats: int,
    device: torch.device,
    memory: bool = True,
    pair_latency: bool = True,
) -> dict[str, Any]:
    """Detector, matcher and total cost of one model on one real image pair (``memory``: also peak memory;
    ``pair_latency=False``: the caller times the pair itself, e.g. round-robin with other models)."""
    run = prepare(matcher, size, num_keypoints, device)
    extract, match = run["extract"], run["match"]
    det = {**part_stats(matcher.detector), **part_macs(matcher.detector, extract), **measure_latency(extract, repeats)}
    mat = {**part_stats(matcher.matcher), **part_macs(matcher.matcher, match), **measure_latency(match, repeats)}
    if memory:
        det["peak_memory_bytes"], mat["peak_memory_bytes"] = peak_memory(extract, device), peak_memory(match, device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_bytes = save_checkpoint(matcher, Path(tmp) / "m.pth").stat().st_size
    total = {
        "params": det["params"] + mat["params"],
        "nonzero_params": det["nonzero_params"] + mat["nonzero_params"],
        "macs": 2 * det["macs"] + mat["macs"],
        "macs_modules": 2 * det["macs_modules"] + mat["macs_modules"],
        "size_bytes": checkpoint_bytes,
        "state_dict_bytes": state_bytes(matcher),
        **(measure_latency(run["pair"], max(3, repeats // 2)) if pair_latency else {}),
    }
    return {
        "name": name,
        "matcher": mat,
        "detector": det,
        "total": total,
        "keypoints_real": run["keypoints_real"],
        "num_keypoints": num_keypoints,
        "resize": list(size),
    }


def sweep(
    matcher: Matcher,
    name: str,
    size: tuple[int, int],
    keypoints: list[int],
    resizes: list[tuple[int, int]],
    repeats: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Matcher cost against keypoints, and detector cost against resolution."""
    rows = []
    for n in keypoints:
        r = profile_matcher(matcher, name, size, n, repeats, device)
        rows.append(
            {
                "model": name,
                "num_keypoints": n,
                "width": size[0],
                "height": size[1],
                "detector_ms": r["detector"]["latency_ms"],
                "matcher_ms": r["matcher"]["latency_ms"],
                "matcher_macs": r["matcher"]["macs"],
                "detector_macs": r["detector"]["macs"],
            }
        )
    for wh in resizes:
        r = profile_matcher(matcher, name, wh, keypoints[0] if keypoints else 512, repeats, device)
        rows.append(
            {
                "model": name,
                "num_keypoints": r["num_keypoints"],
                "width": wh[0],
                "height": wh[1],
                "detector_ms": r["detector"]["latency_ms"],
                "matcher_ms": r["matcher"]["latency_ms"],
                "matcher_macs": r["matcher"]["macs"],
                "detector_macs": r["detector"]["macs"],
            }
        )
    return rows


def markdown(results: list[dict[str, Any]]) -> str:
    """Side-by-side table with ratios to the first (dense) model."""
    base = results[0]["total"]
    lines = [
        "| model | params | non-zero | GMACs (all ops) | GMACs (modules) | size MB | latency ms (IQR) | "
        "size × | MACs × | latency × |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r["total"]
        lines.append(
            f"| {r['name']} | {t['params']:,} | {t['nonzero_params']:,} | {t['macs'] / 1e9:.2f} | "
            f"{t['macs_modules'] / 1e9:.2f} | {t['size_bytes'] / 1e6:.2f} | {t['latency_ms']:.1f} "
            f"({t['latency_ms_iqr']:.1f}) | {t['size_bytes'] / base['size_bytes']:.2f} | "
            f"{t['macs'] / base['macs']:.2f} | {t['latency_ms'] / base['latency_ms']:.2f} |"
        )
    return "\n".join(lines)


def int8_copy(
    matcher: Matcher, size: tuple[int, int], folder: Path, threads: int | None, parts: tuple[str, ...]
) -> Matcher:
    """A copy whose detector and/or matcher network runs in int8 in ONNX Runtime: the detector statically
    quantized, calibrated on 8 training photos of the sample set; the matcher in its faster int8 mode (calibrated,
    where static, on the test pair: ranges do not change the latency)."""
    from data.images import split_names
    from models.matching import to_channels

    if "matcher" in parts:
        img0, img1 = (to_tensor(im) for im in test_pair(size))
        data = recorded_inputs(matcher.matcher, lambda: matcher({"image0": img0, "image1": img1}))
        matcher = int8_matcher(matcher, data, folder / "matcher", threads)
    if "detector" in parts:
        source = open_source("sample")
        photos = [crop_resize(source.read(n), size) for n in split_names(source.names, "train", 0.5)[:8]]
        matcher = int8_detector(
            matcher, [to_channels(to_tensor(p), matcher.channels) for p in photos], folder / "detector", threads
        )
    return matcher
