"""Per-layer sparsity targets (``TrainConfig.layer_target_offsets``): parsing, the per-layer
bias loop, and that training reaches different sparsities per layer around the same mean."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

import lte
from lte.config import ConfigError, layer_offsets
from lte.controller import SparsityController
from lte.sparsify import lte_layers
from lte.train import train


def test_linear_offsets_rise_evenly_and_lists_are_centred():
    assert layer_offsets("linear:0.1", 5) == pytest.approx([-0.1, -0.05, 0.0, 0.05, 0.1])
    assert layer_offsets([0.3, 0.1, 0.2], 3) == pytest.approx([0.1, -0.1, 0.0])  # mean removed
    assert layer_offsets("linear:0.2", 1) == [0.0]


@pytest.mark.parametrize("spec, n, target, match", [
    ([0.1, -0.1], 3, None, "2 values for 3 LTE layers"),
    ("linear:x", 4, None, "linear:A"),
    ("cubic:0.1", 4, None, "linear:A"),
    ("linear:0.3", 4, 0.8, r"leave \(0, 1\) at layer\(s\) \[3\]"),
])
def test_bad_offsets_are_rejected_with_the_reason(spec, n, target, match):
    with pytest.raises(ConfigError, match=match):
        layer_offsets(spec, n, target)


def test_offsets_need_a_target():
    with pytest.raises(ConfigError, match="needs target_sparsity"):
        lte.TrainConfig(layer_target_offsets="linear:0.1")
    with pytest.raises(ConfigError, match="linear:A"):
        lte.TrainConfig(target_sparsity=0.5, layer_target_offsets="linear")


def test_per_layer_bias_loop_answers_each_layer_error():
    c = SparsityController(0.5, total_steps=10, ramp_fraction=0.0, layer_offsets=[-0.1, 0.1])
    # layer 0 (target 0.4) is too sparse, layer 1 (target 0.6) not sparse enough
    shifts = c.bias_shift(5, measured=0.5, per_layer=[0.5, 0.5])
    assert shifts[0] == pytest.approx(0.1) and shifts[1] == pytest.approx(-0.1)
    assert c.bias_total == pytest.approx([0.1, -0.1])
    with pytest.raises(ValueError, match="2 measured layer sparsities"):
        c.bias_shift(5, measured=0.5)
    assert SparsityController(0.5, 10).bias_shift(5, 0.6) == pytest.approx(0.1)  # the global loop is unchanged


def _ffn_bound_model():
    """A tiny model whose FFN matters (scaled FFN outputs and LM head, as in the controller test of
    test_train.py), so routers have something to learn and targets can be held."""
    base = tiny_llama()
    for layer in base.model.layers:
        layer.mlp.down_proj.weight.data *= 4
    base.lm_head.weight.data *= 50
    return lte.sparsify(base, lte.LTEConfig(expert_size=16), progress=False)


def test_training_reaches_layer_targets_around_the_mean(tmp_path):
    g = torch.Generator().manual_seed(0)
    blocks = (torch.arange(24).unsqueeze(0) % 12 * 7 + torch.randint(0, 3, (48, 24), generator=g)) % 96
    per_layer = {}
    for offsets in (None, "linear:0.25"):
        m = _ffn_bound_model()
        cfg = lte.TrainConfig(stage1_steps=60, stage2_steps=5, batch_size=4, seq_len=24, lr=1e-5, target_sparsity=0.5,
                              distill_weight=1.0, layer_target_offsets=offsets, ramp_fraction=0.3, log_every=1,
                              eval_every=1000, save_every=1000)
        train(m, cfg, blocks[:40], blocks[40:], tmp_path / str(offsets), progress=False)
        lte.set_mode(m, "hard")
        with torch.no_grad():
            m(blocks[40:])
        per_layer[offsets] = lte.stats(m)["per_layer"]
    n = len(lte_layers(m))
    log = [json.loads(x) for x in (tmp_path / "linear:0.25" / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert len(log[-1]["bias_shift"]) == n and len(log[-1]["layer_sparsity"]) == n  # one loop per layer, logged
    got, targets = per_layer["linear:0.25"], layer_offsets("linear:0.25", n, 0.5)
    for s, off in zip(got, targets):
        assert abs(s - (0.5 + off)) < 0.08, (got, targets)
    assert abs(sum(got) / n - 0.5) < 0.05, got
    assert got[0] < per_layer[None][0] - 0.03 and got[-1] > per_layer[None][-1] + 0.01, per_layer  # the offsets did it


def test_cli_rejects_bad_offsets_before_any_work(capsys, tmp_path):
    from lte.cli import main

    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    with pytest.raises(SystemExit):  # argparse: the flag's own syntax
        main(["train", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"), "--target-sparsity", "0.5",
              "--layer-target-offsets", "steep:1"])
    assert "linear:A" in capsys.readouterr().err
    # a target whose layers would leave (0, 1): one line, before the model is loaded
    code = main(["sweep", "--model", "no-such-model", "--data", str(tmp_path / "t.txt"), "--methods", "lte",
                 "--sparsities", "0.9", "--layer-target-offsets", "linear:0.2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "leave (0, 1)" in err and len(err.strip().splitlines()) == 1
