"""Label flipping, smoothing and the adaptive margin: formulas, involution, per-pair application, CLI."""
import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from rmsecrets.losses import LABEL_TRICKS, LabelTrick, flip_labels, swap_pairs
from rmsecrets.train import PairOutput, bt_loss

R_C = torch.tensor([1.5, 0.2, -0.7, 3.0], dtype=torch.float64)
R_R = torch.tensor([0.5, 0.4, 0.1, -1.0], dtype=torch.float64)
D = (R_C - R_R).numpy()
log_sig = lambda x: -np.logaddexp(0, -x)


def test_each_loss_equals_its_formula():
    a, m = 0.2, np.array([0.5, -0.3, 0.0, 2.0])
    assert bt_loss(R_C, R_R, alpha=a).item() == pytest.approx(np.mean(-(1 - a) * log_sig(D) - a * log_sig(-D)), rel=1e-7)
    assert bt_loss(R_C, R_R, margin=torch.tensor(m)).item() == pytest.approx(np.mean(-log_sig(D - m)), rel=1e-7)
    both = bt_loss(R_C, R_R, torch.tensor(m), torch.tensor([0.0, a, 0.0, a])).item()
    al = np.array([0.0, a, 0.0, a])
    assert both == pytest.approx(np.mean(-(1 - al) * log_sig(D - m) - al * log_sig(-(D - m))), rel=1e-7)


def test_zero_alpha_and_zero_margin_give_the_plain_loss():
    assert torch.equal(bt_loss(R_C, R_R, torch.zeros(4, dtype=torch.float64), 0.0), bt_loss(R_C, R_R))
    out = PairOutput(R_C, R_R, None, None)
    assert torch.equal(LABEL_TRICKS["margin"](out, {"strength_mean": torch.zeros(4, dtype=torch.float64)}), bt_loss(R_C, R_R))
    assert torch.equal(LabelTrick(smooth="all", alpha=0.0)(out, {}), bt_loss(R_C, R_R))


def test_a_b_margin_is_applied_per_pair():
    m = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    per_pair = [bt_loss(R_C[i:i + 1], R_R[i:i + 1], margin=m[i:i + 1]).item() for i in range(4)]
    assert bt_loss(R_C, R_R, margin=m).item() == pytest.approx(np.mean(per_pair), rel=1e-7)
    assert per_pair[1:] == pytest.approx([-log_sig(d) for d in D[1:]], rel=1e-7)        # pairs 1–3 untouched
    with pytest.raises(ValueError, match="margin has shape"):
        bt_loss(R_C, R_R, margin=m[:, None])
    with pytest.raises(ValueError, match="alpha has shape"):
        bt_loss(R_C, R_R, alpha=torch.zeros(3))


def test_soft_margin_smooths_negative_pairs_and_margins_the_rest():
    mu = torch.tensor([0.8, -0.5, 0.3, -1.0], dtype=torch.float64)
    got = LABEL_TRICKS["soft+margin"](PairOutput(R_C, R_R, None, None), {"strength_mean": mu}).item()
    neg = (mu < 0).numpy()
    al, m = np.where(neg, 0.1, 0.0), np.where(neg, 0.0, mu.numpy())
    assert got == pytest.approx(np.mean(-(1 - al) * log_sig(D - m) - al * log_sig(-(D - m))), rel=1e-7)


def _pairs(n=50):
    rng = np.random.default_rng(0)
    gc, gr, mu = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    return Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)], "chosen": [f"c{i}" for i in range(n)],
                              "rejected": [f"r{i}" for i in range(n)], "gold_chosen": gc, "gold_rejected": gr,
                              "label_is_wrong": gc < gr, "strength_mean": mu, "margin": mu,
                              "chosen_scores": rng.normal(size=(n, 3)).tolist(), "rejected_scores": rng.normal(size=(n, 3)).tolist()})


def test_flipping_twice_restores_the_data():
    ds = _pairs()
    once = flip_labels(ds, fraction=0.2)
    assert sum(once["flipped"]) == 10
    twice = swap_pairs(once, np.array(once["flipped"]))
    assert twice.remove_columns("flipped").to_list() == ds.to_list()


def test_flipping_swaps_everything_of_a_side():
    ds = _pairs()
    mu = np.array(ds["strength_mean"])
    out = flip_labels(ds, fraction=0.1)
    lowest = set(np.argsort(mu)[:5])
    for i, (a, b) in enumerate(zip(ds, out)):
        if i in lowest:
            assert (b["chosen"], b["rejected"], b["chosen_scores"]) == (a["rejected"], a["chosen"], a["rejected_scores"])
            assert b["strength_mean"] == -a["strength_mean"] and b["margin"] == -a["margin"] and b["flipped"]
            assert b["label_is_wrong"] == (a["gold_rejected"] < a["gold_chosen"])
        else:
            assert b["chosen"] == a["chosen"] and not b["flipped"]
    by_threshold = flip_labels(ds, fraction=None, threshold=0.0)
    assert sum(by_threshold["flipped"]) == int((mu < 0).sum())


def test_tricks_that_need_strength_say_so():
    ds = _pairs().remove_columns(["strength_mean", "margin"])
    with pytest.raises(ValueError, match="strength_mean"):
        LABEL_TRICKS["flip"].prepare(ds)
    assert LABEL_TRICKS["smooth"].prepare(ds) is ds


def test_cli_train_rm_with_a_label_trick(made, tmp_path):
    "`strength` annotates the pairs, `train-rm --loss flip+margin` trains on the annotated file (in-process)."
    from rmsecrets.cli import main
    w = made / "w"
    assert main(["strength", "--data", str(w), "--out", str(tmp_path / "s"), "--n-voters", "2", "--max-steps", "3"]) == 0
    assert main(["train-rm", "--data", str(tmp_path / "s" / "annotated.jsonl"), "--split", "", "--eval-data", str(w),
                 "--tokenizer", str(w / "tokenizer"), "--loss", "flip+margin", "--max-steps", "4", "--max-length", "64",
                 "--progress", "false", "--out", str(tmp_path / "rm")]) == 0
    m = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert m["steps"] == 4 and "accuracy_agree" in m["eval"]
    with pytest.raises(Exception, match="strength_mean"):
        main(["train-rm", "--data", str(w), "--loss", "flip", "--max-steps", "2", "--out", str(tmp_path / "x")])
