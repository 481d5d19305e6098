"""LoRA (through peft) and gradient checkpointing: what trains, what is saved, equal gradients, the loops run."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rmsecrets.model import (add_lora, encode_responses, load_reward_model, make_reward_model, merge_lora,
                             reward_forward, save_reward_model, score)
from rmsecrets.world import WorldConfig, make_tokenizer, make_world


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return make_world(WorldConfig(seed=0, n_train=64, n_validation=16, n_test=8))


def saved_for_backward(fn) -> int:
    """Elements of the tensors autograd saves for the backward pass while fn() runs its forward. Checkpointing keeps
    each checkpointed layer's inputs only and recomputes the rest in the backward: a fraction of a plain forward's."""
    n = [0]
    def pack(t):
        n[0] += t.numel()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): fn()
    return n[0]


def _bt_grads(model, tok, pairs, n=16, saved: list | None = None):
    """Gradients of the Bradley–Terry loss on n pairs, by parameter name (None where a parameter got none); `saved`
    gets the elements the forward saved for the backward."""
    ds = pairs["train"].select(range(n))
    chosen, rejected = (encode_responses(tok, ds["prompt"], ds[side]) for side in ("chosen", "rejected"))
    model.train(); model.zero_grad()
    loss = []
    n_saved = saved_for_backward(lambda: loss.append(
        -F.logsigmoid(reward_forward(model, **chosen)[0] - reward_forward(model, **rejected)[0]).mean()))
    if saved is not None: saved.append(n_saved)
    loss[0].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_only_adapters_and_the_whole_head_train(tok):
    lora = add_lora(make_reward_model("tiny", tok, seed=0), r=4)
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    head = [n for n in trainable if "lora_" not in n]
    assert head == ["base_model.model.score.modules_to_save.default.weight"]
    assert trainable[head[0]].shape == (1, 64)
    # every linear layer of the trunk is adapted: 2 layers × (q, k, v, o, gate, up, down), an A and a B each
    assert sum("lora_" in n for n in trainable) == 2 * 7 * 2
    assert all(p.shape[0] == 4 for n, p in trainable.items() if "lora_A" in n)


def test_peft_default_targets_and_an_encoder_head(tok, tmp_path):
    qv = add_lora(make_reward_model("tiny", tok, seed=0), target_modules=None)   # peft's Llama default
    assert {n.split(".")[-4] for n, p in qv.named_parameters() if "lora_A" in n} == {"q_proj", "v_proj"}
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "bert")
    bert = add_lora(make_reward_model(tmp_path / "bert", tok, seed=0))
    trainable = [n for n, p in bert.named_parameters() if p.requires_grad]
    assert [n for n in trainable if "lora_" not in n] == ["base_model.model.classifier.modules_to_save.default.weight",
                                                         "base_model.model.classifier.modules_to_save.default.bias"]
    ids = torch.tensor([[5, 6, 7, tok.pad_token_id]]); mask = (ids != tok.pad_token_id).long()
    r, f = reward_forward(bert.eval(), ids, mask)
    assert f.shape == (1, 32) and torch.allclose(r, bert(input_ids=ids, attention_mask=mask).logits[:, 0])


def test_gradient_checkpointing_gives_the_same_gradients(tok, pairs):
    plain, ckpt = make_reward_model("tiny", tok, seed=0), make_reward_model("tiny", tok, seed=0, gradient_checkpointing=True)
    saved = []
    g_plain, g_ckpt = _bt_grads(plain, tok, pairs, saved=saved), _bt_grads(ckpt, tok, pairs, saved=saved)
    assert saved[1] < saved[0] / 5, saved                # really checkpointed: the layers' activations were not kept
    assert g_plain.keys() == g_ckpt.keys() and all(g is not None for g in g_plain.values())
    for n in g_plain: torch.testing.assert_close(g_ckpt[n], g_plain[n], rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_with_lora_reaches_the_adapters(tok, pairs):
    """Frozen embeddings give the checkpointed layers inputs without grad: the adapters must still get gradients."""
    lora = add_lora(make_reward_model("tiny", tok, seed=0), dropout=0.0)
    ckpt = add_lora(make_reward_model("tiny", tok, seed=0, gradient_checkpointing=True), dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():   # B = 0 at the start would leave every A's gradient at zero: give the Bs a value
        for a, b in zip(lora.parameters(), ckpt.parameters()):
            if a.requires_grad: a.copy_(0.1 * torch.randn_like(a)); b.copy_(a)
    saved = []
    g_lora, g_ckpt = _bt_grads(lora, tok, pairs, saved=saved), _bt_grads(ckpt, tok, pairs, saved=saved)
    assert saved[1] < saved[0] / 5, saved                # really checkpointed
    assert all(g is not None and g.abs().sum() > 0 for g in g_ckpt.values())
    for n in g_lora: torch.testing.assert_close(g_ckpt[n], g_lora[n], rtol=1e-5, atol=1e-7)


def test_policy_gradient_checkpointing_gives_the_same_gradients(tok):
    from rmsecrets.policy import make_policy
    ids = torch.randint(4, len(tok), (4, 12), generator=torch.Generator().manual_seed(0))
    grads, saved = [], []
    for gc in (False, True):
        policy = make_policy("tiny", tok, seed=0, gradient_checkpointing=gc).train()
        loss = []
        saved.append(saved_for_backward(lambda: loss.append(policy(input_ids=ids, labels=ids).loss)))
        loss[0].backward()
        grads.append({n: p.grad for n, p in policy.named_parameters()})
    assert saved[1] < saved[0] / 3, saved                # really checkpointed (the logits are kept either way)
    for n in grads[0]: torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_lora_through_the_training_loop_saves_a_plain_model(tok, pairs, tmp_path):
    from rmsecrets.train import TrainConfig, train_reward_model
    lora = add_lora(make_reward_model("tiny", tok, seed=0))
    frozen = lora.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight.clone()
    config = TrainConfig(lr=1e-2, batch_size=16, epochs=4, log_every=1, warmup_ratio=0.0, max_length=64, progress=False)
    result = train_reward_model(lora, tok, pairs["train"], pairs["validation"], config, out_dir=tmp_path / "run")
    losses = [h["loss"] for h in result.history if "loss" in h and "event" not in h]
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05      # it learns
    assert hasattr(result.model, "peft_config")                                       # still LoRA in memory
    assert torch.equal(result.model.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight, frozen)
    loaded, loaded_tok = load_reward_model(tmp_path / "run" / "model")
    assert type(loaded).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in k or "modules_to_save" in k for k in loaded.state_dict())
    va = pairs["validation"]
    torch.testing.assert_close(score(loaded, loaded_tok, va["prompt"], va["chosen"]),
                               score(result.model, tok, va["prompt"], va["chosen"]), rtol=1e-5, atol=1e-5)


def test_merge_lora_leaves_the_model_and_plain_models_alone(tok, tmp_path):
    rm = make_reward_model("tiny", tok, seed=0)
    assert merge_lora(rm) is rm
    lora = add_lora(make_reward_model("tiny", tok, seed=0))
    merged = merge_lora(lora)
    assert type(merged).__name__ == "LlamaForSequenceClassification" and hasattr(lora, "peft_config")
    save_reward_model(lora, tok, tmp_path / "twice"); save_reward_model(lora, tok, tmp_path / "twice")  # saving twice works
    assert hasattr(lora.get_base_model().score, "modules_to_save")
    with pytest.raises(ValueError, match="without state_dict"):   # gathered shards of a LoRA model are not merged
        save_reward_model(lora, tok, tmp_path / "sharded", state_dict=lora.state_dict())


def test_a_clear_error_without_peft(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"rmsecrets\[lora\]"):
        add_lora(make_reward_model("tiny", tok, seed=0))


def test_ppo_runs_with_a_lora_policy(tok, tmp_path):
    from rmsecrets.policy import load_policy, make_policy, sample, save_policy
    from rmsecrets.ppo import PPOConfig, ppo
    from rmsecrets.world import make_prompts
    policy = add_lora(make_policy("tiny", tok, seed=0))
    frozen = policy.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    adapters = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    prompts = list(make_prompts(WorldConfig(n_prompts=16))["prompt"])
    config = PPOConfig(iterations=2, critic_warmup=1, rollout_prompts=8, mini_batch=8, ppo_epochs=1, max_new_tokens=8,
                       eval_every=0, eval_prompts=4, eval_k=2, progress=False)
    result = ppo(policy, make_reward_model("tiny", tok, seed=1), tok, prompts, config)
    assert [h["critic_only"] for h in result.history] == [True, False]
    assert all(torch.isfinite(torch.tensor(h["policy_loss"])) for h in result.history)
    p = result.policy
    assert torch.equal(p.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight, frozen)
    assert any(not torch.equal(q, adapters[n]) for n, q in p.named_parameters() if n in adapters)   # the adapters moved
    greedy = sample(p, tok, prompts[:4], temperature=0, max_new_tokens=8).responses
    saved, _ = load_policy(save_policy(p, tok, Path(tmp_path) / "policy"))
    assert type(saved).__name__ == "LlamaForCausalLM"
    assert sample(saved, tok, prompts[:4], temperature=0, max_new_tokens=8).responses == greedy
