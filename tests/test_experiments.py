"""The experiment harness: variants × seeds, their summary and verdict, and forked workers that reproduce one process."""
import numpy as np
import pytest
import torch

from rmsecrets.core import seeded
from rmsecrets.experiments import against, count_across_workers, forget_counter, mean_std, parallel_map, run_grid


def test_the_harness_runs_variants_by_seeds_and_judges_them_paired_by_seed():
    rows = run_grid({"base": 0.0, "better": 1.0}, (0, 1, 2), lambda name, v, seed: {"acc": v + 0.1 * seed})
    assert [(r["method"], r["seed"]) for r in rows][:3] == [("base", 0), ("base", 1), ("base", 2)]
    base, better = mean_std(rows, ("acc",), vs_first=True)
    assert better["acc"] == pytest.approx(1.1) and better["acc_std"] == pytest.approx(np.std([1.0, 1.1, 1.2]))
    assert better["acc_vs_base"] == pytest.approx(1.0) and better["seeds"] == 3
    v = against(rows, "acc", "base")["better"]
    assert v["diff"] == pytest.approx(1.0) and v["n"] == 3 and v["word"] == "no detectable difference"   # 3 seeds: too few
    five = run_grid({"base": 0.0, "better": 0.01}, range(5), lambda name, v, seed: {"acc": v + 0.1 * seed + 0.001 * (seed % 2) * (name == "better")})
    assert against(five, "acc", "base")["better"]["word"] == "better"      # +0.01 over a 0.4 spread, paired by seed
    assert "seed" not in run_grid({"g": 1}, (0,), lambda *a: {}, seed_key=None)[0]


def test_a_grid_with_out_dir_keeps_its_runs_and_a_rerun_loads_them(tmp_path):
    calls = []
    def run(name, v, seed): calls.append((name, seed)); return {"acc": v + seed, "curve": [{"step": 1, "acc": v}]}
    first = run_grid({"bt": 0.5, "flip + margin": 0.7}, (0, 1), run, out_dir=tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == [
        "bt/seed_0.json", "bt/seed_1.json", "flip_margin/seed_0.json", "flip_margin/seed_1.json"]
    (tmp_path / "bt" / "seed_1.json").unlink()                               # killed before that run ended
    assert run_grid({"bt": 0.5, "flip + margin": 0.7}, (0, 1), run, out_dir=tmp_path, workers=2) == first
    assert calls == [("bt", 0), ("bt", 1), ("flip + margin", 0), ("flip + margin", 1)]   # the rerun ran in a worker...
    assert (tmp_path / "bt" / "seed_1.json").exists()                        # ... and kept the run it made again
    with pytest.raises(TypeError, match="'m' seed 0"):
        run_grid({"m": 1}, (0,), lambda *a: {"model": object()}, out_dir=tmp_path / "models")


def _fit(name, lr, seed):
    with seeded(seed):
        net = torch.nn.Linear(4, 1); opt = torch.optim.SGD(net.parameters(), lr=lr)
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        for _ in range(20): opt.zero_grad(); torch.nn.functional.mse_loss(net(x), y).backward(); opt.step()
    return {"w": net.weight.detach().clone()}


def test_two_workers_give_the_weights_of_one_process_on_one_thread():
    one = run_grid({"slow": 0.01, "fast": 0.1}, (0, 1), _fit)          # the autouse fixture runs tests on one thread
    two = run_grid({"slow": 0.01, "fast": 0.1}, (0, 1), _fit, workers=2)
    assert [(r["method"], r["seed"]) for r in two] == [(r["method"], r["seed"]) for r in one]
    assert all(torch.equal(a["w"], b["w"]) for a, b in zip(one, two))
    assert not torch.equal(one[0]["w"], one[2]["w"])                     # the runs differ: the check can fail


def test_counts_made_in_workers_come_back_until_forgotten():
    class Tally: n = 0
    tally = count_across_workers(Tally(), "n")
    def add(x): tally.n += x; return x
    assert parallel_map(add, [1, 2, 3, 4], workers=2) == [1, 2, 3, 4] and tally.n == 10
    forget_counter(tally)
    assert parallel_map(add, [5, 6], workers=2) == [5, 6] and tally.n == 10


def test_the_paired_verdict():
    """The difference seed by seed, Student's t interval under 20 seeds and a bootstrap from 20, three words, and the
    smallest effect the seeds detect."""
    from scipy import stats
    from rmsecrets.experiments import paired_verdict
    rng = np.random.default_rng(0)
    base = rng.normal(0.7, 0.05, 8)                                     # a seed-to-seed spread of 0.05 ...
    v = paired_verdict(base + 0.01 + rng.normal(0, 0.002, 8), base)    # ... shared by both: +0.01 is clear
    d = v["diff"]; half = (v["hi"] - v["lo"]) / 2
    assert v["word"] == "better" and v["n"] == 8 and v["lo"] > 0 and abs((v["lo"] + v["hi"]) / 2 - d) < 1e-12
    assert half == pytest.approx(stats.t.ppf(0.975, 7) * v["detectable"] / (stats.t.ppf(0.975, 7) + stats.t.ppf(0.8, 7)))
    assert paired_verdict(base, base + 0.01)["word"] == "worse"
    assert paired_verdict(base + 0.01, base, higher=False)["word"] == "worse"          # a loss: lower is better
    assert paired_verdict(rng.normal(0, 1, 6))["word"] == "no detectable difference"   # noise around zero
    many = paired_verdict(rng.normal(0.3, 0.5, 40))                                   # 40 seeds: a bootstrap interval
    t_half = stats.t.ppf(0.975, 39) * many["detectable"] / (stats.t.ppf(0.975, 39) + stats.t.ppf(0.8, 39))
    assert many["word"] == "better" and abs((many["hi"] - many["lo"]) / 2 - t_half) < 0.2 * t_half
    assert paired_verdict({0: 1.0, 1: 2.0}, {1: 1.0, 0: 0.0})["diff"] == 1.0          # paired by seed, not by order
    agree = paired_verdict([0.75, 0.5], [0.5, 0.25])                                   # two seeds that agree exactly
    assert agree["lo"] == agree["hi"] == 0.25 and agree["word"] == "no detectable difference" and not agree["enough"]
    assert paired_verdict([0.75, 0.5], [0.5, 0.25], min_seeds=2)["word"] == "better"
    with pytest.raises(ValueError, match="unpaired"): paired_verdict({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError, match="unpaired"): paired_verdict([1.0, 2.0, 3.0], [1.0, 2.0])
