"""Tests of `rmsecrets.model`: the reward model as a plain Hugging Face artefact, read at the last real token."""
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from rmsecrets.model import (PRESETS, encode_responses, ensure_pad_token, last_token_index, load_reward_model,
                             make_reward_model, preset_config, reward_forward, reward_head, save_reward_model, score)

WORDS = "the a cat dog bird likes eats fish seeds is good bad very please thanks".split()
PROMPTS = ["the cat", "a dog", "the bird likes", "a cat eats"]
RESPONSES = ["likes fish", "is very very good", "seeds", "fish please thanks"]


def make_tok(pad: str | None = "<pad>") -> PreTrainedTokenizerFast:
    """A tiny word-level tokenizer, built locally: <bos> prepended, pad distinct from <eos> unless told."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    kw = {} if pad is None else {"pad_token": pad}
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                   padding_side="right", **kw)


def encode(tok, texts):
    return tok(texts, padding=True, padding_side="right", return_tensors="pt")


@pytest.fixture(scope="module")
def tok():
    return make_tok()


def test_fresh_process_plain_transformers_same_scores(tok, tmp_path):
    rm = make_reward_model("tiny", tok, seed=3)
    path = save_reward_model(rm, tok, tmp_path / "rm")
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    texts = [p + " " + r for p, r in zip(PROMPTS, RESPONSES)]
    expected = score(rm, tok, PROMPTS, RESPONSES, batch_size=3)
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(path)!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(path)!r})\n"
        f"ids = [t(x)['input_ids'] for x in {texts!r}]\n"   # the saved tokenizer's plain call ends with EOS, as training does
        "n = max(map(len, ids))\n"
        "enc = {'input_ids': torch.tensor([s + [t.pad_token_id] * (n - len(s)) for s in ids]),\n"
        "       'attention_mask': torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in ids])}\n"
        "with torch.no_grad(): print(json.dumps(m(**enc).logits[:, 0].tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(fresh, expected, atol=1e-5, rtol=0)
    # and the package's own loader agrees too
    loaded, loaded_tok = load_reward_model(path)
    torch.testing.assert_close(score(loaded, loaded_tok, PROMPTS, RESPONSES), expected, atol=1e-6, rtol=0)


def test_save_replaces_existing_folder(tok, tmp_path):
    a, b = make_reward_model("tiny", tok, seed=0), make_reward_model("tiny", tok, seed=1)
    save_reward_model(a, tok, tmp_path / "rm")
    save_reward_model(b, tok, tmp_path / "rm")
    loaded, _ = load_reward_model(tmp_path / "rm")
    assert torch.equal(loaded.score.weight, b.score.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_right_padding_does_not_change_reward(tok):
    rm = make_reward_model("tiny", tok, seed=0).eval()
    enc = encode(tok, ["the cat likes fish <eos>"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        alone = reward_forward(rm, ids, mask)[0]
        for k in (1, 5, 17):
            padded = torch.cat([ids, torch.full((1, k), tok.pad_token_id)], 1)
            r = reward_forward(rm, padded, (padded != tok.pad_token_id).long())[0]
            torch.testing.assert_close(r, alone, atol=1e-5, rtol=0)
            # the last position (a pad) gives something else: the test can tell the two apart
            last_pos = rm.score(rm.model(input_ids=padded, attention_mask=(padded != tok.pad_token_id).long())
                                .last_hidden_state[:, -1])[:, 0]
            assert (last_pos - alone).abs().item() > 1e-4


def test_batch_of_mixed_lengths_matches_one_by_one(tok):
    rm = make_reward_model("small", tok, seed=0)
    together = score(rm, tok, PROMPTS, RESPONSES, batch_size=len(PROMPTS))
    alone = score(rm, tok, PROMPTS, RESPONSES, batch_size=1)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert rm.training, "score must restore the training mode"


def test_features_are_what_the_head_reads(tok):
    rm = make_reward_model("tiny", tok, seed=0)
    enc = encode(tok, [p + " " + r for p, r in zip(PROMPTS, RESPONSES)])
    rewards, features = reward_forward(rm, enc["input_ids"], enc["attention_mask"])
    assert rewards.shape == (4,) and features.shape == (4, 64)
    torch.testing.assert_close(reward_head(rm)(features)[:, 0], rewards, atol=1e-6, rtol=0)
    torch.testing.assert_close(rewards, rm(**enc).logits[:, 0], atol=1e-6, rtol=0)
    # features are the final-norm hidden state at the last non-pad token
    hidden = rm.model(**enc).last_hidden_state
    last = enc["attention_mask"].sum(1) - 1
    torch.testing.assert_close(features, hidden[torch.arange(4), last], atol=1e-6, rtol=0)
    # gradients reach the trunk through the features
    features.pow(2).sum().backward()
    assert rm.model.embed_tokens.weight.grad.abs().sum() > 0


def test_last_token_index_left_and_right_padding():
    ids = torch.tensor([[4, 5, 6, 0, 0], [0, 0, 4, 5, 6], [4, 0, 0, 0, 0]])
    assert last_token_index(ids, 0).tolist() == [2, 4, 0]


def test_presets_are_seeded(tok):
    a, b, c = (make_reward_model("tiny", tok, seed=s) for s in (7, 7, 8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["score.weight"], sc["score.weight"])
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    # seeding does not disturb the caller's random stream
    torch.manual_seed(123); x = torch.rand(3)
    torch.manual_seed(123); make_reward_model("tiny", tok, seed=0); y = torch.rand(3)
    assert torch.equal(x, y)


def test_preset_sizes(tok):
    for name, size in PRESETS.items():
        cfg = preset_config(name, tok)
        assert (cfg.hidden_size, cfg.num_hidden_layers) == (size["hidden_size"], size["num_hidden_layers"])
        assert cfg.vocab_size == len(tok) and cfg.num_labels == 1 and cfg.pad_token_id == tok.pad_token_id
    with pytest.raises(KeyError, match="unknown preset"):
        preset_config("huge", tok)


def test_bert_encoder_reward_model(tok, tmp_path):
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "bert")
    rm = make_reward_model(tmp_path / "bert", tok, seed=0).eval()
    assert type(rm).__name__ == "BertForSequenceClassification" and rm.config.num_labels == 1
    enc = encode(tok, [p + " " + r for p, r in zip(PROMPTS, RESPONSES)])
    with torch.no_grad():
        rewards, features = reward_forward(rm, enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(rewards, rm(**enc).logits[:, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(reward_head(rm)(features)[:, 0], rewards, atol=1e-6, rtol=0)
        pooled = rm.bert(**enc).pooler_output
    torch.testing.assert_close(features, pooled, atol=1e-6, rtol=0)
    # encoders: right padding does not change the reward either (the attention mask hides pads)
    one = encode(tok, ["the cat likes fish"])
    padded = torch.cat([one["input_ids"], torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        r1 = reward_forward(rm, one["input_ids"], one["attention_mask"])[0]
        r2 = reward_forward(rm, padded, (padded != 0).long())[0]
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=0)
    # and it round-trips through save/load
    path = save_reward_model(rm, tok, tmp_path / "bert-rm")
    loaded, loaded_tok = load_reward_model(path)
    torch.testing.assert_close(score(loaded, loaded_tok, PROMPTS, RESPONSES), score(rm, tok, PROMPTS, RESPONSES),
                               atol=1e-6, rtol=0)


def test_gpt2_decoder_reward_model(tok, tmp_path):
    GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path / "gpt2")
    rm = make_reward_model(tmp_path / "gpt2", tok, seed=0).eval()
    assert rm.config.pad_token_id == tok.pad_token_id
    enc = encode_responses(tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        rewards, features = reward_forward(rm, enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(rewards, rm(**enc).logits[:, 0], atol=1e-6, rtol=0)
    assert torch.allclose(score(rm, tok, PROMPTS, RESPONSES, batch_size=1), rewards, atol=1e-5)


def test_sft_checkpoint_becomes_reward_model(tok, tmp_path):
    cfg = preset_config("tiny", tok)
    torch.manual_seed(0)
    sft = LlamaForCausalLM(cfg)
    sft.save_pretrained(tmp_path / "sft"); tok.save_pretrained(tmp_path / "sft")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no trunk weight may be made up
        rm = make_reward_model(tmp_path / "sft", tok, seed=5)
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    trunk, sft_trunk = rm.model.state_dict(), sft.model.state_dict()
    assert trunk.keys() == sft_trunk.keys()
    assert all(torch.equal(trunk[k], sft_trunk[k]) for k in trunk)
    # a fresh scalar head, seeded, not the LM head
    assert rm.score.weight.shape == (1, cfg.hidden_size)
    again = make_reward_model(tmp_path / "sft", tok, seed=5)
    other = make_reward_model(tmp_path / "sft", tok, seed=6)
    assert torch.equal(rm.score.weight, again.score.weight)
    assert not torch.equal(rm.score.weight, other.score.weight)
    assert 0 < rm.score.weight.std().item() < 0.1


def test_missing_trunk_weights_warn(tok, tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(preset_config("tiny", tok)).save_pretrained(tmp_path / "sft")
    (tmp_path / "sft" / "config.json").write_text(json.dumps({**json.loads((tmp_path / "sft" / "config.json")
                                                                            .read_text()), "num_hidden_layers": 3}))
    with pytest.warns(UserWarning, match="trunk weights were not in"):
        make_reward_model(tmp_path / "sft", tok, seed=0)


def test_pad_equal_to_eos_is_refused_or_fixed(tmp_path):
    t = make_tok(pad=None)
    t.pad_token = t.eos_token
    with pytest.raises(ValueError, match="pads with its EOS token"):
        ensure_pad_token(t, fix=False)
    with pytest.warns(UserWarning, match="added the distinct pad token"):
        rm = make_reward_model("tiny", t, seed=0)
    assert t.pad_token_id != t.eos_token_id and rm.config.pad_token_id == t.pad_token_id
    # a tokenizer without any pad token: the fix adds one, and a pretrained model's embeddings grow to fit
    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>")); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    t2 = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(t2), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "lm")
    with pytest.warns(UserWarning, match="has no pad token"):
        rm2 = make_reward_model(tmp_path / "lm", t2, seed=0)
    assert t2.pad_token_id == len(vocab) and rm2.get_input_embeddings().num_embeddings == len(t2)
    r = score(rm2, t2, ["the cat", "a"], ["likes fish", "dog"])
    assert torch.isfinite(r).all()
    # a model whose config pads with EOS cannot be saved with a tokenizer that does
    bad = make_tok(pad=None); bad.pad_token = bad.eos_token
    with pytest.raises(ValueError, match="EOS"):
        save_reward_model(rm, bad, tmp_path / "bad")


def test_pad_equal_to_eos_reads_one_token_early(tok):
    """Why the rule exists: a model whose pad id is EOS scores `x <eos>` as `x`."""
    rm = make_reward_model("tiny", tok, seed=0).eval()
    ids = encode(tok, ["the cat likes fish <eos>"])["input_ids"]
    with torch.no_grad():
        right = rm(input_ids=ids).logits[0, 0]
        rm.config.pad_token_id = tok.eos_token_id
        early = rm(input_ids=ids).logits[0, 0]
        without = rm(input_ids=ids[:, :-1]).logits[0, 0]
    torch.testing.assert_close(early, without, atol=1e-6, rtol=0)
    assert (early - right).abs() > 1e-4


def test_encode_responses_matches_training_tokenisation(tok):
    from datasets import Dataset
    from rmsecrets.data import tokenize_pairs
    ds = Dataset.from_dict({"prompt": PROMPTS, "chosen": RESPONSES, "rejected": RESPONSES[::-1]})
    trained_on = tokenize_pairs(ds, tok, max_length=7)["chosen_input_ids"]
    enc = encode_responses(tok, PROMPTS, RESPONSES, max_length=7)
    assert [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])] == trained_on
    assert all(ids[-1] == tok.eos_token_id for ids in trained_on)
    padded = enc["input_ids"][enc["attention_mask"] == 0]
    assert len(padded) > 0 and (padded == tok.pad_token_id).all()
    bad = make_tok(pad=None); bad.pad_token = bad.eos_token
    with pytest.raises(ValueError, match="EOS"):
        encode_responses(bad, PROMPTS, RESPONSES)


def test_score_rejects_mismatched_lengths(tok):
    rm = make_reward_model("tiny", tok, seed=0)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score(rm, tok, ["a", "b"], ["c"])
    assert score(rm, tok, [], []).shape == (0,)


def test_reward_forward_refuses_non_classifier(tok):
    lm = LlamaForCausalLM(preset_config("tiny", tok))
    enc = encode(tok, ["the cat"])
    with pytest.raises(TypeError, match="no `score` or `classifier` head"):
        reward_forward(lm, enc["input_ids"], enc["attention_mask"])


def test_the_attention_kernel_is_read_in_one_place(tmp_path):
    """transformers keeps a loaded model's attention kernel in the private `config._attn_implementation`; only
    `attn_implementation` reads it. If transformers renames it, this fails before anything that relies on it."""
    from rmsecrets.model import attn_implementation, save_reward_model
    from rmsecrets.world import make_tokenizer
    tok = make_tokenizer()
    save_reward_model(make_reward_model("tiny", tok, seed=0), tok, tmp_path / "rm")
    for kernel in ("eager", "sdpa"):
        model = load_reward_model(tmp_path / "rm", attn_implementation=kernel)[0]
        assert attn_implementation(model) == kernel
