"""Independent runs on two cores: one process of two threads against two forked processes of one thread each.

    python benchmarks/parallel_runs.py [--pairs 4000] [--voters 10] [--epochs 1] [--repeats 2] [--quick]

The job is the strength vote (`rmsecrets.strength.vote`, M tiny voters, in-sample, `WORLD_TRAIN`), run three ways,
interleaved over the repeats: sequentially with the process's threads (`workers=1`, the notebooks' reference),
sequentially with one thread (the numbers `workers=2` must reproduce), and with `workers=2` (`experiments.parallel_map`).
Seconds are medians over the repeats, printed with their ratio to the sequential two-thread run; the votes are
compared exactly (the one-thread and two-worker votes must be identical; the two-thread vote differs in the last
bits, which training amplifies). Nothing is asserted.
"""
import argparse
import statistics
import time

from _common import table  # sets the offline environment first

import numpy as np
import torch

from dataclasses import replace
from rmsecrets.data import tokenize_pairs
from rmsecrets.strength import StrengthConfig, annotate, strength_summary, vote
from rmsecrets.train import WORLD_TRAIN
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

def main(args):
    threads = torch.get_num_threads()
    tok = make_tokenizer()
    train = make_world(WorldConfig(n_train=args.pairs))["train"]
    pairs = tokenize_pairs(train, tok, max_length=64)
    config = StrengthConfig(n_voters=args.voters, train=replace(WORLD_TRAIN, epochs=args.epochs))
    ways = {f"sequential, {threads} threads": (threads, 1), "sequential, 1 thread": (1, 1), "2 workers × 1 thread": (threads, 2)}
    seconds, votes = {w: [] for w in ways}, {}
    for r in range(args.repeats):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            n_threads, workers = ways[name]
            torch.set_num_threads(n_threads)
            t0 = time.perf_counter()
            v = vote(pairs, tok, replace(config, workers=workers))
            seconds[name].append(time.perf_counter() - t0)
            votes.setdefault(name, v)
    torch.set_num_threads(threads)
    base = statistics.median(seconds[list(ways)[0]])
    one = votes["sequential, 1 thread"]
    rows = []
    for name, v in votes.items():
        s = strength_summary(annotate(train, v))
        rows.append({"way": name, "seconds": statistics.median(seconds[name]),
                     "seconds per repeat": " ".join(f"{x:.1f}" for x in seconds[name]),
                     "speed vs sequential": base / statistics.median(seconds[name]),
                     "votes equal the 1-thread run": bool(np.array_equal(v.chosen_scores, one.chosen_scores)
                                                          and np.array_equal(v.rejected_scores, one.rejected_scores)),
                     "AUROC injected": s["auroc_injected"], "Spearman": s["spearman_true_margin"]})
    print(f"M = {args.voters} voters, {args.pairs} pairs, {args.epochs} epoch(s), {args.repeats} repeats, "
          f"{threads} threads in this process\n")
    table(rows)

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--voters", type=int, default=10)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: 300 pairs, 4 voters, one repeat")
    args = p.parse_args()
    if args.quick: args.pairs, args.voters, args.repeats = 300, 4, 1
    main(args)
