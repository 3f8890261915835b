"""Folded routers (``LTEConfig.router_form="folded"``): ``sigmoid(|x W^T + c| + b)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, tiny_llama

import lte
from lte.baselines.base import capture_ffn_inputs
from lte.config import ConfigError
from lte.kernels.reference import activation
from lte.router import Router
from lte.sparsify import lte_layers, router_parameters


def _calibration(n_batches: int = 6, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (4, 32), generator=g) for _ in range(n_batches)]


def test_folded_logits_are_the_magnitude_of_the_linear_map_plus_the_bias():
    r = Router(8, 5, generator=torch.Generator().manual_seed(0), form="folded")
    with torch.no_grad():
        r.center.copy_(torch.linspace(-1, 1, 5))
        r.bias.copy_(torch.linspace(-2, 0, 5))
    x = torch.randn(7, 8)
    want = (x @ r.weight.T + r.center).abs() + r.bias
    assert torch.allclose(r.logits(x), want)
    assert set(dict(r.named_parameters())) == {"weight", "bias", "center"}
    assert Router(8, 5).center is None  # the paper's linear router has no fold


def test_bad_router_form_is_rejected():
    with pytest.raises(ConfigError, match="router_form"):
        lte.LTEConfig(router_form="abs")
    with pytest.raises(ValueError, match="router form"):
        Router(8, 5, form="abs")


def test_folded_gate_init_ranks_neurons_by_gate_magnitude(family):
    """Gate-initialised folded routers order each token's neurons by |gate pre-activation| (up,
    for GPT-2), so at a low threshold, below the activation's negative dip, they keep what CATS's
    |act(gate(x))| > t keeps on both sides of zero far better than the one-sided (linear) init."""
    calib, held = _calibration(12), _calibration(3, seed=9)
    kept = {}
    for form in ("linear", "folded"):
        model = FAMILIES[family]()
        lte.sparsify(model, lte.LTEConfig(expert_size=1, router_init="gate", router_form=form), calibration=calib,
                     progress=False)
        agree = []
        for layer, x in zip(lte_layers(model), capture_ffn_inputs(model, held, max_tokens=10**6, mode="dense")):
            src, src_b = layer.act_projection()
            z = F.linear(x, src, src_b).detach().double()
            logits = layer.router.logits(x).detach().double()
            if form == "folded":  # an increasing affine map of |z|, the same for every neuron
                za = z.abs()
                scale = float(((logits - logits.mean()) * (za - za.mean())).sum() / ((za - za.mean()) ** 2).sum())
                assert scale > 0
                assert torch.allclose(logits - logits.mean(), scale * (za - za.mean()), atol=1e-3)
            act = activation(z, layer.act).abs()
            k = z.shape[-1] // 2  # keep half the neurons of each token, as CATS at sparsity 0.5
            cats = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, act.topk(k, -1).indices, True)
            mine = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, logits.topk(k, -1).indices, True)
            agree.append(float((cats & mine).sum() / cats.sum()))
        kept[form] = sum(agree) / len(agree)
    assert kept["folded"] > kept["linear"] + 0.1, kept
    assert kept["folded"] > 0.8, kept


def test_folded_calibrated_init_starts_as_the_linear_fit():
    """The importance fit is put on the unfolded side of every calibration token, so a folded
    router starts with the linear router's logits there."""
    calib = _calibration(8)
    logits = {}
    for form in ("linear", "folded"):
        model = tiny_llama()
        lte.sparsify(model, lte.LTEConfig(expert_size=8, router_init="calibrated", router_form=form),
                     calibration=calib, progress=False)
        xs = capture_ffn_inputs(model, calib, max_tokens=10**6, mode="dense")
        logits[form] = [layer.router.logits(x).detach() for layer, x in zip(lte_layers(model), xs)]
    for a, b in zip(logits["linear"], logits["folded"]):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_folded_model_runs_round_trips_and_trains_its_center(tokens, tmp_path, mode):
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=8, router_form="folded", router_bias_init=-1.0,
                                      router_init_std=3.0), progress=False)
    layer = lte_layers(model)[0]
    with torch.no_grad():
        layer.router.center.uniform_(-1, 1)
    lte.set_mode(model, mode)
    with torch.no_grad():
        ref = model(tokens).logits
    assert 0.05 < lte.stats(model)["ffn_sparsity"] < 0.95  # the fold selects some experts, not all or none
    if mode == "hard":  # hard inference runs through the kernel dispatch (cpu here) and equals the definition
        x = torch.randn(5, layer.up.shape[1])
        with torch.no_grad():
            assert torch.allclose(layer(x), layer.reference_hard(x), atol=1e-6)
    lte.save(model, tmp_path / "m")
    loaded = lte.load(tmp_path / "m")
    assert loaded.lte_config.router_form == "folded"
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, ref)
    assert any(p is layer.router.center for p in router_parameters(model))


def test_folded_hard_mode_compiles_through_the_kernel_op(tokens):
    """A compiled folded model (the sparse-FFN op traced with its center) gives the eager logits."""
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=8, router_form="folded", router_bias_init=-1.0,
                                      router_init_std=3.0), progress=False)
    for layer in lte_layers(model):
        with torch.no_grad():
            layer.router.center.uniform_(-1, 1)
    lte.set_mode(model, "hard")
    with torch.no_grad():
        eager = model(tokens).logits
        compiled = torch.compile(model, backend="aot_eager")(tokens).logits
    assert 0.05 < lte.stats(model)["ffn_sparsity"] < 0.95
    assert torch.allclose(compiled, eager, atol=1e-5)
