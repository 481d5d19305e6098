"""Two CPU processes under `accelerate launch` train the same reward model as one process with the global batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """rank0/rank1 of a two-process run with GLOBAL_BATCH / 2 pairs each, and one process with GLOBAL_BATCH."""
    out = tmp_path_factory.mktemp("distributed")
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
         worker.__file__, str(out / "ddp"), str(worker.GLOBAL_BATCH // 2)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert launch.returncode == 0, launch.stderr[-3000:]
    worker.run(str(out / "single"), worker.GLOBAL_BATCH)
    load = lambda p: torch.load(p, weights_only=False)
    return [load(out / "ddp" / f"rank{r}.pt") for r in (0, 1)], load(out / "single" / "rank0.pt")


def test_both_ranks_ran_in_one_group(runs):
    ddp, single = runs
    assert [r["rank"] for r in ddp] == [0, 1] and all(r["num_processes"] == 2 for r in ddp)
    assert single["num_processes"] == 1


def test_rank_r_gets_batches_r_r_plus_2_and_so_on(runs):
    """accelerate shards a custom sampler's batches round-robin (BatchSamplerShard, split_batches=False): the two
    processes' k-th batches together are the k-th batch of one process with the global batch, in the same order."""
    ddp, single = runs
    half = worker.GLOBAL_BATCH // 2
    for epoch, batches in enumerate(single["seen"]):
        order = [i for b in batches for i in b]
        assert sorted(order) == list(range(worker.N_PAIRS))
        for r in (0, 1):
            assert ddp[r]["seen"][epoch] == [order[i * half:(i + 1) * half] for i in range(r, 2 * len(batches), 2)]
    assert single["seen"][0] != single["seen"][1]                       # a new order each epoch


def test_gradients_are_synchronised(runs):
    """The ranks saw different pairs; only averaged gradients leave them with the same weights."""
    ddp, _ = runs
    assert ddp[0]["params"].keys() == ddp[1]["params"].keys()
    for k in ddp[0]["params"]: assert torch.equal(ddp[0]["params"][k], ddp[1]["params"][k]), k


def test_two_processes_train_the_model_one_process_trains(runs):
    """The Bradley–Terry loss is a mean over pairs and each rank holds half of every global batch, so the averaged
    gradient is the global batch's gradient: the same loss and gradient norm at every step, the same clipping and
    AdamW steps, the same model.

    Not bit for bit: the sums run in another order (two half-batch means, then their average), and AdamW divides by
    √v, which turns rounding in coordinates whose gradient is near zero into steps of up to lr. Even one process
    with 1 or 2 torch threads differs by ~1e-6 here, and the gap grows step by step; the gradient norm, a sum over
    every coordinate, grows fastest (1.2e-4 relative by step 8 with one torch thread in the test process). So: the
    first step's loss and gradient norm to 1e-6 relative, every step's loss to 1e-4 and gradient norm to 1e-3 (a
    summed instead of averaged gradient would be off by 100%), the weights to 5e-5 absolute — against a training that
    moved them by more than 100 times that."""
    ddp, single = runs
    assert len(single["losses"]) == 8
    for key, rel in (("losses", 1e-4), ("grad_norms", 1e-3)):
        assert ddp[0][key][0] == pytest.approx(single[key][0], rel=1e-6)
        assert ddp[0][key] == pytest.approx(single[key], rel=rel)
    init = worker.make_reward_model("tiny", worker.make_tokenizer(), seed=0).state_dict()
    assert max((single["params"][k] - init[k]).abs().max().item() for k in init) > 100 * 5e-5
    for k in single["params"]:
        torch.testing.assert_close(ddp[0]["params"][k], single["params"][k], rtol=0, atol=5e-5, msg=k)


def test_sft_schedule_is_the_same_with_two_processes(runs):
    ddp, single = runs
    assert len(single["sft_lr"]) == 8 and single["sft_lr"][0] > single["sft_lr"][-1]
    assert ddp[0]["sft_lr"] == pytest.approx(single["sft_lr"])


def test_reward_model_schedule_is_the_same_with_two_processes(runs):
    ddp, single = runs
    assert len(single["rm_lr"]) == 8
    assert ddp[0]["rm_lr"] == pytest.approx(single["rm_lr"])
