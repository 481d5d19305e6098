"""The full vote's M voters trained one after another (`strength.vote`) against all M at once (`stacked_vote`).

    python benchmarks/stacked_voters.py [--pairs 4000] [--voters 10] [--epochs 1] [--backbone tiny] [--repeats 2] [--quick]

Both train the same voters (seeds, data orders, `VOTER_TRAIN`), in-sample, on the demo's world, on this machine's
device (a GPU where there is one; there `auto` mixed precision is bf16 for both). Repeats are interleaved
(sequential, stacked, then stacked, sequential); seconds are medians. Printed: seconds, the speed of stacked relative
to sequential, the largest difference between the two votes' rewards, and each vote's injected-label AUROC.
Nothing is asserted; `stacked` is worth making the default where its ratio is well above 1.
"""
import argparse
import statistics
import time
from dataclasses import replace

from _common import table  # sets the offline environment first

import numpy as np
import torch

from rmsecrets.data import tokenize_pairs
from rmsecrets.strength import VOTER_TRAIN, StrengthConfig, annotate, stacked_vote, strength_summary, vote
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

def main(args):
    tok = make_tokenizer()
    train = make_world(WorldConfig(n_train=args.pairs))["train"]
    pairs = tokenize_pairs(train, tok, max_length=64)
    config = StrengthConfig(n_voters=args.voters, backbone=args.backbone, train=replace(VOTER_TRAIN, epochs=args.epochs))
    ways = {"sequential (vote)": vote, "stacked (stacked_vote)": stacked_vote}
    seconds, votes = {w: [] for w in ways}, {}
    for r in range(args.repeats):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            if torch.cuda.is_available(): torch.cuda.synchronize()
            t0 = time.perf_counter()
            votes.setdefault(name, v := ways[name](pairs, tok, config))
            if torch.cuda.is_available(): torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - t0)
    base = statistics.median(seconds["sequential (vote)"])
    ref = votes["sequential (vote)"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; M = {args.voters} {args.backbone} voters, {args.pairs} pairs, {args.epochs} epoch(s), "
          f"{args.repeats} repeats\n")
    table([{"way": name, "seconds": statistics.median(seconds[name]),
            "seconds per repeat": " ".join(f"{x:.1f}" for x in seconds[name]),
            "speed vs sequential": base / statistics.median(seconds[name]),
            "largest abs. Δ reward": float(np.abs(v.chosen_scores - ref.chosen_scores).max()),
            "AUROC injected": strength_summary(annotate(train, v))["auroc_injected"]} for name, v in votes.items()])

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--voters", type=int, default=10)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--backbone", default="tiny", help="a preset (tiny, small, base) or a folder")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: 300 pairs, 3 voters, one repeat")
    args = p.parse_args()
    if args.quick: args.pairs, args.voters, args.repeats = 300, 3, 1
    main(args)
