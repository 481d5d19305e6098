"""The functions that make the README's tables, against means and stds computed by hand on made-up runs."""
import math

import pytest

from rmsecrets.experiments import against, mean_std
from rmsecrets.iterative import summarise_rounds
from rmsecrets.losses import summarise_tricks
from rmsecrets.ppo import summarise_ppo

pstd = lambda *v: math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v))   # the population std, by hand


def test_mean_std_and_the_paired_verdict_by_hand():
    rows = [{"method": "a", "x": 1.0}, {"method": "b", "x": 10.0}, {"method": "a", "x": 3.0}, {"method": "b", "x": 14.0}]
    a, b = mean_std(rows, ("x",), vs_first=True)
    assert (a["method"], a["seeds"], a["x"], a["x_std"]) == ("a", 2, 2.0, 1.0)
    assert (b["x"], b["x_std"], b["x_vs_a"]) == (12.0, 2.0, 10.0)
    rows = [{"method": m, "seed": s, "x": x} for m, xs in (("a", (1.0, 3.0, 2.0, 4.0, 5.0)), ("b", (2.0, 3.5, 3.0, 4.0, 6.5)))
            for s, x in enumerate(xs)]
    v = against(rows, "x", "a")["b"]                          # differences 1, 0.5, 1, 0, 1.5: mean 0.8, sample std √0.325
    half = 2.7764451051977987 * math.sqrt(0.325 / 5)          # Student's t(0.975, 4) × the standard error
    assert (v["n"], v["word"]) == (5, "better") and v["diff"] == pytest.approx(0.8)
    assert (v["lo"], v["hi"]) == (pytest.approx(0.8 - half), pytest.approx(0.8 + half))


def test_summarise_tricks_by_hand():
    rows = [{"method": m, "seed": s, "accuracy": acc, "accuracy_true": t, "accuracy_agree": g, "train_loss": l}
            for m, s, acc, t, g, l in [("bt", 0, 0.6, 0.70, 0.8, 0.5), ("bt", 1, 0.7, 0.74, 0.9, 0.4),
                                       ("flip", 0, 0.5, 0.80, 0.7, 0.6), ("flip", 1, 0.6, 0.76, 0.8, 0.7),
                                       ("flip", 2, 0.4, 0.78, 0.6, 0.8)]]
    bt, flip = summarise_tricks(rows)
    assert bt["accuracy_true"] == pytest.approx(0.72) and bt["accuracy_true_std"] == pytest.approx(0.02)
    assert flip["seeds"] == 3 and flip["accuracy_true"] == pytest.approx(0.78)
    assert flip["accuracy_true_std"] == pytest.approx(pstd(0.80, 0.76, 0.78)) and flip["train_loss"] == pytest.approx(0.7)


def _evals(start: float, end: float, kl: float):
    e = lambda g, k: {"gold": g, "proxy": g / 2, "kl": k, "spread": 0.5, "length": 10.0}
    return [{"iteration": 0, **e(start, 0.0)}, {"iteration": 5, **e(end, kl)}]


def test_summarise_ppo_by_hand():
    rows = [{"name": "bt", "seed": 0, "evals": _evals(1.0, 2.0, 1.0)}, {"name": "bt", "seed": 1, "evals": _evals(1.2, 1.6, 3.0)}]
    (bt,) = summarise_ppo(rows)
    assert bt["gold_start"] == pytest.approx(1.1) and bt["gold"] == pytest.approx(1.8) and bt["gold_std"] == pytest.approx(0.2)
    assert bt["gold_gain"] == pytest.approx((1.0 + 0.4) / 2) and bt["gold_gain_std"] == pytest.approx(0.3)   # per seed, then ±
    assert bt["kl"] == pytest.approx(2.0) and bt["kl_std"] == pytest.approx(1.0) and "gold_start_std" not in bt


def test_summarise_rounds_by_hand():
    def run(name, start, golds, ranks):
        return {"name": name, "rounds": [{"gold_start": start, "gold": g, "kl": 0.1 * i, "before": {},
                                          "after": {"ranking_vs_gold": r, "normalised_spread": 0.2}}
                                         for i, (g, r) in enumerate(zip(golds, ranks), 1)]}
    runs = [run("MetaRM", 1.0, (2.0, 1.5), (0.7, 0.5)), run("MetaRM", 1.4, (2.4, 1.1), (0.9, 0.4))]
    r0, r1, r2 = summarise_rounds(runs)
    assert (r0["round"], r0["gold"], r0["gold_std"]) == (0, pytest.approx(1.2), pytest.approx(0.2))
    assert r1["gold"] == pytest.approx(2.2) and r1["ranking_vs_gold"] == pytest.approx(0.8) and r1["ranking_vs_gold_std"] == pytest.approx(0.1)
    assert r2["gold"] == pytest.approx(1.3) and r2["gold_std"] == pytest.approx(0.2) and r2["kl"] == pytest.approx(0.2)
