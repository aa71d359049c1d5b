"""An experiment's variants judged on several sets of pairs (tiers), and the verdict those give.

The ``val`` pairs are the ones the experiment decides on (the sensitivity scan's check, finetuning's progress);
``tiers`` names more pair sets, each a pairs section over ``val``'s (another tier, another number of pairs). Every
variant and reference is judged on each against the dense model on the same pairs, one stage per model and tier
(keyed by the checkpoint judged), and ``verdict.tiers`` names the tiers whose paired intervals decide whether a
variant holds within ``verdict.within`` of dense: on mild homographies the dense model is saturated and a loss cannot
show, so a verdict rests on the tiers where it can.
"""

from __future__ import annotations

from typing import Any

from data.pairs import PAIRS, PAIRS_CHECKS, TIERS, make_pairs
from helper import Check, InputError, safe_name
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import VERDICT, evaluate
from pipeline.metrics import pair_floats, pair_values, paired_difference

# A tier's section: the pair settings of ``val`` it changes. Estimator and inlier threshold: its own, else val's for
# a homography tier, else the pose protocol's (VERDICT["pose"]: a threshold in pixels means another thing there).
TIER: dict[str, Any] = {
    **{k: v for k, v in PAIRS.items() if k != "augment"},
    "estimator": VERDICT["homography"]["method"],
    "ransac_threshold": VERDICT["homography"]["ransac_threshold"],
}
VERDICT_DEFAULTS: dict[str, Any] = {"tiers": [], "within": 0.01}
# Each tier's numbers kept in a row: the homography AUCs and the pose AUCs, match precision and recall.
KEPT = ("auc@1px", "auc@3px", "auc@5px", "auc@10px", "auc@5deg", "auc@10deg", "auc@20deg", "precision", "recall")
KEPT += ("failures",)


# The config checks of ``tiers`` (a mapping of names to sections) and ``verdict``.
TIER_CHECKS: dict[str, Check] = {
    "tiers": Check(
        kind=dict, values=Check(kind=dict, schema=TIER, checks={k: c for k, c in PAIRS_CHECKS.items() if k in TIER})
    ),
    "verdict.tiers": Check(each=Check(kind=str)),
    "verdict.within": Check(lo=0),
}


def sections(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every tier's full pairs section, in the config's order: ``val``'s first, named by its tier."""
    val = {k: v for k, v in cfg["val"].items() if k != "every"}
    out = {val["tier"]: val}
    for name, own in (cfg.get("tiers") or {}).items():
        section = {**val, **own}
        if "scenes" in TIERS[section["tier"]] and not {"estimator", "ransac_threshold"} & own.keys():
            section.update(estimator=VERDICT["pose"]["method"], ransac_threshold=VERDICT["pose"]["ransac_threshold"])
        out[name] = section
    return out


def check(cfg: dict[str, Any]) -> None:
    """Tier names that can name files and differ from val's tier; verdict tiers that exist; no DLT on pose pairs."""
    for name in cfg.get("tiers") or {}:
        safe_name(name, "tier name")
        if name == cfg["val"]["tier"]:
            raise InputError(f"tiers.{name}: the val pairs are already the {name!r} tier: give this one another name")
    all_sections = sections(cfg)
    for name, section in all_sections.items():
        if "scenes" in TIERS[section["tier"]] and section["estimator"] == "dlt":
            raise InputError(f"tiers.{name}: pose pairs need a relative-pose estimator, not dlt")
    for name in cfg["verdict"]["tiers"]:
        if name not in all_sections:
            raise InputError(f"verdict.tiers: no tier {name!r} (the tiers: {', '.join(all_sections)})")


def judge(exp: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (dense first) with ``tiers``: each tier's numbers, intervals and paired difference to dense; and
    ``verdict``. Val's tier comes from the rows themselves, the others from a stage per model and tier."""
    all_sections = sections(exp.cfg)
    val_tier = exp.cfg["val"]["tier"]
    dense = rows[0]
    out = [{**r, "tiers": {val_tier: {**kept(r), "num_pairs": exp.cfg["val"]["num_pairs"]}}} for r in rows]
    for name, section in list(all_sections.items())[1:]:
        pairs = make_pairs(section)

        def judged(model, desc):
            return evaluate(
                model.to(exp.device),
                pairs,
                exp.cache,
                method=section["estimator"],
                ransac_threshold=section["ransac_threshold"],
                progress=exp.progress,
                desc=f"{desc} ({name})",
            )

        def dense_compute():
            result = judged(exp.dense(), "dense")
            return {**kept(result["summary"]), "kind": pairs[0].kind, "pairs": pair_values(result["rows"])}

        key = {"tier": section, "dense": dense["checkpoint_sha1"]}
        base = exp.stage(f"tier-{name}-dense", key, dense_compute)
        if not base:  # a dry run
            continue
        reference = pair_floats(base["pairs"])
        for row in out:
            if row is out[0]:
                row["tiers"][name] = {k: v for k, v in base.items() if k != "pairs"}
                continue

            def compute(row=row):
                result = judged(load_checkpoint(row["checkpoint"]), row["name"])
                vs = paired_difference(result["rows"], reference)
                return {**kept({**result["summary"], "vs_dense": vs}), "kind": pairs[0].kind}

            stage_key = {**key, "model": row["checkpoint_sha1"]}
            row["tiers"][name] = exp.stage(f"tier-{name}-{row['name']}", stage_key, compute)
        exp.save_cache()  # once a tier (the file holds every detection: hundreds of MB)
    for row in out:
        row["tiers"][val_tier]["kind"] = "homography" if "scenes" not in TIERS[val_tier] else "pose"
        row["verdict"] = verdict(row, exp.cfg["verdict"])
    return out


def kept(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary's (or row's) numbers, intervals and differences to dense of the KEPT metrics."""
    pick = lambda d: {k: v for k, v in d.items() if k in KEPT}  # noqa: E731
    out = {"num_pairs": summary.get("num_pairs"), **pick(summary), "intervals": pick(summary.get("intervals", {}))}
    if "vs_dense" in summary:
        out["vs_dense"] = pick(summary["vs_dense"])
    return out


def verdict(row: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Whether a row holds within ``within`` of dense on each verdict tier, by the paired interval of the tier's
    verdict metric (VERDICT: AUC@3px on homographies, AUC@10° on poses): ``within`` when the interval's lower end is
    at −within or above (any loss is smaller, at 95 %), ``loss`` when the interval lies below 0 and reaches past
    −within, ``unresolved`` when it holds 0 but reaches past −within (too few pairs to tell). ``holds``: ``within``
    on every verdict tier, ``loss`` on any, else ``unresolved``."""
    within, per_tier = settings["within"], {}
    for name in settings["tiers"]:
        tier = row["tiers"].get(name) or {}
        metric = VERDICT[tier.get("kind", "homography")]["metric"]
        d = tier.get("vs_dense", {}).get(metric)
        if d is None:
            continue
        low, high = d["interval"]
        state = "within" if low >= -within else "loss" if high < 0 else "unresolved"
        per_tier[name] = {"metric": metric, "difference": d["difference"], "interval": [low, high], "state": state}
    states = {t["state"] for t in per_tier.values()}
    overall = None
    if per_tier:
        overall = "within" if states == {"within"} else "loss" if "loss" in states else "unresolved"
    return {"within": within, "tiers": per_tier, "holds": overall}
