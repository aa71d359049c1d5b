"""Bootstrap intervals over pairs and paired differences between two models on the same pairs."""

import numpy as np
import pytest

from helper import InputError
from pipeline.metrics import BOOTSTRAP, auc, auc_batch, format_summary, intervals, paired_difference, summarize


def rows_of(errors, precision=None, names=None):
    precision = np.linspace(0.5, 1.0, len(errors)) if precision is None else precision
    return [
        {"name0": names[i] if names else f"p{i}", "name1": "w", "corner_error": float(e), "precision": float(p),
         "recall": float(p) ** 2}
        for i, (e, p) in enumerate(zip(errors, precision))
    ]  # fmt: skip


def noisy(n, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    e = rng.exponential(2.0, n) * scale
    e[rng.random(n) < 0.1] = np.inf  # failures stay in every resample
    return rows_of(e, rng.random(n))


def test_batched_auc_is_the_official_curve():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        e = np.round(rng.exponential(3, n), int(rng.integers(0, 3)))  # ties and errors exactly at a threshold
        e[rng.random(n) < 0.2] = np.inf
        expected = []
        sorted_e = np.r_[0.0, np.sort(e)]
        recall = np.r_[0.0, np.arange(1, n + 1) / n]
        for t in (1, 3, 5, 10):
            last = np.searchsorted(sorted_e, t)
            r, x = np.r_[recall[:last], recall[last - 1]], np.r_[sorted_e[:last], t]
            expected.append(float(np.sum((x[1:] - x[:-1]) * (r[1:] + r[:-1]) / 2) / t))
        assert auc(e, (1, 3, 5, 10)) == pytest.approx(expected, abs=1e-12)
    assert auc_batch(np.full((2, 3), np.inf), (3,)).tolist() == [[0.0], [0.0]]


def test_every_summary_metric_has_an_interval_around_it():
    s = summarize(noisy(80))
    for k in ("auc@1px", "auc@3px", "auc@5px", "auc@10px", "precision", "recall"):
        low, high = s["intervals"][k]
        assert low <= s[k] <= high and low < high
    assert "intervals" not in summarize(noisy(80), bootstrap=None)
    assert "[" in format_summary(s).splitlines()[1]


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it():
    rows = noisy(60)
    assert intervals(rows) == intervals(rows)
    assert intervals(rows, seed=1) != intervals(rows, seed=0)
    assert intervals(rows)["auc@3px"] == summarize(rows)["intervals"]["auc@3px"]  # the default is BOOTSTRAP's
    assert BOOTSTRAP["seed"] == 0 and BOOTSTRAP["level"] == 0.95


def test_a_model_against_itself_differs_by_exactly_zero():
    rows = noisy(50)
    for k, d in paired_difference(rows, rows).items():
        assert d["difference"] == 0.0 and d["interval"] == [0.0, 0.0] and d["within_noise"], k


def test_intervals_shrink_as_pairs_are_added():
    widths, paired = [], []
    for n in (25, 100, 400):
        rows = noisy(n, seed=n)
        low, high = intervals(rows)["auc@3px"]
        widths.append(high - low)
        worse = [{**r, "corner_error": r["corner_error"] * 1.3} for r in rows]
        d = paired_difference(worse, rows)["auc@3px"]
        paired.append(d["interval"][1] - d["interval"][0])
    assert widths[0] > widths[1] > widths[2]
    assert paired[0] > paired[1] > paired[2]


def test_the_paired_interval_is_narrower_than_the_unpaired_one_and_decides_within_noise():
    rows = noisy(200)
    worse = [{**r, "corner_error": r["corner_error"] * 1.3} for r in rows]  # every pair a little worse
    d = paired_difference(worse, rows)["auc@3px"]
    assert d["difference"] < 0 and d["interval"][1] < 0 and not d["within_noise"]
    unpaired = intervals(worse)["auc@3px"]
    assert d["interval"][1] - d["interval"][0] < (unpaired[1] - unpaired[0]) / 3
    shuffled = [{**r, "corner_error": x["corner_error"]} for r, x in zip(rows, rows[1:] + rows[:1])]
    s = paired_difference(shuffled, rows)["auc@3px"]  # the same errors on other pairs: no real change
    assert s["within_noise"] == (s["interval"][0] <= 0 <= s["interval"][1])


def test_paired_comparison_needs_the_same_pairs():
    rows = noisy(10)
    with pytest.raises(InputError, match="same pairs"):
        paired_difference(rows[:9], rows)
    with pytest.raises(InputError, match="same pairs"):
        paired_difference(rows_of([1.0] * 10, names=[f"q{i}" for i in range(10)]), rows)


def test_photo_clustered_bootstrap_resamples_whole_photos():
    rows = noisy(60)
    assert intervals(rows, by="name0") == intervals(rows)  # one pair per photo: the pair bootstrap, draw for draw
    rng = np.random.default_rng(5)
    photos, per_photo = 30, 5
    rows = noisy(photos * per_photo, seed=5)
    for i, r in enumerate(rows):
        r["name0"] = f"photo{i // per_photo}"
    effect = np.repeat(rng.choice([0.6, 1.8], photos), per_photo)  # a photo is easier or harder for the variant
    worse = [{**r, "corner_error": r["corner_error"] * f} for r, f in zip(rows, effect)]
    pairs, photo = paired_difference(worse, rows)["auc@3px"], paired_difference(worse, rows, by="name0")["auc@3px"]
    width = lambda d: d["interval"][1] - d["interval"][0]  # noqa: E731
    assert photo["difference"] == pairs["difference"] and width(photo) > 1.5 * width(pairs)
    assert all(d["interval"] == [0.0, 0.0] for d in paired_difference(rows, rows, by="name0").values())
