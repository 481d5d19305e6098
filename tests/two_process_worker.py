"""Every two-process run of tests/test_two_processes.py, in one `accelerate launch` (the ranks start once, not once a
command): the command-line runs of `COMMANDS` one after another, each process writing what it printed to
<out>/<name>.rank<r>.log, then `distributed_worker.run` (the training loops and the sampler's sharding).

    accelerate launch --multi_gpu --num_processes 2 tests/two_process_worker.py MADE OUT

MADE is the session's folder of tests/conftest.py (`w/`, `sft/model`, `rm/model`). Every command runs through
`rmsecrets.cli.run`, as `rmsecrets` runs it, but in the same two processes: the process group is set up once, by
the first, and closed at the end (`cli.main` closes it after each command)."""
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker  # noqa: E402

TRAIN = ["--max-steps", "6", "--max-length", "64", "--progress", "false", "--eval-every", "3"]
# the one-process run of each comparison is the same command with twice the batch (--batch-size is per process)
COMMANDS = {   # name -> (arguments given MADE and the batch size per process, or None where no batch is compared)
    "train-rm": lambda m, b: ["train-rm", "--data", f"{m}/w", "--batch-size", b, *TRAIN],
    "simcse": lambda m, b: ["train-rm", "--data", f"{m}/w", "--batch-size", b, *TRAIN, "--contrastive", "simcse",
                            "--cl-dropout", "0"],   # no dropout: both views and every process see the same network
    "swav": lambda m, b: ["train-rm", "--data", f"{m}/w", "--batch-size", b, *TRAIN, "--contrastive", "swav",
                          "--cl-dropout", "0"],
    "metarm": lambda m, b: ["metarm", "--data", f"{m}/w", "--policy", f"{m}/sft/model", "--reward-model", f"{m}/rm/model",
                            "--meta-prompts", "6", "--max-steps", "4", "--batch-size", b, "--max-length", "64",
                            "--progress", "false", "--eta", "0.05"],
    "iterate": lambda m, b: ["iterate", "--data", f"{m}/w", "--policy", f"{m}/sft/model", "--reward-model",
                             f"{m}/rm/model", "--rounds", "1", "--meta-prompts", "4", "--rm-max-steps", "4",
                             "--rm-batch-size", b, "--ppo-iterations", "2", "--ppo-critic-warmup", "1",
                             "--ppo-rollout-prompts", "4", "--ppo-eval-prompts", "8", "--ppo-eval-every", "0"],
}
ONLY_TWO = {   # runs with no one-process counterpart
    "strength": lambda m: ["strength", "--data", f"{m}/w", "--n-voters", "2", "--max-steps", "3", "--max-length", "64"],
    "ppo-lora": lambda m: ["ppo", "--policy", f"{m}/sft/model", "--reward-model", f"{m}/rm/model", "--prompts", f"{m}/w",
                           "--iterations", "2", "--critic-warmup", "1", "--rollout-prompts", "4", "--eval-prompts", "4",
                           "--eval-every", "0", "--lora-r", "4", "--progress", "false"],
    # a run, then the same folder again with another rate and --overwrite: process 0 empties it before either looks in it
    "overwrite": lambda m: ["train-rm", "--data", f"{m}/w", "--max-steps", "6", "--save-every", "2", "--max-length", "64",
                            "--progress", "false"],
}
BATCH = 8   # pairs per process in the two-process runs


def runs(made: Path, out: Path) -> list[tuple[str, list]]:
    "(log name, argv) of every command the launch runs, in order."
    todo = [(name, [*make(made, str(BATCH)), "--out", str(out / name)]) for name, make in COMMANDS.items()]
    todo += [(name, [*make(made), "--out", str(out / name)]) for name, make in ONLY_TWO.items()]
    todo.append(("overwrite-again", [*ONLY_TWO["overwrite"](made), "--out", str(out / "overwrite"), "--lr", "0.01",
                                     "--overwrite"]))
    return todo


def main(made: Path, out: Path) -> None:
    from rmsecrets.cli import run
    from rmsecrets.core import process_state
    rank = process_state().process_index
    out.mkdir(parents=True, exist_ok=True)
    for name, argv in runs(made, out):
        with open(out / f"{name}.rank{rank}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run(argv)
    distributed_worker.run(str(out / "distributed"), distributed_worker.GLOBAL_BATCH // 2)


if __name__ == "__main__":
    try: main(Path(sys.argv[1]), Path(sys.argv[2]))
    finally:   # close the process group before the interpreter exits, as `rmsecrets.cli.main` does
        if torch.distributed.is_initialized(): torch.distributed.destroy_process_group()
