"""rmsecrets.data without the notebook: real hh-rlhf sample, every format and source, bad input, tokenisation, collation."""
import gzip, json, os, pickle, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pytest, torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rmsecrets.data import (PairCollator, PreferenceDataError, SkipReport, detect_format, join_text, load_preferences,
                            read_rows, tokenize_pairs)

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
PROMPT_MISMATCH, EMPTY_CHOSEN = "prompt: differs between chosen and rejected", "chosen: empty response"


def quiet(fn, *args, **kwargs):
    "Call fn with warnings silenced."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- the real hh-rlhf sample

@pytest.fixture(scope="module")
def hh_raw():
    if not HH.exists(): pytest.skip(f"hh-rlhf sample not found at {HH}")
    with gzip.open(HH, "rt", encoding="utf-8") as f: return [json.loads(line) for line in f]


def test_hh_default_raises_at_row_86(hh_raw):
    with pytest.raises(PreferenceDataError, match=r"row 86, field 'chosen': empty response") as e:
        load_preferences(HH)
    assert (e.value.row, e.value.field) == (86, "chosen")


def test_hh_skip_mode(hh_raw):
    with pytest.warns(UserWarning, match="skipped 9 of 2312 rows"):
        ds, skipped = load_preferences(HH, errors="skip", return_skipped=True)
    assert len(hh_raw) == 2312 and len(ds) == 2303
    assert skipped.counts == {PROMPT_MISMATCH: 5, EMPTY_CHOSEN: 4}
    assert skipped.rows(PROMPT_MISMATCH) == [1254, 1688, 1950, 1952, 2036]
    assert skipped.rows(EMPTY_CHOSEN) == [86, 516, 925, 1103]
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    kept = [r for i, r in enumerate(hh_raw) if i not in set(skipped.rows())]
    for p, c, rj, raw in zip(ds["prompt"], ds["chosen"], ds["rejected"], kept):
        assert p + c == raw["chosen"] and p + rj == raw["rejected"]
        assert p.endswith("\n\nAssistant:") and c.strip() and rj.strip()


def test_hh_chat_template_path(hh_raw):
    tok = make_tok(chat=True)
    ds = quiet(load_preferences, hh_raw[:20], errors="skip", chat_template=tok)
    assert len(ds) == 20
    assert all(p.endswith("<|assistant|>") and "<|user|>" in p for p in ds["prompt"])
    assert ds[0]["chosen"].endswith("\n") and "\n\nHuman:" not in ds[0]["prompt"]


# ---------------------------------------------------------------- the paper's strength-cleaned layout

def strength_rows(spaces: bool):
    "Three pairs in the fnlp/hh-rlhf-strength-cleaned layout (one row with prefixed turns)."
    key = (lambda k: k) if spaces else (lambda k: k.replace(" ", "_"))
    rows = []
    for i in range(3):
        hist = [f"question {i}", f"answer {i}", f"follow up {i}"]
        if i == 2: hist = [f"Human: {hist[0]}", f"Assistant: {hist[1]}", f"Human: {hist[2]}"]
        rows.append({"chosen": hist + [f"good {i}"], "rejected": hist + [f"bad {i}"],
                     key("mean preference difference"): 0.5 * i - 0.25, key("std preference difference"): 0.1 + i,
                     key("chosen score list"): [1.0 + i] * 10, key("rejected score list"): [0.5] * 10,
                     ("GPT4 label" if spaces else "GPT4_label"): [1, 0, -1][i]})
    return rows


@pytest.mark.parametrize("spaces,name", [(True, "valid.jsonl"), (False, "valid.json.gz")])
def test_strength_cleaned_layout(tmp_path, spaces, name):
    rows = strength_rows(spaces)
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f: json.dump(rows, f)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_preferences(path)
    assert ds.column_names == ["prompt", "chosen", "rejected", "strength_mean", "strength_std",
                               "chosen_scores", "rejected_scores", "gpt4_label"]
    assert ds["strength_mean"] == pytest.approx([-0.25, 0.25, 0.75])
    assert ds["strength_std"] == pytest.approx([0.1, 1.1, 2.1])
    assert list(ds["gpt4_label"]) == [1, 0, -1]
    assert ds[1]["chosen_scores"] == [2.0] * 10
    for i in range(3):  # prefixed and plain turns give the same text
        assert ds[i]["prompt"] == f"\n\nHuman: question {i}\n\nAssistant: answer {i}\n\nHuman: follow up {i}\n\nAssistant:"
        assert (ds[i]["chosen"], ds[i]["rejected"]) == (f" good {i}", f" bad {i}")


# ---------------------------------------------------------------- bad input: error names row and field; skip counts

GOOD_TEXT = {"prompt": "how do i cook rice ?", "chosen": "rinse it then simmer", "rejected": "no", "margin": 1.0}
GOOD_HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
GOOD_TURNS = {"chosen": ["hi", "hello", "bye", "see you"], "rejected": ["hi", "hello", "bye", "go"], "mean preference difference": 0.3}
M = lambda role, content: {"role": role, "content": content}
GOOD_MSGS = {"chosen": [M("user", "hi"), M("assistant", "hello")], "rejected": [M("user", "hi"), M("assistant", "go")]}

BAD = [  # (id, good row, changes, field, reason)
    ("text-missing", GOOD_TEXT, {"chosen": None}, "chosen", "missing"),
    ("text-missing-key", GOOD_TEXT, {"rejected": "DROP"}, "rejected", "missing"),
    ("text-type", GOOD_TEXT, {"chosen": 3}, "chosen", "wrong type"),
    ("text-empty", GOOD_TEXT, {"rejected": " \n\t"}, "rejected", "empty response"),
    ("text-empty-prompt", GOOD_TEXT, {"prompt": ""}, "prompt", "empty prompt"),
    ("text-identical", GOOD_TEXT, {"rejected": "rinse it then simmer"}, "rejected", "identical to chosen"),
    ("text-nan-margin", GOOD_TEXT, {"margin": float("nan")}, "margin", "not a finite number"),
    ("hh-prompt", GOOD_HH, {"rejected": "\n\nHuman: hello\n\nAssistant: go away"}, "prompt", "differs between chosen and rejected"),
    ("hh-no-assistant", GOOD_HH, {"rejected": "\n\nHuman: hi"}, "rejected", "no assistant turn"),
    ("hh-empty", GOOD_HH, {"chosen": "\n\nHuman: hi\n\nAssistant: "}, "chosen", "empty response"),
    ("hh-identical", GOOD_HH, {"rejected": GOOD_HH["chosen"]}, "rejected", "identical to chosen"),
    ("turns-history", GOOD_TURNS, {"rejected": ["hi", "HELLO", "bye", "go"]}, "prompt", "differs between chosen and rejected"),
    ("turns-nan-strength", GOOD_TURNS, {"mean preference difference": float("nan")}, "strength_mean", "not a finite number"),
    ("turns-type", GOOD_TURNS, {"chosen": ["hi", "hello", "bye", 7]}, "chosen", "wrong type"),
    ("turns-not-assistant", GOOD_TURNS, {"chosen": ["hi", "hello", "bye"], "rejected": ["hi", "hello", "bye"]}, "chosen", "response is not an assistant turn"),
    ("msgs-prompt", GOOD_MSGS, {"rejected": [M("user", "hey"), M("assistant", "go")]}, "prompt", "differs between chosen and rejected"),
    ("msgs-role", GOOD_MSGS, {"chosen": [M("user", "hi"), M("user", "hello")]}, "chosen", "response is not an assistant turn"),
    ("msgs-unknown-role", GOOD_MSGS, {"prompt": [M("wizard", "hi")], "chosen": [M("assistant", "a")], "rejected": [M("assistant", "b")]}, "prompt", "unknown role"),
    ("msgs-empty", GOOD_MSGS, {"chosen": [M("user", "hi"), M("assistant", "  ")]}, "chosen", "empty response"),
]


@pytest.mark.parametrize("good,changes,field,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rows(good, changes, field, reason):
    bad = {k: v for k, v in {**good, **changes}.items() if v != "DROP"}
    rows = [good, good, bad, good]
    with pytest.raises(PreferenceDataError, match=rf"^row 2, field '{field}': {reason}") as e:
        load_preferences(rows)
    assert (e.value.row, e.value.field, e.value.reason) == (2, field, reason)
    with pytest.warns(UserWarning, match=rf"skipped 1 of 4 rows: 1 × {field}: {reason} \(rows 2\)"):
        ds, skipped = load_preferences(rows, errors="skip", return_skipped=True)
    assert len(ds) == 3 and skipped.counts == {f"{field}: {reason}": 1} and skipped.rows() == [2]


def test_skip_report_counts_several_reasons():
    rows = [GOOD_TEXT, {**GOOD_TEXT, "chosen": ""}, {**GOOD_TEXT, "rejected": ""}, {**GOOD_TEXT, "chosen": ""}, GOOD_TEXT]
    ds, skipped = quiet(load_preferences, rows, errors="skip", return_skipped=True)
    assert len(ds) == 2 and len(skipped) == 3 and skipped.total == 5
    assert skipped.counts == {"chosen: empty response": 2, "rejected: empty response": 1}
    assert skipped.rows("chosen: empty response") == [1, 3]
    with pytest.warns(UserWarning):  # skip mode without return_skipped still returns just the dataset
        assert isinstance(load_preferences(rows, errors="skip"), Dataset)
    assert isinstance(skipped, SkipReport)


def test_error_is_value_error_and_picklable():
    e = PreferenceDataError(5, "chosen", "empty response")
    assert isinstance(e, ValueError) and str(e) == "row 5, field 'chosen': empty response"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.row, e2.field, str(e2)) == (5, "chosen", str(e))


def test_all_rows_skipped_gives_empty_schema():
    ds = quiet(load_preferences, [{**GOOD_TEXT, "chosen": ""}], errors="skip")
    assert len(ds) == 0 and ds.column_names == ["prompt", "chosen", "rejected"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="errors="): load_preferences([GOOD_TEXT], errors="ignore")
    with pytest.raises(ValueError, match="format="): load_preferences([GOOD_TEXT], format="csv")
    with pytest.raises(ValueError, match="format="): load_preferences([{"chosen": None, "rejected": None}])
    with pytest.raises(ValueError, match="chat_template"): load_preferences([GOOD_TEXT], chat_template=make_tok(chat=True))


# ---------------------------------------------------------------- formats

def test_detect_format():
    assert [detect_format(r) for r in (GOOD_TEXT, GOOD_HH, GOOD_TURNS, GOOD_MSGS, {"chosen": []})] == \
        ["text", "transcript", "turns", "messages", None]


def test_format_override():  # a prompt column next to transcripts: detection says text, override says transcript
    row = {**GOOD_HH, "prompt": "ignored"}
    assert load_preferences([row])[0]["chosen"] == GOOD_HH["chosen"]
    assert load_preferences([row], format="transcript")[0]["chosen"] == " hello"


def test_messages_with_and_without_prompt():
    explicit = {"prompt": [M("system", "be kind"), M("user", "hi")], "chosen": [M("assistant", "hello")],
                "rejected": [M("assistant", "go")], "id": 7}
    implicit = {"chosen": explicit["prompt"] + explicit["chosen"], "rejected": explicit["prompt"] + explicit["rejected"], "id": 7}
    a, b = load_preferences([explicit])[0], load_preferences([implicit])[0]
    assert a == b == {"prompt": "\n\nSystem: be kind\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go", "id": 7}


def test_messages_multi_turn_response_and_chat_template():
    tok = make_tok(chat=True)
    row = {"prompt": [M("user", "hi")], "chosen": [M("assistant", "a"), M("user", "b"), M("assistant", "c")],
           "rejected": [M("assistant", "x")]}
    hh = load_preferences([row])[0]
    assert hh["prompt"] + hh["chosen"] == "\n\nHuman: hi\n\nAssistant: a\n\nHuman: b\n\nAssistant: c"
    ct = load_preferences([row], chat_template=tok)[0]
    assert (ct["prompt"], ct["rejected"]) == ("<|user|>hi\n<|assistant|>", "x\n")
    turns = load_preferences([GOOD_TURNS], chat_template=tok)[0]
    assert turns["prompt"] == "<|user|>hi\n<|assistant|>hello\n<|user|>bye\n<|assistant|>" and turns["chosen"] == "see you\n"


def test_world_text_rows_keep_extra_columns():
    row = {"prompt": "human : how do i learn python ? assistant :", "chosen": "ok , tests", "rejected": "um stuff",
           "gold_chosen": 0.9, "gold_rejected": 1.2, "label_is_wrong": True, "noise": "uniform"}
    ds = load_preferences([row, row])
    assert ds.column_names == list(row) and ds[1] == row


# ---------------------------------------------------------------- sources

def test_sources(tmp_path):
    rows = [{**GOOD_TEXT, "rejected": f"no {i}"} for i in range(4)]
    expected = load_preferences(rows)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f: f.write("".join(json.dumps(r) + "\n" for r in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    for name in ("a.jsonl", "a.json", "a.jsonl.gz", "a.parquet"):
        assert load_preferences(tmp_path / name).to_list() == expected.to_list(), name
        assert load_preferences(str(tmp_path / name)).to_list() == expected.to_list(), name
    assert len(load_preferences(tmp_path)) == 16  # a folder: all four files, in name order
    assert load_preferences(Dataset.from_list(rows)).to_list() == expected.to_list()
    assert load_preferences(rows).to_list() == expected.to_list()


def test_folder_splits_and_save_to_disk(tmp_path):
    train = [{**GOOD_TEXT, "rejected": f"no {i}"} for i in range(3)]
    valid = [{**GOOD_TEXT, "rejected": "valid"}]
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "files" / "valid.jsonl").write_text(json.dumps(valid[0]) + "\n")
    assert len(load_preferences(tmp_path / "files", split="train")) == 3
    assert load_preferences(tmp_path / "files", split="valid")["rejected"] == ["valid"]
    with pytest.raises(FileNotFoundError, match="split 'test'"): load_preferences(tmp_path / "files", split="test")
    dd = DatasetDict(train=Dataset.from_list(train), valid=Dataset.from_list(valid))
    assert len(load_preferences(dd, split="train")) == 3
    with pytest.raises(KeyError, match="choose one of"): load_preferences(dd)
    dd.save_to_disk(str(tmp_path / "dd"))
    dd["train"].save_to_disk(str(tmp_path / "ds"))
    assert load_preferences(tmp_path / "dd", split="valid")["rejected"] == ["valid"]
    assert len(load_preferences(tmp_path / "ds")) == 3


def test_missing_path_and_offline_hub(monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file"): load_preferences("/nonexistent/pairs.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="hub is offline"): read_rows("Anthropic/hh-rlhf", split="test")


# ---------------------------------------------------------------- tokenisation and collation

WORDS = "<pad> <unk> <bos> <eos> a b c d e f g h p q r s t".split()


def make_tok(pad=True, chat=False):
    "A word-level fast tokenizer: <pad> 0, <unk> 1, <bos> 2 (added at the start), <eos> 3."
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                                  **({"pad_token": "<pad>"} if pad else {}))
    if chat: tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def ids(tok, text): return tok(text, add_special_tokens=False)["input_ids"]


def test_join_text():
    assert join_text("p q", "a b") == "p q a b"
    assert join_text("p q ", "a") == "p q a" and join_text("p", " a") == "p a" and join_text("p\n", "a") == "p\na"


def test_tokenize_left_truncation_keeps_response_and_bos():
    tok = make_tok()
    pairs = load_preferences([{"prompt": "p q r s t p q r s t", "chosen": "a b c", "rejected": "d e", "margin": 0.5}])
    out = tokenize_pairs(pairs, tok, max_length=8)
    c, r = out[0]["chosen_input_ids"], out[0]["rejected_input_ids"]
    assert c == [2] + ids(tok, "r s t") + ids(tok, "a b c") + [3]  # BOS, prompt cut from the left, response, EOS
    assert r == [2] + ids(tok, "q r s t") + ids(tok, "d e") + [3] and len(c) == len(r) == 8
    assert out.column_names == ["prompt", "chosen", "rejected", "margin", "chosen_input_ids", "rejected_input_ids"]
    full = tokenize_pairs(pairs, tok, max_length=100)[0]["chosen_input_ids"]
    assert full == [2] + ids(tok, "p q r s t p q r s t a b c") + [3]
    assert tokenize_pairs(pairs, tok, max_length=100, append_eos=False)[0]["chosen_input_ids"] == full[:-1]


def test_tokenize_eos_not_doubled_and_retokenise():
    tok = make_tok()
    pairs = load_preferences([{"prompt": "p", "chosen": "a <eos>", "rejected": "b"}])
    out = tokenize_pairs(pairs, tok, max_length=10)
    assert out[0]["chosen_input_ids"] == [2, ids(tok, "p")[0], ids(tok, "a")[0], 3]
    again = tokenize_pairs(out, tok, max_length=3)  # re-tokenising replaces the columns; the prompt goes entirely
    assert again[0]["chosen_input_ids"] == [2, ids(tok, "a")[0], 3] and again.column_names.count("chosen_input_ids") == 1


def test_tokenize_over_long_response():
    tok = make_tok()
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b c d e f g"}]
    pairs = load_preferences(rows)
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'rejected': too long \(8 tokens without the prompt, max_length=6\)"):
        tokenize_pairs(pairs, tok, max_length=6)
    with pytest.warns(UserWarning, match="1 × rejected: too long"):
        out, skipped = tokenize_pairs(pairs, tok, max_length=6, errors="skip", return_skipped=True)
    assert len(out) == 1 and out[0]["rejected"] == "b" and skipped.rows() == [1]
    no_eos = PreTrainedTokenizerFast(tokenizer_object=make_tok().backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="no EOS"):
        tokenize_pairs(pairs, no_eos, append_eos=True)
    assert tokenize_pairs(pairs, no_eos)["chosen_input_ids"][0] == no_eos("p a")["input_ids"]   # default: EOS only if there is one


def test_tokenize_hh_transcript_round_trip(hh_raw):
    tok = make_tok()
    pairs = load_preferences(hh_raw[:30])
    out = tokenize_pairs(pairs, tok, max_length=4096)
    for row, raw in zip(out, hh_raw[:30]):  # untruncated: exactly the transcript's tokens
        assert row["chosen_input_ids"] == [2] + ids(tok, raw["chosen"]) + [3]


def test_collator():
    tok = make_tok()
    rows = [{"prompt": "p q", "chosen": "a " * (i + 1), "rejected": "b", "margin": float(i), "label_is_wrong": i == 1,
             "gold_chosen": 0.5 * i, "noise": "none"} for i in range(3)]
    ds = tokenize_pairs(load_preferences(rows), tok)
    collate = PairCollator.from_tokenizer(tok)
    batch = collate([ds[i] for i in range(3)])
    seqs = list(ds["chosen_input_ids"]) + list(ds["rejected_input_ids"])
    T = max(map(len, seqs))
    assert T == 7 and batch["input_ids"].shape == (6, T) and batch["attention_mask"].shape == (6, T)
    for i, s in enumerate(seqs):  # chosen rows 0..2, then rejected rows 3..5, right padded with <pad>
        assert batch["input_ids"][i, :len(s)].tolist() == s
        assert batch["input_ids"][i, len(s):].eq(tok.pad_token_id).all() and tok.pad_token_id != tok.eos_token_id
        assert batch["attention_mask"][i].tolist() == [1] * len(s) + [0] * (T - len(s))
    assert batch["margin"].tolist() == [0.0, 1.0, 2.0] and batch["margin"].dtype == torch.float32
    assert batch["label_is_wrong"].tolist() == [False, True, False] and batch["label_is_wrong"].dtype == torch.bool
    assert batch["gold_chosen"].shape == (3,)
    assert "noise" not in batch and "prompt" not in batch and "chosen_input_ids" not in batch
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert [b["input_ids"].shape[0] for b in loader] == [4, 2]
    ds.set_format("torch")  # tensors in, same batch out
    assert torch.equal(collate([ds[i] for i in range(3)])["input_ids"], batch["input_ids"])


def test_collator_needs_a_distinct_pad():
    with pytest.raises(ValueError, match="no pad token"): PairCollator.from_tokenizer(make_tok(pad=False))
    tok = make_tok(pad=False)
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="EOS"): PairCollator.from_tokenizer(tok)


def test_world_rows_load_tokenise_collate():
    from rmsecrets import world
    dd = world.make_world(world.WorldConfig(seed=0, n_train=64, n_validation=8, n_test=8))
    tok = world.make_tokenizer()
    pairs = load_preferences(dd, split="train")
    assert len(pairs) == 64 and pairs.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert {"gold_chosen", "gold_rejected", "label_is_wrong", "noise"} <= set(pairs.column_names)
    ds, skipped = quiet(tokenize_pairs, pairs, tok, max_length=20, errors="skip", return_skipped=True)
    assert len(ds) + len(skipped) == 64 and len(ds) >= 8 and set(skipped.counts) <= {"chosen: too long", "rejected: too long"}
    assert max(len(s) for s in ds["chosen_input_ids"]) <= 20
    for row in ds:
        response = ids(tok, row["chosen"])
        assert row["chosen_input_ids"][0] == tok.bos_token_id
        assert row["chosen_input_ids"][-len(response) - 1:] == response + [tok.eos_token_id]
    batch = PairCollator.from_tokenizer(tok)([ds[i] for i in range(8)])
    assert batch["input_ids"].shape[0] == 16 and batch["gold_chosen"].shape == (8,)
    assert batch["label_is_wrong"].dtype == torch.bool
