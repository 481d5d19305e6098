"""What tests/test_distributed.py runs twice: alone with the global batch, and under `accelerate launch` with two CPU
processes and half the batch each. Writes rank<r>.pt: the trained weights, the pairs this process saw, and the
learning rates of the reward model's and the SFT loop's schedules."""
import sys
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import parse_flag_from_env
from torch.utils.data import DataLoader

from rmsecrets.data import tokenize_pairs
from rmsecrets.model import make_reward_model
from rmsecrets.policy import SFTConfig, make_policy, train_sft
from rmsecrets.train import EpochSampler, TrainConfig, train_reward_model
from rmsecrets.world import WorldConfig, make_demonstrations, make_tokenizer, make_world

N_PAIRS = 64        # a multiple of the global batch, so no process pads its last batch with pairs from the start
GLOBAL_BATCH = 16   # pairs per optimiser step, over all processes
# the weights are compared under a constant rate; the cosine run checks that both schedules advance alike
CONSTANT = TrainConfig(lr=2e-3, epochs=2, schedule="constant_with_warmup", warmup_ratio=0.0, log_every=1,
                       max_length=64, progress=False)
COSINE = replace(CONSTANT, schedule="cosine", warmup_ratio=0.25)


def run(out: str, batch_size: int) -> None:
    """Train with `batch_size` pairs per process; write this process's results to out/rank<r>.pt."""
    # PartialState, unlike Accelerator, ignores ACCELERATE_USE_CPU: on a machine without GPUs a bare PartialState()
    # would settle the shared state as one non-distributed process, and every Accelerator after it would follow
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    tok = make_tokenizer()
    pairs = tokenize_pairs(make_world(WorldConfig(seed=0, n_train=N_PAIRS, n_validation=8, n_test=8))["train"], tok, 64)
    sampler = EpochSampler(N_PAIRS, CONSTANT.seed)   # the loop's sampler, sharded as the loop's loader is
    loader = prepare_data_loader(DataLoader(range(N_PAIRS), batch_size=batch_size, sampler=sampler),
                                 num_processes=state.num_processes, process_index=state.process_index, put_on_device=False)
    seen = []
    for sampler.epoch in (0, 1): seen.append([b.tolist() for b in loader])
    constant = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs,
                                  config=replace(CONSTANT, batch_size=batch_size))
    cosine = train_reward_model(make_reward_model("tiny", tok, seed=0), tok, pairs,
                                config=replace(COSINE, batch_size=batch_size)).history
    sft = train_sft(make_policy("tiny", tok, seed=0), tok, make_demonstrations(WorldConfig(n_demonstrations=N_PAIRS)),
                    SFTConfig(batch_size=batch_size, epochs=2, warmup_ratio=0.25, progress=False)).history
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"rank": state.process_index, "num_processes": state.num_processes, "seen": seen,
                "params": {k: v.detach().cpu().clone() for k, v in constant.model.state_dict().items()},
                "losses": [h["loss"] for h in constant.history], "grad_norms": [h["grad_norm"] for h in constant.history],
                "rm_lr": [h["lr"] for h in cosine if "lr" in h], "sft_lr": [h["lr"] for h in sft]},
               Path(out) / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    try: run(sys.argv[1], int(sys.argv[2]))
    finally:   # close the process group before the interpreter exits, as `rmsecrets.cli.main` does
        if torch.distributed.is_initialized(): torch.distributed.destroy_process_group()
