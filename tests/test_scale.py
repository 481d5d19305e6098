"""The cost model of rmsecrets.scale against real models: parameter counts, saved activations, counted FLOPs."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rmsecrets.model import enable_checkpointing
from rmsecrets.scale import (LLAMA2_7B, ModelShape, Setup, Workload, activation_bytes, stage_cost, state_bytes,
                             train_flops)

CONFIG = dict(vocab_size=300, hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, num_labels=1, pad_token_id=0, use_cache=False)   # grouped-query attention


def test_parameter_counts_match_real_models():
    config = LlamaConfig(**CONFIG)
    shape = ModelShape.from_config(config)
    assert shape.kv_heads == 2
    assert shape.params("reward") == sum(p.numel() for p in LlamaForSequenceClassification(config).parameters())
    assert shape.params("lm") == sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    with torch.device("meta"):
        assert LLAMA2_7B.params("lm") == sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32)).parameters())


def test_zero_stages_shard_what_they_should():
    psi = 1_000_000
    by_stage = [state_bytes(psi, 0, Setup(n_gpus=4, zero=z)) for z in range(4)]
    assert by_stage[0] == {"weights": 2 * psi, "gradients": 2 * psi, "optimizer": 12 * psi}
    assert by_stage[1]["optimizer"] == 3 * psi and by_stage[1]["gradients"] == 2 * psi
    assert by_stage[2]["gradients"] == psi / 2 and by_stage[2]["weights"] == 2 * psi
    assert sum(by_stage[3].values()) == 4 * psi


@pytest.mark.parametrize("dtype,attention,checkpointing", [(torch.float32, "eager", False), (torch.bfloat16, "sdpa", False),
                                                           (torch.bfloat16, "sdpa", True)])
def test_activation_formula_matches_what_autograd_keeps(dtype, attention, checkpointing):
    config = LlamaConfig(**CONFIG)
    model = LlamaForSequenceClassification._from_config(config, attn_implementation=attention).to(dtype).train()
    if checkpointing: enable_checkpointing(model)
    weights, seen, kept = {p.untyped_storage().data_ptr() for p in model.parameters()}, set(), [0]
    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen: seen.add(ptr); kept[0] += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(1, 300, (3, 40)))
    formula = activation_bytes(ModelShape.from_config(config), 3, 40, checkpointing, "reward", dtype.itemsize, attention,
                               peak=False)
    assert formula == pytest.approx(kept[0], rel=0.05)


def test_training_flops_are_what_pytorch_counts():
    config = LlamaConfig(**CONFIG)
    shape, ids = ModelShape.from_config(config), torch.randint(1, 300, (2, 32))
    for head, cls in (("reward", LlamaForSequenceClassification), ("lm", LlamaForCausalLM)):
        model = cls._from_config(config, attn_implementation="eager")
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids).logits.float().sum().backward()
        assert counter.get_total_flops() == train_flops(shape, ids.numel(), 32, head=head)


def test_stage_costs_order_as_expected():
    full, lora = (stage_cost("train-rm", LLAMA2_7B, Setup(lora_r=r, checkpointing=True)) for r in (0, 16))
    assert not full["fits"] and lora["fits"] and lora["total_gb"] < full["total_gb"] / 5
    one_gpu = stage_cost("train-rm", LLAMA2_7B, Setup(n_gpus=1, lora_r=16, checkpointing=True))
    assert one_gpu["hours"] == pytest.approx(8 * lora["hours"])
    strength = stage_cost("strength", LLAMA2_7B, Setup(zero=2, checkpointing=True), Workload(voters=10))
    assert strength["hours"] > 10 * stage_cost("train-rm", LLAMA2_7B, Setup(zero=2, checkpointing=True))["hours"]
    ppo = [stage_cost("ppo", LLAMA2_7B, Setup(lora_r=16), ref_from_adapter=a) for a in (False, True)]
    assert ppo[0]["total_gb"] - ppo[1]["total_gb"] == pytest.approx(2 * LLAMA2_7B.params("lm") / 1e9)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_cost("dpo", LLAMA2_7B, Setup())


def _shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks in `markdown`, continuation lines joined, comments dropped."""
    import re
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        out += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.strip().startswith("#")]
    return out


def test_the_7b_commands_of_11_scale_parse():
    "Every `rmsecrets` command the scale notebook gives for a GPU node is accepted by the CLI as written."
    import json
    import shlex
    from pathlib import Path
    from rmsecrets.cli import build_parser
    nb = json.loads((Path(__file__).parents[1] / "nbs" / "11_scale.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    commands = [c for c in _shell_commands(text) if "rmsecrets.cli" in c or c.startswith("rmsecrets ")]
    stages = set()
    for command in commands:
        words = shlex.split(command)
        args = words[words.index("rmsecrets.cli") + 1:] if "rmsecrets.cli" in words else words[1:]
        try: parsed = build_parser().parse_args(args)
        except SystemExit: pytest.fail(f"the CLI rejects: {command}")
        stages.add(args[0])
        if args[0] == "ppo": assert parsed.lora_r == 16 and parsed.dtype == "bfloat16"
    assert {"train-rm", "strength", "sft", "ppo", "metarm"} <= stages, stages
