"""PPO-max pieces against hand computations, and the sft → train-rm → ppo command line end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rmsecrets.policy import reward_spread
from rmsecrets.ppo import RunningMoments, gae, policy_loss, token_rewards, value_loss, whiten


def test_gae_by_hand_with_discount():
    r, v, m = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3)
    g, l = 0.9, 0.8
    d = [1 + g * 1.0 - 0.5, 0 + g * 1.5 - 1.0, 2 - 1.5]                   # δ_t, V after the end = 0
    a2 = d[2]; a1 = d[1] + g * l * a2; a0 = d[0] + g * l * a1
    adv, ret = gae(r, v, m, g, l)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(ret, adv + v)


def test_gae_ignores_padding_and_lambda_one_is_monte_carlo():
    r = torch.tensor([[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]); m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    v = torch.tensor([[0.3, 0.1, 7.0], [0.4, 9.0, 9.0]])
    adv, ret = gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]))   # the sum of future rewards


def test_kl_penalty_per_token_and_score_at_the_last_token():
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]]); ref = torch.full((2, 3), -1.5)
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r, kl = token_rewards(torch.tensor([1.0, -1.0]), lp, ref, m, kl_coef=0.2)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.5, 0.5], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(r, torch.tensor([[-0.1, -0.1, -0.1 + 1.0], [0.1 - 1.0, 0.0, 0.0]]))


def test_value_clipping_and_policy_clipping():
    one = torch.ones(1, 1)
    assert value_loss(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), one).item() == pytest.approx(0.5 * 0.81)
    assert value_loss(torch.tensor([[0.9]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), one).item() == pytest.approx(0.5 * 0.64)
    loss, frac = policy_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.tensor([[-2.0]]), one, 0.2)
    assert loss.item() == pytest.approx(0.8 * 2.0) and frac.item() == 1.0   # ρ = 0.5 clipped to 0.8 for A < 0


def test_whitening_over_real_tokens_only():
    x = torch.tensor([[1.0, 3.0, 100.0]]); m = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(whiten(x, m), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)


def test_running_moments_equal_the_whole_batch():
    x = torch.tensor(np.random.default_rng(0).normal(2.0, 3.0, 500))
    rm = RunningMoments()
    for part in x.split(37): rm.update(part)
    assert rm.mean == pytest.approx(x.mean().item()) and rm.std == pytest.approx(x.std(unbiased=False).item())


def test_reward_spread():
    assert reward_spread(np.array([1.0, 1.0, 1.0, 0.0, 2.0, 4.0]), 3) == pytest.approx((0 + (2 + 4 + 2) / 3) / 2)


def test_sft_train_rm_ppo_from_the_command_line(tmp_path):
    def run(*args):
        out = subprocess.run(["rmsecrets", *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    run("world", "--out", str(tmp_path / "w"), "--n-train", "200", "--n-validation", "40", "--n-test", "10",
        "--n-demonstrations", "200", "--n-prompts", "40")
    run("sft", "--data", str(tmp_path / "w"), "--out", str(tmp_path / "sft"), "--epochs", "1", "--progress", "false")
    run("train-rm", "--data", str(tmp_path / "w"), "--out", str(tmp_path / "rm"), "--max-steps", "5", "--max-length", "64",
        "--progress", "false")
    run("ppo", "--policy", str(tmp_path / "sft" / "model"), "--reward-model", str(tmp_path / "rm" / "model"),
        "--prompts", str(tmp_path / "w"), "--out", str(tmp_path / "ppo"), "--iterations", "2", "--critic-warmup", "1",
        "--rollout-prompts", "8", "--eval-prompts", "4", "--eval-every", "0", "--progress", "false")
    history = [json.loads(line) for line in (tmp_path / "ppo" / "history.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "ppo" / "evals.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2] and history[0]["critic_only"] and not history[1]["critic_only"]
    assert [e["iteration"] for e in evals] == [0, 2] and all(np.isfinite(e["gold"]) for e in evals)
    assert (tmp_path / "ppo" / "policy" / "model.safetensors").exists()
    rm_config = json.loads((tmp_path / "rm" / "model" / "config.json").read_text())
    ppo_config = json.loads((tmp_path / "ppo" / "metrics.json").read_text())["config"]
    assert (ppo_config["reward_mean"], ppo_config["reward_std"]) == (rm_config["mean"], rm_config["std"])   # read from the RM
    from huggingface_hub import ModelCard
    card = ModelCard.load(tmp_path / "ppo" / "policy" / "README.md")
    assert "ppo" in card.data.tags and f"| last_gold | {evals[-1]['gold']:.4f} |" in card.text and "rmsecrets ppo" in card.text
    # the same under accelerate with two CPU processes, LoRA on policy and critic (the 7B path)
    ddp = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rmsecrets.cli",
                          "ppo", "--policy", str(tmp_path / "sft" / "model"), "--reward-model", str(tmp_path / "rm" / "model"),
                          "--prompts", str(tmp_path / "w"), "--out", str(tmp_path / "ddp"), "--iterations", "2",
                          "--critic-warmup", "1", "--rollout-prompts", "4", "--eval-prompts", "4", "--eval-every", "0",
                          "--lora-r", "4", "--progress", "false"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["config"]["lora_r"] == 4 and metrics["first"]["kl"] == 0
    from safetensors.torch import load_file
    assert not any("lora" in k for k in load_file(tmp_path / "ddp" / "policy" / "model.safetensors"))   # merged


@pytest.fixture(scope="module")
def tiny_setup():
    from rmsecrets.model import make_reward_model
    from rmsecrets.policy import make_policy
    from rmsecrets.world import WorldConfig, make_prompts, make_tokenizer
    tok = make_tokenizer()
    prompts = list(make_prompts(WorldConfig(n_prompts=40))["prompt"])
    return make_policy("tiny", tok, seed=0), make_reward_model("tiny", tok, seed=1), tok, prompts


def test_ppo_with_lora_trains_only_the_adapters_against_the_adapter_free_reference(tiny_setup):
    import copy
    from rmsecrets.ppo import PPOConfig, ppo
    sft, rm, tok, prompts = tiny_setup
    rm_before = copy.deepcopy(rm.state_dict())
    config = PPOConfig(iterations=2, critic_warmup=1, rollout_prompts=8, mini_batch=8, eval_prompts=4, eval_every=0,
                       max_new_tokens=8, lora_r=4, lr=1e-2, critic_lr=1e-2, progress=False)
    res = ppo(copy.deepcopy(sft), rm, tok, prompts, config)
    assert res.evals[0]["kl"] == 0.0 and res.evals[-1]["kl"] != 0.0     # reference = the policy with its adapter off
    for model in (res.policy, res.critic):                                # merged back into plain, trainable models
        assert not hasattr(model, "disable_adapter") and all(p.requires_grad for p in model.parameters())
    before, after = sft.state_dict(), res.policy.state_dict()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.endswith("_proj.weight") for n in moved), moved   # the adapted linear layers only
    assert "model.embed_tokens.weight" not in moved and "lm_head.weight" not in moved
    critic_moved = {n for n, w in rm_before.items() if not torch.equal(w, res.critic.state_dict()[n])}
    assert "score.weight" in critic_moved and "model.embed_tokens.weight" not in critic_moved   # head trained fully
    assert all(torch.equal(w, rm.state_dict()[n]) for n, w in rm_before.items())                  # the reward model as it was


def test_ppo_refuses_a_trained_adapter_and_deepspeed(tiny_setup):
    import copy
    from types import SimpleNamespace
    from accelerate.utils import DistributedType
    from rmsecrets.model import add_lora
    from rmsecrets.ppo import PPOConfig, ppo, reference_policy
    sft, rm, tok, prompts = tiny_setup
    policy = add_lora(copy.deepcopy(sft), r=4)
    policy, ref = reference_policy(policy, PPOConfig(lora_r=4))           # a fresh adapter is taken as it is
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if "lora_B" in n).fill_(0.1)
    with pytest.raises(ValueError, match="already trained"): reference_policy(policy, PPOConfig(lora_r=4))
    for kind in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        with pytest.raises(NotImplementedError, match="DDP"):
            ppo(sft, rm, tok, prompts, PPOConfig(), accelerator=SimpleNamespace(distributed_type=kind))


def test_reward_statistics_start_the_running_normaliser(tiny_setup):
    "PPOConfig.reward_mean/std (a reward model's config.json mean/std) weigh as one rollout in the running moments."
    import copy
    from dataclasses import replace
    from rmsecrets.ppo import PPOConfig, ppo
    sft, rm, tok, prompts = tiny_setup
    base = PPOConfig(iterations=1, critic_warmup=1, rollout_prompts=8, mini_batch=8, eval_prompts=4, eval_every=0,
                     max_new_tokens=8, progress=False)
    plain = ppo(copy.deepcopy(sft), rm, tok, prompts, base).history[0]          # the first rollout's own moments
    primed = ppo(copy.deepcopy(sft), rm, tok, prompts, replace(base, reward_mean=3.0, reward_std=2.0)).history[0]
    n0 = n = 8                                                                   # the prior: one rollout of 8
    mean = (n0 * 3.0 + n * plain["score_mean"]) / (n0 + n)
    var = (n0 * 4.0 + n * plain["score_std"] ** 2 + n0 * n / (n0 + n) * (3.0 - plain["score_mean"]) ** 2) / (n0 + n)
    assert primed["score_mean"] == pytest.approx(mean) and primed["score_std"] == pytest.approx(var ** 0.5)


def test_a_fresh_critic_is_built_from_the_reward_models_config(tiny_setup):
    "critic_from_rm=False: the reward model's architecture, freshly initialised under the seed (no private init call)."
    import copy
    from rmsecrets.ppo import PPOConfig, ppo
    sft, rm, tok, prompts = tiny_setup
    config = PPOConfig(iterations=0, eval_prompts=4, max_new_tokens=4, critic_from_rm=False, seed=3, progress=False)
    first, again = (ppo(copy.deepcopy(sft), rm, tok, prompts, config).critic.state_dict() for _ in range(2))
    ours = rm.state_dict()
    assert first.keys() == ours.keys() and all(first[k].shape == ours[k].shape for k in ours)
    assert all(torch.equal(first[k], again[k]) for k in first)                      # the seed decides it
    assert not torch.equal(first["model.layers.0.self_attn.q_proj.weight"], ours["model.layers.0.self_attn.q_proj.weight"])
    from_rm = ppo(copy.deepcopy(sft), rm, tok, prompts, PPOConfig(iterations=0, eval_prompts=4, max_new_tokens=4,
                                                                 progress=False)).critic.state_dict()
    assert all(torch.equal(from_rm[k], ours[k]) for k in ours)                      # the default: the reward model itself
