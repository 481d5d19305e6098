"""Tests of `rmsecrets.train` without the notebook: the loss against its formula, seeds, resuming, NaN, metrics, accumulation, real data, TRL."""
import copy
import json
import math
import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rmsecrets.data import PairCollator, load_preferences, tokenize_pairs
from rmsecrets.model import load_reward_model, make_reward_model, save_reward_model, score
from rmsecrets.train import (EpochSampler, LengthGroupedSampler, NonFiniteLossError, PairOutput, TrainConfig, bradley_terry,
                             bt_loss, disable_dropout, evaluate, expected_calibration_error, latest_checkpoint, pair_forward, pair_lengths,
                             pair_metrics, score_pairs, train_reward_model)
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

WORLD = WorldConfig(n_train=300, n_validation=100, n_test=10)


def quiet(fn, *args, **kwargs):
    "Call fn with warnings silenced."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def cfg(**kw) -> TrainConfig:
    "A tiny, silent training config: every step logged."
    return TrainConfig(**{"batch_size": 8, "max_length": 64, "log_every": 1, "progress": False, **kw})


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(history) -> list:
    return [h["loss"] for h in history if "loss" in h and "event" not in h]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def world(tok):
    "The small world, tokenised once."
    w = make_world(WORLD)
    return {k: tokenize_pairs(w[k], tok, 64) for k in ("train", "validation")}


def train(tok, ds, config, seed=0, **kw):
    "A fresh tiny reward model (model seed `seed`) trained on ds."
    return train_reward_model(make_reward_model("tiny", tok, seed=seed), tok, ds, config=config, **kw)


# ---------------------------------------------------------------- 1. the loss is the formula

RC = torch.tensor([1.5, -0.2, 0.3, 2.0, -1.0], dtype=torch.float64)
RR = torch.tensor([0.5, 0.4, 0.3, -1.0, 1.0], dtype=torch.float64)
M = torch.tensor([0.0, 1.0, -0.5, 2.5, 0.25], dtype=torch.float64)


def np_terms(rc, rr, m=None) -> np.ndarray:
    "−log σ(r_c − r_r − m) per pair, in numpy."
    d = np.asarray(rc) - np.asarray(rr) - (0 if m is None else np.asarray(m))
    return np.log1p(np.exp(-d))


def test_bt_loss_is_the_formula():
    np.testing.assert_allclose(bt_loss(RC, RR).item(), np_terms(RC, RR).mean(), rtol=1e-12)
    np.testing.assert_allclose(bt_loss(RC, RR, M).item(), np_terms(RC, RR, M).mean(), rtol=1e-12)
    assert abs(bt_loss(RC, RR).item() - bt_loss(RC, RR, M).item()) > 0.1   # the margin matters
    # a single pair at equal rewards costs log 2
    assert bt_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(math.log(2), rel=1e-6)
    # ∂L/∂r_c = −(1 − σ(δ − m)) / B
    rc = RC.clone().requires_grad_()
    bt_loss(rc, RR, M).backward()
    expected = -(1 - 1 / (1 + np.exp(-(RC - RR - M).numpy()))) / len(RC)
    np.testing.assert_allclose(rc.grad.numpy(), expected, rtol=1e-10)


def test_zero_margin_is_exactly_the_plain_loss():
    assert torch.equal(bt_loss(RC, RR, torch.zeros(5, dtype=torch.float64)), bt_loss(RC, RR))
    rc32, rr32 = RC.float(), RR.float()
    assert torch.equal(bt_loss(rc32, rr32, torch.zeros(5)), bt_loss(rc32, rr32))


def test_margin_is_per_pair_never_broadcast():
    with pytest.raises(ValueError, match="shape"):
        bt_loss(RC, RR, M[:, None])        # [B, 1] would broadcast to [B, B]
    with pytest.raises(ValueError, match="shape"):
        bt_loss(RC, RR, M[:3])
    # the [B, B] broadcast gives another number; the loss is the per-pair one
    broadcast = np_terms(RC.numpy()[None, :], RR.numpy()[None, :], M.numpy()[:, None]).mean()
    assert abs(bt_loss(RC, RR, M).item() - broadcast) > 1e-3
    # each pair's margin changes that pair's term only
    terms = np_terms(RC, RR, M)
    for i in range(len(M)):
        m = M.clone()
        m[i] += 0.7
        moved = terms.copy()
        moved[i] = np_terms(RC[i:i + 1], RR[i:i + 1], m[i:i + 1])[0]
        np.testing.assert_allclose(bt_loss(RC, RR, m).item(), moved.mean(), rtol=1e-12)
        np.testing.assert_allclose(bt_loss(RC[i:i + 1], RR[i:i + 1], M[i:i + 1]).item(), terms[i], rtol=1e-12)


def test_one_bradley_terry_loss_the_margin_column_only_where_a_loss_reads_it():
    from rmsecrets.losses import LABEL_TRICKS, LabelTrick
    out = PairOutput(RC, RR, torch.zeros(5, 3), torch.zeros(5, 3))
    assert torch.equal(bradley_terry(out, {"margin": M}), bt_loss(RC, RR))          # the plain loss: no margin
    assert torch.equal(LabelTrick()(out, {"margin": M}), bradley_terry(out, {}))    # the label trick with no trick
    assert torch.equal(LABEL_TRICKS["margin"](out, {"margin": M}), bt_loss(RC, RR, M))
    np.testing.assert_allclose(LABEL_TRICKS["margin"](out, {"margin": M.float()}).item(), np_terms(RC, RR, M).mean(), rtol=1e-6)


def test_pair_forward_splits_chosen_first(tok, world):
    model = make_reward_model("tiny", tok, seed=1).eval()
    rows = [world["train"][i] for i in range(4)]
    batch = PairCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        out = pair_forward(model, batch)
        r_chosen = score(model, tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], max_length=64)
        r_rejected = score(model, tok, [r["prompt"] for r in rows], [r["rejected"] for r in rows], max_length=64)
    assert out.r_chosen.shape == out.r_rejected.shape == (4,) and out.f_chosen.shape == (4, 64)
    torch.testing.assert_close(out.r_chosen, r_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.r_rejected, r_rejected, atol=1e-5, rtol=0)
    assert not torch.allclose(out.r_chosen, out.r_rejected)


# ---------------------------------------------------------------- 2. same seed, same losses

def test_same_seed_same_losses_other_seed_other_curve(tok, world):
    a = train(tok, world["train"], cfg(max_steps=12))
    b = train(tok, world["train"], cfg(max_steps=12))
    assert len(losses(a.history)) == 12
    assert a.history == b.history
    assert same_weights(weights(a.model), weights(b.model))
    c = train(tok, world["train"], cfg(max_steps=12, seed=1))       # same model init, other data order
    assert losses(c.history) != losses(a.history)
    assert not same_weights(weights(a.model), weights(c.model))


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    s = EpochSampler(50, seed=3)
    first = list(s)
    assert sorted(first) == list(range(50)) and list(EpochSampler(50, seed=3)) == first
    s.epoch = 1
    assert list(s) != first and sorted(s) == list(range(50))
    assert list(EpochSampler(50, seed=4)) != first


def batches_of(order: list, size: int) -> list:
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_length_grouped_sampler_groups_and_depends_on_seed_and_epoch_only():
    lengths = np.random.default_rng(0).integers(10, 500, 203)             # hh-like spread; 203 = 12 batches of 16 + 11
    s = LengthGroupedSampler(lengths, batch_size=16, seed=3, bucket_batches=4)
    first = list(s)
    assert sorted(first) == list(range(203)) and list(LengthGroupedSampler(lengths, 16, 3, 4)) == first
    batches = batches_of(first, 16)
    assert [len(b) for b in batches] == [16] * 12 + [11]                  # the short batch last
    assert lengths[batches[0]].max() == lengths.max()                     # the longest batch first
    # padded tokens (every pair padded to its batch's longest) against the real ones
    padded = lambda order: sum(len(b) * lengths[b].max() for b in batches_of(order, 16))
    plain = list(EpochSampler(203, seed=3))
    assert padded(first) < 0.8 * padded(plain)
    # each batch comes from one bucket of 4 × 16 pairs of EpochSampler's permutation, sorted longest first
    buckets = [set(plain[i:i + 64]) for i in range(0, 203, 64)]
    assert all(any(set(b) <= k for k in buckets) for b in batches)
    for k in buckets:
        inside = [i for i in first if i in k]                               # the bucket's pairs, in batch order
        mine = [b for b in batches if set(b) <= k]
        assert sorted(lengths[inside].tolist()) == sorted(lengths[list(k)].tolist())
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in mine)
        assert all(hi_prev <= lo for (_, hi_prev), (lo, _) in zip(spans, spans[1:]))   # batches do not overlap in length
    s.epoch = 1
    assert list(s) != first and sorted(s) == list(range(203))
    s.epoch = 0
    assert list(s) == first and list(LengthGroupedSampler(lengths, 16, 4, 4)) != first
    # one batch per bucket: the same batches as EpochSampler's, only reordered
    same = batches_of(list(LengthGroupedSampler(lengths, 16, 3, bucket_batches=1)), 16)
    assert sorted(map(sorted, same)) == sorted(map(sorted, batches_of(plain, 16)))


def test_pair_lengths_reads_both_sides(world):
    ds = world["train"].select([5, 0, 17])                                 # through an indices mapping
    expect = [max(len(c), len(r)) for c, r in zip(ds["chosen_input_ids"], ds["rejected_input_ids"])]
    assert pair_lengths(ds).tolist() == expect


def test_group_by_length_pads_less_and_sees_every_pair(tok, world):
    def recording(into):
        def loss_fn(out, batch):
            into.append((len(out.r_chosen), batch["attention_mask"].sum().item(), batch["attention_mask"].numel()))
            return bradley_terry(out, batch)
        return loss_fn
    plain, grouped = [], []
    a = train(tok, world["train"], cfg(batch_size=16, epochs=1), loss_fn=recording(plain))
    b = train(tok, world["train"], cfg(batch_size=16, epochs=1, group_by_length=True), loss_fn=recording(grouped))
    assert sum(n for n, _, _ in grouped) == sum(n for n, _, _ in plain) == len(world["train"])
    assert sum(r for _, r, _ in grouped) == sum(r for _, r, _ in plain)   # the same real tokens ...
    share = lambda rec: sum(r for _, r, _ in rec) / sum(t for _, _, t in rec)
    assert share(grouped) > share(plain) + 0.1                             # ... in fewer padded ones
    assert losses(a.history) != losses(b.history)                          # other batches, another curve
    c = train(tok, world["train"], cfg(batch_size=16, epochs=1, group_by_length=True))
    assert c.history == b.history                                          # same seed, same curve


def tiny_bert(tok):
    "A small randomly initialised BERT reward model: dropout 0.1 on hidden states and attention probabilities."
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                    pad_token_id=tok.pad_token_id))


def dropout_rates(model) -> set:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def test_disable_dropout_turns_off_every_kind(tok, world):
    batch = PairCollator(tok.pad_token_id)([world["train"][i] for i in range(4)])
    bert = tiny_bert(tok).train()
    assert dropout_rates(bert) == {0.1}
    assert not torch.equal(pair_forward(bert, batch).r_chosen, pair_forward(bert, batch).r_chosen)
    assert disable_dropout(bert) is bert and dropout_rates(bert) == {0.0}
    assert torch.equal(pair_forward(bert, batch).r_chosen, pair_forward(bert, batch).r_chosen)
    from rmsecrets.contrastive import add_dropout                       # Llama: a float attention_dropout as well
    llama = add_dropout(make_reward_model("tiny", tok, seed=0), 0.3)
    attention = [m for m in llama.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert attention and all(m.attention_dropout == 0.3 for m in attention)
    disable_dropout(llama)
    assert all(m.attention_dropout == 0.0 for m in attention) and dropout_rates(llama) <= {0.0}


def test_train_disable_dropout_runs_before_the_loss_adds_its_own(tok, world):
    kept = train_reward_model(tiny_bert(tok), tok, world["train"], config=cfg(max_steps=2)).model
    assert dropout_rates(kept) == {0.1}                                   # off by default
    off = train_reward_model(tiny_bert(tok), tok, world["train"], config=cfg(max_steps=2, disable_dropout=True))
    assert dropout_rates(off.model) == {0.0}
    again = train_reward_model(tiny_bert(tok), tok, world["train"], config=cfg(max_steps=2, disable_dropout=True))
    assert again.history == off.history
    from rmsecrets.contrastive import Contrastive                         # the views' dropout survives
    views = train_reward_model(tiny_bert(tok), tok, world["train"], config=cfg(max_steps=2, disable_dropout=True),
                               loss_fn=Contrastive("simcse", dropout=0.05)).model
    assert dropout_rates(views) == {0.05}


# ---------------------------------------------------------------- 3. a killed run resumes on the same curve

class Killed(Exception):
    "A simulated kill."


def dies_after(n: int):
    "bradley_terry, but the (n+1)-th call raises `Killed`."
    calls = []

    def loss_fn(out, batch):
        calls.append(1)
        if len(calls) > n: raise Killed
        return bradley_terry(out, batch)
    return loss_fn


RESUME = {"max_steps": 20, "save_every": 5}   # on 76 pairs: 10 batches an epoch (the last one short), 2 epochs


@pytest.fixture(scope="module")
def pairs76(world):
    return world["train"].select(range(76))


@pytest.fixture(scope="module")
def uninterrupted(tok, world, pairs76, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train(tok, pairs76, cfg(**RESUME), out_dir=out, eval_ds=world["validation"])


@pytest.mark.parametrize("calls, resumed_at", [(13, 10), (18, 15)])  # resumes at the epoch's end; mid second epoch
def test_resume_continues_the_same_curve(tok, world, pairs76, uninterrupted, tmp_path, calls, resumed_at):
    _, a = uninterrupted
    with pytest.raises(Killed):
        train(tok, pairs76, cfg(**RESUME), out_dir=tmp_path, eval_ds=world["validation"], loss_fn=dies_after(calls))
    assert latest_checkpoint(tmp_path).name == f"step-{resumed_at:07d}"
    b = train(tok, pairs76, cfg(**RESUME), seed=7, out_dir=tmp_path, eval_ds=world["validation"])  # other init: overwritten
    assert len(losses(a.history)) == 20 and {h.get("epoch") for h in a.history} >= {0, 1}
    assert b.history == a.history
    assert same_weights(weights(a.model), weights(b.model))
    assert b.metrics == a.metrics
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000015", "step-0000020"]
    # metrics.jsonl restarts from the checkpoint's history: the killed run's lines past the checkpoint are gone
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == a.history


def test_group_by_length_resumes_on_the_same_curve(tok, world, pairs76, tmp_path):
    grouped = cfg(**RESUME, group_by_length=True)
    a = train(tok, pairs76, grouped)
    with pytest.raises(Killed):
        train(tok, pairs76, grouped, out_dir=tmp_path, loss_fn=dies_after(18))
    assert latest_checkpoint(tmp_path).name == "step-0000015"               # mid second epoch
    b = train(tok, pairs76, grouped, seed=7, out_dir=tmp_path)
    assert len(losses(a.history)) == 20 and b.history == a.history
    assert same_weights(weights(a.model), weights(b.model))


def test_checkpoints_and_outputs(uninterrupted, tok):
    out, a = uninterrupted
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000015", "step-0000020"]           # keep_checkpoints=2, no .tmp-* left
    assert not [p for p in out.rglob(".tmp*")]
    state = json.loads((out / "checkpoints/step-0000015/trainer_state.json").read_text())
    assert state["step"] == 15 and state["history"] == a.history[:15]
    assert [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] == a.history
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 20 and summary["eval"] == a.metrics and summary["config"]["save_every"] == 5
    assert (out / "model" / "model.safetensors").exists()
    loaded, loaded_tok = load_reward_model(out / "model")
    assert same_weights(weights(loaded), weights(a.model))
    assert loaded_tok.pad_token_id == tok.pad_token_id


def test_keep_checkpoints_bounds_the_folder(tok, world, tmp_path):
    train(tok, world["train"], cfg(max_steps=6, save_every=1, keep_checkpoints=3), out_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004", "step-0000005", "step-0000006"]


# ---------------------------------------------------------------- 4. a NaN loss is reported, the checkpoint survives

def nan_at_call(k: int):
    "bradley_terry, but NaN on the k-th call (1-based)."
    calls = []

    def loss_fn(out, batch):
        calls.append(1)
        loss = bradley_terry(out, batch)
        return loss * float("nan") if len(calls) == k else loss
    return loss_fn


def test_nan_loss_raises_naming_the_step_and_keeps_the_checkpoint(tok, world, pairs76, uninterrupted, tmp_path):
    _, a = uninterrupted
    with pytest.raises(NonFiniteLossError, match=r"step-0000005") as err:
        train(tok, pairs76, cfg(**RESUME), out_dir=tmp_path, loss_fn=nan_at_call(8))
    assert re.search(r"\bstep \d+", str(err.value)), str(err.value)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-0000005"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 5
    assert all(torch.isfinite(v).all() for v in load_file(ckpt / "model.safetensors").values())
    # the checkpoint is whole: resuming from it lands on the uninterrupted curve
    b = train(tok, pairs76, cfg(**RESUME), out_dir=tmp_path, eval_ds=world["validation"])
    assert b.history == a.history


def test_nan_message_numbers_steps_like_the_metrics(tok, world):
    with pytest.raises(NonFiniteLossError) as err:
        train(tok, world["train"], cfg(max_steps=20), loss_fn=nan_at_call(8))
    assert int(re.search(r"\bstep (\d+)", str(err.value)).group(1)) == 8


def test_loss_spike_is_reported(tok, world):
    calls = []

    def spiky(out, batch):
        calls.append(1)
        return bradley_terry(out, batch) * (50.0 if len(calls) == 6 else 1.0)
    with pytest.warns(UserWarning, match="loss spike at step 6"):
        r = train(tok, world["train"], cfg(max_steps=8), loss_fn=spiky)
    events = [h for h in r.history if h.get("event") == "loss_spike"]
    assert len(events) == 1 and events[0]["step"] == 6 and events[0]["loss"] > 5 * events[0]["loss_ema"]
    assert [h["step"] for h in r.history if "event" not in h] == list(range(1, 9))


# ---------------------------------------------------------------- 5. metrics against hand-computed values

def test_expected_calibration_error_by_hand():
    p = np.array([0.92, 0.91, 0.83, 0.26, 0.57, 0.97])
    y = np.array([1, 0, 0, 0, 1, 1])
    # confidences .92 .91 | .83 | .74 | .57 | .97 fall in bins 8 8 6 4 1 9; correct: 1 0 0 1 1 1
    by_hand = (2 * abs(0.5 - 0.915) + abs(0 - 0.83) + abs(1 - 0.74) + abs(1 - 0.57) + abs(1 - 0.97)) / 6
    assert expected_calibration_error(p, y) == pytest.approx(by_hand, abs=1e-12)
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(abs(4 / 6 - 4.94 / 6), abs=1e-12)
    assert expected_calibration_error(np.array([0.8] * 5), np.array([1, 1, 1, 1, 0])) == pytest.approx(0, abs=1e-12)


def test_pair_metrics_by_hand():
    gap = np.array([2.0, -1.0, 2.0, -0.5])
    r_rejected = np.array([0.3, -2.0, 1.0, 0.0])
    r_chosen = r_rejected + gap
    s = 1 / (1 + np.exp(-gap))                                    # σ(gap): .881 .269 .881 .378
    m = pair_metrics(r_chosen, r_rejected, label_is_wrong=np.array([False, True, False, False]))
    assert m["n"] == 4
    assert m["loss"] == pytest.approx(np.mean(-np.log(s)), rel=1e-12)
    assert m["accuracy"] == 0.5 and m["reward_gap"] == pytest.approx(0.625, rel=1e-12)
    # truth: chosen better in pairs 0, 2, 3; the model (gap > 0) is right about 0, 1, 2
    assert m["accuracy_true"] == 0.75
    # confidences s0, 1−s1, s2, 1−s3 fall in bins 7, 4, 7, 2
    assert m["ece"] == pytest.approx((2 * (1 - s[0]) + (1 - s[1]) + (1 - s[3])) / 4, abs=1e-12)
    assert m["ece_true"] == pytest.approx((2 * (1 - s[0]) + (1 - (1 - s[1])) + (1 - s[3])) / 4, abs=1e-12)
    assert "accuracy_true" not in pair_metrics(r_chosen, r_rejected)


def test_score_pairs_matches_pair_forward(tok, world):
    model = make_reward_model("tiny", tok, seed=2)
    ds = world["validation"].select(range(20))
    s = score_pairs(model, ds, tok.pad_token_id, batch_size=7)
    with torch.no_grad():
        out = pair_forward(model.eval(), PairCollator(tok.pad_token_id)([ds[i] for i in range(20)]))
    np.testing.assert_allclose(s["r_chosen"], out.r_chosen.numpy(), atol=1e-5)
    np.testing.assert_allclose(s["r_rejected"], out.r_rejected.numpy(), atol=1e-5)
    assert s["label_is_wrong"].tolist() == list(ds["label_is_wrong"])


def test_evaluate_untrained_is_chance_trained_agrees_more_with_truth(tok):
    w = make_world(WorldConfig(n_train=1500, n_validation=400, n_test=10))
    val = tokenize_pairs(w["validation"], tok, 64)
    untrained = evaluate(make_reward_model("tiny", tok, seed=0), val, tok.pad_token_id)
    assert untrained["n"] == 400
    assert untrained["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert abs(untrained["reward_gap"]) < 0.05 and abs(untrained["accuracy"] - 0.5) < 0.15
    r = train(tok, w["train"], TrainConfig(epochs=2, batch_size=32, lr=2e-3, max_length=64, progress=False), eval_ds=val)
    m = r.metrics
    assert r.history[-1] == {"step": r.history[-2]["step"], **{f"eval_{k}": v for k, v in m.items()}}
    assert m["loss"] < untrained["loss"] - 0.05
    assert m["accuracy_true"] > 0.7
    assert m["accuracy_true"] > m["accuracy"] + 0.02               # the labels are noisier than the model


# ---------------------------------------------------------------- 6. gradient accumulation

def test_grad_accum_matches_one_big_batch(tok, world):
    """8 pairs × 2 micro-batches = 16 pairs × 1: accelerate divides each micro-batch loss by grad_accum before
    backward, so the summed gradient is the gradient of the mean over the 16 pairs (not twice it)."""
    big = train(tok, world["train"], cfg(batch_size=16, grad_accum=1, max_steps=3))
    acc = train(tok, world["train"], cfg(batch_size=8, grad_accum=2, max_steps=3))
    # the pre-clip gradient norm of every step (a doubled gradient would double it; a gradient not zeroed would grow it)
    np.testing.assert_allclose([h["grad_norm"] for h in acc.history], [h["grad_norm"] for h in big.history], rtol=1e-4)
    wb, wa, w0 = weights(big.model), weights(acc.model), weights(make_reward_model("tiny", tok, seed=0))
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4)  # float summation order differs
    assert not same_weights(wb, w0)


def test_grad_accum_logs_the_step_loss(tok, world):
    big = train(tok, world["train"], cfg(batch_size=16, grad_accum=1, max_steps=1))
    acc = train(tok, world["train"], cfg(batch_size=8, grad_accum=2, max_steps=1))
    assert acc.history[0]["loss"] == pytest.approx(big.history[0]["loss"], rel=1e-4)


def test_one_epoch_with_grad_accum_sees_every_pair(tok, world):
    seen = []

    def counting(out, batch):
        seen.append(len(out.r_chosen))
        return bradley_terry(out, batch)
    train(tok, world["train"], cfg(batch_size=8, grad_accum=4, epochs=1), loss_fn=counting)  # 38 batches
    assert sum(seen) == len(world["train"])


# ---------------------------------------------------------------- 7. real data: a slice of hh-rlhf

def bpe_tokenizer(texts: list) -> PreTrainedTokenizerFast:
    "A byte-level BPE tokenizer trained here on `texts`, with <bos> prepended and a pad distinct from <eos>."
    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=special, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tk.token_to_id("<bos>")
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="right")


def test_real_hh_rlhf_slice_smoke(hh_sample, tmp_path):
    ds = quiet(load_preferences, hh_sample, errors="skip").select(range(64))
    tok = bpe_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in ds])
    # long hh responses do not fit 128 tokens: drop them as the user would (the loop itself raises on them)
    pairs, skipped = quiet(tokenize_pairs, ds, tok, 128, errors="skip", return_skipped=True)
    assert len(pairs) >= 40, str(skipped)
    assert max(len(x) for x in list(pairs["chosen_input_ids"]) + list(pairs["rejected_input_ids"])) <= 128
    model = make_reward_model("tiny", tok, seed=0)
    r = train_reward_model(model, tok, pairs.select(range(32)), pairs.select(range(32, len(pairs))),
                           cfg(max_steps=5, max_length=128), out_dir=tmp_path)
    assert len(losses(r.history)) == 5 and all(math.isfinite(x) for x in losses(r.history))
    assert {"loss", "accuracy", "reward_gap", "ece", "n"} <= r.metrics.keys() and "accuracy_true" not in r.metrics
    assert r.metrics["n"] == len(pairs) - 32 and math.isfinite(r.metrics["loss"])
    loaded, loaded_tok = load_reward_model(tmp_path / "model")
    prompts, responses = list(ds["prompt"][:4]), list(ds["chosen"][:4])
    torch.testing.assert_close(score(loaded, loaded_tok, prompts, responses, max_length=128),
                               score(r.model, tok, prompts, responses, max_length=128), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- 8. TRL's RewardTrainer reads what rmsecrets wrote

def test_trl_reward_trainer_trains_an_rmsecrets_folder(tok, tmp_path):
    import trl
    path = save_reward_model(make_reward_model("tiny", tok, seed=0), tok, tmp_path / "rm")
    before = load_file(path / "model.safetensors")
    pairs = make_world(WORLD)["train"].select(range(24))
    # TRL's explicit-prompt format: it tokenises prompt + chosen, so the response carries the separating space
    trl_ds = Dataset.from_dict({"prompt": list(pairs["prompt"]), "chosen": [" " + c for c in pairs["chosen"]],
                                "rejected": [" " + r for r in pairs["rejected"]]})
    args = trl.RewardConfig(output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=4,
                            learning_rate=1e-3, report_to="none", bf16=False, activation_checkpointing=False,
                            use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                            dataloader_num_workers=0)
    # RewardTrainer appends the EOS string to plain-text rows itself: the saved tokenizer, which appends EOS too (so
    # that a pipeline scores as training did), would end them with two; the training tokenizer is what it takes
    saved_tok = load_reward_model(path)[1]
    assert saved_tok(pairs["prompt"][0] + saved_tok.eos_token)["input_ids"][-2:] == [tok.eos_token_id] * 2
    assert "RewardTrainer" in (path / "README.md").read_text()   # the card says which tokenizer to give it
    processing = copy.deepcopy(tok)
    trainer = quiet(trl.RewardTrainer, model=str(path), args=args, train_dataset=trl_ds, processing_class=processing)
    # TRL tokenises exactly as rmsecrets does: <bos> prompt response <eos>
    ours = tokenize_pairs(pairs, tok, 64)
    assert list(trainer.train_dataset["chosen_ids"]) == list(ours["chosen_input_ids"])
    assert list(trainer.train_dataset["rejected_ids"]) == list(ours["rejected_input_ids"])
    # and its loss on a batch is ours
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        theirs = trainer.compute_loss(model, dict(batch))
        mine = bradley_terry(pair_forward(model, batch), batch)
    torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=0)
    quiet(trainer.train)
    assert trainer.state.global_step == 3
    trainer.save_model(str(tmp_path / "trained"))
    loaded, loaded_tok = load_reward_model(tmp_path / "trained")
    after = {k: v for k, v in loaded.state_dict().items()}
    assert before.keys() <= after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert loaded_tok.pad_token_id == tok.pad_token_id and loaded.config.pad_token_id == tok.pad_token_id
    prompts, responses = list(pairs["prompt"][:4]), list(pairs["chosen"][:4])
    torch.testing.assert_close(score(loaded, loaded_tok, prompts, responses),
                               score(trainer.model, tok, prompts, responses), atol=1e-5, rtol=0)


def test_a_finished_run_is_not_trained_again(tok, world, tmp_path):
    """train_reward_model on a folder whose run finished (its metrics.json is written last) returns that run's model,
    history and metrics at once: no step is trained again, and the model scores as the trained one did."""
    config = cfg(max_steps=6, eval_every=3)
    first = train(tok, world["train"], config, eval_ds=world["validation"], out_dir=tmp_path)
    log = (tmp_path / "metrics.jsonl").read_text()
    again = train(tok, world["train"], config, seed=1, eval_ds=world["validation"], out_dir=tmp_path)   # another init: unused
    assert again.metrics == first.metrics and again.history == first.history
    assert (tmp_path / "metrics.jsonl").read_text() == log                    # nothing was logged: nothing was trained
    assert same_weights(weights(again.model), weights(first.model))
    from rmsecrets.train import score_pairs
    a, b = (score_pairs(m, world["validation"], tok.pad_token_id) for m in (first.model, again.model))
    assert np.array_equal(a["r_chosen"], b["r_chosen"]) and np.array_equal(a["r_rejected"], b["r_rejected"])
