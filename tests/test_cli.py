"""The command line: train-rm/eval-rm reproducibility, flags and settings. Commands run in-process (`cli.main`) on the
session's world; the demo is tests/test_demo.py, the two-process runs tests/test_two_processes.py."""
import json

import pytest
from conftest import cli


@pytest.fixture(scope="module")
def world(made):
    return made / "w"


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as done: cli("--help")
    out = capsys.readouterr().out
    assert done.value.code == 0
    for command in ("world", "train-rm", "eval-rm", "strength", "sft", "ppo", "metarm", "iterate", "config", "demo", "ledger"):
        assert command in out


def test_train_rm_same_seed_same_numbers_and_eval_rm_agrees(world, tmp_path, capsys):
    common = ["--data", str(world), "--max-steps", "12", "--max-length", "64", "--progress", "false", "--seed", "3"]
    cli("train-rm", *common, "--out", str(tmp_path / "a"))
    cli("train-rm", *common, "--out", str(tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["eval"] == b["eval"] and a["steps"] == 12
    assert a["config"]["group_by_length"] is False              # --group-by-length auto: off for a world folder
    assert "accuracy_true" in a["eval"] and "accuracy" in a["eval"]
    capsys.readouterr()
    cli("eval-rm", "--model", str(tmp_path / "a" / "model"), "--data", str(world), "--split", "validation",
        "--max-length", "64", "--out", str(tmp_path / "eval.json"))
    printed = json.loads(capsys.readouterr().out)
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got["accuracy"] == a["eval"]["accuracy"] and got["n"] == 60
    assert printed["accuracy_true"] == pytest.approx(a["eval"]["accuracy_true"])


def test_group_by_length_auto_is_on_for_pairs_from_a_file(world, tmp_path):
    from datasets import load_from_disk
    pairs = load_from_disk(str(world / "preferences"))["train"].select_columns(["prompt", "chosen", "rejected"])
    pairs.to_json(tmp_path / "pairs.jsonl")
    common = ["--data", str(tmp_path / "pairs.jsonl"), "--split", "", "--tokenizer", str(world / "tokenizer"),
              "--max-steps", "2", "--max-length", "64", "--eval-split", "", "--progress", "false"]
    for i, (flag, expected) in enumerate(((["--group-by-length", "auto"], True), ([], True), (["--group-by-length", "false"], False))):
        cli("train-rm", *common, *flag, "--out", str(tmp_path / f"rm{i}"))
        assert json.loads((tmp_path / f"rm{i}" / "metrics.json").read_text())["config"]["group_by_length"] is expected, flag


def test_train_rm_unknown_loss_is_a_clear_error(world, tmp_path):
    "It stops before any work, with the message as the exit status (which the interpreter prints on stderr)."
    with pytest.raises(SystemExit) as done: cli("train-rm", "--data", world, "--out", tmp_path / "x", "--loss", "nope")
    assert "unknown --loss 'nope'; choose one of" in str(done.value.code)


def test_scale_flags_lora_checkpointing_dtype(world, tmp_path):
    import torch
    from safetensors.torch import load_file
    cli("train-rm", "--data", str(world), "--out", str(tmp_path / "lora"), "--max-steps", "3", "--max-length", "64",
        "--progress", "false", "--lora-r", "4", "--lora-targets", "q_proj,v_proj", "--gradient-checkpointing", "true",
        "--dtype", "float32", "--seed", "0")
    cli("train-rm", "--data", str(world), "--out", str(tmp_path / "full"), "--max-steps", "3", "--max-length", "64",
        "--progress", "false", "--seed", "0")
    lora, full = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("lora", "full"))
    assert set(lora) == set(full)                                     # saved merged: a plain reward model
    q, k = next(n for n in lora if "q_proj" in n), next(n for n in lora if "k_proj" in n)
    from rmsecrets.model import make_reward_model
    from rmsecrets.world import make_tokenizer
    start = make_reward_model("tiny", make_tokenizer(), seed=0).state_dict()
    assert not torch.equal(lora[q], start[q]) and torch.equal(lora[k], start[k])   # only the adapted layers moved
    assert not torch.equal(full[k], start[k])


def test_loss_flags_are_generated_from_the_dataclasses():
    "Every LabelTrick and Contrastive setting is a flag; an unset --cl-* keeps the named variant's value."
    import dataclasses
    from rmsecrets.cli import build_parser, resolve_loss
    from rmsecrets.contrastive import CONTRASTIVE, Contrastive
    from rmsecrets.losses import LABEL_TRICKS, LabelTrick
    parse = lambda *a: build_parser().parse_args(["train-rm", "--data", "w", "--out", "o", *a])
    assert resolve_loss(parse("--loss", "soft+margin")) == LABEL_TRICKS["soft+margin"]
    trick = resolve_loss(parse("--loss", "flip+margin", "--flip-fraction", "0.2", "--margin-clip", "1.5"))
    assert (trick.flip, trick.margin, trick.flip_fraction, trick.margin_clip) == (True, True, 0.2, 1.5)
    swav = resolve_loss(parse("--contrastive", "swav-diff", "--cl-n-prototypes", "7", "--seed", "3"))
    assert isinstance(swav, Contrastive) and (swav.n_prototypes, swav.seed) == (7, 3)
    assert (swav.beta, swav.temperature, swav.instances) == (CONTRASTIVE["swav-diff"].beta, 0.1, "diff")
    args = vars(parse())
    for f in dataclasses.fields(LabelTrick):
        assert f.name in args or f.name in ("flip", "smooth", "margin"), f.name
    for f in dataclasses.fields(Contrastive):
        assert f"cl_{f.name}" in args or f.name in ("method", "instances", "base", "seed"), f.name
    mr = build_parser().parse_args(["metarm", "--data", "w", "--policy", "p", "--reward-model", "r", "--out", "o",
                                    "--prompts-per-step", "4", "--loss", "margin"])
    assert mr.prompts_per_step == 4 and mr.loss == "margin"


def test_one_seed_gives_no_verdict():
    """One seed has no interval: the report must not call a one-seed difference better or worse."""
    from rmsecrets.experiments import paired_verdict, verdict_cell, verdict_text
    one = paired_verdict([1.0], [0.5])
    assert one["word"] == "no detectable difference" and one["lo"] is None
    assert verdict_text(one) == "+0.500 (one seed: no interval, so no verdict)" and verdict_cell(one) == "+0.500 (one seed)"
    two = paired_verdict([1.0, 1.2], [0.5, 0.6])                 # +0.5 and +0.6: two seeds, a wide interval
    assert two["word"] == "no detectable difference" and two["lo"] < 0 < two["hi"]
    assert verdict_text(two).endswith("2 paired seeds: too few for a verdict)") and verdict_cell(two).endswith("(2 seeds: too few)")


def test_the_no_kl_sentence_follows_the_numbers():
    from rmsecrets.report import over_optimisation
    run = lambda proxy, gold: {"proxy_start": 1.0, "proxy": proxy, "gold_start": 1.5, "gold": gold}
    assert over_optimisation(run(2.0, 0.5)).endswith("exploits what the reward model cannot see.")
    assert over_optimisation(run(2.0, 1.8)).endswith("no over-optimisation showed in this run.")


def test_where_metarm_stands_follows_the_numbers():
    """The demo places MetaRM between no update and fresh labels only when fresh labels are better by the paired verdict."""
    from rmsecrets.experiments import paired_verdict
    from rmsecrets.report import between_text
    share = lambda s: [{"round": 1, "share": s, "lo": s - 0.1, "hi": s + 0.1}]
    gain = paired_verdict([2.0, 2.1, 1.9, 2.0, 2.05], [1.0, 1.05, 0.95, 1.0, 1.0])
    text = between_text(gain, {"MetaRM": share(0.6), "plain update": share(0.3)})
    assert "MetaRM sits at 0.60 (95% bootstrap interval over the 5 seeds 0.50 to 0.70)" in text
    assert "the plain update at 0.30" in text and "recovers more of the fresh-label gain" in text
    assert "overlap" not in text and "overlap" in between_text(gain, {"MetaRM": share(0.4), "plain update": share(0.3)})
    flat = paired_verdict([1.05, 0.95], [1.0, 1.0])                        # no detectable gain: no place to give
    assert "not measurable" in between_text(flat, {"MetaRM": share(9.0), "plain update": share(1.0)})
    assert "one seed" in between_text(paired_verdict([2.0], [1.0]), {"MetaRM": share(0.6), "plain update": share(0.3)})


def test_a_folder_named_like_the_subcommand_leaves_the_settings_alone(tmp_path, monkeypatch):
    """`rmsecrets demo --out demo` makes ./demo; its rerun must record the same settings, not take the subcommand
    `demo` for the path ./demo (which refused every such rerun as a changed command)."""
    from rmsecrets.cli import build_parser, run_settings
    monkeypatch.chdir(tmp_path)
    args = lambda: build_parser().parse_args(["demo", "--out", "demo", "--quick"])
    before = run_settings(args())
    (tmp_path / "demo").mkdir()
    assert run_settings(args()) == before and before["command"] == "demo"
