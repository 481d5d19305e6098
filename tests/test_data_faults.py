"""File-level faults: each error names the file, the line where there is one, and what was expected."""
import gzip
import json
import re

import pytest

from rmsecrets.data import load_preferences

GOOD = {"prompt": "hi", "chosen": "a", "rejected": "b"}


def write(path, data: bytes):
    path.write_bytes(data); return path


FAULTS = {  # name -> (file name, bytes, a pattern the message must match after the file's path)
    "empty file": ("empty.jsonl", b"", r": empty file"),
    "blank lines only": ("blank.jsonl", b"\n \n", r": empty file"),
    "bad JSON line": ("bad.jsonl", (json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{oops\n").encode(), r", line 3: not JSON"),
    "not UTF-8": ("latin.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"), r": not UTF-8 text \(byte \d+"),
    "random bytes": ("noise.jsonl", bytes(range(128, 256)) * 4, r": not UTF-8 text"),
    "truncated gzip": ("cut.jsonl.gz", gzip.compress((json.dumps(GOOD) + "\n").encode() * 50)[:40], r": truncated or corrupt gzip"),
    "not gzip at all": ("plain.jsonl.gz", (json.dumps(GOOD) + "\n").encode(), r": truncated or corrupt gzip"),
    "JSON scalar": ("scalar.json", b'"just a string"', r": a JSON str, not a list of objects"),
    "no known format": ("odd.jsonl", (json.dumps({"question": "q", "good": "a", "bad": "b"}) + "\n").encode(),
                        r": no known format: the columns found are \['bad', 'good', 'question'\]; transcript needs"),
    "corrupt parquet": ("bad.parquet", b"PAR1 not really", r": not a readable Parquet file"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_file_level_faults_name_the_file(tmp_path, fault):
    name, data, pattern = FAULTS[fault]
    path = write(tmp_path / name, data)
    with pytest.raises(ValueError) as e:
        load_preferences(path)
    assert re.match(re.escape(str(path)) + pattern, str(e.value)), str(e.value)


def test_a_world_folder_loads_its_preferences(tmp_path):
    from rmsecrets.world import WorldConfig, save_world
    save_world(WorldConfig(n_train=20, n_validation=5, n_test=5, n_demonstrations=5, n_prompts=5), tmp_path / "w")
    train = load_preferences(tmp_path / "w", split="train")
    assert len(train) == 20 and train.column_names[:3] == ["prompt", "chosen", "rejected"]


def test_chat_roles_outside_the_template_are_refused(tmp_path):
    msgs = lambda role: [{"role": role, "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [{"chosen": msgs("user"), "rejected": [*msgs("user")[:1], {"role": "assistant", "content": "go"}]},
            {"chosen": msgs("human"), "rejected": [*msgs("human")[:1], {"role": "assistant", "content": "go"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 1, field 'chosen': unknown role \('human'"):
        load_preferences(path)
    assert len(load_preferences(path, errors="skip")) == 1


ROW_FAULTS = {  # a row-level fault, said with its row and field
    "wrong role": ("chat.jsonl", (json.dumps({"chosen": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "a"}],
                                              "rejected": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "b"}]})
                                  + "\n").encode(), r"row 0, field 'chosen': unknown role"),
    "empty response": ("empty_response.jsonl", (json.dumps({**GOOD, "chosen": " "}) + "\n").encode(),
                       r"row 0, field 'chosen': empty response"),
}


@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
    from rmsecrets.world import WorldConfig, save_world
    out = tmp_path_factory.mktemp("faults") / "w"
    save_world(WorldConfig(n_train=20, n_validation=5, n_test=5, n_demonstrations=5, n_prompts=5), out)
    return out / "tokenizer"


@pytest.mark.parametrize("fault", sorted(FAULTS) + sorted(ROW_FAULTS))
@pytest.mark.parametrize("command", ["train-rm", "strength"])
def test_the_cli_says_each_fault_in_one_line(tmp_path, capsys, world_tokenizer, fault, command):
    "No traceback: exit status 2 and one line on stderr that names the file, then the line or row and the field."
    from rmsecrets.cli import main
    name, data, pattern = {**FAULTS, **ROW_FAULTS}[fault]
    path = write(tmp_path / name, data)
    code = main([command, "--data", str(path), "--split", "", "--tokenizer", str(world_tokenizer), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    where = re.escape(f"rmsecrets: error: {path}") + pattern if fault in FAULTS else r"rmsecrets: error: " + pattern
    assert re.match(where, err), err


def test_skip_counts_unreadable_json_lines(tmp_path):
    path = write(tmp_path / "mixed.jsonl", "\n".join([json.dumps(GOOD), "{oops", json.dumps({**GOOD, "chosen": ""}),
                                                     json.dumps({**GOOD, "chosen": "c"}), "[1,"]).encode())
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not JSON")):
        load_preferences(path)
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 rows and 2 unreadable line\(s\)"):
        ds, report = load_preferences(path, errors="skip", return_skipped=True)
    assert len(ds) == 2 and len(report) == 3
    assert report.counts == {"chosen: empty response": 1, "line: not JSON": 2}
    assert [(e.path, e.line) for e in report.lines] == [(path, 2), (path, 5)]
