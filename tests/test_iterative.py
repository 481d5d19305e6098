"""Iterative RLHF without the notebook: the normalised differences, and `rmsecrets metarm` / `iterate` end to end
(in-process, on the session's world, policy and reward model; their two-process runs: tests/test_two_processes.py)."""
import json

import numpy as np
import pytest
from conftest import cli

from rmsecrets.iterative import IterativeConfig
from rmsecrets.metarm import normalised_differences


def test_normalised_differences_by_hand():
    d = normalised_differences(np.array([0.0, 1.0, 4.0, 2.0, 2.0, 2.0]), 3)   # scaled: 0, .25, 1 | .5, .5, .5
    np.testing.assert_allclose(d, [0.25, 1.0, 0.75, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(normalised_differences(np.array([5.0, 5.0]), 2), [0.0])   # a constant set: no division by 0


def test_unknown_update_is_a_clear_error():
    with pytest.raises(ValueError, match="rm_update"): IterativeConfig(rm_update="meta")


@pytest.fixture(scope="module")
def stages(made):
    return made


def test_metarm_command(stages):
    d = stages
    cli("metarm", "--data", d / "w", "--policy", d / "sft" / "model", "--reward-model", d / "rm" / "model",
        "--meta-prompts", "6", "--max-steps", "3", "--max-length", "64", "--progress", "false", "--eta", "0.05",
        "--out", d / "meta1")
    lines = (d / "meta1" / "meta_samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 5 and all(json.loads(l)["prompt"] for l in lines)                 # 6 prompts × k = 5
    m = json.loads((d / "meta1" / "metrics.json").read_text())
    assert m["steps"] == 3 and m["eval"]["n"] == 60


def test_iterate_command_runs_rounds_and_resumes(stages):
    d = stages
    args = ["iterate", "--data", str(d / "w"), "--policy", str(d / "sft" / "model"), "--reward-model", str(d / "rm" / "model"),
            "--out", str(d / "it"), "--meta-prompts", "6", "--rm-max-steps", "2", "--ppo-iterations", "2",
            "--ppo-critic-warmup", "1", "--ppo-rollout-prompts", "8", "--ppo-eval-prompts", "8", "--ppo-eval-every", "0"]
    cli(*args, "--rounds", "1")
    first = json.loads((d / "it" / "rounds.json").read_text())["rounds"]
    cli(*args, "--rounds", "2")                                                              # round 1 is loaded
    rounds = json.loads((d / "it" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0] == first[0]
    for r in rounds:
        assert r["rm_update"] == "metarm" and np.isfinite(r["gold"])
        assert 0.0 <= r["after"]["ranking_vs_gold"] <= 1.0 and "validation_accuracy" in r["after"]
    assert (d / "it" / "round_2" / "ppo" / "policy" / "model.safetensors").exists()


def test_fresh_labels_and_kl_reference_settings_are_checked():
    with pytest.raises(ValueError, match="kl_reference"): IterativeConfig(kl_reference="previous")
    with pytest.raises(ValueError, match="fresh_pairs"): IterativeConfig(rm_update="fixed", fresh_pairs=10)


def test_fresh_labels_accumulate_and_resume_on_the_same_numbers(tmp_path):
    """Round 2's update learns round 1's fresh pairs too; a run resumed after round 1 reloads them (from round.json)
    and ends on the uninterrupted run's reward model and gold reward, to the bit."""
    import torch
    from dataclasses import replace
    from rmsecrets.data import tokenize_pairs
    from rmsecrets.iterative import iterate
    from rmsecrets.model import make_reward_model
    from rmsecrets.policy import make_policy
    from rmsecrets.ppo import PPOConfig
    from rmsecrets.train import TrainConfig
    from rmsecrets.world import WorldConfig, make_prompts, make_tokenizer, make_world
    tok, w = make_tokenizer(), WorldConfig(n_train=120, n_validation=20, n_test=10, n_prompts=40)
    pairs = tokenize_pairs(make_world(w)["train"], tok, 64)
    prompts = list(make_prompts(w)["prompt"])
    config = IterativeConfig(rounds=2, rm_update="vanilla", fresh_pairs=25, kl_reference="sft", meta_prompts=8,
                             rm=TrainConfig(max_steps=3, lr=1e-3, max_length=64, progress=False),
                             ppo=PPOConfig(iterations=2, critic_warmup=1, rollout_prompts=8, mini_batch=8, eval_prompts=8,
                                           eval_every=0, max_new_tokens=8, save_every=0, progress=False))
    policy, rm = make_policy("tiny", tok, seed=0), make_reward_model("tiny", tok, seed=1)
    whole = iterate(policy, rm, tok, pairs, prompts[:32], config, eval_prompts=prompts[32:], world=w)
    assert [r["fresh_pairs"] for r in whole.rounds] == [25, 25]
    assert all("kl_sft" in r and set(r["parts"]) >= {"helpful", "harm", "rude"} for r in whole.rounds)
    iterate(policy, rm, tok, pairs, prompts[:32], replace(config, rounds=1), eval_prompts=prompts[32:], world=w,
            out_dir=tmp_path)
    resumed = iterate(policy, rm, tok, pairs, prompts[:32], config, eval_prompts=prompts[32:], world=w, out_dir=tmp_path)
    assert resumed.rounds[1]["gold"] == whole.rounds[1]["gold"]
    assert all(torch.equal(a, b) for a, b in zip(resumed.reward_model.parameters(), whole.reward_model.parameters()))
    saved = json.loads((tmp_path / "round_1" / "round.json").read_text())["fresh"]
    assert len(saved["chosen"]) == 25 and set(saved["noise"]) <= {"none", "annotator", "uniform", "careless"}


def test_iterate_command_fresh_pairs_need_a_world(stages, tmp_path):
    d = stages
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "human : how do i save money ? assistant :", "chosen": "savings income",
                                 "rejected": "whatever"}) + "\n")
    from rmsecrets.cli import main
    with pytest.raises(SystemExit, match="not a world folder"):   # before any work, the message as exit status
        main(["iterate", "--data", str(pairs), "--split", "", "--prompts", str(d / "w"), "--policy", str(d / "sft" / "model"),
              "--reward-model", str(d / "rm" / "model"), "--out", str(tmp_path / "it"), "--rm-update", "vanilla",
              "--fresh-pairs", "10"])
