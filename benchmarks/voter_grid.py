"""Right-sized voters: how many epochs, at which learning rate, the M = 10 voters of the strength vote need.

    python benchmarks/voter_grid.py [--epochs 0.5 1 2 3] [--lrs 1e-3 2e-3 4e-3] [--seeds 0 1] [--voters 10]
        [--pairs 4000] [--kinds full] [--quick] [--rows RAW.txt]

Each setting votes in-sample (the paper's scoring) on the training pairs of the demo's world (`WorldConfig(seed=s)`,
4,000 pairs), with voter seed s, for each seed s; everything else is `WORLD_TRAIN`. Quality is read against the
world's truth (`strength_summary`): AUROC of −μ̂ for the injected wrong labels (uniform and careless annotators)
and for all wrong labels, and Spearman of μ̂ with the true margin. Settings run one after another in this process
(two threads), so their seconds compare side by side. The choice printed at the end is the setting with the most
injected-label AUROC per second among those whose mean AUROC is within the seed spread of the best mean: the pooled
seed-to-seed standard deviation over all settings (one sd from two seeds has one degree of freedom; the pooled
one has one per setting). The best setting's own sd is printed beside it. Nothing is asserted. `--rows` reads the
JSON lines a run printed and summarises them again without training.

`--kinds` runs other voters on the same grid: `oof` (the full vote out-of-fold, k = 2, M = 5: each voter sees half
the pairs), `single` (one model, M = 1) and `shared-trunk` (`04b_cheap_voters`); the choice is made per kind.
"""
import argparse
import itertools
import json
import time
from dataclasses import replace

from _common import table  # sets the offline environment first

import numpy as np

from rmsecrets.data import tokenize_pairs
from rmsecrets.strength import StrengthConfig, annotate, strength_summary, vote
from rmsecrets.voters import VOTERS
from rmsecrets.train import WORLD_TRAIN
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

METRICS = ("auroc_injected", "auroc_wrong", "spearman_true_margin")

def run(args) -> list[dict]:
    tok, rows = make_tokenizer(), []
    worlds = {s: make_world(WorldConfig(seed=s, n_train=args.pairs))["train"] for s in args.seeds}
    pairs = {s: tokenize_pairs(ds, tok, max_length=64) for s, ds in worlds.items()}
    for kind, epochs, lr, seed in itertools.product(args.kinds, args.epochs, args.lrs, args.seeds):
        config = StrengthConfig(n_voters=args.voters, seed=seed, train=replace(WORLD_TRAIN, epochs=epochs, lr=lr))
        t0 = time.time()
        if kind == "full": votes = vote(pairs[seed], tok, config)
        elif kind == "oof": votes = vote(pairs[seed], tok, replace(config, mode="out_of_fold", n_voters=max(1, args.voters // 2)))
        else: votes = VOTERS[kind](pairs[seed], tok, config)
        s = strength_summary(annotate(worlds[seed], votes))
        rows.append({**({"kind": kind} if kind != "full" else {}), "epochs": epochs, "lr": lr, "seed": seed,
                     "seconds": time.time() - t0, **{k: s[k] for k in METRICS}})
        print(json.dumps(rows[-1]), flush=True)
    return rows

def summarise(rows: list[dict]) -> None:
    for kind in dict.fromkeys(r.get("kind", "full") for r in rows):
        print(f"\n## {kind}")
        summarise_kind([r for r in rows if r.get("kind", "full") == kind])

def summarise_kind(rows: list[dict]) -> None:
    epochs, lrs, seeds = (list(dict.fromkeys(r[k] for r in rows)) for k in ("epochs", "lr", "seed"))
    summary = []
    for epochs, lr in itertools.product(epochs, lrs):
        got = [r for r in rows if r["epochs"] == epochs and r["lr"] == lr]
        if not got: continue
        mean = {k: float(np.mean([r[k] for r in got])) for k in ("seconds", *METRICS)}
        summary.append({"epochs": epochs, "lr": lr, "seconds": mean["seconds"],
                        **{k: f"{mean[k]:.3f} ± {np.std([r[k] for r in got], ddof=1) if len(got) > 1 else 0:.3f}" for k in METRICS},
                        "AUROC per minute": 60 * mean["auroc_injected"] / mean["seconds"],
                        "_auroc": mean["auroc_injected"],
                        "_sd": float(np.std([r["auroc_injected"] for r in got], ddof=1)) if len(got) > 1 else 0.0})
    best = max(summary, key=lambda r: r["_auroc"])
    pooled = float(np.sqrt(np.mean([r["_sd"] ** 2 for r in summary])))
    near = [r for r in summary if r["_auroc"] >= best["_auroc"] - pooled]
    choice = max(near, key=lambda r: r["AUROC per minute"])
    print(f"\n{len(seeds)} seeds {seeds}; mean ± sd over seeds\n")
    table([{k: v for k, v in r.items() if not k.startswith("_")} for r in summary])
    print(f"\nbest mean injected-label AUROC: {best['_auroc']:.3f} (epochs {best['epochs']}, lr {best['lr']}; its own sd "
          f"{best['_sd']:.3f}); pooled seed-to-seed sd {pooled:.3f}; within it of the best: "
          + ", ".join(f"({r['epochs']}, {r['lr']})" for r in near)
          + f"\nmost AUROC per second of those: epochs {choice['epochs']}, lr {choice['lr']} ({choice['seconds']:.1f} s, "
          f"AUROC {choice['_auroc']:.3f})")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, nargs="+", default=[0.5, 1, 2, 3])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--voters", type=int, default=10)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--kinds", nargs="+", default=["full"], choices=["full", "oof", "single", "shared-trunk"])
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 settings, 2 voters, 400 pairs")
    p.add_argument("--rows", help="summarise the JSON lines of an earlier run's output instead of running")
    args = p.parse_args()
    if args.quick: args.epochs, args.lrs, args.voters, args.pairs = [0.5, 1], [2e-3], 2, 400
    if args.rows: rows = [json.loads(line) for line in open(args.rows) if line.startswith("{")]
    else:
        rows = run(args)
        print(f"\nM = {args.voters} voters, {args.pairs} pairs")
    summarise(rows)
