"""The experiment pipeline behind pruning_experiments.py, quantization_experiments.py and the notebook.

A YAML experiment (configs/demo.yaml, configs/coco.yaml) runs: baseline evaluation -> sensitivity scan ->
compression of each variant (pruning, quantization, or both) -> finetuning -> evaluation -> profiling (every
variant side by side with the dense model, in one run) -> results.json, figures and report.md in the run
folder. Each stage's result is written atomically under ``stages/`` with a key of what produced it; a re-run
skips the stages whose key is unchanged, so a killed experiment resumes (finetuning and scans also resume
inside their stage).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from compression.methods import METHODS, Job, execution, steps, variant_bits, variant_settings
from compression.tensors import prunable_weights
from data.images import open_source, split_names
from data.pairs import PAIRS_CHECKS, SEED, SIZE, SequencePairs, SyntheticPairs, make_pairs
from helper import (
    ArgumentParser,
    Check,
    InputError,
    check_config,
    file_sha1,
    first_line,
    git_commit,
    jsonable,
    load_config,
    merge_config,
    pick_device,
    safe_name,
    save_npz,
    seed_everything,
    to_tensor,
    writable_location,
    write_json,
    write_run_config,
)
from helper import (
    config_digest as digest,
)
from models.matching import (
    Matcher,
    available_matchers,
    build_matcher,
    check_matcher_config,
    checked_matcher_config,
    fingerprint,
    to_channels,
)
from pipeline.checkpoint import coding_summary, load_checkpoint, save_checkpoint
from pipeline.costs import cpu_name, side_by_side
from pipeline.evaluation import FeatureCache, evaluate, predict
from pipeline.figures import make_gif
from pipeline.metrics import pair_floats, pair_values, paired_difference
from pipeline.report import update_readme, write_report
from pipeline.tiers import TIER_CHECKS, VERDICT_DEFAULTS
from pipeline.tiers import check as check_tiers
from pipeline.tiers import judge as judge_tiers
from pipeline.training import CHECKS as FINETUNE_CHECKS
from pipeline.training import DEFAULTS as FINETUNE_DEFAULTS
from pipeline.training import finetune
from pruning.fine_grained import global_sparsities, prune_fine_grained
from pruning.sensitivity import choose_verified, expand, flat_differences, groups_by_prefix, scan
from quantization.kmeans import kmeans_values, quantize_kmeans

logger = logging.getLogger("experiments")
ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/, README.md

METRICS = ("auc@1px", "auc@3px", "auc@5px", "auc@10px", "precision", "recall", "matching_score", "failures")

DEFAULTS: dict[str, Any] = {
    "name": "experiment",
    "matcher": "aliked+lightglue",
    "matcher_config": {"detector": {"max_keypoints": 512}},  # LightGlue as shipped: adaptive depth and width
    "checkpoint": None,
    "source": None,  # when set: the images of every stage (val, calibration, finetuning), e.g. a COCO zip
    "seed": 0,
    "val": FINETUNE_DEFAULTS["val"],  # the pairs the experiment decides on (scan checks, finetuning progress)
    "tiers": {},  # more pair sets every variant is judged on: name -> the val settings it changes (pipeline/tiers.py)
    "verdict": VERDICT_DEFAULTS,  # the tiers whose paired intervals say whether a variant holds within a point
    "calibration": {**FINETUNE_DEFAULTS["train"], "num_pairs": 8, "augment": 0.0},
    "sensitivity": {
        "part": "matcher",
        "include": ["*"],
        "depth": 2,
        "sparsities": [0.5, 0.8],
        "bits": [2, 3],
        "base_bits": 4,
        "budget": 0.01,
        "choose_metric": "agreement",
        "choose_budget": 0.2,
        "num_pairs": None,  # the scan screens on the first this many val pairs (null: all); choices verify on all
    },
    "finetune": {"steps": 100},
    "profile": {"num_keypoints": 512, "resize": [640, 480], "repeats": 5, "threads": None},
    "animation": {"frames": 12, "photo": None},  # dense vs the smallest variant over a camera sweep; null: none
    "pruning": [],
    "quantization": [],
    # other pipelines judged on the same pairs and timed in the same profile: the speed anchors a deployer compares
    # with (xfeat, xfeat+lighterglue, sift+nn) and the dense model's own operating points (another keypoint budget)
    "references": [],
    # a benchmarks/deep_compression.py report (<its --out>/<matcher>/report.json): its stages in report.md (the
    # recipe's hour of training is run on its own); null: none
    "deep_compression": None,
}
REFERENCE: dict[str, Any] = {"name": "", "matcher": "", "matcher_config": {}}
# One variant of "pruning:" / "quantization:": the settings every variant has (each method adds its own).
VARIANT: dict[str, Any] = {"name": "", "method": "", "part": "matcher", "base": None, "finetune": False}
FRACTION = Check(kind=float, lo=0, hi=1, open=True)
VARIANT_CHECKS: dict[str, Check] = {
    "part": Check(choices=("matcher", "detector")),
    "base": Check(kind=str, nullable=True),
    "finetune": Check(kind=(bool, dict), schema=FINETUNE_DEFAULTS, checks=FINETUNE_CHECKS),
}
CHECKS: dict[str, Check] = {
    "seed": SEED,
    "matcher": Check(choices=tuple(available_matchers())),
    "matcher_config": Check(kind=dict, free=True),
    "checkpoint": Check(kind=str, nullable=True),
    "source": Check(kind=str, nullable=True),
    **{f"{part}.{k}": c for part in ("val", "calibration") for k, c in PAIRS_CHECKS.items()},
    "sensitivity.part": Check(choices=("matcher", "detector")),
    "sensitivity.depth": Check(lo=1),
    "sensitivity.sparsities": Check(each=FRACTION),
    "sensitivity.bits": Check(each=Check(kind=int, lo=1, hi=8)),
    "sensitivity.base_bits": Check(lo=1, hi=8),
    "sensitivity.budget": Check(lo=0),
    "sensitivity.choose_metric": Check(kind=str, nullable=True, choices=(*METRICS, "agreement")),
    "sensitivity.choose_budget": Check(lo=0),
    "sensitivity.num_pairs": Check(kind=int, nullable=True, lo=1),
    "finetune": Check(kind=dict, schema=FINETUNE_DEFAULTS, checks=FINETUNE_CHECKS),
    "profile.num_keypoints": Check(lo=1),
    "profile.resize": SIZE,
    "profile.repeats": Check(lo=1),
    "profile.threads": Check(kind=int, nullable=True, lo=1),
    "deep_compression": Check(kind=str, nullable=True),
    **TIER_CHECKS,
    "animation": Check(
        kind=dict,
        nullable=True,
        schema=DEFAULTS["animation"],
        checks={"frames": Check(lo=2), "photo": Check(kind=str, nullable=True)},
    ),
}


def experiment_checks() -> dict[str, Check]:
    """CHECKS with the variants' settings: the common ones and those of every registered method."""
    settings, checks = variant_settings()
    variant = Check(kind=dict, schema={**VARIANT, **settings}, checks={**VARIANT_CHECKS, **checks})
    reference = Check(
        kind=dict,
        schema=REFERENCE,
        checks={"matcher": Check(choices=tuple(available_matchers())), "matcher_config": Check(kind=dict, free=True)},
    )
    return {
        **CHECKS,
        **{kind: Check(each=variant) for kind in ("pruning", "quantization")},
        "references": Check(each=reference),
    }


def checked_experiment(config: dict[str, Any]) -> dict[str, Any]:
    """An experiment config checked whole before any stage runs: every setting against DEFAULTS (keys, types,
    ranges), the matcher's own settings, and the plan of variants (methods, bases, what each method needs)."""
    config = check_config(config, DEFAULTS, experiment_checks())
    safe_name(config["name"], "experiment name")  # names that become file names, refused before any work
    check_tiers(config)
    for kind in ("pruning", "quantization", "references"):
        for spec in config.get(kind) or []:
            if spec.get("name"):
                safe_name(spec["name"], f"{kind} name")
    config["matcher_config"] = check_matcher_config(
        config["matcher"], config["matcher_config"], inherited=DEFAULTS["matcher_config"]
    )
    specs = [s for kind in ("pruning", "quantization") for s in config.get(kind) or []]
    seen: dict[str, dict[str, Any]] = {}
    for spec in specs:
        check_variant(spec, seen)
        seen[spec["name"]] = spec
    dense = checked_matcher_config(config["matcher"], config["matcher_config"])
    for spec in specs:
        check_against(spec, dense)
    config["references"] = [{**REFERENCE, **ref} for ref in config["references"]]
    for ref in config["references"]:
        name = ref["name"]
        if not name or name == "dense" or name in seen:
            raise InputError(f"reference {name!r}: give each reference a name of its own (not 'dense' nor a variant's)")
        if not ref["matcher"]:
            raise InputError(f"reference {name!r}: give its 'matcher' ({', '.join(available_matchers())})")
        where = f"references.{name}.matcher_config"
        ref["matcher_config"] = check_matcher_config(ref["matcher"], ref["matcher_config"], where)
        checked_matcher_config(ref["matcher"], ref["matcher_config"], where)
        seen[name] = ref
    return config


def check_against(spec: dict[str, Any], dense: Matcher) -> None:
    """A variant's settings against the dense pipeline, before any work: each method checks its own
    (``Method.check``: the layers a sparsity dict names, the keys of a ``set``)."""
    for m in steps(spec):
        if m.check is not None:
            m.check(spec, dense)


def done_steps(base_spec: dict[str, Any] | None, spec: dict[str, Any]) -> list[Any]:
    """The steps of ``spec`` that its base already applied: the base's, when it compressed the same part (a base
    that compressed the other part, even into another runtime, is where this variant starts)."""
    if base_spec is None or base_spec.get("part", "matcher") != spec.get("part", "matcher"):
        return []
    return steps(base_spec)


def check_variant(spec: dict[str, Any], earlier: dict[str, dict[str, Any]]) -> None:
    """One variant of the plan, given the variants defined before it; a bad one is an InputError naming it."""
    name, method = spec.get("name"), spec.get("method")
    if not name:
        raise InputError(f"every variant needs a 'name' (found {spec})")
    if name in earlier:
        raise InputError(f"two variants are named {name!r}: names must be unique")
    if not method:
        raise InputError(f"variant {name}: give its 'method' ({', '.join(METHODS)}, or several joined by '+')")
    try:
        methods = steps(spec)
    except InputError as e:
        raise InputError(f"variant {name}: {e}") from None
    base = spec.get("base")
    if base is not None and base not in earlier:
        raise InputError(f"variant {name}: its base {base!r} is not a variant defined before it")
    base_spec = earlier[base] if base else None
    done = done_steps(base_spec, spec)
    for m in [*done, *methods[:-1]] + ([methods[-1]] if spec.get("finetune") else []):
        if m.final:
            raise InputError(
                f"variant {name}: {m.name} is the last step (a graph run by another runtime is not "
                "pruned, quantized or finetuned further)"
            )
    missing = [need for m in methods if m not in done for need in m.needs if need not in spec]
    if missing:
        raise InputError(f"variant {name}: method {method} needs '{missing[0]}'")
    if spec.get("schedule") == "gradual" and (spec["method"] != "fine-grained" or not spec.get("finetune")):
        raise InputError(
            f"variant {name}: gradual pruning happens while it is finetuned: give it method fine-grained alone and "
            "finetune (quantize it in a variant based on it)"
        )
    if spec.get("ranking") == "global" and not isinstance(spec.get("sparsity"), (int, float)):
        raise InputError(
            f"variant {name}: ranking global spreads one overall sparsity over the tensors: give sparsity a number"
        )
    if spec.get("sparsity") == "auto" and spec.get("bits") == "auto":
        raise InputError(f"variant {name}: choose either the sparsity or the bits automatically, not both")


# ----------------------------------------------------------------------------- stages


class Experiment:
    """A run folder and the stages that fill it; stages whose key is unchanged are read back, not rerun."""

    def __init__(self, config: dict[str, Any], out: str | Path, dry_run: bool = False, progress: bool = True):
        self.cfg, self.out, self.dry_run, self.progress = config, Path(out), dry_run, progress
        self.cache = FeatureCache()
        self.cache_file = self.out / "cache" / "features.pt"  # detector outputs, shared by the two scripts
        if self.cache_file.is_file() and not dry_run:
            self.cache.load(self.cache_file)
        self.read_only = False  # True: stages not done for the current config are reported missing, not run
        self._val: SyntheticPairs | None = None
        self._dense: Matcher | None = None
        self._baseline: dict[str, Any] | None = None
        self.device = pick_device()

    # -- bookkeeping
    def stage(self, name: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.out / "stages" / f"{safe_name(name, 'stage')}.json"
        k = digest(key)
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                done = saved.get("key") == k and "result" in saved
                if done and saved.get("result_digest") != digest(saved["result"]):
                    raise ValueError("its result does not match its digest")
            except (ValueError, AttributeError, OSError) as e:  # truncated, foreign, not UTF-8: a cache, redone
                logger.warning("stage %s: its record %s is unreadable (%s): recomputing", name, path, first_line(e))
                saved, done = None, False
            if done and not _files_intact(saved["result"]):
                logger.warning("stage %s: the checkpoint it wrote is missing or changed: recomputing", name)
                done = False
            if done:
                logger.info("stage %s: done, skipped", name)
                return saved["result"]
            if saved is not None:
                logger.info("stage %s: its inputs changed, recomputing", name)
        if self.read_only:
            return {}
        if self.dry_run:
            print(f"  to do: {name}")
            return {}
        logger.info("stage %s: running", name)
        start = time.perf_counter()
        result = compute()
        record = {"key": k, "inputs": key, "seconds": time.perf_counter() - start, "git_commit": git_commit()}
        write_json(path, {**record, "result": result, "result_digest": digest(jsonable(result))})
        return json.loads(path.read_text())["result"]  # as stored (inf -> 'inf'), the same on a re-run

    def key(self, *parts: str) -> dict[str, Any]:
        """The config sections a stage depends on."""
        return {p: self.cfg.get(p) for p in ("matcher", "matcher_config", "checkpoint", "val", *parts)}

    # -- shared inputs
    @property
    def val(self) -> SyntheticPairs:
        if self._val is None:
            self._val = make_pairs(self.cfg["val"])
        return self._val

    def val_subset(self, num_pairs: int | None) -> SyntheticPairs:
        """The first ``num_pairs`` val pairs (the same pairs and cache keys as in the full set); None: all."""
        if num_pairs is None or num_pairs >= len(self.val):
            return self.val
        return make_pairs(self.cfg["val"], num_pairs=num_pairs)

    def dense(self) -> Matcher:
        if self._dense is None:
            if self.cfg["checkpoint"]:
                self._dense = load_checkpoint(self.cfg["checkpoint"])
            else:
                self._dense = build_matcher(self.cfg["matcher"], self.cfg["matcher_config"])
            self._dense.to(self.device)
        return self._dense

    def evaluate(self, matcher: Matcher, desc: str, reference=None, pairs: SyntheticPairs | None = None) -> dict:
        return evaluate(
            matcher.to(self.device),
            pairs or self.val,
            self.cache,
            method=self.cfg["val"]["estimator"],
            ransac_threshold=self.cfg["val"]["ransac_threshold"],
            progress=self.progress,
            desc=desc,
            reference=reference,
        )

    def calibrate(self, pipeline: Matcher) -> None:
        """Run a pipeline over the calibration pairs (training photos): what linear and int8 quantization observe."""
        evaluate(pipeline, make_pairs(self.cfg["calibration"]), self.cache, progress=False)

    def calibration_images(self, channels: int) -> list[torch.Tensor]:
        """The first image of each calibration pair, as a detector reading ``channels`` channels sees it."""
        calib = make_pairs(self.cfg["calibration"])
        return [to_channels(to_tensor(calib.image(p, 0)[1]), channels) for p in calib]

    def save_cache(self) -> None:
        """Keep the detector outputs computed so far for the next process (only when there are new ones)."""
        if self.cache.added and not self.dry_run:
            self.cache.save(self.cache_file)

    def dense_pairs(self) -> list[dict[str, Any]]:
        """The dense model's per-pair metrics on the val pairs (from the baseline stage), for paired comparisons.
        Numbers as floats again: a stage record stores an infinite error (a failure) as 'inf'."""
        return pair_floats(self.baseline()["pairs"])

    def judge(self, matcher: Matcher, desc: str) -> dict[str, Any]:
        """Evaluate on the val pairs; the summary gains ``vs_dense``: each metric's difference to the dense model
        with its paired 95 % interval (same pairs, resampled together) and whether that interval contains 0."""
        result = self.evaluate(matcher, desc)
        result["summary"]["vs_dense"] = paired_difference(result["rows"], self.dense_pairs())
        return result

    def checkpoint(self, name: str) -> Path:
        return self.out / "variants" / f"{safe_name(name, 'variant')}.pth"

    # -- stages
    def baseline(self) -> dict[str, Any]:
        def compute():
            path = save_checkpoint(self.dense(), self.checkpoint("dense"), {"experiment": self.cfg["name"]})
            result = self.evaluate(self.dense(), "dense")
            row = variant_row("dense", "dense", result["summary"], path, self.dense(), self.dense(), "matcher", 32)
            return {**row, "pairs": pair_values(result["rows"])}

        if self._baseline is None or self.dry_run:
            self._baseline = self.stage("baseline", {**self.key(), "per_pair": 1}, compute)
            self.save_cache()  # every val image's detector outputs: the next script only matches
        return self._baseline

    def reference(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Another pipeline of the zoo (an anchor, an operating point) judged on the val pairs against dense."""

        def compute():
            model = build_matcher(spec["matcher"], spec["matcher_config"])
            path = save_checkpoint(model, self.checkpoint(spec["name"]), {"experiment": self.cfg["name"]})
            result = self.judge(model, spec["name"])
            return variant_row(spec["name"], "reference", result["summary"], path, model)

        row = self.stage(f"reference-{spec['name']}", {**self.key(), "reference": spec}, compute)
        self.save_cache()
        return row

    def sensitivity(self, kind: str = "sparsity") -> dict[str, Any]:
        """Per-parameter sparsities (``kind='sparsity'``) or k-means bit widths (``'bits'``, mixed precision) of
        the compressed part, chosen from a scan of one group at a time and verified on the val pairs."""
        sc, bits = self.cfg["sensitivity"], kind == "bits"
        key = {**self.key(), "sensitivity": self.sensitivity_settings(kind), **({"kind": kind} if bits else {})}
        scan_csv = self.out / "sensitivity" / f"scan-{digest(key)[:8]}.csv"  # rows of other settings never mix
        gain = (lambda b: sc["base_bits"] - b) if bits else float  # bits saved per weight vs. sparsity  # noqa: E731

        def compress(net: torch.nn.Module, levels: dict[str, float]) -> None:
            if bits:
                quantize_kmeans(net, {"*": sc["base_bits"], **levels})
            else:
                prune_fine_grained(net, levels)

        def compute():
            dense = self.dense()
            net = getattr(dense, sc["part"])
            groups = groups_by_prefix(net, sc["depth"], sc["include"])
            screen = self.val_subset(sc["num_pairs"])  # the scan screens on these; the choice is verified on all
            # every layer runs while screening: a layer that adaptive depth skips on the screened pairs still counts
            # (the choice is then verified as configured)
            with dense.every_layer():
                reference = self.evaluate(dense, "dense", pairs=screen)
                reference_rows = [{**r, "agreement": 1.0} for r in reference["rows"]]  # dense reproduces itself

                def screened():
                    result = self.evaluate(dense, "scan", reference["predictions"], pairs=screen)
                    return {**result["summary"], **flat_differences(paired_difference(result["rows"], reference_rows))}

                rows = scan(
                    net,
                    groups,
                    sc["bits"] if bits else sc["sparsities"],
                    screened,
                    scan_csv,
                    progress=self.progress,
                    transform=kmeans_values if bits else None,
                )

            def try_choice(choice):
                m = copy.deepcopy(dense)
                compress(getattr(m, sc["part"]), expand(groups, choice))
                summary = self.judge(m, "choice")["summary"]
                return {**summary, **flat_differences(summary["vs_dense"])}

            choice, result, history = choose_verified(
                rows,
                sc["budget"],
                try_choice,
                choose_metric=sc["choose_metric"],
                choose_budget=sc["choose_budget"],
                gain=gain,
            )
            return {
                "groups": choice,
                "levels": expand(groups, choice),
                "auc@3px": result["auc@3px"],
                "vs_dense": result["vs_dense"].get("auc@3px"),
                "screening_pairs": len(screen),
                "history": history,
                "scan_csv": str(scan_csv),
            }

        return self.stage("sensitivity-bits" if bits else "sensitivity", key, compute)

    def sensitivity_settings(self, kind: str) -> dict[str, Any]:
        """The sensitivity settings a scan of this kind depends on."""
        unused = ("sparsities",) if kind == "bits" else ("bits", "base_bits")
        return {k: v for k, v in self.cfg["sensitivity"].items() if k not in unused}

    def variant(self, spec: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Compress (from the dense model or from another variant), evaluate; finetune and evaluate again."""
        name, method, part = spec["name"], spec["method"], spec.get("part", "matcher")
        base = spec.get("base")  # the plan was checked whole (check_variant) before the baseline ran
        base_spec = variants[base]["spec"] if base else None
        base_row = (variants[base]["rows"] or [{}])[-1] if base else None  # {}: not computed (dry run)
        done = done_steps(base_spec, spec)
        todo = [m for m in steps(spec) if m not in done]
        auto = spec.get("sparsity") == "auto" or spec.get("bits") == "auto"
        kind = "bits" if spec.get("bits") == "auto" else "sparsity"
        parts = ["finetune"] * bool(spec.get("finetune")) + ["calibration"] * any(m.calibrated for m in todo)
        key = {
            **self.key(*parts),
            "spec": spec,
            "base": variants[base]["key"] if base else None,
            "sensitivity": self.sensitivity_settings(kind) if auto else None,
        }
        chosen = self.sensitivity(kind) if auto else None

        def compute():
            m = load_checkpoint(base_row["checkpoint"]) if base else copy.deepcopy(self.dense())
            job = Job(
                m.to(self.device),
                part,
                spec,
                levels=chosen["levels"] if chosen else None,
                base_bits=self.cfg["sensitivity"]["base_bits"],
                calibration_images=lambda: self.calibration_images(job.matcher.channels),
                calibrate=self.calibrate,
            )
            for step in todo:
                step.apply(job)
            m = job.matcher
            bits = job.bits if job.bits is not None else variant_bits(spec)
            path = save_checkpoint(m, self.checkpoint(name), {"experiment": self.cfg["name"], "spec": spec})
            summary = self.judge(m, name)["summary"]
            return variant_row(
                name,
                method,
                summary,
                path,
                m,
                self.dense(),
                part,
                bits=bits,
                finetuned=bool(base_row and base_row.get("finetuned")),
            )

        prune = None
        if spec.get("schedule") == "gradual":  # pruned while it is finetuned, from the dense model: no row before
            dense, prune = self.baseline(), chosen["levels"] if chosen else spec["sparsity"]
            if spec.get("ranking") == "global":  # each tensor's share of one ranking of the dense part's weights
                prune = global_sparsities(getattr(self.dense(), part), spec["sparsity"])
            start = {k: dense[k] for k in ("checkpoint", "checkpoint_sha1") if k in dense}
            rows = [{}]
        else:
            rows = [self.stage(f"variant-{name}", key, compute)]
            start = rows[0]
        if spec.get("finetune"):
            tuned = {**spec, "bits": rows[0]["bits"]} if rows[0] else spec  # mixed precision: the mean chosen
            # bound to the very checkpoint it starts from (a variant recomputed is finetuned again)
            fkey = {**key, "input": start.get("checkpoint_sha1")}
            rows.append(self.stage(f"finetune-{name}", fkey, lambda: self.finetune(tuned, start, digest(fkey), prune)))
        return rows

    def finetune(self, spec: dict[str, Any], row: dict[str, Any], key: str, prune: Any = None) -> dict[str, Any]:
        """Finetune a variant (resuming a killed run of the same inputs) and evaluate its last checkpoint;
        ``prune``: the sparsities it is pruned to gradually while it trains (pruning/gradual.py)."""
        name = spec["name"]
        extra = spec["finetune"] if isinstance(spec["finetune"], dict) else {}
        if prune is not None:
            extra = merge_config(extra, {"prune": {"sparsity": prune}})
        cfg = self.finetune_config(row["checkpoint"], self.out / "finetune" / f"{name}-{key[:8]}", extra)
        finetune(cfg, progress=self.progress, cache=self.cache)  # detector outputs of val and training pairs, shared
        # The last checkpoint, not the best: the best was picked on these very validation pairs.
        path = Path(cfg["out"]) / "last.pth"
        m = load_checkpoint(path).to(self.device)
        summary = self.judge(m, f"{name} finetuned")["summary"]
        return variant_row(
            f"{name} +ft",
            spec["method"],
            summary,
            path,
            m,
            self.dense(),
            spec.get("part", "matcher"),
            bits=variant_bits(spec),
            finetuned=True,
        )

    def finetune_config(
        self, checkpoint: str | Path, out: str | Path, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """finetune()'s config for a checkpoint of this experiment: its matcher, seed, val pairs and finetune
        section, then ``extra`` (a variant's own finetune settings), writing to ``out``."""
        cfg = merge_config(
            FINETUNE_DEFAULTS,
            {
                "matcher": self.cfg["matcher"],
                "matcher_config": self.cfg["matcher_config"],
                "seed": self.cfg["seed"],
                "val": self.cfg["val"],
            },
        )
        cfg = merge_config(merge_config(cfg, self.cfg["finetune"]), extra or {})
        cfg.update(checkpoint=str(checkpoint), out=str(out))
        return cfg

    def judged(self, model: Matcher, name: str, part: str = "matcher", bits: float = 32.0) -> dict[str, Any]:
        """A model compressed by hand (the notebook's walk-through): saved as ``walkthrough/<name>.pth`` and judged
        on the val pairs, as a stage keyed by its weights (the same weights again are read back, not
        re-evaluated). The row is results.json's: AUCs with intervals, the paired difference to dense, size."""
        weights = fingerprint(model, {**model.config})
        key = {**self.key(), "weights": weights, "part": part, "bits": bits}

        def compute():
            same = self.judged_before(weights, part)
            if same is not None:  # e.g. the scan's choice pruned by hand: part 1's fine-grained variant
                logger.info("%s: the same weights as %s, judged on the same val pairs: read back", name, same["name"])
                return {**same, "name": name, "method": "by hand", "bits": bits}
            path = self.out / "walkthrough" / f"{safe_name(name, 'walk-through variant')}.pth"
            path = save_checkpoint(model, path, {"experiment": self.cfg["name"], "walkthrough": name})
            summary = self.judge(model, name)["summary"]
            return variant_row(name, "by hand", summary, path, model, self.dense(), part, bits)

        self.baseline()  # the dense per-pair values the paired differences need
        row = self.stage(f"walkthrough-{name}", key, compute)
        self.save_cache()
        return row

    def judged_before(self, weights: str, part: str) -> dict[str, Any] | None:
        """The row of a model with these very weights (``fingerprint``) that a stage of this run folder judged on
        the current val pairs, its checkpoint intact; None if there is none."""
        judged_on = digest(self.key())
        for path in sorted((self.out / "stages").glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            inputs, result = record.get("inputs"), record.get("result")
            if not (isinstance(inputs, dict) and isinstance(result, dict)) or result.get("weights") != weights:
                continue
            if result.get("part") == part and digest({k: inputs.get(k) for k in self.key()}) == judged_on:
                if _files_intact(result):
                    return result
        return None

    def profile(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """MACs of the dense model and every variant, and their latencies timed round-robin in this process (so
        machine drift hits them alike and the ratios to dense are side by side)."""
        pc = self.cfg["profile"]

        def compute():
            if pc.get("threads"):
                torch.set_num_threads(pc["threads"])
            loaded, labels = {}, {}
            for r in rows:
                loaded[r["name"]] = m = load_checkpoint(r["checkpoint"])
                labels[r["name"]] = execution(m, None if r["method"] in ("dense", "reference") else r)
            models = side_by_side(loaded, tuple(pc["resize"]), pc["num_keypoints"], pc["repeats"], self.device)
            for r in rows:
                models[r["name"]].update(execution=labels[r["name"]], checkpoint_sha1=r["checkpoint_sha1"])
            return {"threads": torch.get_num_threads(), "device": str(self.device), "cpu": key["cpu"], "models": models}

        # counter 2: attention on CPU and ONNX Runtime graphs counted (a profile from before is recomputed)
        key = {"profile": pc, "models": {r["name"]: r["checkpoint_sha1"] for r in rows}, "macs_counter": 2}
        key["cpu"] = cpu_name()  # timings of another machine are not this one's: measured again
        return self.stage("profile", key, compute)

    def animation(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Match files of the dense model and of the smallest variant on a camera sweep, and the GIF drawn from them."""
        ac, vc = self.cfg.get("animation"), self.cfg["val"]
        if not ac or len(rows) < 2:
            return {}
        compressed = [r for r in rows[1:] if r["method"] != "reference"]
        if not compressed:
            return {}
        shown = [rows[0], min(compressed, key=lambda r: (r["size_bytes"], -r["auc@3px"]))]

        def compute():
            source = open_source(vc["source"])
            photo = ac["photo"] or split_names(source.names, vc["split"], vc["val_fraction"])[0]
            seq = SequencePairs(source, photo, ac["frames"], tuple(vc["size"]), vc["seed"])
            folder = self.out / "animation"
            pairs_file = seq.export(folder / "sequence_pairs")
            dirs = [folder / digest(r["name"]) for r in shown]
            for r, folder_r in zip(shown, dirs):
                m = load_checkpoint(r["checkpoint"]).to(self.device)
                for pair in seq:
                    pred = predict(m, seq, pair, self.cache)
                    save_npz(
                        folder_r / f"{pair.stems[0]}_{pair.stems[1]}_matches.npz",
                        keypoints0=pred["keypoints0"],
                        keypoints1=pred["keypoints1"],
                        matches=pred["matches0"],
                        match_confidence=pred["matching_scores0"],
                    )
            gif = make_gif(
                dirs,
                pairs_file,
                self.out / "figures" / "dense_vs_compressed",
                labels=[f"{r['name']} ({r['size_bytes'] / 1e6:.1f} MB)" for r in shown],
                resize=vc["size"],
            )
            return {"gif": str(gif), "models": [r["name"] for r in shown]}

        key = {"animation": ac, "val": vc, "models": [r["checkpoint_sha1"] for r in shown]}
        return self.stage("animation", key, compute)


def _files_intact(result: Any) -> bool:
    """Whether the checkpoint a stage result names (if any) is still the file it wrote."""
    if not isinstance(result, dict) or "checkpoint_sha1" not in result:
        return True
    path = Path(result.get("checkpoint", ""))
    return path.is_file() and file_sha1(path) == result["checkpoint_sha1"]


def variant_row(
    name: str,
    method: str,
    summary: dict[str, Any],
    path: Path,
    model: Matcher,
    dense: Matcher | None = None,
    part: str | None = None,
    bits: float | None = None,
    finetuned: bool = False,
) -> dict[str, Any]:
    """One variant as results.json lists it (costs that need the profiler are added by the report); a reference
    (another pipeline: no ``dense`` it was made from) has no sparsity, part or bits."""
    params = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    removed = None
    if dense is not None and part is not None:
        nonzero = sum(int((w != 0).sum()) for w in prunable_weights(getattr(model, part)).values())
        total = sum(w.numel() for w in prunable_weights(getattr(dense, part)).values())
        removed = round(1 - nonzero / max(1, total), 4)
    return {
        "name": name,
        "method": method,
        "part": part,
        "sparsity": removed,
        "bits": bits,
        "finetuned": finetuned,
        **{k: summary[k] for k in METRICS if k in summary},
        "intervals": {k: v for k, v in summary.get("intervals", {}).items() if k in METRICS},
        **(
            {"vs_dense": {k: v for k, v in summary["vs_dense"].items() if k in METRICS}}
            if "vs_dense" in summary
            else {}
        ),
        "size_bytes": path.stat().st_size,
        **coding_summary(path),
        "weights": fingerprint(model, {**model.config}),  # what was judged: the same weights give the same row
        "params": params(model),
        "nonzero_params": sum(int((p != 0).sum()) for p in model.parameters()),
        "checkpoint": str(path),
        "checkpoint_sha1": file_sha1(path),
    }


# ----------------------------------------------------------------------------- the whole run


def run(
    config: dict[str, Any],
    out: str | Path,
    kinds: tuple[str, ...] = ("pruning", "quantization"),
    dry_run: bool = False,
    progress: bool = True,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment's variants of ``kinds``, then write results.json, figures and report.md
    (``report=False``: the stages only, no profile, animation or report; returns [] as a dry run does)."""
    config = checked_experiment(config)  # the whole plan, before the baseline runs
    writable_location(out, folder=True, what="run folder")
    seed_everything(config["seed"])
    exp = Experiment(config, out, dry_run, progress)
    if not dry_run:
        write_run_config(exp.out, config)
    else:
        print(f"plan for {exp.out} ({', '.join(kinds)}):")
    dense = exp.baseline()
    variants: dict[str, dict[str, Any]] = {}
    specs = [s for kind in ("pruning", "quantization") for s in config.get(kind) or []]
    wanted = {s["name"] for kind in kinds for s in config.get(kind) or []}
    for spec in specs:  # the other kind's variants run only when a wanted one builds on them; else they are read
        exp.read_only = spec["name"] not in wanted and not any(
            s.get("base") == spec["name"] for s in specs if s["name"] in wanted
        )
        rows = [r for r in exp.variant(spec, variants) if r]
        variants[spec["name"]] = {
            "spec": spec,
            "rows": rows,
            "key": digest([spec, rows[-1]["checkpoint_sha1"] if rows else None]),
        }
    exp.read_only = False
    references = [exp.reference(spec) for spec in config["references"]]
    exp.save_cache()
    if dry_run:
        then = f"the {', '.join(config['tiers'])} tiers, " if config["tiers"] else ""
        print(f"  then: {then}profile, results.json, figures, report.md" if report else "  then: stop (no report)")
        return []
    if not report:  # e.g. the main job's first script: the second profiles every variant side by side
        return []
    dense = {k: v for k, v in dense.items() if k != "pairs"}  # per-pair values stay in the stage record
    rows = [dense, *(r for v in variants.values() for r in v["rows"]), *references]
    rows = judge_tiers(exp, rows)  # every row on every tier, and the verdict from the verdict tiers
    exp.profile(rows)  # every current variant, side by side in one run
    exp.animation(rows)
    return write_report(exp, rows)


def experiment_config(
    files: list[str], overrides: list[str] = (), base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Experiment YAML files merged in order over ``base`` (the defaults), then ``key.sub=value`` overrides; the
    result is checked whole (``checked_experiment``)."""
    config = load_config(files, overrides, base or DEFAULTS)
    if config.get("source"):
        config = merge_config(
            config,
            {
                "val": {"source": config["source"]},
                "calibration": {"source": config["source"]},
                "finetune": {"train": {"source": config["source"]}},
            },
        )
    return checked_experiment(config)


def main(kinds: tuple[str, ...], description: str, argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=description)
    p.add_argument(
        "--config",
        nargs="+",
        default=[str((ROOT / "configs") / "demo.yaml")],
        help="YAML experiment (default: the demo); several files are merged in order",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/<name of the config>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. val.num_pairs=10")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print the plan and stop")
    p.add_argument(
        "--update-readme",
        "--update_readme",
        dest="update_readme",
        action="store_true",
        help="put the report into docs/results/demo.md and the ready pipelines' table into README.md (the demo)",
    )
    p.add_argument(
        "--no-report",
        "--no_report",
        dest="report",
        action="store_false",
        help="run the stages only, without profile, animation or report (the README's main job passes it to the "
        "first script: the second profiles every variant side by side and writes the report)",
    )
    args = p.parse_args(argv)
    if args.update_readme and not args.report:
        raise InputError("--update-readme needs the report: leave out --no-report")
    config = experiment_config(args.config, args.set)
    out = Path(args.out or Path("runs") / config["name"])
    if args.update_readme:
        writable_location(ROOT / "README.md", what="--update-readme")
    rows = run(config, out, kinds, args.dry_run, report=args.report)
    if not args.report and not args.dry_run:
        print(f"stages done in {out} (--no-report: no profile or report)")
    if rows:
        print((out / "report.md").read_text())
        print(f"written: {out / 'report.md'}, {out / 'results.json'}")
        if args.update_readme:
            update_readme(out)
