"""Trainer throughput accounting: real (non-padding) tokens per step, logged intervals, the
summary's train_tokens across a resume, and evaluation over a number of batches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

import lte
from lte.data import batch_indices
from lte.train import Trainer, real_tokens, train


class PaddedRows:
    """Rows of 24 tokens whose tail is padding (attention_mask 0) of a row-dependent length."""

    def __init__(self, n: int = 32, length: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, 96, (n, length), generator=g)
        self.lengths = torch.tensor([4 + (i * 5) % (length - 3) for i in range(n)])
        self.mask = (torch.arange(length).unsqueeze(0) < self.lengths.unsqueeze(1)).long()
        self.ids[self.mask == 0] = 0

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[idx], "attention_mask": self.mask[idx]}


def _model():
    return lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)


def _cfg(**kw):
    base = dict(stage1_steps=3, stage2_steps=2, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
                log_every=2, eval_every=1000, save_every=1000)
    return lte.TrainConfig(**{**base, **kw})


def _train_records(out):
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "train"]


def test_real_tokens_counts_the_attention_mask():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert real_tokens({"input_ids": ids}) == 10
    assert real_tokens({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])}) == 4


def test_padded_batches_count_only_real_tokens(tmp_path):
    data = PaddedRows()
    cfg = _cfg()
    summary = train(_model(), cfg, data, None, tmp_path / "run", progress=False)
    expected = [int(data.mask[batch_indices(len(data), 4, s, cfg.seed)].sum()) for s in range(5)]
    assert sum(expected) < 5 * 4 * 24  # the data really is padded
    recs = _train_records(tmp_path / "run")
    # logged every 2 steps, at the end of stage 1 (step 3) and at the end (step 5)
    assert [r["step"] for r in recs] == [2, 3, 4, 5]
    assert [r["interval_steps"] for r in recs] == [2, 1, 1, 1]
    for r in recs:
        assert r["tokens"] == expected[r["step"] - 1]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
    assert [r["interval_tokens"] for r in recs] == [expected[0] + expected[1], expected[2], expected[3], expected[4]]
    assert sum(r["interval_s"] for r in recs) >= sum(r["step_s"] for r in recs) > 0
    assert summary["train_tokens"] == sum(expected)


def test_packed_blocks_count_every_token(tmp_path):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 96, (16, 24), generator=g)
    summary = train(_model(), _cfg(grad_accum=2), blocks, None, tmp_path / "run", progress=False)
    assert all(r["tokens"] == 2 * 4 * 24 for r in _train_records(tmp_path / "run"))
    assert summary["train_tokens"] == 5 * 2 * 4 * 24


def test_train_tokens_survive_a_resume(tmp_path):
    data = PaddedRows()
    full = train(_model(), _cfg(), data, None, tmp_path / "full", progress=False)
    train(_model(), _cfg(stage2_steps=0), data, None, tmp_path / "cut", progress=False)
    resumed = train(_model(), _cfg(), data, None, tmp_path / "cut", resume=True, progress=False)
    assert resumed["train_tokens"] == full["train_tokens"]


def test_evaluate_takes_a_number_of_batches(tmp_path):
    g = torch.Generator().manual_seed(0)
    val = torch.randint(0, 96, (10, 24), generator=g)
    t = Trainer(_model(), _cfg(batch_size=3), val, val, tmp_path / "run", progress=False)
    assert t.evaluate(max_batches=2)["tokens"] == 2 * 3 * 23
    assert t.evaluate()["tokens"] == 10 * 23
