"""Save/load round trip and checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES

import lte
from lte.io import CheckpointError


@pytest.mark.parametrize("mode", ["dense", "soft", "hard"])
def test_save_load_bit_exact(family, tokens, tmp_path, mode):
    model = FAMILIES[family]()
    lte.sparsify(model, lte.LTEConfig(expert_size=16, router_bias_init=0.0, router_init_std=3.0), progress=False)
    lte.set_mode(model, mode)
    with torch.no_grad():
        ref = model(tokens).logits
    lte.save(model, tmp_path / "m")
    loaded = lte.load(tmp_path / "m")
    assert lte.get_mode(loaded) == mode
    with torch.no_grad():
        out = loaded(tokens).logits
    assert torch.equal(out, ref)
    assert loaded.lte_config == model.lte_config


def test_save_is_atomic_and_overwrites(tmp_path, tokens):
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    lte.save(model, tmp_path / "m")
    lte.save(model, tmp_path / "m")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left behind


def test_missing_and_corrupt_files(tmp_path):
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    path = lte.save(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="no such directory"):
        lte.load(tmp_path / "nope")
    w = path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        lte.load(path)
    w.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        lte.load(path)
    lte.save(model, path)
    (path / "lte_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="lte_config.json is corrupt"):
        lte.load(path)
    meta = {"format_version": 1, "lte_config": {"expert_size": -3}}
    (path / "lte_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expert_size"):
        lte.load(path)


def test_save_requires_lte_model(tmp_path):
    with pytest.raises(ValueError, match="sparsify"):
        lte.save(FAMILIES["llama"](), tmp_path / "x")
