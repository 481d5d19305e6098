"""MetaRM without the notebook: the difference loss, the meta-step, and MetaRM as a mode of the training loop."""
import json

import numpy as np
import pytest
import torch

from rmsecrets.data import tokenize_pairs
from rmsecrets.metarm import MetaRM, difference_loss, meta_parameters, ranking_accuracy
from rmsecrets.model import encode_responses, make_reward_model
from rmsecrets.train import TrainConfig, train_reward_model
from rmsecrets.world import WorldConfig, make_demonstrations, make_tokenizer, make_world


def test_difference_loss_formula():
    r = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    k, expected = 4, 0.0
    for i in range(4):
        for j in range(i + 1, 4): expected += torch.sigmoid((r[0, i] - r[0, j]).abs()).item()
    assert difference_loss(r).item() == pytest.approx(2 / k ** 2 * expected)


@pytest.fixture(scope="module")
def setup():
    tok = make_tokenizer()
    demos = make_demonstrations(WorldConfig(n_demonstrations=20))
    meta = encode_responses(tok, list(demos["prompt"]), list(demos["response"]), max_length=64)
    pairs = tokenize_pairs(make_world(WorldConfig(n_train=96, n_validation=32, n_test=4))["train"], tok, 64)
    return tok, meta, pairs


def test_meta_step_moves_up_the_difference_loss(setup):
    tok, meta, _ = setup
    model = make_reward_model("tiny", tok, seed=0)
    theta1, J0 = meta_parameters(model, meta["input_ids"], meta["attention_mask"], k=5, eta=1e-2)
    from rmsecrets.metarm import rewards_at
    J1 = difference_loss(rewards_at(model, theta1, meta["input_ids"], meta["attention_mask"]).view(-1, 5))
    assert J1.item() > J0.item()                                   # one ascent step raises J
    with pytest.raises(ValueError, match="order"):
        meta_parameters(model, meta["input_ids"], meta["attention_mask"], k=5, eta=1e-2, order=3)


def test_eta_zero_is_plain_training_in_the_loop(setup):
    tok, meta, pairs = setup
    cfg = TrainConfig(max_steps=3, lr=3e-3, progress=False)
    plain = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, pairs, cfg)
    meta0 = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, pairs, cfg,
                               loss_fn=MetaRM(meta["input_ids"], meta["attention_mask"], k=5, eta=0.0))
    assert meta0.metrics["loss"] == pytest.approx(plain.metrics["loss"], rel=1e-5)
    stepped = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, pairs, cfg,
                                 loss_fn=MetaRM(meta["input_ids"], meta["attention_mask"], k=5, eta=1.0))
    assert stepped.metrics["loss"] != pytest.approx(plain.metrics["loss"], rel=1e-5)


def test_meta_rows_must_be_whole_prompts(setup):
    _, meta, _ = setup
    with pytest.raises(ValueError, match="multiple of k"):
        MetaRM(meta["input_ids"][:7], meta["attention_mask"][:7], k=5)


def test_ranking_accuracy_leaves_ties_out():
    assert ranking_accuracy(np.array([0.0, 1.0, 2.0, 5.0, 4.0, 3.0]), np.array([1.0, 1.0, 2.0, 1.0, 2.0, 3.0]), 3) == pytest.approx(2 / 5)


class Killed(Exception):
    "A simulated kill."


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_killed_metarm_run_resumes_on_the_same_meta_batches(setup, tmp_path):
    "The meta-batch stream is part of the checkpoint: a resumed run draws the batches the uninterrupted one drew."
    tok, meta, pairs = setup
    cfg = TrainConfig(max_steps=8, batch_size=16, lr=3e-3, save_every=3, log_every=1, progress=False)
    loss = lambda: MetaRM(meta["input_ids"], meta["attention_mask"], k=5, eta=0.5, prompts_per_step=2, seed=3)
    full = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, config=cfg, loss_fn=loss())

    class Dies(MetaRM):
        def forward(self, model, batch):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls > 5: raise Killed
            return super().forward(model, batch)
    with pytest.raises(Killed):
        train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, config=cfg, out_dir=tmp_path,
                           loss_fn=Dies(meta["input_ids"], meta["attention_mask"], k=5, eta=0.5, prompts_per_step=2, seed=3))
    resumed = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, config=cfg, out_dir=tmp_path, loss_fn=loss())
    assert resumed.history == full.history                       # resumed at step 3 on the same meta batches
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh_stream = loss()                                        # without the stream in the checkpoint: other batches
    state = json.loads((tmp_path / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())["loss_state"]
    assert state["rng"] != fresh_stream.state_dict()["rng"]


@pytest.mark.parametrize("method", ["simcse", "swav"])
def test_a_contrastive_loss_runs_at_the_meta_stepped_parameters(setup, method):
    """MetaRM's loss is the base loss, with the views and features it declares, at θ′ = θ + η∇J on the meta batch its
    stream draws: computed here from the parts, it is the same number, and not the loss at θ; training with it runs."""
    from rmsecrets.contrastive import Contrastive
    from rmsecrets.data import PairCollator
    from rmsecrets.train import pair_forward
    tok, meta, pairs = setup
    base = Contrastive(method, beta=0.5, dropout=0.0)          # no dropout: both views are the same network, no randomness
    loss = MetaRM(meta["input_ids"], meta["attention_mask"], k=5, eta=0.5, prompts_per_step=2, base=base, seed=3)
    model = make_reward_model("tiny", tok, seed=0)
    loss.prepare_model(model)
    batch = PairCollator(tok.pad_token_id)([{k: pairs[i][k] for k in ("chosen_input_ids", "rejected_input_ids")}
                                            for i in range(16)])
    got = loss(loss.forward(model.train(), batch), batch)
    chosen = np.random.default_rng(3).choice(len(meta["input_ids"]) // 5, 2, replace=False)   # the stream's first draw
    rows = torch.as_tensor((chosen[:, None] * 5 + np.arange(5)).ravel())
    theta1, _ = meta_parameters(model, meta["input_ids"][rows], meta["attention_mask"][rows], k=5, eta=0.5)
    assert any(not torch.equal(theta1[n], p) for n, p in model.named_parameters() if n in theta1)   # θ′ moved
    want = base(pair_forward(model, batch, base.views, params=theta1), batch)
    at_theta = base(pair_forward(model, batch, base.views), batch)
    torch.testing.assert_close(got, want)
    assert abs(got.item() - at_theta.item()) > 1e-4
    got.backward()                                              # the gradient reaches θ through θ′, prototypes included
    assert all(p.grad is not None for n, p in model.named_parameters() if "score" in n or "prototypes" in n)
    res = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs, config=TrainConfig(
        max_steps=2, batch_size=16, lr=3e-3, progress=False), loss_fn=MetaRM(meta["input_ids"], meta["attention_mask"],
                                                                              k=5, eta=0.1, base=Contrastive(method, beta=0.5)))
    assert all(np.isfinite(h["loss"]) for h in res.history if "loss" in h)
