"""Finetuning a matcher (dense, pruned or quantized) on homography pairs, resumably, on one device or many.

A run folder (``out``) belongs to the config and checkpoint that started it: the same config resumes it, another
stops with a message (``new=True`` starts the run beside it, in ``out-2``, …).

The loss is the negative log-likelihood of the ground-truth assignment (from the true homography) under the
matcher's log assignment, dustbins included. The loop owns the optimizer: after every step it calls
``compression.state.enforce`` so that each layer's compression state holds again (pruned zeros stay zero,
k-means values stay shared, grids stay grids). Checkpoints use the project's format, and a killed run resumes
from ``last.pth`` + ``state.pt`` with the same schedule, data order and optimizer state. The command line over
it is finetune.py.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from compression.state import enforce, start_training
from compression.tensors import prunable_weights
from data.pairs import PAIRS, PAIRS_CHECKS, SEED, TIERS, make_pairs
from helper import (
    Check,
    InputError,
    atomic_path,
    check_config,
    config_digest,
    file_sha1,
    first_line,
    pick_device,
    read_yaml,
    seed_everything,
    to_tensor,
    writable_location,
    write_run_config,
)
from models.lightglue import EVERY_LAYER
from models.losses import homography_gt, matching_nll
from models.matching import available_matchers, build_matcher, check_matcher_config, checked_matcher_config
from models.weights import unreadable
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.evaluation import FeatureCache, evaluate, extract_pair
from pruning.fine_grained import apply_masks, masks, sparsity_report
from pruning.gradual import CHECKS as PRUNE_CHECKS
from pruning.gradual import SETTINGS as PRUNE_SETTINGS
from pruning.gradual import gradual_pruning

logger = logging.getLogger("finetune")

MAX_SKIPPED_IN_A_ROW = 10  # non-finite losses in a row that stop a run: it diverged, it will not recover

DEFAULTS: dict[str, Any] = {
    "matcher": "aliked+lightglue",
    "matcher_config": {"matcher": dict(EVERY_LAYER)},
    "checkpoint": None,
    "out": "runs/finetune",
    "seed": 0,
    "steps": 300,
    "log_every": 10,  # steps between rows of log.csv (mean loss since the row before); validations add theirs
    "lr": 1e-4,
    "weight_decay": 0.0,
    "warmup": 0.05,
    "min_lr_ratio": 0.1,
    "clip": 1.0,
    "keep_zeros": True,
    "qat": True,
    "train_detector": False,
    "loss": {"balance": 0.5, "pos_th": 3.0, "neg_th": 5.0},
    # distillation of the detector from the dense pretrained one (the teacher), without labels: its score map
    # (binary cross-entropy), its descriptors at the teacher's keypoints (1 - cosine) and the matching loss of the
    # frozen matcher on those (the loss above); only the detector trains, its batch norms frozen
    # assignment: when > 0 (matcher training), the weight of the dense pretrained matcher's assignment as soft targets
    # beside the ground truth (its match and dustbin probabilities; the dense model is always at hand)
    # activation_ramp: for a student with another activation (ALIKED's detector.activation: relu), the share of the
    # steps over which it moves from the teacher's activation to its own (linearly: the student starts as the
    # teacher's function and adapts on the way; 0: its own from the first step); best.pth only after it
    "distill": {
        "enabled": False,
        "score": 1.0,
        "descriptors": 1.0,
        "matching": 1.0,
        "assignment": 0.0,
        "activation_ramp": 0.0,
    },
    # gradual magnitude pruning of the trained network to the targets in prune.sparsity (pruning/gradual.py)
    "prune": PRUNE_SETTINGS,
    # pairs sections: data.pairs.PAIRS (the one table of pair settings) with these values of their own
    "train": {**PAIRS, "split": "train", "val_fraction": 0.5, "num_pairs": 200, "augment": 1.0, "seed": 100},
    "val": {
        **{k: v for k, v in PAIRS.items() if k != "augment"},
        "split": "val",
        "val_fraction": 0.5,
        "num_pairs": 30,
        "seed": 1,
        "every": 50,
        # PoseLib's LO-RANSAC at 2 px: on the photos' val pairs its paired intervals between two models are 2-3x
        # narrower than OpenCV RANSAC's at 3 px (benchmarks/val_size.py), so one point of AUC can be resolved.
        "estimator": "poselib",
        "ransac_threshold": 2.0,
    },
}
CHECKS: dict[str, Check] = {
    "matcher": Check(choices=tuple(available_matchers())),
    "matcher_config": Check(kind=dict, free=True),
    "checkpoint": Check(kind=str, nullable=True),
    "seed": SEED,
    "steps": Check(lo=1),
    "log_every": Check(lo=1),
    "lr": Check(lo=0, hi=1, open=True),
    "weight_decay": Check(lo=0),
    "warmup": Check(lo=0, hi=1),
    "min_lr_ratio": Check(lo=0, hi=1),
    "clip": Check(lo=0, open=True),
    "loss.balance": Check(lo=0, hi=1),
    "loss.pos_th": Check(lo=0, open=True),
    "loss.neg_th": Check(lo=0, open=True),
    "distill.score": Check(lo=0),
    "distill.descriptors": Check(lo=0),
    "distill.matching": Check(lo=0),
    "distill.assignment": Check(lo=0),
    "distill.activation_ramp": Check(lo=0, hi=1),
    **PRUNE_CHECKS,
    **{f"{part}.{k}": c for part in ("train", "val") for k, c in PAIRS_CHECKS.items()},
}


def checked_config(config: dict[str, Any]) -> dict[str, Any]:
    """A finetuning config checked against DEFAULTS (keys, types, ranges, the matcher's own settings)."""
    config = check_config(config, DEFAULTS, CHECKS)
    tier = config.get("train", {}).get("tier", PAIRS["tier"])
    if "scenes" in TIERS[tier]:  # the loss needs every point's correspondence: a homography
        raise InputError(f"train.tier {tier!r}: finetuning trains on homography tiers only")
    config["matcher_config"] = check_matcher_config(
        config["matcher"], config.get("matcher_config"), inherited=DEFAULTS["matcher_config"]
    )
    if config["checkpoint"] is None:  # a checkpoint brings its own settings, checked when it loads
        checked_matcher_config(config["matcher"], config["matcher_config"])
    return config


def schedule(step: int, total: int, warmup: float, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_ratio`` (sensible for short runs too)."""
    n_warm = max(1, int(round(warmup * total)))
    if step < n_warm:
        return (step + 1) / n_warm
    progress = min(1.0, (step - n_warm) / max(1, total - n_warm))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def keep_zeros(net: torch.nn.Module) -> float:
    """Mask every exactly-zero weight so training cannot regrow it; returns the overall sparsity."""
    masks = {n: w.detach() != 0 for n, w in prunable_weights(net).items() if (w == 0).any()}
    if masks:
        apply_masks(net, masks)
    return sparsity_report(net)["total"]


class Run:
    """One finetuning run: model, optimizer, schedule, data and the files of its folder."""

    def __init__(
        self,
        config: dict[str, Any],
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        cache: FeatureCache | None = None,
    ):
        self.cfg, self.device, self.rank, self.world = config, device, rank, world
        self.out = Path(config["out"])
        self.last, self.best_path, self.state_path = self.out / "last.pth", self.out / "best.pth", self.out / "state.pt"
        resume = self.state_path.exists() and self.last.exists()
        state = read_state(self.state_path) if resume else None
        if resume:
            self.matcher = load_checkpoint(self.last)
        elif config["checkpoint"]:
            self.matcher = load_checkpoint(config["checkpoint"])
        else:
            self.matcher = build_matcher(config["matcher"], config.get("matcher_config"))
        self.matcher.to(device)
        self.teacher = None
        self.part = "matcher"
        distill = config["distill"]
        if distill["enabled"] or distill["assignment"] > 0:
            if self.matcher.name != config["matcher"]:
                raise InputError(
                    f"distill: the checkpoint holds {self.matcher.name}, the config's matcher (the teacher) is "
                    f"{config['matcher']}"
                )
            # the teacher: the dense pretrained model of this config, frozen (enabled: its detector teaches the
            # detector, the matcher frozen; assignment: its matching network's assignment teaches the matcher's)
            self.teacher = build_matcher(config["matcher"], config.get("matcher_config")).to(device).eval()
            self.teacher.requires_grad_(False)
        if distill["enabled"]:
            self.matcher.matcher.requires_grad_(False)
            self.part = "detector"
        self.ramp, self.ramp_end = None, 0
        if distill["activation_ramp"] > 0:
            set_mix = getattr(self.matcher.detector, "set_activation_mix", None)
            if not distill["enabled"] or set_mix is None:
                raise InputError(
                    "distill.activation_ramp: needs distill.enabled and a student detector with another activation "
                    f"(ALIKED's detector.activation: relu); this run distils {'a' if distill['enabled'] else 'no'} "
                    f"{type(self.matcher.detector).__name__}"
                )
            self.ramp_end = max(1, round(distill["activation_ramp"] * config["steps"]))
            self.ramp = lambda step: set_mix(step / self.ramp_end)
        self.net = getattr(self.matcher, self.part)  # the network that trains (its compression state kept true)
        also = config["train_detector"] and self.part == "matcher"
        # every trained parameter, by name (the trained network's own names; the detector's when it trains too)
        self.named_params = list(self.net.named_parameters()) + (
            [(f"detector.{n}", p) for n, p in self.matcher.detector.named_parameters()] if also else []
        )
        params = self.params = [p for _, p in self.named_params]
        if config["keep_zeros"] and state is not None:
            try:
                apply_masks(self.net, state["masks"])  # the masks of the run, not the zeros of its last checkpoint
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                raise InputError(
                    f"cannot resume {self.out}: the masks in {self.state_path} do not fit its last.pth "
                    f"({first_line(e)[:120]}); delete state.pt to start the run over"
                ) from None
        elif config["keep_zeros"]:
            keep_zeros(self.net)
        # every compression state prepares its layer (linear grids: QAT shadows unless qat is off); after each
        # optimizer step enforce() makes the weights obey them again (masks, shared k-means values, grids)
        start_training(self.net, config)
        self.pruner = gradual_pruning(self.net, config["prune"], config["steps"])
        self.optimizer = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: schedule(s, config["steps"], config["warmup"], config["min_lr_ratio"])
        )
        self.step, self.best, self.skipped = 0, -1.0, 0
        if state is not None:
            try:
                self.net.load_state_dict(state["net"])  # float shadows of QAT layers, not only their grid values
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.step, self.best, self.skipped = state["step"], state["best"], state["skipped"]
            except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
                raise InputError(
                    f"cannot resume {self.out}: {self.state_path} does not fit its last.pth "
                    f"({first_line(e)[:120]}); delete state.pt to start the run over"
                ) from None
            logger.info("resuming %s at step %d", self.out, self.step)
        if self.ramp is not None:
            try:
                self.ramp(self.step)
            except ValueError as e:  # a student computing the teacher's activation
                raise InputError(f"distill.activation_ramp: {first_line(e)}") from None
        self.ddp = None
        if world > 1 and self.part == "matcher":  # a distilled detector averages its gradients itself (not
            # through its forward: distillation calls distill_outputs)
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.net, find_unused_parameters=True)
        self.train_pairs = make_pairs(config["train"])
        self.val_pairs = make_pairs(config["val"]) if rank == 0 else None
        self.cache = cache or FeatureCache()  # detector outputs of training and val pairs (keyed by detector, image)

    def loss(self, step: int) -> torch.Tensor:
        """Loss of the pair this rank trains on at ``step`` (a seeded choice: the same on resume)."""
        rng = np.random.default_rng([self.cfg["seed"], step, self.rank])
        pair = self.train_pairs[int(rng.integers(len(self.train_pairs)))]
        if self.part == "detector":
            return self.distill_loss(pair)
        if self.cfg["train_detector"]:
            data = self._extract_with_grad(pair)
        else:
            data = extract_pair(self.matcher, self.train_pairs, pair, self.cache, device=self.device)
        H = torch.as_tensor(pair.H, dtype=torch.float64, device=self.device)[None]
        lc = self.cfg["loss"]
        gt0, gt1 = homography_gt(
            data["keypoints0"].double(), data["keypoints1"].double(), H, lc["pos_th"], lc["neg_th"]
        )
        with self.matcher.every_layer():  # on the network's settings, before DDP wraps it
            if self.ddp is not None:
                self.matcher.matcher = self.ddp
            try:
                out = self.matcher.match(data)
            finally:
                self.matcher.matcher = self.net
        loss = matching_nll(out["log_assignment"], gt0, gt1, lc["balance"])
        if self.teacher is not None:
            with torch.no_grad(), self.teacher.every_layer():
                taught = self.teacher.match(data)["log_assignment"]
            loss = loss + self.cfg["distill"]["assignment"] * soft_nll(out["log_assignment"], taught)
        return loss

    def distill_loss(self, pair) -> torch.Tensor:
        """Distillation of the detector on one pair: score maps, descriptors at the teacher's keypoints, and the
        frozen matcher's loss on those keypoints with the student's descriptors (the homography gives its truth)."""
        weights, lc = self.cfg["distill"], self.cfg["loss"]
        score = descriptors = 0.0
        data: dict[str, Any] = {}
        for i in (0, 1):
            image = self.train_pairs.image(pair, i)[1]
            tensor = to_tensor(image, self.device)
            with torch.no_grad():
                teacher = self.teacher.distill_outputs(tensor)
            mine = self.matcher.distill_outputs(tensor, teacher["keypoints"])
            score = score + F.binary_cross_entropy(mine["score_map"].clamp(1e-6, 1 - 1e-6), teacher["score_map"]) / 2
            descriptors = descriptors + (1 - (mine["descriptors"] * teacher["descriptors"]).sum(0)).mean() / 2
            data.update(
                {
                    f"keypoints{i}": teacher["keypoints"][None],
                    f"scores{i}": teacher["scores"][None],
                    f"descriptors{i}": mine["descriptors"][None],
                    f"image_size{i}": (image.shape[1], image.shape[0]),
                }
            )
        loss = weights["score"] * score + weights["descriptors"] * descriptors
        if weights["matching"] > 0:
            H = torch.as_tensor(pair.H, dtype=torch.float64, device=self.device)[None]
            gt0, gt1 = homography_gt(
                data["keypoints0"].double(), data["keypoints1"].double(), H, lc["pos_th"], lc["neg_th"]
            )
            with self.matcher.every_layer():
                out = self.matcher.match(data)
            loss = loss + weights["matching"] * matching_nll(out["log_assignment"], gt0, gt1, lc["balance"])
        return loss

    def train_mode(self) -> None:
        """The trained network in training mode; a detector under distillation keeps its batch norms' statistics
        (one image per step is no batch to estimate them from)."""
        if self.part == "matcher":
            self.net.train()

    def _extract_with_grad(self, pair) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for i in (0, 1):
            image = self.train_pairs.image(pair, i)[1]
            f = self.matcher.extract(to_tensor(image, self.device))
            data.update({f"{k}{i}": v[0][None] for k, v in f.items()})
            data[f"image_size{i}"] = (image.shape[1], image.shape[0])
        return data

    def validate(self) -> dict[str, float]:
        self.matcher.eval()
        v = self.cfg["val"]
        summary = evaluate(
            self.matcher,
            self.val_pairs,
            self.cache,
            method=v["estimator"],
            ransac_threshold=v["ransac_threshold"],
            progress=False,
        )["summary"]
        self.train_mode()
        return summary

    def save(self, summary: dict[str, float] | None) -> None:
        meta = {"step": self.step, "config": self.cfg, "val": summary}
        save_checkpoint(self.matcher, self.last, meta)
        # best.pth: of the final sparsity and activation only
        pruned = (self.pruner is None or self.step >= self.pruner.last) and self.step >= self.ramp_end
        if summary is not None and pruned and summary["auc@3px"] > self.best:
            self.best = summary["auc@3px"]
            save_checkpoint(self.matcher, self.best_path, meta)
        with atomic_path(self.state_path) as tmp:
            torch.save(
                {
                    "step": self.step,
                    "net": self.net.state_dict(),
                    "masks": masks(self.net),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "best": self.best,
                    "skipped": self.skipped,
                },
                tmp,
            )


def recalibrate_batch_norms(net: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Re-estimate the running statistics of ``net``'s batch norms on ``images`` (their plain average over the images,
    as ``momentum=None`` computes it), its weights untouched: for a student whose layers before them changed (another
    activation, channels pruned), whose distillation then keeps them (``Run.train_mode``). ``net`` is called on each
    image (1×C×H×W) and left in eval mode."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for image in images:
            net(image)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def soft_nll(log_assignment: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a log assignment against a teacher's, dustbins included: each cell weighted by the
    teacher's probability of it (its matches and its unmatched points), per point of the two images."""
    b, m1, n1 = teacher.shape
    return -(teacher.float().exp() * log_assignment.float()).sum() / max(1, b * (m1 + n1 - 2))


def read_state(path: Path) -> dict[str, Any]:
    """The resume state of a run; an unreadable one stops the run (it is the record of training done so far)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise InputError(
            f"cannot resume: {unreadable(path, e)}; delete it (and last.pth) to start the run over"
        ) from None
    missing = [
        k
        for k in ("step", "net", "masks", "optimizer", "scheduler", "best", "skipped")
        if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise InputError(
            f"cannot resume: {path} is not a finetuning state (no {missing[0]!r}); delete it (and "
            "last.pth) to start the run over"
        )
    kinds = {"step": int, "skipped": int, "best": (int, float), "net": dict, "masks": dict, "optimizer": dict,
             "scheduler": dict}  # fmt: skip
    for key, kind in kinds.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise InputError(
                f"cannot resume: {path} is damaged ({key} is {type(value).__name__} {str(value)[:40]!r}); delete it "
                "(and last.pth) to start the run over"
            )
    return state


def _config_id(config: dict[str, Any]) -> dict[str, str]:
    # where it lives and how often it logs do not change what a run computes; nor does a prune section that prunes
    # nothing (runs of versions before it resume)
    unpruned = (config.get("prune") or {}).get("sparsity") is None
    ignored = ("out", "log_every") + ("prune",) * unpruned
    return {"config_digest": config_digest({k: v for k, v in config.items() if k not in ignored})}


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a run folder is bound to: its config (but where it lives) and the bytes of its input checkpoint."""
    ident = _config_id(config)
    if config.get("checkpoint"):
        ident["checkpoint_sha1"] = file_sha1(config["checkpoint"])
    return ident


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def started_by(out: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(config, identity) recorded by the run that started ``out``, or None if it holds no run yet."""
    if not ((out / "state.pt").exists() or (out / "last.pth").exists()):
        return None
    record = out / "config.yaml"
    stored = read_yaml(record) if record.is_file() else None
    if not isinstance(stored, dict):
        raise InputError(
            f"{out} holds a finetuning run without a readable config.yaml: what it ran is unknown, so "
            "it is not resumed; pass another out (or --new)"
        )
    config = {k: v for k, v in stored.items() if k not in ("git_commit", "run")}
    # records of older versions name no identity: their config is compared (it was rewritten on each resume)
    return config, stored.get("run") or _config_id(config)


def claim_folder(config: dict[str, Any], new: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(``config`` with the folder its run belongs in, the identity to record there or None when it resumes):
    ``out`` when it is free or was started by this very config; with ``new``, the first of ``out-2``, ``out-3``, …
    that is; otherwise a folder started by another config or checkpoint is an InputError (resuming it would put a
    false record on its results)."""
    ident, base = run_identity(config), Path(config["out"])
    for i in range(1, 1000):
        out = base if i == 1 else base.with_name(f"{base.name}-{i}")
        found = started_by(out)
        if found is None or found[1] == {k: ident[k] for k in found[1] if k in ident}:
            if out != base:
                logger.info("%s holds another run: this one goes to %s", base, out)
            return {**config, "out": str(out)}, ident if found is None else None
        if not new:
            old, now = _flat(found[0]), _flat(config)
            differ = [k for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k) and k != "out"]
            if not differ and found[1].get("checkpoint_sha1") != ident.get("checkpoint_sha1"):
                differ = ["the checkpoint file's content"]
            raise InputError(
                f"{out} holds a finetuning run of another config (differs in "
                f"{', '.join(differ[:4]) or 'its record'}): it is not resumed; pass another out, or "
                "--new to start one beside it"
            )
    raise InputError(f"no free folder next to {base}")


def log_row(path: Path, row: dict[str, Any], upto_step: int | None = None) -> None:
    """Append a row to the CSV log (dropping rows past ``upto_step`` left by a killed run first)."""
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if upto_step is not None:
            rows = [r for r in rows if int(r["step"]) <= upto_step]
    rows.append(
        {
            k: row.get(k, "")
            for k in (
                "step",
                "loss",
                "lr",
                "steps_per_s",
                "skipped",
                "sparsity",
                "auc@1px",
                "auc@3px",
                "precision",
                "recall",
            )
        }
    )
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)


def finetune(
    config: dict[str, Any],
    stop_after: int | None = None,
    progress: bool = True,
    cache: FeatureCache | None = None,
    new: bool = False,
) -> dict[str, Any]:
    """Run (or resume) finetuning; ``stop_after`` ends this process after that many steps without saving,
    as a kill would (a resumed run restarts from the last validation's checkpoint). ``cache``: detector outputs
    the caller already has, and where this run adds the ones it computes (keyed by detector and image, so always
    safe: a second finetuning on the same training pairs extracts nothing again). A folder
    started by another config is refused (``new``: the run goes beside it, see ``claim_folder``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    seed_everything(config["seed"] + rank)
    writable_location(config["out"], folder=True, what="out")
    config, fresh = claim_folder(config, new)
    run = Run(config, device, rank, world, cache)
    if rank == 0 and fresh is not None:
        run.out.mkdir(parents=True, exist_ok=True)
        write_run_config(run.out, config, run=fresh)
    log_path = run.out / "log.csv"
    if rank == 0 and run.step == 0:
        summary = run.validate()
        run.save(summary)  # best.pth starts as the input model: finetuning must beat it to replace it
        log_row(log_path, {"step": 0, **summary}, upto_step=-1)
    run.train_mode()
    use_amp = device.type == "cuda"
    bar = tqdm(total=config["steps"], initial=run.step, desc="finetune", disable=not progress or rank != 0)
    start, done_here, losses, in_a_row = time.perf_counter(), 0, [], 0
    while run.step < config["steps"]:
        if stop_after is not None and done_here >= stop_after:
            break
        with torch.enable_grad():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = run.loss(run.step)
            finite = torch.tensor(float(torch.isfinite(loss)), device=device)
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            run.optimizer.zero_grad(set_to_none=True)
            if finite.item() == 1:
                losses.append(loss.item())
                loss.backward()
                if world > 1 and run.ddp is None:
                    for p in run.params:  # every rank reduces every tensor, or the collectives would hang
                        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                        dist.all_reduce(p.grad)
                        p.grad /= world
                torch.nn.utils.clip_grad_norm_(run.params, config["clip"])
                run.optimizer.step()
                enforce(run.net)
                bad = next((n for n, p in run.named_params if not torch.isfinite(p).all()), None)
                if bad is not None:
                    raise InputError(
                        f"finetuning diverged at step {run.step + 1}: {bad} is no longer finite (lr {config['lr']:g} "
                        f"too high?); {run.last} keeps the weights of the last validation before it"
                    )
                in_a_row = 0
            else:
                run.skipped += 1
                in_a_row += 1
                logger.warning("non-finite loss at step %d: step skipped (%d so far)", run.step, run.skipped)
                if in_a_row == MAX_SKIPPED_IN_A_ROW:
                    raise InputError(
                        f"finetuning diverged: the loss was not finite for {in_a_row} steps in a row (up to step "
                        f"{run.step + 1}); {run.last} keeps the weights of the last validation before it"
                    )
        run.scheduler.step()
        run.step += 1
        if run.pruner is not None:
            run.pruner(run.step)
        if run.ramp is not None:
            run.ramp(run.step)
        done_here += 1
        rate = done_here / (time.perf_counter() - start)
        lr = run.scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", it_s=f"{rate:.2f}")
        last = run.step == config["steps"]
        validation = run.step % config["val"]["every"] == 0 or last
        logged = validation or run.step % config["log_every"] == 0
        if logged:
            mean_loss, losses = float(np.mean(losses)) if losses else float("nan"), []  # on every rank: none piles up
        if rank == 0 and logged:
            row = {"step": run.step, "loss": mean_loss, "lr": lr, "steps_per_s": rate, "skipped": run.skipped}
            if run.pruner is not None:
                row["sparsity"] = sparsity_report(run.net)["total"]
            if validation:
                summary = run.validate()
                run.save(summary)
                row.update(summary)
            log_row(log_path, row, upto_step=run.step - 1)
        if validation and world > 1:
            dist.barrier()
    bar.close()
    result = {
        "step": run.step,
        "best_auc@3px": run.best,
        "skipped": run.skipped,
        "out": str(run.out),
        "sparsity": sparsity_report(run.net)["total"],
    }
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result
