"""Sensitivity scans (prune one group at a time, evaluate) and the per-group sparsity choice they enable.

A scan takes an evaluation callable instead of importing evaluate.py. Its rows are appended to a CSV as
they come, so a killed scan resumes where it stopped.

Noise: when the evaluation also returns each metric's paired difference to the dense model with its 95 % interval
(``diff_<metric>``, ``diff_<metric>_low``, ``diff_<metric>_high``; ``flat_differences``), a group's damage is
the largest loss that interval allows (``-diff_low``), never the point estimate: a group that "improves" by noise
still costs the width of its interval, so it is not read as free. The verified choice is accepted when the lower
bound of its paired AUC difference to dense is within the budget (we are 97.5 % sure the loss is no larger).
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from compression.tensors import prunable_weights
from helper import InputError
from models.matching import fingerprint

from .fine_grained import magnitude_mask

logger = logging.getLogger(__name__)

DENSE = "__dense__"
METRICS = ("auc@1px", "auc@3px", "auc@5px", "precision", "recall", "agreement")
DIFFERENCES = tuple(f"diff_{m}{end}" for m in METRICS for end in ("", "_low", "_high"))


def flat_differences(vs_dense: Mapping[str, Mapping]) -> dict[str, float]:
    """``paired_difference``'s {metric: {difference, interval}} as flat scan columns (diff_<m>, _low, _high)."""
    out = {}
    for m, d in vs_dense.items():
        out.update(
            {f"diff_{m}": d["difference"], f"diff_{m}_low": d["interval"][0], f"diff_{m}_high": d["interval"][1]}
        )
    return out


def loss_bound(row: Mapping, metric: str, baseline: float) -> float:
    """The loss of ``metric`` a row is charged: the largest its paired interval allows, or (rows without one)
    the baseline minus its value."""
    if row.get(f"diff_{metric}_low") not in (None, ""):
        return -float(row[f"diff_{metric}_low"])
    return baseline - float(row[metric])


def groups_by_prefix(model: nn.Module, depth: int, include: Sequence[str] = ("*",)) -> dict[str, list[str]]:
    """Group prunable weights by the first ``depth`` components of their names (e.g. 'transformers.3.self_attn')."""
    groups: dict[str, list[str]] = {}
    for name in prunable_weights(model):
        if any(fnmatch.fnmatchcase(name, p) for p in include):
            groups.setdefault(".".join(name.split(".")[:depth]), []).append(name)
    return groups


def group_sizes(model: nn.Module, groups: Mapping[str, list[str]]) -> dict[str, int]:
    weights = prunable_weights(model)
    return {g: sum(weights[n].numel() for n in names) for g, names in groups.items()}


def _read_rows(path: Path, model_id: str) -> list[dict]:
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("model") == model_id]
    except (OSError, UnicodeDecodeError, csv.Error) as e:  # rows are a cache of evaluations: redo them all
        logger.warning("scan file %s is unreadable (%s): scanning again", path, e)
        path.unlink(missing_ok=True)
        return []
    parsed = []
    for r in rows:
        try:
            parsed.append({k: (v if k in ("group", "model") else float(v)) for k, v in r.items()})
        except (TypeError, ValueError):  # a row cut short by a killed run: that evaluation is redone
            logger.warning("scan file %s: dropping a damaged row (%s)", path, r.get("group"))
    return parsed


def _append_row(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"  # a row a killed run left unfinished: the new one starts on its own line
    with open(path, "a", newline="") as f:
        if not new and cut:
            f.write("\n")
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def scan(
    model: nn.Module,
    groups: Mapping[str, list[str]],
    sparsities: Sequence[float],
    evaluate_fn: Callable[[], Mapping[str, float]],
    csv_path: str | os.PathLike,
    metrics: Sequence[str] = METRICS + DIFFERENCES,
    progress: bool = True,
    transform: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
) -> list[dict]:
    """Prune each group alone at each sparsity (by magnitude), evaluate, restore; rows go to ``csv_path``.

    ``transform(weight, level)`` replaces magnitude pruning by another per-tensor change (e.g. k-means at a bit
    width, with bit widths as the levels); the CSV column is still called ``sparsity``.
    Rows of an earlier, interrupted scan of the same weights are reused. The model is left as it was.
    """
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_id = fingerprint(model)
    rows = _read_rows(path, model_id)
    done = {(r["group"], round(r["sparsity"], 6)) for r in rows}
    weights = prunable_weights(model)
    sizes = group_sizes(model, groups)
    todo = [(DENSE, 0.0)] + [(g, float(s)) for g in groups for s in sparsities if s > 0 or transform]
    todo = [(g, s) for g, s in todo if (g, round(s, 6)) not in done]
    if len(todo) < 1 + len(groups) * len([s for s in sparsities if s > 0 or transform]):
        logger.info("resuming scan: %d evaluations done, %d to go", len(rows), len(todo))
    bar = tqdm(todo, desc="sensitivity", disable=not progress)
    for group, sparsity in bar:
        bar.set_postfix_str(f"{group} @ {sparsity:.2f}")
        saved = {n: weights[n].detach().clone() for n in groups.get(group, [])}
        try:
            with torch.no_grad():
                for n in saved:
                    if transform is None:
                        weights[n].mul_(magnitude_mask(weights[n], sparsity))
                    else:
                        weights[n].copy_(transform(weights[n], sparsity))
            result = evaluate_fn()
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    weights[n].copy_(w)
        row = {
            "model": model_id,
            "group": group,
            "sparsity": sparsity,
            "params": sizes.get(group, 0),
            **{m: float(result[m]) for m in metrics if m in result},
        }
        _append_row(path, row)
        rows.append(row)
    return rows


def choose_sparsities(
    rows: Sequence[Mapping],
    budget: float,
    metric: str = "auc@3px",
    resolution: int = 200,
    gain: Callable[[float], float] = float,
) -> dict[str, float]:
    """Per-group sparsities that remove the most parameters while the summed predicted drop stays within budget.

    The drop of a group at a sparsity is ``loss_bound`` (the largest loss its paired interval allows), made
    monotone in the compression (a sparser layer never predicts less damage than a denser one) and at least zero;
    drops are assumed additive (conservative: a sum of bounds exceeds the bound of a sum). Solved exactly as a
    multiple-choice knapsack over a discretised budget.
    ``gain(level)`` is what a level saves per parameter (the sparsity itself; for bit widths e.g. 4 - bits).
    """
    baseline = dense_metric(rows, metric)
    options: dict[str, list[tuple[int, float, float]]] = {}
    worst: dict[str, float] = {}
    for r in sorted((r for r in rows if r["group"] != DENSE), key=lambda r: (r["group"], gain(float(r["sparsity"])))):
        drop = worst[r["group"]] = max(worst.get(r["group"], 0.0), loss_bound(r, metric, baseline))
        if drop <= budget and gain(float(r["sparsity"])) > 0:
            cost = int(round(drop / budget * resolution)) if budget > 0 else 0
            options.setdefault(r["group"], []).append(
                (cost, gain(float(r["sparsity"])) * float(r["params"]), float(r["sparsity"]))
            )
    best = {0: (0.0, {})}  # spent budget units -> (removed params, choice)
    for group, opts in options.items():
        nxt = dict(best)
        for spent, (removed, choice) in best.items():
            for cost, gain, sparsity in opts:
                b = spent + cost
                if b <= resolution and (b not in nxt or nxt[b][0] < removed + gain):
                    nxt[b] = (removed + gain, {**choice, group: sparsity})
        best = nxt
    return max(best.values(), key=lambda v: v[0])[1]


def dense_metric(rows: Sequence[Mapping], metric: str = "auc@3px") -> float:
    dense = [r for r in rows if r["group"] == DENSE]
    if not dense:
        raise ValueError("the scan has no dense baseline row")
    return float(dense[0][metric])


def choose_verified(
    rows: Sequence[Mapping],
    budget: float,
    evaluate_choice: Callable[[dict[str, float]], Mapping[str, float]],
    metric: str = "auc@3px",
    shrink: float = 0.5,
    attempts: int = 4,
    choose_metric: str | None = None,
    choose_budget: float | None = None,
    gain: Callable[[float], float] = float,
) -> tuple[dict[str, float], Mapping[str, float], list]:
    """Choose within a budget, evaluate the combination for real, and tighten the predicted budget while the
    real loss of ``metric`` (``loss_bound``: the lower end of its paired interval to dense, when the evaluation
    gives one) exceeds ``budget`` (per-layer drops do not simply add up).

    The choice may be made on a smoother scan metric (``choose_metric`` with ``choose_budget``, e.g. agreement
    with the dense matches, which varies less from pair to pair than a homography AUC). Returns (choice, result,
    history).
    """
    baseline = dense_metric(rows, metric)
    choose_metric = choose_metric or metric
    predicted = budget if choose_budget is None else choose_budget
    history = []
    for _ in range(attempts):
        choice = choose_sparsities(rows, predicted, choose_metric, gain=gain)
        result = evaluate_choice(choice)
        loss = loss_bound(result, metric, baseline)
        history.append(
            {
                "predicted_budget": predicted,
                "choose_metric": choose_metric,
                "choice": choice,
                metric: float(result[metric]),
                "loss_bound": loss,
                **{
                    k: result[k] for k in (f"diff_{metric}", f"diff_{metric}_low", f"diff_{metric}_high") if k in result
                },
            }
        )
        logger.info("choice within predicted %.4f: %s loss bound %.4f (budget %.4f)", predicted, metric, loss, budget)
        if loss <= budget:
            break
        predicted *= shrink
    return choice, result, history


def expand(groups: Mapping[str, list[str]], choice: Mapping[str, float]) -> dict[str, float]:
    """Group sparsities -> per-parameter sparsities for ``prune_fine_grained``; a group that is not one is an
    InputError naming the nearest group and listing them all."""
    for g in choice:
        if g not in groups:
            near = difflib.get_close_matches(str(g), list(groups), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise InputError(f"no group {g!r} ({hint}the groups: {', '.join(groups)})")
    return {name: s for g, s in choice.items() for name in groups[g]}
