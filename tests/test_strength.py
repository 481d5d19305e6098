"""Preference strength: the equations, out-of-fold isolation, the margin column, the released format, the CLI."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import rmsecrets.strength as S
from rmsecrets.data import PairCollator, load_preferences, tokenize_pairs
from rmsecrets.losses import LABEL_TRICKS
from rmsecrets.train import TrainConfig, bradley_terry, bt_loss, pair_forward, score_pairs, train_reward_model
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

QUICK = S.StrengthConfig(n_voters=2, train=TrainConfig(max_steps=4, batch_size=16, lr=3e-3, max_length=64, progress=False))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_train=160, n_validation=40, n_test=40, seed=4))


@pytest.fixture(scope="module")
def pairs(world, tok):
    ds = tokenize_pairs(world["train"], tok, max_length=64)
    return ds.add_column("pair_id", list(range(len(ds))))


def test_strength_is_mean_and_population_std_of_the_gaps():
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=(5, 50)), rng.normal(size=(5, 50))
    mu, sd = S.strength_stats(c, r)
    np.testing.assert_allclose(mu, (c - r).mean(0))
    np.testing.assert_allclose(sd, np.std(c - r, axis=0, ddof=0))
    assert np.all(np.abs(sd - np.std(c - r, axis=0, ddof=1)) > 1e-6)          # not the sample std
    mu_s, sd_s = S.strength_stats(r, c)
    np.testing.assert_allclose(mu_s, -mu)
    np.testing.assert_allclose(sd_s, sd)


def test_swapping_chosen_and_rejected_negates_a_voters_gaps(pairs, tok):
    model = S.train_voter(pairs, tok, QUICK, 0)
    swapped = pairs.rename_columns({"chosen_input_ids": "x", "rejected_input_ids": "chosen_input_ids"}).rename_column("x", "rejected_input_ids")
    a, b = score_pairs(model, pairs, tok.pad_token_id), score_pairs(model, swapped, tok.pad_token_id)
    mu, sd = S.strength_stats(a["r_chosen"][None], a["r_rejected"][None])
    mu_s, sd_s = S.strength_stats(b["r_chosen"][None], b["r_rejected"][None])
    np.testing.assert_allclose(mu_s, -mu, atol=1e-5)
    np.testing.assert_allclose(sd_s, sd, atol=1e-6)


def test_out_of_fold_never_scores_a_pair_with_a_model_that_trained_on_it(pairs, tok, monkeypatch):
    trained_on, events = {}, []
    real_voter, real_score = S.train_voter, S.score_pairs

    def voter(ds, tokenizer, config, m, fold=0, out_dir=None):
        model = real_voter(ds, tokenizer, config, m, fold, out_dir)
        trained_on[id(model)] = set(ds["pair_id"])
        return model

    def score(model, ds, pad, *a, **k):
        events.append((trained_on[id(model)], set(ds["pair_id"])))
        return real_score(model, ds, pad, *a, **k)

    monkeypatch.setattr(S, "train_voter", voter)
    monkeypatch.setattr(S, "score_pairs", score)
    votes = S.vote(pairs, tok, replace(QUICK, mode="out_of_fold", folds=3))
    assert len(events) == 3 * QUICK.n_voters
    for train_ids, scored_ids in events:
        assert not train_ids & scored_ids
        assert train_ids | scored_ids == set(range(len(pairs)))
    assert sorted(np.bincount(votes.fold)) in ([53, 53, 54], [53, 54, 53], [54, 53, 53])
    assert np.all(votes.chosen_scores != 0)                                      # every pair scored by every voter of its fold


def test_in_sample_voters_differ_only_by_seed_and_are_reproducible(pairs, tok):
    a, b = S.vote(pairs, tok, QUICK), S.vote(pairs, tok, QUICK)
    np.testing.assert_array_equal(a.chosen_scores, b.chosen_scores)
    assert not np.allclose(a.chosen_scores[0], a.chosen_scores[1])             # voter 0 and 1 differ
    c = S.vote(pairs, tok, replace(QUICK, seed=5))
    assert not np.allclose(a.chosen_scores, c.chosen_scores)


def test_margin_column_feeds_the_training_loops_margin_loss(world, pairs, tok):
    votes = S.Votes(np.random.default_rng(1).normal(size=(3, len(pairs))), np.zeros((3, len(pairs))), np.zeros(len(pairs), int), 0.0)
    annotated = S.annotate(pairs, votes)
    np.testing.assert_allclose(annotated["margin"], votes.chosen_scores.mean(0))
    batch = PairCollator.from_tokenizer(tok)([annotated[i] for i in range(8)])
    assert batch["margin"].shape == (8,)
    model = S.train_voter(pairs, tok, QUICK, 0)
    out = pair_forward(model, batch)
    margin = LABEL_TRICKS["margin"](out, batch)                       # reads μ̂ (= the margin column)
    assert torch.equal(margin, bt_loss(out.r_chosen, out.r_rejected, batch["margin"]))
    assert not torch.allclose(margin, bt_loss(out.r_chosen, out.r_rejected))
    assert torch.equal(bradley_terry(out, batch), bt_loss(out.r_chosen, out.r_rejected))   # the plain loss ignores it
    seen = []

    def recording(out, batch):
        seen.append(batch["margin"].clone())
        return bradley_terry(out, batch)

    train_reward_model(S.train_voter(pairs, tok, QUICK, 1), tok, annotated, config=replace(QUICK.train, max_steps=2), loss_fn=recording)
    assert len(seen) == 2 and all(m.shape == (16,) for m in seen)
    assert set(np.round(torch.cat(seen).numpy(), 5)) <= set(np.round(np.array(annotated["margin"], np.float32), 5))


def test_decile_experiment_trains_one_model_on_each_group_alone(world, pairs, tok):
    "One row per group of pairs sorted by μ̂ (weakest first), each the test metrics of a voter trained on that group alone."
    from rmsecrets.train import evaluate
    test = tokenize_pairs(world["validation"], tok, max_length=64)
    margin = np.array(pairs["gold_chosen"]) - np.array(pairs["gold_rejected"])          # the truth stands in for μ̂
    annotated = pairs.add_column("strength_mean", margin.tolist())
    rows = S.decile_experiment(annotated, test, tok, QUICK, n_groups=4)
    parts = S.groups(margin, 4)
    assert [r["group"] for r in rows] == [1, 2, 3, 4] and [r["pairs"] for r in rows] == [len(i) for i in parts] == [40] * 4
    assert [r["mean_strength"] for r in rows] == pytest.approx([margin[i].mean() for i in parts])
    assert rows[0]["mean_strength"] < 0 < rows[1]["mean_strength"] < rows[3]["mean_strength"]   # the wrong labels first
    weakest = evaluate(S.train_voter(annotated.select(parts[0]), tok, QUICK, 0), test, tok.pad_token_id)
    assert (rows[0]["accuracy"], rows[0]["accuracy_true"]) == (weakest["accuracy"], weakest["accuracy_true"])


def test_summary_against_a_constructed_truth():
    n = 400
    rng = np.random.default_rng(0)
    wrong = rng.random(n) < 0.25
    mean = np.where(wrong, -1.0, 1.0) + rng.normal(scale=0.1, size=n)               # a perfect detector
    from datasets import Dataset
    ds = Dataset.from_dict({"strength_mean": mean, "strength_std": np.abs(mean) * 0.1, "label_is_wrong": wrong,
                            "noise": np.where(wrong, "uniform", "none"), "gold_chosen": mean, "gold_rejected": np.zeros(n)})
    s = S.strength_summary(ds, n_extreme=50)
    assert s["auroc_wrong"] == 1.0 and s["auroc_injected"] == 1.0 and s["auroc_uniform"] == 1.0
    assert s["share_negative"] == pytest.approx(wrong.mean())
    assert s["agreement_weakest"] == 0.0 and s["agreement_strongest"] == 1.0
    assert s["spearman_true_margin"] == pytest.approx(1.0)


def test_auroc_and_spearman_match_scikit_learn_and_scipy_on_tied_inputs():
    from scipy.stats import spearmanr                              # both in the dev extra: this test always runs
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y, 1)                                       # with ties
    assert S.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    for _ in range(300):                                           # small inputs, many ties
        n = int(rng.integers(3, 12))
        a, b, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float), rng.random(n) < 0.5
        if 0 < y.sum() < n: assert S.auroc(a, y) == pytest.approx(roc_auc_score(y, a))
        if len(set(a)) > 1 and len(set(b)) > 1: assert S.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_released_layout_recomputes_stored_strength(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(12):
        c, r = rng.normal(size=10), rng.normal(size=10)
        rows.append({"chosen": ["hi", f"answer {i}"], "rejected": ["hi", f"other {i}"], "chosen score list": c.tolist(),
                     "rejected score list": r.tolist(), "mean preference difference": float((c - r).mean()),
                     "std preference difference": float(np.std(c - r))})
    (tmp_path / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_preferences(tmp_path / "valid.jsonl")
    check = S.released_strength_check(ds)
    assert check["mean"] < 1e-9 and check["std_population"] < 1e-9 and check["std_sample"] > 1e-3


def test_cli_strength_writes_the_annotated_pairs(made, tmp_path):
    from rmsecrets.cli import main
    assert main(["strength", "--data", str(made / "w"), "--out", str(tmp_path / "s"), "--n-voters", "2", "--max-steps", "3",
                 "--mode", "out_of_fold"]) == 0
    summary = json.loads((tmp_path / "s" / "strength.json").read_text())
    assert summary["config"]["n_voters"] == 2 and summary["config"]["mode"] == "out_of_fold" and summary["n"] == 240
    back = load_preferences(tmp_path / "s" / "annotated.jsonl")
    assert len(back) == 240 and np.allclose(back["margin"], back["strength_mean"])
    assert len(back[0]["chosen_scores"]) == 2
    assert (tmp_path / "s" / "strength.png").stat().st_size > 5000
