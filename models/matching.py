"""The Matcher interface shared by the whole zoo, and the zoo itself.

A Matcher is a detector plus a matcher. ``extract`` runs the detector on a batch of images; ``match`` runs
the matcher on features; ``forward`` does both, like the official ``Matching``: image pair in,
``keypoints0/1``, ``matches0/1`` and ``matching_scores0/1`` out. Features use the official layout:
lists over the batch of keypoints N×2 (x, y; pixel centres at integers), scores N, descriptors D×N.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch
from kornia.core.exceptions import BaseError as KorniaError
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from helper import Check, InputError, check_config, first_line

from .superglue import SuperGlue
from .superpoint import SuperPoint

Features = dict[str, list[torch.Tensor]]

_POOLS: dict[int, ThreadPoolExecutor] = {}  # the extraction workers, per process (a forked child has its own)
_WORKER = threading.local()


def extraction_share() -> int:
    """How many images share the CPU with the one this thread extracts: 1, or on a worker of
    ``Matcher.extract_images`` the number of images extracted at once (runtimes size their thread pools by it)."""
    return getattr(_WORKER, "share", 1)


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a B×C×H×W image in [0, 1] to 1 (luma, as OpenCV) or 3 channels."""
    if image.shape[1] == channels:
        return image
    if channels == 3:
        return image.expand(-1, 3, -1, -1)
    weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def fingerprint(module: nn.Module, settings: dict[str, Any] | None = None) -> str:
    """Identity of a network's weights and settings: changes whenever pruning or quantization touches it. Weights a
    submodule says never run (``unused_state()``: a graph module's PyTorch copy, kept for its settings) are left out,
    so the same graph is the same network however its checkpoint was loaded."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__name__.encode())
    h.update(repr(sorted((settings if settings is not None else getattr(module, "config", {})).items())).encode())
    unused = {
        f"{prefix}.{k}" if prefix else k
        for prefix, sub in module.named_modules()
        if hasattr(sub, "unused_state")
        for k in sub.unused_state()
    }
    for name, tensor in module.state_dict().items():
        if name in unused:
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Matcher(nn.Module):
    """Detector + matcher behind one interface; ``detector`` and ``matcher`` are the two networks."""

    name = "matcher"
    offline = False  # True: its pretrained weights install with the package registries (no download)
    channels = 1  # what the detector reads: 1 (gray) or 3 (RGB); other inputs are converted
    config_parts = {"detector": "detector", "matcher": "matcher"}  # the config section of each part
    min_side = 16  # px: smaller images have no cell to detect in (SuperPoint: 8 px cells; DISK pads to 16)
    concurrent = True  # extract_images: the images of a pair at once on the CPU (a worker thread each)

    def __init__(self, detector: nn.Module, matcher: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.detector = detector
        self.matcher = matcher
        self.config = config

    def detector_settings(self) -> dict[str, Any]:
        """Everything besides the detector's weights that changes its output (keypoint budget, thresholds)."""
        return dict(getattr(self.detector, "config", {}))

    def detector_fingerprint(self) -> str:
        """Cache identity of the detector: its weights and settings (the input size it detects at too)."""
        resize = {"resize": self.resize} if self.resize else {}
        return fingerprint(self.detector, {**self.detector_settings(), **resize})

    @property
    def resize(self) -> int | None:
        """The config's ``resize``: the longer image side (px) the detector runs at, as LightGlue's extractors'
        ``resize`` (None: as given). Keypoints come back in the given image's pixels."""
        return (self.config or {}).get("resize")

    def detect(self, image: torch.Tensor) -> Features:
        """Run the detector on a B×channels×H×W image; subclasses adapt its outputs to the official layout."""
        raise NotImplementedError

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The settings this matcher's config takes, with their defaults (unknown keys are errors)."""
        return {}

    def extract(self, image: torch.Tensor) -> Features:
        """Keypoints, scores and descriptors of each image of a B×C×H×W batch in [0, 1] (detected at the config's
        ``resize``, if any: the image scaled, antialiased, so that its longer side is that many px)."""
        h, w = image.shape[-2:]
        size = (h, w)
        if self.resize and max(h, w) != self.resize:
            size = (max(1, round(h * self.resize / max(h, w))), max(1, round(w * self.resize / max(h, w))))
        if min(size) < self.min_side:
            at = f" (resized to {size[1]}×{size[0]})" if size != (h, w) else ""
            raise InputError(
                f"an image of {w}×{h} px{at} is too small for {self.name} (at least {self.min_side} px a side)"
            )
        if size == (h, w):
            return self.detect(to_channels(image, self.channels))
        small = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h)
        feats = self.detect(to_channels(small.clamp(0, 1), self.channels))
        scale = image.new_tensor([w / size[1], h / size[0]])  # pixel centres at integers: (x + 0.5) s - 0.5
        return {**feats, "keypoints": [(k + 0.5) * scale.to(k) - 0.5 for k in feats["keypoints"]]}

    @contextlib.contextmanager
    def every_layer(self) -> Iterator[None]:
        """Within it the matching network computes every layer for every point (what a training loss needs);
        adaptive matchers override it."""
        yield

    def distill_outputs(self, image: torch.Tensor, keypoints: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The detector's dense outputs on one 1×C×H×W image, as distillation compares them: its score map, and at
        ``keypoints`` (N×2 px; by default its own) their scores and descriptors (D×N)."""
        outputs = getattr(self.detector, "distill_outputs", None)
        if outputs is None:
            raise InputError(
                f"distillation needs a detector that gives its dense outputs (SuperPoint, ALIKED without dense_map); "
                f"{self.name}'s {type(self.detector).__name__} does not"
            )
        return outputs(to_channels(image, self.channels), keypoints)

    def extract_images(self, images: list[torch.Tensor]) -> list[Features]:
        """``extract`` of each image. With ``concurrent`` and two or more CPU threads the images run at once, a worker
        thread each: one detector call leaves the cores idle much of its time (small operations, serial steps),
        two calls fill them (measured on 2 cores: 1.3-1.7x a pair for ALIKED, SuperPoint and XFeat). One after the
        other on a GPU, and under a dispatch mode such as a FLOP counter, which sees only its own thread."""
        if (
            not self.concurrent
            or len(images) < 2
            or torch.get_num_threads() < 2
            or any(x.device.type != "cpu" for x in images)
            or _get_current_dispatch_mode() is not None
        ):
            return [self.extract(x) for x in images]
        pool = _POOLS.get(os.getpid()) or _POOLS.setdefault(os.getpid(), ThreadPoolExecutor(2, "extract"))
        grad, inference, share = torch.is_grad_enabled(), torch.is_inference_mode_enabled(), len(images)

        def run(image: torch.Tensor) -> Features:
            _WORKER.share = share
            try:  # autograd's modes are per thread: the caller's
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    return self.extract(image)
            finally:
                _WORKER.share = 1

        return list(pool.map(run, images))

    def match(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Match batched features (``keypoints0/1``, ``scores0/1``, ``descriptors0/1``, ``image_size0/1`` as (W, H))."""
        raise NotImplementedError

    def forward(self, data: dict[str, Any]) -> dict[str, Any]:
        """Extract features of ``image0``/``image1`` unless given, then match them."""
        pred: dict[str, Any] = {}
        todo = [i for i in (0, 1) if f"keypoints{i}" not in data]
        for i, feats in zip(todo, self.extract_images([data[f"image{i}"] for i in todo])):
            pred.update({k + str(i): v for k, v in feats.items()})
        data = {**data, **pred}
        for i in (0, 1):
            if f"image_size{i}" not in data:
                h, w = data[f"image{i}"].shape[-2:]
                data[f"image_size{i}"] = (w, h)
        batched = {
            k: torch.stack(v) if isinstance(v, (list, tuple)) and torch.is_tensor(v[0]) else v for k, v in data.items()
        }
        return {**pred, **self.match(batched)}


MATCHERS: dict[str, type[Matcher]] = {}


def register_matcher(cls: type[Matcher]) -> type[Matcher]:
    """Class decorator: put a Matcher in the zoo under its ``name`` (build_matcher, checkpoints, command lines)."""
    if MATCHERS.get(cls.name, cls) is not cls:
        raise ValueError(f"two matchers are named {cls.name!r}")
    MATCHERS[cls.name] = cls
    return cls


@register_matcher
class Matching(Matcher):
    """SuperPoint + SuperGlue, configured as the official ``Matching``: {'superpoint': {...}, 'superglue': {...}}."""

    name = "superpoint+superglue"
    channels = 1
    config_parts = {"detector": "superpoint", "matcher": "superglue"}

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        super().__init__(SuperPoint(config.get("superpoint", {})), SuperGlue(config.get("superglue", {})), config)

    @property
    def superpoint(self) -> SuperPoint:
        return self.detector

    @property
    def superglue(self) -> SuperGlue:
        return self.matcher

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {"superpoint": SuperPoint.default_config, "superglue": SuperGlue.default_config, "pretrained": True}

    def detect(self, image: torch.Tensor) -> Features:
        return self.detector({"image": image})

    def match(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.matcher(data)


def available_matchers() -> list[str]:
    """The zoo's names, in the order they registered."""
    return list(MATCHERS)


def offline_matchers() -> list[str]:
    """The matchers whose weights install with the package registries (no download)."""
    return [name for name, cls in MATCHERS.items() if cls.offline]


def matcher_class(name: str) -> type[Matcher]:
    if name not in MATCHERS:
        raise InputError(f"unknown matcher '{name}'; choose from {', '.join(available_matchers())}")
    return MATCHERS[name]


def check_matcher_config(
    name: str, config: dict[str, Any] | None, where: str = "matcher_config", inherited: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` of matcher ``name`` with every key known to it (else an InputError naming the nearest). Parts
    of ``inherited`` (a script's defaults, e.g. LightGlue's every-layer settings) that this matcher does not have
    are dropped when left as they are: they are the script's, not the user's."""
    schema = {**matcher_class(name).config_schema(), "resize": None}  # every matcher: Matcher.resize
    config = {
        k: v
        for k, v in (config or {}).items()
        if k in schema or inherited is None or k not in inherited or v != inherited[k]
    }
    checks = {
        f"{part}.{key}": Check(nullable=True)  # model settings take None for "off" / "random weights"
        for part, sub in schema.items()
        if isinstance(sub, dict)
        for key in sub
    }
    checks["resize"] = Check(kind=int, lo=Matcher.min_side, nullable=True)
    return check_config(config, schema, checks, f"{where}.") if schema else config


def with_settings(matcher: Matcher, part: str, settings: dict[str, Any]) -> Matcher:
    """A new pipeline of ``matcher``'s weights whose ``part`` ('detector', 'matcher') is rebuilt with ``settings``
    changed (fewer keypoints, LightGlue's confidences); ``matcher`` itself is untouched."""
    section = matcher.config_parts[part]
    config = {**matcher.config, section: {**matcher.config.get(section, {}), **settings}}
    config = check_matcher_config(matcher.name, config, where="set")
    new = build_matcher(matcher.name, {**config, "pretrained": False} if "pretrained" in config else config)
    new.load_state_dict(matcher.state_dict())
    new.config = config
    return new.to(next(matcher.parameters()).device)


def build_matcher(name: str, config: dict[str, Any] | None = None) -> Matcher:
    """A Matcher of the zoo by name, e.g. 'superpoint+superglue', 'aliked+lightglue', 'sift+nn'. An unknown
    name or a setting the network rejects is an InputError."""
    cls = matcher_class(name)
    try:
        with warnings.catch_warnings():  # e.g. "Initializing zero-element tensors is a no-op" before the error
            warnings.simplefilter("ignore", UserWarning)
            return cls(config or {}).eval()
    except InputError:  # already one line that names what to do (weights: where to put them)
        raise
    except (ValueError, RuntimeError, AssertionError, KorniaError) as e:  # settings it cannot be built with (kornia's
        # errors derive from Exception only)
        raise InputError(f"matcher {name}: {first_line(e)[:200]}") from None


TRIAL_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError)


def trial_run(matcher: Matcher) -> None:
    """Run ``matcher`` once on two small random images (raising what it raises): settings or shapes that build but
    do not run (a negative NMS radius, a layer that does not chain with the next) fail here, before any work."""
    side = max(matcher.min_side, 32) * 2
    images = [torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    with torch.inference_mode():
        matcher({"image0": images[0], "image1": images[1]})


def checked_matcher_config(name: str, config: dict[str, Any], where: str = "matcher_config") -> Matcher:
    """Matcher ``name`` built with ``config`` and run once (``trial_run``): a config it cannot run with is an
    InputError naming ``where``, raised before any work starts."""
    try:
        matcher = build_matcher(name, config)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    try:
        trial_run(matcher)
    except (*TRIAL_ERRORS, KorniaError) as e:
        raise InputError(f"{where}: {name} does not run with these settings ({first_line(e)[:200]})") from None
    return matcher
