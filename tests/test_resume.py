"""Fault injection: every long command is killed with SIGKILL at seeded random moments after a checkpoint, rerun with the
same command until it ends, and compared with an uninterrupted run: the same weights, byte for byte, and the same
numbers. Also: one writer per folder, and a changed command refused.

Each run is a process of its own, forked from the test process (`Forked`): it pays no imports, and SIGKILL reaches it
and every process it forked (its voters' and seeds' workers) as it would reach `rmsecrets` started from a shell. The
uninterrupted `sft` and `train-rm` runs are the session's (`made`), which the other tests use as inputs too."""
import json

import pytest
from conftest import RM, SFT, Forked
from faults import run_whole, run_with_kills, same_bytes, same_json, same_lines

COMMANDS = {   # name -> (arguments given the session's folder, the files an interrupted run must reproduce)
    "train-rm": (lambda d: ["train-rm", "--data", f"{d}/w", *RM],
                 [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "sft": (lambda d: ["sft", "--data", f"{d}/w", *SFT],
            [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("lines", "metrics.jsonl")]),
    "ppo": (lambda d: ["ppo", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model", "--prompts", f"{d}/w",
                       "--iterations", "16", "--save-every", "2", "--rollout-prompts", "8", "--mini-batch", "8",
                       "--eval-prompts", "4", "--eval-every", "4", "--critic-warmup", "2", "--progress", "false"],
            [("bytes", "policy/model.safetensors"), ("json", "metrics.json"), ("lines", "evals.jsonl"),
             ("lines", "history.jsonl")]),
    "strength": (lambda d: ["strength", "--data", f"{d}/w", "--n-voters", "6", "--max-steps", "20", "--save-every", "10"],
                 [("bytes", "annotated.jsonl"), ("json", "strength.json")]),
    "metarm": (lambda d: ["metarm", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                          "--meta-prompts", "8", "--max-steps", "40", "--save-every", "5", "--progress", "false"],
               [("bytes", "model/model.safetensors"), ("json", "metrics.json"), ("bytes", "meta_samples.jsonl")]),
    "iterate": (lambda d: ["iterate", "--data", f"{d}/w", "--policy", f"{d}/sft/model", "--reward-model", f"{d}/rm/model",
                           "--rounds", "3", "--meta-prompts", "6", "--rm-max-steps", "10", "--rm-save-every", "5",
                           "--ppo-iterations", "4", "--ppo-save-every", "2", "--ppo-critic-warmup", "1",
                           "--ppo-rollout-prompts", "8", "--ppo-mini-batch", "8", "--ppo-eval-prompts", "8",
                           "--ppo-eval-every", "0"],
                [("json", "rounds.json")] + [(kind, f"round_{r}/{f}") for r in (1, 2, 3) for kind, f in
                                             (("bytes", "reward_model/model.safetensors"), ("bytes", "ppo/policy/model.safetensors"))]),
}
SHARED = {"sft": "sft", "train-rm": "rm"}   # commands whose uninterrupted run is the session's


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_killed_command_resumes_to_the_same_result(made, command):
    args, compare = COMMANDS[command]
    args = args(made)
    whole = made / SHARED.get(command, f"{command}-whole")
    span = made.spans[SHARED[command]] if command in SHARED else run_whole(args, whole)   # first checkpoint to end
    found = run_with_kills(args, made / f"{command}-killed", seed=sorted(COMMANDS).index(command), window=span / 8)
    assert len(found) == 3 and all(found), found          # three kills, each after at least one checkpoint
    assert len({tuple(f) for f in found}) == 3, found     # at three different points of the run
    for kind, name in compare:
        {"bytes": same_bytes, "json": same_json, "lines": same_lines}[kind](whole / name, made / f"{command}-killed" / name)


def test_two_runs_on_one_folder(made, tmp_path):
    "The second run on a busy folder stops at once and says who holds it; the first ends as if alone."
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "300", "--batch-size", "8", "--eval-every", "0",
            "--progress", "false"]                          # long enough to be running when the second has started
    first = Forked([*args, "--out", tmp_path / "out"], tmp_path / "first.log")
    first.wait_for(lambda: (tmp_path / "out" / "run.json").exists(), 60)
    second = Forked([*args, "--out", tmp_path / "out"], tmp_path / "second.log")
    second.wait_for(lambda: False, 60)
    said = (tmp_path / "second.log").read_text().strip().splitlines()
    assert second.returncode == 2 and len(said) == 1 and "is being written by another run (pid" in said[0], said
    assert first.poll() is None, "the first run ended before the second was refused: the check proved nothing"
    first.wait(300)
    Forked([*args, "--out", tmp_path / "alone"], tmp_path / "alone.log").wait(300)
    same_bytes(tmp_path / "alone" / "model" / "model.safetensors", tmp_path / "out" / "model" / "model.safetensors")


def test_a_changed_command_is_refused_unless_overwrite(made, tmp_path, capsys):
    from rmsecrets.cli import main
    args = ["train-rm", "--data", f"{made}/w", "--max-steps", "2", "--progress", "false", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--lr", "0.01"]) == 2
    assert "lr: 0.001 there, 0.01 here" in capsys.readouterr().err
    assert main(args + ["--lr", "0.01", "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["lr"] == 0.01
