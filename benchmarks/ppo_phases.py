"""Generation with and without the KV cache, and PPO iteration time by phase (rollout, scoring, update).

    python benchmarks/ppo_phases.py [--backbones tiny small base] [--prompts 64] [--new-tokens 32] [--iterations 6]

Prints two tables. Every comparison is measured side by side in this run, on this machine; nothing is asserted.
"""
import argparse
import copy
import time

import numpy as np
import torch

from rmsecrets.model import make_reward_model
from rmsecrets.policy import make_policy
from rmsecrets.ppo import PPOConfig, ppo
from rmsecrets.world import WorldConfig, make_prompts, make_tokenizer
from _common import table


def generation(backbone, tok, prompts, new_tokens, repeats=3):
    """Seconds to sample exactly `new_tokens` per prompt, with and without the cache (best of `repeats`)."""
    policy = make_policy(backbone, tok, seed=0).eval()
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    best = {}
    for cache in (True, False):
        times = []
        for r in range(repeats):
            torch.manual_seed(r)
            t = time.perf_counter()
            with torch.no_grad():
                out = policy.generate(**enc, do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, use_cache=cache, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t)
        assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
        best[cache] = min(times)
    n = len(prompts) * new_tokens
    return {"backbone": backbone, "params (M)": sum(p.numel() for p in policy.parameters()) / 1e6,
            "tokens": n, "tokens/s with cache": n / best[True], "tokens/s without": n / best[False],
            "speed-up": best[False] / best[True]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=6)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")
    tok = make_tokenizer()
    prompts = list(make_prompts(WorldConfig(n_prompts=max(args.prompts, 64)))["prompt"])
    print(f"## Sampling {args.prompts} prompts × {args.new_tokens} new tokens (temperature 0.8, top-p 0.9)\n")
    table([generation(b, tok, prompts[:args.prompts], args.new_tokens) for b in args.backbones])

    print(f"\n## PPO iteration by phase ({args.prompts} rollouts per iteration, mean over {args.iterations} iterations "
          "after one warm-up)\n")
    rows = []
    for b in args.backbones:
        policy, rm = make_policy(b, tok, seed=0), make_reward_model(b, tok, seed=0)
        res = ppo(copy.deepcopy(policy), rm, tok, prompts, PPOConfig(iterations=args.iterations + 1, critic_warmup=0,
                  rollout_prompts=args.prompts, max_new_tokens=args.new_tokens, eval_every=0, eval_prompts=8, eval_k=2,
                  progress=False))
        h = res.history[1:]
        phase = {k: float(np.mean([x[f"seconds_{k}"] for x in h])) for k in ("rollout", "scoring", "update")}
        total = sum(phase.values())
        rows.append({"backbone": b, **{f"{k} (s)": v for k, v in phase.items()},
                     **{f"{k} share": v / total for k, v in phase.items()}, "iteration (s)": total})
    table(rows)


if __name__ == "__main__":
    main()
