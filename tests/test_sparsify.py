"""Grouping, permutation invariance, modes, stats."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_llama

import lte
from lte.grouping import balanced_assign, balanced_kmeans
from lte.sparsify import lte_layers


@pytest.mark.parametrize("grouping", ["kmeans", "random"])
def test_dense_mode_equals_original(family, tokens, grouping):
    model = FAMILIES[family]()
    ref = model(tokens).logits
    from lte.arch import get_adapter
    site = get_adapter(model).sites(model)[0]
    before = get_adapter(model).extract(site.module, model).up
    lte.sparsify(model, lte.LTEConfig(expert_size=16, grouping=grouping), progress=False)
    out = model(tokens).logits
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    after = lte_layers(model)[0].up
    assert not torch.equal(after, before)  # neurons really moved ...
    assert torch.equal(after.sum(0).sort().values, before.sum(0).sort().values) or torch.allclose(
        after.sort(0).values, before.sort(0).values)  # ... and only moved


def test_coactivation_grouping_needs_and_uses_calibration(tokens):
    model = tiny_llama()
    ref = model(tokens).logits
    with pytest.raises(ValueError, match="calibration"):
        lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16, grouping="coactivation"))
    lte.sparsify(model, lte.LTEConfig(expert_size=16, grouping="coactivation"), calibration=[tokens], progress=False)
    assert torch.allclose(model(tokens).logits, ref, atol=1e-5)


def test_kmeans_is_balanced_and_groups_similar_neurons():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g)
    x = centers.repeat_interleave(8, 0) + 0.05 * torch.randn(32, 16, generator=g)
    assign = balanced_kmeans(x[torch.randperm(32, generator=g)], 4, seed=0)
    assert torch.bincount(assign).tolist() == [8, 8, 8, 8]
    assign = balanced_kmeans(x, 4, seed=0)
    for c in range(4):  # each true cluster lands in one expert
        assert assign[c * 8:(c + 1) * 8].unique().numel() == 1


def test_balanced_assign_respects_capacity():
    sim = torch.zeros(12, 3)
    sim[:, 0] = 1.0  # everyone prefers cluster 0
    a = balanced_assign(sim, 4)
    assert torch.bincount(a, minlength=3).tolist() == [4, 4, 4]


def test_soft_mode_with_scores_one_equals_dense(family, tokens):
    model = FAMILIES[family]()
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    dense = model(tokens).logits
    for layer in lte_layers(model):
        layer.router.weight.data.zero_()
        layer.router.bias.data.fill_(60.0)  # sigmoid(60) == 1.0 in fp32
    lte.set_mode(model, "soft")
    assert torch.allclose(model(tokens).logits, dense, atol=1e-6)


def test_hard_mode_equals_masked_reference(family, tokens):
    model = FAMILIES[family]()
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    lte.set_mode(model, "hard")
    x = torch.randn(2, 5, 64)
    for layer in lte_layers(model):
        with torch.no_grad():
            y = layer(x)
        assert torch.allclose(y, layer.reference_hard(x), atol=1e-5)
        mask = layer.router.logits(x) > 0
        h = layer._intermediate(x) * mask.float().repeat_interleave(16, -1)
        manual = h @ layer.down + (layer.down_bias if layer.down_bias is not None else 0)
        assert torch.allclose(y, manual, atol=1e-5)
    st = lte.stats(model)
    assert 0.05 < st["ffn_sparsity"] < 0.95


def test_hard_mode_with_grad_matches_inference(tokens):
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    lte.set_mode(model, "hard")
    with torch.no_grad():
        a = model(tokens).logits
    b = model(tokens).logits  # grad path: masked dense
    assert torch.allclose(a, b, atol=1e-5)
    b.sum().backward()
    assert lte_layers(model)[0].up.grad is not None


def test_stats_count_only_real_tokens():
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    lte.set_mode(model, "hard")
    ids = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        model(ids)
    alone = lte.stats(model)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        model(padded, attention_mask=mask)
    st = lte.stats(model)
    assert st["tokens"] == 8
    assert st["ffn_sparsity"] == pytest.approx(alone["ffn_sparsity"], abs=1e-6)


def test_bad_expert_size_and_mode_give_clear_errors():
    with pytest.raises(ValueError, match="does not divide the FFN width 128"):
        lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=48))
    model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        lte.set_mode(model, "fast")
    with pytest.raises(ValueError, match="already sparsified"):
        lte.sparsify(model)
    with pytest.raises(ValueError, match="no LTE layers"):
        lte.set_mode(tiny_llama(), "hard")


def test_unsupported_architecture():
    from transformers import PretrainedConfig

    from lte.arch import UnsupportedModelError

    class Toy(torch.nn.Module):
        config = PretrainedConfig()
        config.model_type = "mamba"

    with pytest.raises(UnsupportedModelError, match="no adapter for model_type 'mamba'"):
        lte.sparsify(Toy())


@pytest.mark.parametrize("kw,msg", [
    ({"expert_size": 0}, "expert_size"), ({"grouping": "metis"}, "grouping"), ({"threshold": 1.0}, "threshold"),
    ({"efficiency_weight": -1}, "efficiency_weight"), ({"efficiency_loss": "l1"}, "efficiency_loss"),
])
def test_config_validation(kw, msg):
    with pytest.raises(lte.config.ConfigError, match=msg):
        lte.LTEConfig(**kw)


def test_train_config_validation():
    with pytest.raises(lte.config.ConfigError, match="target_sparsity"):
        lte.TrainConfig(target_sparsity=1.5)
    with pytest.raises(lte.config.ConfigError, match="unknown TrainConfig"):
        lte.TrainConfig.from_dict({"stage_one": 3})


def test_stats_mask_survives_deepcopy():
    import copy
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    twin = copy.deepcopy(model)
    lte.set_mode(twin, "hard")
    padded = torch.randint(0, 96, (1, 12))
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        twin(padded, attention_mask=mask)
    assert lte.stats(twin)["tokens"] == 8
    assert model.lte_state.token_mask is None  # the original was not touched
