"""Score texts with OpenRLHF's own reward-model class: `python openrlhf_scorer.py FOLDER TEXTS.json` prints the rewards as JSON.

OpenRLHF imports deepspeed, flash-attn and pylatexenc at import time although scoring on a CPU needs none of them, so
this script (run in its own process, to keep the stubs out of the test session) stands empty modules in for those that
are not installed, imports `openrlhf.models`, and removes the stand-ins again.
"""
import importlib.machinery
import importlib.util
import json
import sys
import types

import torch
from transformers import AutoTokenizer

STAND_INS = ["deepspeed", "flash_attn", "flash_attn.bert_padding", "flash_attn.utils", "flash_attn.utils.distributed",
             "pylatexenc", "pylatexenc.latex2text"]
NAMES = {"flash_attn.bert_padding": ["index_first_axis", "pad_input", "rearrange", "unpad_input"],
         "flash_attn.utils.distributed": ["all_gather"], "pylatexenc.latex2text": ["LatexNodes2Text"]}


def _missing(name: str) -> bool:
    try: return importlib.util.find_spec(name) is None
    except ModuleNotFoundError: return True


def _not_here(*args, **kwargs):
    raise RuntimeError("a stand-in: this module is not installed")


def import_openrlhf():
    """`openrlhf.models.get_llm_for_sequence_regression`, with stand-ins for the modules it imports but scoring never uses."""
    added = []
    for name in STAND_INS:
        top = name.split(".")[0]
        if top not in added and not _missing(top): continue   # a real install is used as it is
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        for attr in NAMES.get(name, []): setattr(module, attr, _not_here)
        parent, _, child = name.rpartition(".")
        if parent: setattr(sys.modules[parent], child, module)
        sys.modules[name] = module
        added.append(name)
    from openrlhf.models import get_llm_for_sequence_regression
    for name in added: sys.modules.pop(name)
    return get_llm_for_sequence_regression, added


if __name__ == "__main__":
    folder, texts = sys.argv[1], json.loads(open(sys.argv[2]).read())
    get_llm_for_sequence_regression, stood_in = import_openrlhf()
    model = get_llm_for_sequence_regression(folder, "reward", attn_implementation="eager", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad(): rewards = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    print(json.dumps({"rewards": rewards.float().tolist(), "stood_in": stood_in, "head": model.value_head_prefix,
                      "class": type(model).__name__, "mean": getattr(model.config, "mean", None)}))
