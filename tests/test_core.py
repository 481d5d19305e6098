"""The house's tools: seeding, child seeds, atomic writes; and the one training loop
under supervised fine-tuning (same order as shuffle=True, resume, NaN guard)."""
import json
import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rmsecrets.core import atomic_file, atomic_folder, child_seed, seeded, write_json
from rmsecrets.train import NonFiniteLossError, ShuffleSampler


def test_seeded_seeds_every_generator_and_restores_the_callers():
    torch.manual_seed(1); np.random.seed(1); random.seed(1)
    expect = torch.rand(2), np.random.rand(), random.random()
    torch.manual_seed(1); np.random.seed(1); random.seed(1)
    with seeded(9): inside = torch.rand(2), np.random.rand(), random.random()
    with seeded(9): again = torch.rand(2), np.random.rand(), random.random()
    after = torch.rand(2), np.random.rand(), random.random()
    assert torch.equal(inside[0], again[0]) and inside[1:] == again[1:]
    assert torch.equal(after[0], expect[0]) and after[1:] == expect[1:]        # as if the block had not run


def test_child_seeds_keep_the_measured_derivations_and_separate_new_streams():
    assert child_seed(3, "member", 2) == 5 and child_seed(3, "fold", 2) == 2003
    assert child_seed(3, "epoch", 2) == 3 * 100_003 + 2 and child_seed(3, "round", 2) == 3002
    new = {child_seed(s, name, i) for s in range(3) for name in ("a", "b") for i in range(3)}
    assert len(new) == 18 and child_seed(0, "a") == child_seed(0, "a")


def test_atomic_writes_leave_the_old_version_or_the_new_one(tmp_path):
    write_json(tmp_path / "x.json", [1])
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "x.json") as tmp:
        tmp.write_text("half a file"); raise RuntimeError
    assert json.loads((tmp_path / "x.json").read_text()) == [1]
    (tmp_path / "d").mkdir(); (tmp_path / "d" / "old").write_text("")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "d") as tmp:
        (tmp / "new").write_text(""); raise RuntimeError
    assert os.listdir(tmp_path / "d") == ["old"]
    with atomic_folder(tmp_path / "d") as tmp: (tmp / "new").write_text("")
    assert os.listdir(tmp_path / "d") == ["new"] and sorted(os.listdir(tmp_path)) == ["d", "x.json"]


def test_shuffle_sampler_replays_shuffle_true_epoch_by_epoch():
    loader = DataLoader(list(range(45)), batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(11))
    epochs = [[b.tolist() for b in loader] for _ in range(4)]
    s = ShuffleSampler(45, 11)
    for e in (3, 0, 2):                                            # any epoch, in any order: a resumed run's
        s.epoch = e
        assert [b.tolist() for b in DataLoader(list(range(45)), batch_size=7, sampler=s)] == epochs[e]


@pytest.fixture(scope="module")
def sft_setup():
    from rmsecrets.world import WorldConfig, make_demonstrations, make_tokenizer
    from rmsecrets.policy import tokenize_demonstrations
    tok = make_tokenizer()
    return tok, tokenize_demonstrations(make_demonstrations(WorldConfig(n_demonstrations=40)), tok, 64)


def _sft(tok, demos, out_dir=None, **kw):
    from rmsecrets.policy import SFTConfig, make_policy, train_sft
    cfg = SFTConfig(batch_size=8, epochs=2, save_every=3, progress=False, **kw)
    return train_sft(make_policy("tiny", tok, seed=0), tok, demos, cfg, out_dir=out_dir)


def test_sft_runs_on_the_one_loop_and_resumes_on_the_same_curve(sft_setup, tmp_path):
    tok, demos = sft_setup
    import rmsecrets.train as T
    full = _sft(tok, demos)
    assert [h["step"] for h in full.history] == list(range(1, 11))         # 5 batches an epoch, 2 epochs, a line a step
    real, calls = T.fit, []

    def dying_fit(acc, model, opt, sched, loader, sampler, total, config, loss_of, *a, **k):
        def loss(batch):
            calls.append(1)
            if len(calls) > 7: raise KeyboardInterrupt
            return loss_of(batch)
        return real(acc, model, opt, sched, loader, sampler, total, config, loss, *a, **k)
    import rmsecrets.policy as P
    P.fit = dying_fit
    try:
        with pytest.raises(KeyboardInterrupt): _sft(tok, demos, tmp_path)
    finally: P.fit = real
    assert (tmp_path / "checkpoints" / "step-0000006").exists()              # mid second epoch
    resumed = _sft(tok, demos, tmp_path)
    assert resumed.history == full.history and resumed.metrics == full.metrics
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "model" / "model.safetensors").exists() and json.loads((tmp_path / "metrics.json").read_text())["steps"] == 10


def test_sft_stops_on_a_non_finite_loss(sft_setup):
    from rmsecrets.policy import SFTConfig, make_policy, train_sft
    tok, demos = sft_setup
    policy = make_policy("tiny", tok, seed=0)
    with torch.no_grad(): policy.lm_head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        train_sft(policy, tok, demos, SFTConfig(batch_size=8, epochs=1, progress=False))
