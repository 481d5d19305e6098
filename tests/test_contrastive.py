"""Contrastive losses: closed forms, Sinkhorn marginals, the distributed versions against one process, and training."""
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rmsecrets.contrastive import CONTRASTIVE, Contrastive, simcse_loss, sinkhorn, swav_loss
from rmsecrets.model import add_prototypes
from rmsecrets.data import tokenize_pairs
from rmsecrets.model import load_reward_model, make_reward_model
from rmsecrets.train import PairOutput, TrainConfig, train_reward_model
from rmsecrets.world import WorldConfig, make_tokenizer, make_world


def test_simcse_closed_form():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cos: identity on the diagonal; rows 0 and 2 are opposite (−1); everything else 0
    cos = torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]])
    t = 0.2
    expected = torch.stack([-(cos[i, i] / t) + torch.logsumexp(cos[i] / t, 0) for i in range(3)]).mean()
    torch.testing.assert_close(simcse_loss(z, z, t), expected)


def test_sinkhorn_marginals_and_hardness():
    s = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(s, epsilon=0.05, iters=300)
    torch.testing.assert_close(q.sum(1), torch.ones(40))
    torch.testing.assert_close(q.sum(0), torch.full((5,), 8.0), atol=1e-3, rtol=0)
    soft = sinkhorn(s, epsilon=10.0, iters=300)          # a large ε spreads every code out
    assert soft.max() < q.max()


def _worker(rank, world, port, z1, z2, scores, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = len(z1) // world
    a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = simcse_loss(a, b, 0.1)
    loss.backward()
    codes = sinkhorn(scores[rank * n:(rank + 1) * n], 0.05, 3)
    out[rank] = (loss.detach(), a.grad, b.grad, codes)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_see_the_global_batch():
    """SimCSE gathers negatives and Sinkhorn all-reduces: two halves give what one process gives on the whole batch."""
    g = torch.Generator().manual_seed(0)
    z1, z2, scores = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), z1, z2, scores, out), nprocs=2, join=True)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = simcse_loss(a, b, 0.1)
    loss.backward()
    torch.testing.assert_close((out[0][0] + out[1][0]) / 2, loss.detach())      # mean of the ranks' losses
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]) / 2, a.grad)    # each rank's grad, as DDP averages it
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]) / 2, b.grad)    # ... through the gathered negatives too
    torch.testing.assert_close(torch.cat([out[0][3], out[1][3]]), sinkhorn(scores, 0.05, 3))


def test_swav_is_invariant_to_scale_and_needs_its_prototypes():
    g = torch.Generator().manual_seed(1)
    a, b, c = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(swav_loss(a, b, c), swav_loss(5 * a, b, 2 * c))
    view = PairOutput(torch.zeros(2), torch.zeros(2), torch.zeros(2, 4), torch.ones(2, 4))
    view.views = (view, view)
    with pytest.raises(RuntimeError, match="prepare_model"):
        replace(CONTRASTIVE["swav"]).contrastive_loss(view)
    with pytest.raises(ValueError, match="method="):
        Contrastive("moco")


@pytest.fixture(scope="module")
def small():
    tok = make_tokenizer()
    w = make_world(WorldConfig(n_train=200, n_validation=64, n_test=10))
    return tok, tokenize_pairs(w["train"], tok, max_length=64), tokenize_pairs(w["validation"], tok, max_length=64)


def test_swav_training_moves_the_prototypes_and_saves_them(small, tmp_path):
    tok, tr, va = small
    model = make_reward_model("tiny", tok, seed=0)
    init = add_prototypes(model, 20, seed=3).weight.detach().clone()
    res = train_reward_model(model, tok, tr, va, TrainConfig(max_steps=5, lr=3e-3, progress=False),
                             loss_fn=replace(CONTRASTIVE["swav-diff"], seed=3), out_dir=tmp_path / "run")
    trained = res.model.prototypes.weight.detach()
    assert not torch.allclose(trained, init)                                    # the optimiser trained them
    back, _ = load_reward_model(tmp_path / "run" / "model")
    torch.testing.assert_close(back.prototypes.weight, trained)


def test_same_seed_same_numbers(small):
    tok, tr, va = small
    runs = [train_reward_model(make_reward_model("tiny", tok, seed=0), tok, tr, va,
                               TrainConfig(max_steps=4, lr=3e-3, progress=False), loss_fn=replace(CONTRASTIVE["simcse"]))
            for _ in range(2)]
    assert runs[0].metrics == runs[1].metrics


def test_a_baseline_trained_once_is_the_baseline_trained_again(small):
    "The label-trick stage's bt runs are the contrastive stage's: reused, they give the rows a fresh run gives."
    from rmsecrets.contrastive import compare_contrastive
    from rmsecrets.losses import compare_tricks
    from rmsecrets.train import TrainConfig
    tok, tr, va = small
    cfg = TrainConfig(max_steps=4, lr=3e-3, max_length=64, progress=False)
    from dataclasses import replace
    tricks = compare_tricks(tr, va, tok, names=("bt",), seeds=(0, 1), config=replace(cfg, eval_every=2),   # evaluating
                            keep_models=True)                                              # on the way changes nothing
    trained = {("bt", r["seed"]): (r["model"], r["accuracy_true"]) for r in tricks}
    fresh = compare_contrastive(tr, va, va, tok, names=("bt",), seeds=(0, 1), config=cfg)
    reused = compare_contrastive(tr, va, va, tok, names=("bt",), seeds=(0, 1), config=cfg, trained=trained)
    assert reused == fresh


def test_two_workers_give_the_rows_of_one(small):
    "Shared among two forked processes (one thread each), a grid gives the rows one thread gives, models included."
    from rmsecrets.contrastive import compare_contrastive
    tok, tr, va = small
    cfg = TrainConfig(max_steps=4, lr=3e-3, max_length=64, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = {w: compare_contrastive(tr, va, va, tok, names=("bt", "simcse"), seeds=(0,), config=cfg, keep_models=True,
                                       workers=w) for w in (1, 2)}
    finally:
        torch.set_num_threads(threads)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "model"} for r in rs]
    assert strip(rows[2]) == strip(rows[1])
    for one, two in zip(rows[1], rows[2]):                  # the simcse model has a dropout hook, and still pickles
        a, b = one["model"].state_dict(), two["model"].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["simcse", "simcse-diff", "swav-diff", "dropout"])
def test_the_loss_is_half_the_two_views_plus_beta_times_the_contrastive_term(name):
    "L = ½ (L_bt(view 1) + L_bt(view 2)) + β · L_cl(instances of view 1, of view 2), computed here from its parts."
    from rmsecrets.contrastive import instances
    from rmsecrets.train import bt_loss
    g = torch.Generator().manual_seed(0)
    views = [PairOutput(torch.randn(6, generator=g), torch.randn(6, generator=g), torch.randn(6, 8, generator=g),
                        torch.randn(6, 8, generator=g)) for _ in range(2)]
    out = PairOutput(*[getattr(views[0], f) for f in ("r_chosen", "r_rejected", "f_chosen", "f_rejected")], views=tuple(views))
    loss = replace(CONTRASTIVE[name], seed=1)
    if loss.method == "swav": loss._prototypes = torch.nn.Linear(8, loss.n_prototypes, bias=False)   # what prepare_model adds
    rm = (bt_loss(views[0].r_chosen, views[0].r_rejected) + bt_loss(views[1].r_chosen, views[1].r_rejected)) / 2
    z1, z2 = instances(views[0], loss.instances), instances(views[1], loss.instances)
    if loss.method == "simcse": cl = simcse_loss(z1, z2, loss.temperature, gather=False)
    else: cl = swav_loss(z1, z2, loss._prototypes.weight, loss.temperature, loss.epsilon, loss.sinkhorn_iters)
    want = rm + loss.beta * cl if loss.beta else rm
    torch.testing.assert_close(loss(out, {}), want)
    if loss.instances == "diff":                                             # the instances: f_c − f_r and its negation
        d = views[0].f_chosen - views[0].f_rejected
        torch.testing.assert_close(z1, torch.cat([d, -d]))
    assert loss(out, {}).item() != pytest.approx(rm.item()) or not loss.beta  # the contrastive term counts


def test_response_features_put_the_truly_better_response_first(small):
    "Where the label is wrong, the rejected response is the better one: its features come first."
    import numpy as np
    from rmsecrets.contrastive import response_features
    from rmsecrets.data import PairCollator
    from rmsecrets.train import pair_forward
    tok, tr, va = small
    model = make_reward_model("tiny", tok, seed=0).eval()
    pairs = va.select(range(16))
    wrong = np.array(pairs["label_is_wrong"], bool)
    assert 0 < wrong.sum() < len(wrong)                                          # both kinds of pair in the sample
    better, worse = response_features(model, pairs, tok.pad_token_id, batch_size=5)
    with torch.no_grad():
        out = pair_forward(model, PairCollator(tok.pad_token_id)([{k: r[k] for k in ("chosen_input_ids", "rejected_input_ids")}
                                                                  for r in pairs]))
    fc, fr = out.f_chosen.numpy(), out.f_rejected.numpy()
    np.testing.assert_allclose(better, np.where(wrong[:, None], fr, fc), atol=1e-5)
    np.testing.assert_allclose(worse, np.where(wrong[:, None], fc, fr), atol=1e-5)
