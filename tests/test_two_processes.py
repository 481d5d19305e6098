"""Two CPU processes under `accelerate launch` compute what one process computes with the global batch: the training
loop (the sampler's sharding, averaged gradients, schedules), and the commands `train-rm`, contrastive `train-rm`,
`metarm` and `iterate`; `strength` writes once, `ppo` with LoRA runs, and `--overwrite` empties the folder before
either process looks in it. Every two-process run is in one launch (tests/two_process_worker.py); the one-process
runs are the same commands with twice the batch, in this process."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import accelerate_launch, cli
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402
import two_process_worker as two  # noqa: E402


@pytest.fixture(scope="module")
def launched(made, tmp_path_factory) -> Path:
    "The folder of the one launch: every two-process run."
    out = tmp_path_factory.mktemp("two")
    accelerate_launch(two.__file__, made, out, timeout=600)
    return out


@pytest.fixture(scope="module")
def alone(made, tmp_path_factory) -> Path:
    "The one-process runs of the comparisons: the same commands with twice the batch."
    out = tmp_path_factory.mktemp("one")
    for name, make in two.COMMANDS.items(): cli(*make(made, str(2 * two.BATCH)), "--out", out / name)
    worker.run(str(out / "distributed"), worker.GLOBAL_BATCH)
    return out


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def same_model(a: Path, b: Path, start: dict, share: float = 0.1):
    """The weights saved in folders `a` and `b` differ by less than `share` of how far training moved them from `start`
    (the largest change of any weight). Not bit for bit: two processes sum in another order, which AdamW's 1/√v
    magnifies in coordinates whose gradient is near zero (see `test_two_processes_train_the_model_one_process_trains`);
    here that is under 2% of the training's move. Half the batch in one process instead (what a wrong shard feeds a
    step) leaves the weights 190% of the move apart; a gradient left unsynchronised or another meta batch on one
    process moves them as far."""
    wa, wb = (load_file(f / "model.safetensors") for f in (a, b))
    assert wa.keys() == wb.keys() and set(start) <= set(wa)
    moved = max((wa[k] - start[k]).abs().max().item() for k in start)
    apart = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert moved > 1e-3 and apart < share * moved, (apart, moved)


@pytest.fixture(scope="module")
def fresh(made) -> dict:
    "The weights `train-rm` starts from: the tiny preset at seed 0, on the world's tokenizer."
    from rmsecrets.model import make_reward_model
    from transformers import AutoTokenizer
    return make_reward_model("tiny", AutoTokenizer.from_pretrained(made / "w" / "tokenizer"), seed=0).state_dict()


@pytest.fixture(scope="module")
def session_rm(made) -> dict:
    "The weights `metarm` and `iterate` start from: the session's reward model."
    return load_file(made / "rm" / "model" / "model.safetensors")


# ---------------------------------------------------------------- the commands

def test_train_rm_two_processes_train_what_one_trains(launched, alone, fresh):
    two_, one = metrics(launched / "train-rm"), metrics(alone / "train-rm")
    assert (two_["num_processes"], one["num_processes"], two_["steps"]) == (2, 1, 6)
    assert two_["eval"]["n"] == one["eval"]["n"] == 60                   # every validation pair scored once, gathered
    assert two_["eval"]["loss"] == pytest.approx(one["eval"]["loss"], rel=1e-4)
    assert two_["eval"]["accuracy"] == pytest.approx(one["eval"]["accuracy"], abs=1 / 60 + 1e-9)   # a near-tie may flip
    same_model(launched / "train-rm" / "model", alone / "train-rm" / "model", fresh)


@pytest.mark.parametrize("variant", ["simcse", "swav"])
def test_contrastive_losses_see_the_global_batch_from_the_command_line(launched, alone, fresh, variant):
    """SimCSE's negatives are gathered from both processes, SwAV's Sinkhorn sums over both: with the views' dropout off,
    two half batches give the loss and the model of one whole batch."""
    two_, one = metrics(launched / variant), metrics(alone / variant)
    assert (two_["num_processes"], one["num_processes"], two_["steps"], two_["eval"]["n"]) == (2, 1, 6, 60)
    losses = lambda folder: [json.loads(l)["loss"] for l in (folder / "metrics.jsonl").read_text().splitlines()
                             if "loss" in json.loads(l) and "event" not in json.loads(l)]
    assert losses(launched / variant) == pytest.approx(losses(alone / variant), rel=1e-4)
    same_model(launched / variant / "model", alone / variant / "model", fresh)


def test_metarm_two_processes_one_meta_set_and_the_same_update(launched, alone, session_rm):
    "Process 0 samples the meta set and sends it to the other; the update is the one-process update on the global batch."
    two_, one = metrics(launched / "metarm"), metrics(alone / "metarm")
    assert (two_["num_processes"], one["num_processes"], two_["steps"], two_["eval"]["n"]) == (2, 1, 4, 60)
    lines = (launched / "metarm" / "meta_samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 5 and lines == (alone / "metarm" / "meta_samples.jsonl").read_text().splitlines()
    same_model(launched / "metarm" / "model", alone / "metarm" / "model", session_rm)


def test_iterate_two_processes_update_the_reward_model_as_one(launched, alone, session_rm):
    """A round under two processes: the same reward-model update as one process with the global batch; PPO then
    samples on each process from its own generator (twice the rollouts), so only its bookkeeping is compared."""
    (row,) = json.loads((launched / "iterate" / "rounds.json").read_text())["rounds"]
    assert row["round"] == 1 and np.isfinite(row["gold"]) and 0 <= row["after"]["ranking_vs_gold"] <= 1
    assert metrics(launched / "iterate" / "round_1" / "ppo")["num_processes"] == 2
    same_model(launched / "iterate/round_1/reward_model", alone / "iterate/round_1/reward_model", session_rm)


def test_strength_under_two_processes_writes_once(launched):
    st = launched / "strength"
    logs = [(launched / f"strength.rank{r}.log").read_text() for r in (0, 1)]
    assert logs[0].count('"voter"') == 1 and logs[1].count('"voter"') == 0     # the main process reports and writes
    assert sorted(p.name for p in st.iterdir()) == [".rmsecrets.lock", "annotated", "annotated.jsonl", "run.json",
                                                    "strength.json", "strength.png", "voters"]
    assert sorted(p.name for p in (st / "voters").iterdir()) == [f"fold-0-voter-{m}.{ext}" for m in (0, 1)
                                                                 for ext in ("json", "safetensors")]
    rows = (st / "annotated.jsonl").read_text().splitlines()
    assert len(rows) == 240 and "strength_mean" in json.loads(rows[0])


def test_ppo_with_lora_under_two_processes(launched):
    m = metrics(launched / "ppo-lora")
    assert m["num_processes"] == 2 and m["config"]["lora_r"] == 4 and m["first"]["kl"] == 0
    assert not any("lora" in k for k in load_file(launched / "ppo-lora" / "policy" / "model.safetensors"))   # merged


def test_overwrite_under_two_processes_starts_the_folder_again(launched):
    "Process 0 empties the folder before any process looks in it for a checkpoint to resume from."
    m = metrics(launched / "overwrite")
    assert m["config"]["lr"] == 0.01 and m["steps"] == 6 and m["num_processes"] == 2
    assert not any("resumed from" in (launched / f"overwrite-again.rank{r}.log").read_text() for r in (0, 1))
    assert "lr: 0.001 there, 0.01 here" not in (launched / "overwrite-again.rank0.log").read_text()


# ---------------------------------------------------------------- the training loop (tests/distributed_worker.py)

@pytest.fixture(scope="module")
def runs(launched, alone):
    """rank0/rank1 of the two-process run with GLOBAL_BATCH / 2 pairs each, and one process with GLOBAL_BATCH."""
    load = lambda p: torch.load(p, weights_only=False)
    return [load(launched / "distributed" / f"rank{r}.pt") for r in (0, 1)], load(alone / "distributed" / "rank0.pt")


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


# ---------------------------------------------------------------- launches do not collide

PING = '''
import sys, torch
from accelerate import PartialState
state = PartialState(cpu=True)
x = torch.tensor([state.process_index + 1.0])
torch.distributed.all_reduce(x)
if state.is_main_process: print("sum", int(x.item()), "of", state.num_processes)
torch.distributed.destroy_process_group()
'''


def test_two_launches_at_once_do_not_collide(tmp_path):
    "Each launch on a port of its own: two at the same moment both form their groups (on one port, one would fail)."
    from concurrent.futures import ThreadPoolExecutor
    (tmp_path / "ping.py").write_text(PING)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: accelerate_launch(tmp_path / "ping.py", timeout=120), range(2)))
    assert all("sum 3 of 2" in d.stdout for d in done), [d.stdout[-500:] for d in done]
