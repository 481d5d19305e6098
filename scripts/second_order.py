"""The lessons' "better" and "worse" verdicts, run again under a second floating-point reduction order.

    python scripts/second_order.py 06_contrastive      # writes benchmarks/results/second_order_06_contrastive.json
    python scripts/second_order.py 05_label_tricks     # the eight-epoch runs: about 25 minutes on two cores

A lesson's slow cells keep each run's numbers in its run folder (`nbs/label-tricks-runs/`, `nbs/contrastive-runs/`:
`experiments.run_grid`'s `out_dir`); the second order's go beside it, in `<folder>-second-order/`. This script runs
the same variants and seeds again in a process started with `ATEN_CPU_CAPABILITY=avx2` (torch's AVX2 kernels on a
machine whose default is AVX-512: another order of the sums), and writes, per contrast,
the per-seed values under both orders and `paired_verdict`'s word for each. A verdict is a finding only when both
words agree. On an AVX2-only machine the default order already is AVX2; use `--threads 2` there instead.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _contrastive(out: Path, workers: int) -> None:
    """06_contrastive: the baseline and the variants with a "worse" verdict, as the full comparison and the sweep run them."""
    from dataclasses import replace
    from rmsecrets.contrastive import CONTRASTIVE, SHIFTED_WORLD, compare_contrastive
    from rmsecrets.data import tokenize_pairs
    from rmsecrets.world import WorldConfig, make_tokenizer, make_world
    tok = make_tokenizer()
    world = make_world(WorldConfig())
    tr, va = (tokenize_pairs(world[s], tok, max_length=64) for s in ("train", "validation"))
    sh = tokenize_pairs(make_world(SHIFTED_WORLD)["validation"], tok, max_length=64)
    sweep = {"simcse τ=0.1": replace(CONTRASTIVE["simcse"], temperature=0.1)}
    compare_contrastive(tr, va, sh, tok, names=("bt", "swav-diff", "simcse-diff", "simcse τ=0.1"), losses=sweep,
                        seeds=SEEDS, workers=workers, out_dir=out / "comparison")


def _label_tricks(out: Path, workers: int) -> None:
    """05_label_tricks: the eight-epoch runs, on the in-sample vote made again under this order."""
    from rmsecrets.data import tokenize_pairs
    from rmsecrets.losses import compare_tricks
    from rmsecrets.strength import StrengthConfig, annotate, vote
    from rmsecrets.train import TrainConfig
    from rmsecrets.world import WorldConfig, make_tokenizer, make_world
    tok = make_tokenizer()
    world = make_world(WorldConfig())
    tr, va = (tokenize_pairs(world[s], tok, max_length=64) for s in ("train", "validation"))
    tr = annotate(tr, vote(tr, tok, StrengthConfig(workers=workers), out_dir=out / "vote"))
    compare_tricks(tr, va, tok, names=("bt", "margin", "soft+margin"), seeds=SEEDS, workers=workers, out_dir=out / "eight-epochs",
                   config=TrainConfig(epochs=8, lr=2e-3, max_length=64, eval_every=50, progress=False))


SEEDS = (0, 1, 2, 3, 4)
# lesson -> (its run folder under nbs/, what runs the variants again, [(title, folder, key, a, b)]: contrasts with a verdict word)
CHECKS = {
    "05_label_tricks": ("label-tricks-runs", _label_tricks,
                        [("margin − bt after eight epochs, truth", "eight-epochs", "accuracy_true", "margin", "bt"),
                         ("soft+margin − bt after eight epochs, truth", "eight-epochs", "accuracy_true", "soft+margin", "bt")]),
    "06_contrastive": ("contrastive-runs", _contrastive,
                       [("swav-diff − bt, truth in distribution", "comparison", "accuracy_true", "swav-diff", "bt"),
                        ("simcse-diff − bt, probe", "comparison", "probe", "simcse-diff", "bt"),
                        ("simcse τ=0.1 − bt, probe", "comparison", "probe", "simcse τ=0.1", "bt")]),
}


def run_again(lesson: str, out: Path, threads: int) -> None:
    """In this process (started with the second order's settings): the lesson's variants, kept in `out`."""
    import torch
    torch.set_num_threads(threads)
    CHECKS[lesson][1](out, 2 if threads == 1 else 1)


def values(folder: Path, name: str, key: str) -> dict:
    from rmsecrets.experiments import slug
    return {int(p.stem.split("_")[1]): json.loads(p.read_text())[key] for p in sorted((folder / slug(name)).glob("seed_*.json"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lesson", choices=sorted(CHECKS))
    ap.add_argument("--threads", type=int, default=1, help="threads per run in the second order (2: the AVX2-only machines' check)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    folder, _, contrasts = CHECKS[a.lesson]
    first, second = ROOT / "nbs" / folder, ROOT / "nbs" / f"{folder}-second-order"
    if a.child: return run_again(a.lesson, second, a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if a.threads == 1: env["ATEN_CPU_CAPABILITY"] = "avx2"
    subprocess.run([sys.executable, __file__, a.lesson, "--child", "--threads", str(a.threads)], env=env, check=True)
    from rmsecrets.experiments import paired_verdict
    from rmsecrets.stages import machine
    rows = []
    for title, sub, key, x, y in contrasts:
        row = {"contrast": title}
        for order, where in (("default", first / sub), ("second", second / sub)):
            va, vb = values(where, x, key), values(where, y, key)
            v = paired_verdict(va, vb)
            row[order] = {"a": va, "b": vb, "diff": v["diff"], "lo": v["lo"], "hi": v["hi"], "word": v["word"]}
        row["same word"] = row["default"]["word"] == row["second"]["word"]
        rows.append(row)
        print(f"{title}: {row['default']['diff']:+.4f} {row['default']['word']} | {row['second']['diff']:+.4f} {row['second']['word']}")
    second_order = "ATEN_CPU_CAPABILITY=avx2, one thread a run" if a.threads == 1 else f"{a.threads} threads a run"
    out = ROOT / "benchmarks" / "results" / f"second_order_{a.lesson}.json"
    out.write_text(json.dumps({"lesson": a.lesson, "machine": machine(), "default order": "one thread a run, the default kernels",
                               "second order": second_order, "contrasts": rows}, indent=1, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
