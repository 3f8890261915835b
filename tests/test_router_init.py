"""Calibrated router initialisation (lte.router_init)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, tiny_llama

import lte
from lte.baselines.base import capture_ffn_inputs
from lte.config import ConfigError
from lte.kernels.reference import activation
from lte.router_init import expert_importance, fit_router
from lte.sparsify import lte_layers


def _calibration(n_batches: int = 6, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (4, 32), generator=g) for _ in range(n_batches)]


def test_fit_router_recovers_a_linear_ranking():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g)
    a = torch.randn(16, 6, generator=g)
    imp = torch.exp(x @ a + torch.arange(6.0))  # log-importance linear in x: a perfect fit exists
    w, b, r2 = fit_router(x, imp, spread=2.0, bias_init=3.0, ridge=1e-6)
    assert r2 > 0.99
    logits = x @ w.T + b
    assert abs(float(b.mean()) - 3.0) < 1e-4  # centred on bias_init
    spread = float((logits - logits.mean(-1, keepdim=True)).std())
    assert abs(spread - 2.0) < 1e-3
    # the router ranks the experts of each token as their importance does
    assert torch.equal(logits.argsort(-1), imp.argsort(-1))


def test_calibrated_routers_keep_more_of_the_ffn_than_random(family):
    """At the same 50% of experts off per layer, calibrated routers keep a larger share of the
    FFN output norm than random ones, on held-out tokens (the point of calibrating)."""
    calib = _calibration(24)
    held = _calibration(4, seed=9)
    shares = {}
    for init in ("random", "calibrated"):
        model = FAMILIES[family]()
        lte.sparsify(model, lte.LTEConfig(expert_size=8, router_init=init), calibration=calib, progress=False)
        layers = lte_layers(model)
        xs = capture_ffn_inputs(model, held, max_tokens=10**6, mode="dense")
        kept = []
        for layer, x in zip(layers, xs):
            imp = expert_importance(layer, x)
            z = layer.router.logits(x).detach()
            on = z >= z.median(-1, keepdim=True).values  # half of the experts of each token
            kept.append(float((imp * on).sum() / imp.sum()))
        shares[init] = sum(kept) / len(kept)
    # tiny random models have little structure to find (measured: +0.05 to +0.10 over random)
    assert shares["calibrated"] > shares["random"] + 0.03, shares
    assert shares["calibrated"] > 0.58, shares


def test_calibrated_init_starts_almost_dense_and_keeps_dense_mode(tokens):
    model = tiny_llama()
    ref = model(tokens).logits
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_init="calibrated"), calibration=_calibration(),
                 progress=False)
    assert torch.allclose(model(tokens).logits, ref, atol=1e-5)  # routers do not touch dense mode
    lte.set_mode(model, "hard")
    with torch.no_grad():
        model(tokens)
    assert lte.stats(model)["ffn_sparsity"] < 0.05  # bias_init 3, spread 1: nearly every expert on


def test_calibrated_init_needs_calibration_and_a_known_name():
    with pytest.raises(ValueError, match="calibration"):
        lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16, router_init="calibrated"), progress=False)
    with pytest.raises(ConfigError, match="router_init"):
        lte.LTEConfig(router_init="oracle")


def test_calibration_uses_real_tokens_only():
    """Padded calibration batches (dicts with an attention mask): only the real tokens are fitted."""
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
    ids = torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    xs = capture_ffn_inputs(model, [{"input_ids": ids, "attention_mask": mask}], max_tokens=10**6, mode="dense")
    assert [x.shape[0] for x in xs] == [int(mask.sum())] * len(xs)
    assert lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16, router_init="calibrated"),
                        calibration=[{"input_ids": ids, "attention_mask": mask}] * 8, progress=False) is not None


def test_gate_init_selects_what_cats_selects(family):
    """Experts of one neuron, gate-initialised: lowering the common bias switches neurons off in
    the order of their gate pre-activation (up, for GPT-2), so at a threshold above the
    activation's negative dip the selection equals CATS's |act(gate(x))| > t."""
    calib = _calibration(12)
    held = _calibration(3, seed=9)
    model = FAMILIES[family]()
    lte.sparsify(model, lte.LTEConfig(expert_size=1, router_init="gate"), calibration=calib, progress=False)
    for layer, x in zip(lte_layers(model), capture_ffn_inputs(model, held, max_tokens=10**6, mode="dense")):
        src, src_b = layer.act_projection()
        z = (F.linear(x, src, src_b) if src_b is not None else x @ src.T).detach().double()
        logits = layer.router.logits(x).detach().double()
        # an increasing affine map of the pre-activation, the same for every neuron
        scale = float(((logits - logits.mean()) * (z - z.mean())).sum() / ((z - z.mean()) ** 2).sum())
        assert scale > 0
        assert torch.allclose(logits - logits.mean(), scale * (z - z.mean()), atol=1e-3)
        spread = float((logits - logits.mean(-1, keepdim=True)).std())
        # fitted on the calibration tokens (LTEConfig defaults: spread 1, centre 3); these are held out
        assert abs(spread - 1.0) < 0.1 and abs(float(logits.mean()) - 3.0) < 0.3
        # CATS keeps |act(z)| > t. Above the activation's negative dip (|act| <= 0.28 for z < 0),
        # that is z > z_t: the router's order. Inputs scaled up so that tiny random models reach
        # such thresholds (the router is affine in x, so the identity above still holds).
        x_big = 15 * x
        z = (F.linear(x_big, src, src_b) if src_b is not None else x_big @ src.T).detach().double()
        logits = layer.router.logits(x_big).detach().double()
        act = activation(z, layer.act)
        t = float(act.abs().flatten().quantile(0.7))
        assert t > 0.3, t
        cats = act.abs() > t
        on_order = z.flatten().argsort(descending=True)[: int(cats.sum())]
        router_order = logits.flatten().argsort(descending=True)[: int(cats.sum())]
        assert set(on_order.tolist()) == set(router_order.tolist())  # same (token, neuron) pairs on top
        assert torch.equal(cats.flatten()[on_order], torch.ones_like(on_order, dtype=torch.bool))


def test_gate_init_needs_single_neuron_experts():
    with pytest.raises(ConfigError, match="expert_size=1"):
        lte.LTEConfig(expert_size=8, router_init="gate")
    with pytest.raises(ValueError, match="calibration"):
        lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=1, router_init="gate"), progress=False)
