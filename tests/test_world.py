"""The synthetic world: determinism, recorded truth, annotator noise, tokenizer, saving, CLI."""
import hashlib
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_process

from rmsecrets.world import (NOISE_KINDS, TOPICS, WorldConfig, gold_parts, gold_reward, load_world, make_demonstrations,
                             make_prompt, make_prompts, make_tokenizer, make_world, save_world)

SMALL = dict(n_train=600, n_validation=100, n_test=100, n_demonstrations=50, n_prompts=20)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_world(tmp_path):
    a = save_world(WorldConfig(seed=7, **SMALL), tmp_path / "a")
    b = save_world(WorldConfig(seed=7, **SMALL), tmp_path / "b")
    da, db = _digest(a), _digest(b)
    assert any(k.endswith(".arrow") for k in da)
    assert da == db


def test_other_seed_gives_other_world():
    a = make_world(WorldConfig(seed=0, **SMALL))["train"]
    b = make_world(WorldConfig(seed=1, **SMALL))["train"]
    same = sum(x == y for x, y in zip(a["chosen"], b["chosen"]))
    assert same < 0.05 * len(a)


def test_splits_are_different_streams():
    w = make_world(WorldConfig(**SMALL))
    assert w["train"]["chosen"][:100] != w["validation"]["chosen"][:100]


@pytest.fixture(scope="module")
def train():
    return make_world(WorldConfig(seed=3, n_train=4000, n_validation=10, n_test=10))["train"]


def test_recorded_truth_agrees_with_gold_reward(train):
    for row in train.select(range(500)):
        assert row["gold_chosen"] == gold_reward(row["prompt"], row["chosen"])
        assert row["gold_rejected"] == gold_reward(row["prompt"], row["rejected"])
        assert row["label_is_wrong"] == (row["gold_chosen"] < row["gold_rejected"])
        assert row["chosen"] != row["rejected"]


def test_noise_kinds_are_what_they_say(train):
    kinds = Counter(train["noise"])
    assert set(kinds) <= set(NOISE_KINDS)
    assert kinds["uniform"] + kinds["careless"] == round(0.10 * len(train))
    assert kinds["careless"] == round(0.5 * round(0.10 * len(train)))
    for row in train:
        longer = len(row["chosen"].split()) > len(row["rejected"].split())
        if row["noise"] == "careless":
            assert row["label_is_wrong"] and longer
        elif row["noise"] in ("uniform", "annotator"):
            assert row["label_is_wrong"]
        else:
            assert not row["label_is_wrong"]


def test_annotators_follow_bradley_terry(train):
    # among pairs the annotators labelled themselves, P(label right) = σ(β |margin|)
    keep = np.isin(np.array(train["noise"]), ["none", "annotator"])
    m = np.abs(np.array(train["gold_chosen"]) - np.array(train["gold_rejected"]))[keep]
    right = ~np.array(train["label_is_wrong"])[keep]
    for lo, hi in [(0.05, 0.5), (0.5, 1.0), (1.0, 2.0)]:
        sel = (m >= lo) & (m < hi)
        expected = np.mean(1 / (1 + np.exp(-1.5 * m[sel])))
        se = np.sqrt(expected * (1 - expected) / sel.sum())
        assert abs(right[sel].mean() - expected) < 4 * se + 0.01, (lo, hi, right[sel].mean(), expected)


def test_noise_free_world_has_no_wrong_labels():
    tr = make_world(WorldConfig(wrong_label_rate=0.0, beta=1e3, **SMALL))["train"]
    assert sum(tr["label_is_wrong"]) == 0


def test_impossible_careless_share_is_a_clear_error():
    with pytest.raises(ValueError, match="longer response is worse"):
        make_world(WorldConfig(wrong_label_rate=0.9, careless_share=1.0, **SMALL))


def test_gold_reward_needs_the_prompt():
    response = "sure , boil salt stir garlic . good luck"
    assert gold_reward(make_prompt("cooking", 0, "normal"), response) > 2
    assert gold_reward(make_prompt("garden", 0, "normal"), response) < 0
    long = "boil salt stir oven simmer um well basically actually honestly like just really anyway ."
    assert gold_parts(make_prompt("cooking", 0, "short"), long)["verbose"] < gold_parts(make_prompt("cooking", 0, "detail"), long)["verbose"]


def test_gold_reward_is_graded(train):
    assert len(set(train["gold_chosen"])) > 100


def test_demonstrations_are_mixed_quality_and_prompts_cover_topics():
    demos = make_demonstrations(WorldConfig(n_demonstrations=500))
    gold = np.array(demos["gold"])
    assert gold.min() < -2 and gold.max() > 2
    prompts = make_prompts(WorldConfig(n_prompts=400))
    assert set(prompts["topic"]) == set(TOPICS)


def test_tokenizer_round_trips_world_text_and_pads_apart_from_eos(tmp_path, train):
    tok = make_tokenizer()
    assert tok.pad_token_id != tok.eos_token_id
    for row in train.select(range(200)):
        for text in (row["prompt"], row["chosen"], row["rejected"]):
            ids = tok(text)["input_ids"]
            assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
            assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(train[0]["chosen"])["input_ids"] == tok(train[0]["chosen"])["input_ids"]
    assert again.pad_token == "<pad>" and again.eos_token == "<eos>"


def test_save_and_load_world(tmp_path):
    cfg = WorldConfig(seed=2, topics=("pets", "money"), **SMALL)
    w = load_world(save_world(cfg, tmp_path / "w"))
    assert w["config"] == cfg
    assert set(w["preferences"]["train"]["topic"]) == {"pets", "money"}
    assert len(w["demonstrations"]) == 50 and len(w["prompts"]) == 20
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind


def test_cli_world_and_help(tmp_path):
    "The two ways in from a shell: `python -m rmsecrets.cli` and the installed `rmsecrets` command."
    out = run_process([sys.executable, "-m", "rmsecrets.cli", "--help"], timeout=120)
    assert "world" in out.stdout
    run_process(["rmsecrets", "world", "--out", tmp_path / "w", "--seed", "5", "--wrong-label-rate", "0.2", "--n-train", "300",
                 "--n-validation", "30", "--n-test", "30", "--n-demonstrations", "10", "--n-prompts", "10"], timeout=120)
    w = load_world(tmp_path / "w")
    assert w["config"].seed == 5 and w["config"].wrong_label_rate == 0.2
    assert Counter(w["preferences"]["train"]["noise"])["uniform"] + Counter(w["preferences"]["train"]["noise"])["careless"] == 60
