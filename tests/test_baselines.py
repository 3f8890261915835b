"""Baselines behind LTE's interface: each reaches its target on calibration data, is measured
by lte.stats / lte.evaluate (neuron and block sparsity, FLOPs with predictors), and leaves
dense mode exact."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

import lte
from lte import baselines as B
from lte.evaluate import gflops_per_token, perplexity
from lte.sparsify import lte_layers

pytestmark = pytest.mark.usefixtures("one_thread")

ES = 16  # tiny models: f = 128 -> 8 experts of 16


def _calib(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (4, 32), generator=g) for _ in range(n)]


def _sparse_model(fam=tiny_llama):
    m = fam()
    lte.sparsify(m, lte.LTEConfig(expert_size=ES), progress=False)
    return m


def _forward(model, batches):
    with torch.no_grad():
        model(torch.cat(batches))
    return lte.stats(model)


def _apply(name: str, model, target: float, calib):
    if name == "teal-ffn":
        return B.apply_teal(model, target, calib)
    if name == "teal-all":
        return B.apply_teal(model, target, calib, attention=True)
    if name == "cats":
        return B.apply_cats(model, target, calib)
    if name.startswith("dejavu"):
        gran = name.split("-")[1]
        return B.apply_dejavu(model, target, B.train_predictors(model, calib, gran, epochs=2), gran)
    if name == "moefication-router":
        B.relufy(model)
        B.regroup(model)
        return B.apply_moefication(model, target, B.train_routers(model, calib, epochs=2))
    if name == "moefication-oracle":
        B.relufy(model)
        return B.apply_moefication(model, target, None)
    if name == "topk":
        return B.apply_noisy_topk(model, target)
    if name == "random":
        return B.apply_random_router(model, target)
    raise AssertionError(name)


NEURON = ("teal-ffn", "teal-all", "cats", "dejavu-neuron")
BLOCK = ("dejavu-block", "moefication-router", "moefication-oracle", "topk", "random")


@pytest.mark.parametrize("name", NEURON + BLOCK)
@pytest.mark.parametrize("target", [0.5, 0.75])
def test_baseline_reaches_target_on_calibration_data(name, target):
    calib = _calib()
    model = _sparse_model()
    _apply(name, model, target, calib)
    assert lte.get_mode(model) == "hard"
    st = _forward(model, calib)
    assert st["ffn_sparsity"] == pytest.approx(target, abs=0.02), st
    for layer_sparsity in st["per_layer"]:
        assert layer_sparsity == pytest.approx(target, abs=0.05)
    r = perplexity(model, torch.cat(calib).reshape(-1), seq_len=32, progress=False)
    assert r["ffn_sparsity"] == pytest.approx(target, abs=0.02)
    # a 32-neuron kernel block is skipped only when all its neurons are (experts here are 16
    # wide; tests/test_block_sparsity.py checks the exact counts)
    assert 0.0 <= r["block_sparsity"] <= r["ffn_sparsity"] + 1e-6
    assert r["gflops_per_token"] < gflops_per_token(model)["gflops_per_token"] or name == "moefication-oracle"


def test_plain_ffn_family_gpt2():
    calib = _calib()
    for apply in (lambda m: B.apply_teal(m, 0.5, calib, attention=True), lambda m: B.apply_cats(m, 0.5, calib),
                  lambda m: B.apply_random_router(m, 0.5)):
        model = _sparse_model(tiny_gpt2)
        apply(model)
        assert _forward(model, calib)["ffn_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_dense_mode_ignores_selectors_and_remove_restores(tokens):
    model = _sparse_model()
    ref = model(tokens).logits
    B.apply_teal(model, 0.5, _calib(), attention=True)
    assert not torch.allclose(model(tokens).logits, ref, atol=1e-4)  # sparse really changes outputs
    lte.set_mode(model, "dense")
    assert torch.allclose(model(tokens).logits, ref, atol=1e-5)
    B.remove(model)
    assert not any(isinstance(m, B.TEALLinear) for m in model.modules())
    assert all(layer.selector is None for layer in lte_layers(model))
    lte.set_mode(model, "hard")  # plain LTE again (its own routers)
    model(tokens)


def test_flops_count_the_method_and_its_predictor():
    calib = _calib()
    model = _sparse_model()
    dense = gflops_per_token(model)
    layers = lte_layers(model)
    d, f, n = layers[0].up.shape[1], layers[0].up.shape[0], len(layers)
    ffn_dense = n * 2 * 3 * d * f / 1e9

    B.apply_cats(model, 0.5, calib)  # gate stays dense: (1 + 2 * 0.5) / 3 of the FFN
    perplexity(model, torch.cat(calib).reshape(-1), seq_len=32, progress=False)
    fl = gflops_per_token(model, lte.stats(model, cumulative=True)["per_layer"])
    assert fl["ffn"] == pytest.approx(ffn_dense * 2 / 3, rel=0.03) and fl["predictor"] == 0.0

    B.remove(model)
    preds = B.train_predictors(model, calib, "neuron", epochs=1)
    B.apply_dejavu(model, 0.75, preds, "neuron")
    perplexity(model, torch.cat(calib).reshape(-1), seq_len=32, progress=False)
    fl = gflops_per_token(model, lte.stats(model, cumulative=True)["per_layer"])
    assert fl["ffn"] == pytest.approx(ffn_dense * 0.25, rel=1e-6)
    assert fl["predictor"] == pytest.approx(sum(p.flops for p in preds) / 1e9)
    assert fl["gflops_per_token"] == pytest.approx(dense["gflops_per_token"] - ffn_dense * 0.75 + fl["predictor"])

    B.remove(model)
    B.apply_teal(model, 0.5, calib, attention=True)  # attention projections at half their inputs
    perplexity(model, torch.cat(calib).reshape(-1), seq_len=32, progress=False)
    fl = gflops_per_token(model, lte.stats(model, cumulative=True)["per_layer"])
    assert fl["attention"] < dense["attention"]


def test_adapt_trains_joint_routers_not_frozen_ones():
    calib = _calib()
    blocks = torch.cat(calib)
    cfg = lte.TrainConfig(lr=1e-3, batch_size=2, seq_len=32, warmup_ratio=0.0)
    model = _sparse_model()
    B.apply_noisy_topk(model, 0.5)
    sel = lte_layers(model)[0].selector
    body = lte_layers(model)[0].up.detach().clone()
    losses = B.adapt(model, cfg, blocks, steps=3, aux_weight=0.01)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert sel.w_gate.abs().sum() > 0  # zero-initialised router learned jointly
    assert not torch.equal(lte_layers(model)[0].up, body)

    model = _sparse_model()
    B.apply_random_router(model, 0.5)
    sel = lte_layers(model)[0].selector
    w = sel.weight.clone()
    teacher = _sparse_model()
    B.adapt(model, cfg, blocks, steps=2, teacher=teacher)
    assert torch.equal(sel.weight, w)  # frozen
    assert _forward(model, calib)["ffn_sparsity"] == pytest.approx(0.5)


def test_relufy_regroup_keep_dense_function(tokens):
    model = _sparse_model()
    B.relufy(model)
    ref = model(tokens).logits
    B.regroup(model, seed=3)
    assert torch.allclose(model(tokens).logits, ref, atol=1e-5)


def test_predictors_beat_random_selection():
    """A trained Deja Vu block predictor keeps more activation mass than a random choice."""
    calib = _calib(n=6)
    model = _sparse_model()
    preds = B.train_predictors(model, calib, "block", epochs=30)
    layer = lte_layers(model)[0]
    x = B.capture_ffn_inputs(model, calib, mode="dense")[0]
    with torch.no_grad():
        mass = B.dejavu.activation_mass(layer, x, "block")
        k = 2
        picked = mass.gather(-1, preds[0](x).topk(k, -1).indices).sum(-1).mean()
        g = torch.Generator().manual_seed(0)
        rand = mass.gather(-1, torch.rand(mass.shape, generator=g).topk(k, -1).indices).sum(-1).mean()
    assert picked > rand


def test_bad_targets_raise():
    model = _sparse_model()
    with pytest.raises(ValueError, match="target sparsity"):
        B.apply_cats(model, 1.0, _calib())
    with pytest.raises(ValueError, match="granularity"):
        B.train_predictors(model, _calib(), "row")


def test_encoder_baselines_on_padded_batches():
    """BERT (GELU FFN, sequence classification): MoEfication, noisy top-k and TEAL reach their
    target over real tokens of padded batches (calibration batches of different widths)."""
    from test_encoders import tiny_bert

    from lte.glue import SequenceClassificationTask, TaskSpec
    g = torch.Generator().manual_seed(0)

    def batch(n: int, width: int) -> dict:
        ids = torch.randint(5, 96, (n, width), generator=g)
        mask = torch.ones(n, width, dtype=torch.long)
        mask[0, width // 2:] = 0  # one padded example per batch
        return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}

    calib = [batch(4, 12), batch(4, 9)]
    task = SequenceClassificationTask(TaskSpec("classification", ("0", "1"), ("accuracy",), "accuracy"))
    for name in ("moefication-router", "topk", "teal-ffn"):
        model = tiny_bert(num_labels=2)
        lte.sparsify(model, lte.LTEConfig(expert_size=ES), progress=False)
        if name == "topk":  # trained jointly on the task's loss
            B.apply_noisy_topk(model, 0.5)
            losses = B.adapt(model, lte.TrainConfig(lr=1e-3, batch_size=4, warmup_ratio=0.0),
                             _Batches(calib), steps=2, aux_weight=0.01, task=task)
            assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
        else:
            _apply(name, model, 0.5, [{k: v for k, v in b.items() if k != "labels"} for b in calib])
        lte.reset_stats(model)
        with torch.no_grad():
            for b in calib:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        assert lte.stats(model, cumulative=True)["ffn_sparsity"] == pytest.approx(0.5, abs=0.05), name


class _Batches:
    """Fixed padded batches as a TaskData (each index picks its batch's rows)."""

    def __init__(self, batches: list[dict]) -> None:
        width = max(b["input_ids"].shape[1] for b in batches)
        pad = torch.nn.functional.pad
        self.rows = {k: torch.cat([pad(b[k], (0, width - b[k].shape[1])) if b[k].dim() == 2 else b[k]
                                   for b in batches]) for k in batches[0]}

    def __len__(self) -> int:
        return len(self.rows["labels"])

    def batch(self, idx: torch.Tensor) -> dict:
        return {k: v[idx] for k, v in self.rows.items()}
