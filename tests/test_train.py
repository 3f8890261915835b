"""Two-stage training behaviour on a tiny model: eta raises sparsity, the target controller
converges, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

import lte
from lte.controller import SparsityController
from lte.sparsify import lte_layers
from lte.train import train


def _blocks(seed=0, n=48, length=24):
    g = torch.Generator().manual_seed(seed)
    # learnable structure: a repeating pattern with noise, so the task loss means something
    base = torch.arange(length) % 12
    out = (base.unsqueeze(0) * 7 + torch.randint(0, 3, (n, length), generator=g)) % 96
    return out


def _model(**kw):
    m = tiny_llama()
    return lte.sparsify(m, lte.LTEConfig(expert_size=16, **kw), progress=False)


def test_sparsity_rises_with_efficiency_weight(tmp_path):
    blocks = _blocks()
    result = {}
    for eta in (0.0, 20.0):
        m = _model(efficiency_weight=eta, router_bias_init=1.0, separability_weight=0.0)
        cfg = lte.TrainConfig(stage1_steps=25, stage2_steps=0, batch_size=4, seq_len=24, lr=1e-3,
                              separability_ramp=False, log_every=1, eval_every=1000, save_every=1000)
        train(m, cfg, blocks, None, tmp_path / str(eta), progress=False)
        lte.set_mode(m, "hard")
        with torch.no_grad():
            m(blocks[:8])
        result[eta] = lte.stats(m)["ffn_sparsity"]
    assert result[20.0] > result[0.0] + 0.3, result


def test_target_sparsity_controller_converges(tmp_path):
    blocks = _blocks()
    # A random tiny model barely uses its FFN (logits near uniform), so routers would have
    # nothing to learn; scale the FFN outputs and the LM head so that the FFN matters, as
    # in a trained LM, and distil from the dense model.
    base = tiny_llama()
    for layer in base.model.layers:
        layer.mlp.down_proj.weight.data *= 4
    base.lm_head.weight.data *= 50
    m = lte.sparsify(base, lte.LTEConfig(expert_size=16), progress=False)
    cfg = lte.TrainConfig(stage1_steps=60, stage2_steps=5, batch_size=4, seq_len=24, lr=1e-5, target_sparsity=0.5,
                          distill_weight=1.0, ramp_fraction=0.3, log_every=1, eval_every=1000, save_every=1000)
    summary = train(m, cfg, blocks[:40], blocks[40:], tmp_path, progress=False)
    assert abs(summary["val_ffn_sparsity"] - 0.5) < 0.1, summary
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    etas = [r["eta"] for r in log if r.get("kind") == "train" and "eta" in r]
    assert max(etas) > etas[0]  # the controller had to raise eta to get there
    shifts = [r["bias_shift"] for r in log if r.get("kind") == "train"]
    assert len(shifts) == 65 and all(abs(x) <= 3.0 for x in shifts)  # every step logs the clamped bias shift
    assert any(x != 0.0 for x in shifts)  # and the fast loop acted


def test_controller_ramp_and_separability_schedule():
    c = SparsityController(0.6, total_steps=100, ramp_fraction=0.5, separability=0.5)
    assert c.target_at(0) == pytest.approx(0.012)
    assert c.target_at(49) == pytest.approx(0.6)
    assert c.separability_at(10) == 0.0
    eta0 = c.eta
    c.update(0, 0.0)
    assert c.eta > eta0  # below target: eta goes up
    assert c.bias_shift(49, 0.7) == pytest.approx(0.1)  # too sparse: biases go up
    for s in range(50, 70):
        c.update(s, 0.6)
    assert c.sep_start is not None
    assert c.separability_at(c.sep_start + c.rise) == pytest.approx(0.5)


def test_resume_equals_uninterrupted(tmp_path):
    blocks = _blocks()
    kw = dict(stage1_steps=6, stage2_steps=4, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
              log_every=1, eval_every=1000, save_every=3, distill_weight=0.5)
    full = _model()
    train(full, lte.TrainConfig(**kw), blocks, None, tmp_path / "full", progress=False)
    # interrupted after step 6 (a checkpoint at 6, the stage boundary), then resumed
    part = _model()
    train(part, lte.TrainConfig(**{**kw, "stage2_steps": 0}), blocks, None, tmp_path / "part", progress=False)
    resumed = _model()
    train(resumed, lte.TrainConfig(**kw), blocks, None, tmp_path / "part", resume=True, progress=False)

    def losses(d):
        recs = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if r.get("kind") == "train"}
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert a[10] == pytest.approx(b[10], rel=1e-6, abs=1e-7)
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_resume_mid_stage(tmp_path):
    blocks = _blocks()
    kw = dict(stage1_steps=8, stage2_steps=0, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
              log_every=1, eval_every=1000, save_every=4)
    full = _model()
    train(full, lte.TrainConfig(**kw), blocks, None, tmp_path / "full", progress=False)
    first = _model()
    train(first, lte.TrainConfig(**{**kw, "stage1_steps": 8}), blocks, None, tmp_path / "cut", progress=False)
    # rewind the checkpoint to step 4 by re-running only 4 steps into a fresh directory
    half = _model()
    t = lte.train.Trainer(half, lte.TrainConfig(**kw), blocks, None, tmp_path / "half", progress=False)
    for _ in range(4):
        t.train_step()
    t.save_checkpoint()
    resumed = _model()
    train(resumed, lte.TrainConfig(**kw), blocks, None, tmp_path / "half", resume=True, progress=False)
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_compiled_blocks_train_like_eager(tmp_path):
    """TrainConfig(compile=True): the same losses through both stages (with distillation and a
    hard-mode evaluation inside the run), and the trained model leaves uncompiled."""
    blocks = _blocks()
    kw = dict(stage1_steps=3, stage2_steps=2, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
              log_every=1, eval_every=1000, save_every=1000, distill_weight=0.5)
    from torch._dynamo.utils import counters
    counters.clear()
    runs = {}
    for compiled in (False, True):
        m = _model()
        train(m, lte.TrainConfig(**kw, compile=compiled), blocks, blocks[:8], tmp_path / str(compiled),
              progress=False)
        recs = [json.loads(x) for x in (tmp_path / str(compiled) / "log.jsonl").read_text().splitlines()]
        runs[compiled] = [r["loss"] for r in recs if r.get("kind") == "train"]
        assert not getattr(m, "_lte_compiled", False)
        assert all("forward" not in blk.__dict__ for blk in m.model.layers)
    assert len(runs[True]) == 5
    assert counters["stats"]["unique_graphs"] >= 1  # the blocks really ran compiled
    assert runs[True] == pytest.approx(runs[False], rel=2e-3, abs=1e-4)


def test_compiled_training_compiles_once_per_mode_not_per_layer(tmp_path):
    """The compiled blocks of a deeper model reuse the same graphs: no KV cache is built during
    training (its per-layer guards once recompiled every block until Dynamo's limit sent the
    rest of the run back to eager), and the model's ``use_cache`` is restored afterwards."""
    from torch._dynamo.utils import counters
    blocks = _blocks()
    kw = dict(stage1_steps=2, stage2_steps=2, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
              log_every=1, eval_every=1000, save_every=1000, distill_weight=0.5, compile=True)
    graphs = {}
    for depth in (2, 6):
        torch._dynamo.reset()
        counters.clear()
        m = lte.sparsify(tiny_llama(num_hidden_layers=depth), lte.LTEConfig(expert_size=16), progress=False)
        assert m.config.use_cache
        train(m, lte.TrainConfig(**kw), blocks, blocks[:8], tmp_path / str(depth), progress=False)
        graphs[depth] = counters["stats"]["unique_graphs"]
        assert m.config.use_cache
    assert graphs[6] == graphs[2]


@pytest.mark.parametrize("gain", [0.0, 1.0])
def test_stage2_bias_loop_moves_only_router_biases_by_the_logged_shift(tmp_path, gain):
    m = _model()
    before = [(layer.router.weight.detach().clone(), layer.router.bias.detach().clone()) for layer in lte_layers(m)]
    # stage 2 only, at a target far from where the untrained routers are: the loop must act
    cfg = lte.TrainConfig(stage1_steps=0, stage2_steps=3, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.9,
                          stage2_bias_gain=gain, log_every=1, eval_every=1000, save_every=1000)
    train(m, cfg, _blocks()[:40], _blocks()[40:], tmp_path, progress=False)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    shift = [r["bias_shift"] for r in log if r.get("kind") == "train"][-1]
    assert (shift == 0.0) == (gain == 0.0)
    for (w0, b0), layer in zip(before, lte_layers(m)):
        assert torch.equal(layer.router.weight, w0)  # frozen in stage 2
        torch.testing.assert_close(layer.router.bias - b0, torch.full_like(b0, shift), atol=1e-6, rtol=0)
