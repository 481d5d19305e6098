"""Iterative RLHF without the notebook: the normalised differences, and `rmsecrets metarm` / `iterate` end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rmsecrets.iterative import IterativeConfig
from rmsecrets.metarm import normalised_differences


def test_normalised_differences_by_hand():
    d = normalised_differences(np.array([0.0, 1.0, 4.0, 2.0, 2.0, 2.0]), 3)   # scaled: 0, .25, 1 | .5, .5, .5
    np.testing.assert_allclose(d, [0.25, 1.0, 0.75, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(normalised_differences(np.array([5.0, 5.0]), 2), [0.0])   # a constant set: no division by 0


def test_unknown_update_is_a_clear_error():
    with pytest.raises(ValueError, match="rm_update"): IterativeConfig(rm_update="meta")


def cli(*args, env=None):
    out = subprocess.run(["rmsecrets", *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    d = tmp_path_factory.mktemp("iterative")
    cli("world", "--out", str(d / "w"), "--n-train", "160", "--n-validation", "40", "--n-test", "10",
        "--n-demonstrations", "160", "--n-prompts", "40")
    cli("sft", "--data", str(d / "w"), "--out", str(d / "sft"), "--epochs", "1", "--progress", "false")
    cli("train-rm", "--data", str(d / "w"), "--out", str(d / "rm"), "--max-steps", "4", "--max-length", "64", "--progress", "false")
    return d


def test_metarm_command_one_and_two_processes(stages):
    d = stages
    args = ["--data", str(d / "w"), "--policy", str(d / "sft" / "model"), "--reward-model", str(d / "rm" / "model"),
            "--meta-prompts", "6", "--max-steps", "3", "--max-length", "64", "--progress", "false", "--eta", "0.05"]
    cli("metarm", *args, "--out", str(d / "meta1"))
    lines = (d / "meta1" / "meta_samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 5 and all(json.loads(l)["prompt"] for l in lines)                 # 6 prompts × k = 5
    m = json.loads((d / "meta1" / "metrics.json").read_text())
    assert m["steps"] == 3 and m["eval"]["n"] == 40
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rmsecrets.cli",
                    "metarm", *args, "--out", str(d / "meta2")], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    m2 = json.loads((d / "meta2" / "metrics.json").read_text())
    assert m2["num_processes"] == 2 and m2["steps"] == 3
    assert (d / "meta2" / "meta_samples.jsonl").read_text().splitlines() == lines             # one meta set, the same


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


def test_iterate_under_two_processes(stages):
    d = stages
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rmsecrets.cli",
                    "iterate", "--data", str(d / "w"), "--policy", str(d / "sft" / "model"),
                    "--reward-model", str(d / "rm" / "model"), "--out", str(d / "it2"), "--rounds", "1", "--meta-prompts", "4",
                    "--rm-max-steps", "2", "--ppo-iterations", "2", "--ppo-critic-warmup", "1", "--ppo-rollout-prompts", "4",
                    "--ppo-eval-prompts", "8", "--ppo-eval-every", "0"], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    (row,) = json.loads((d / "it2" / "rounds.json").read_text())["rounds"]
    assert row["round"] == 1 and np.isfinite(row["gold"]) and "ranking_vs_gold" in row["after"]
    assert json.loads((d / "it2" / "round_1" / "ppo" / "metrics.json").read_text())["num_processes"] == 2
