"""Text sources, held-out splits, packing, deterministic batches, evaluation numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_llama

import lte
from lte.data import DataError, batch_indices, load_texts, pack, split_tail, tokenize
from lte.evaluate import gflops_per_token, perplexity


class CharTokenizer:
    """A minimal offline tokenizer: one id per character."""

    name_or_path = "char"
    eos_token_id = 0

    def __len__(self):
        return 96

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 95) for c in text]}


def test_load_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n\n" + json.dumps({"text": "y"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps(["p", {"text": "q"}]))
    assert load_texts(tmp_path / "a.txt") == ["line one\nline two\n"]
    assert load_texts(tmp_path / "b.jsonl") == ["x", "y"]
    assert load_texts(tmp_path / "c.json") == ["p", "q"]
    assert load_texts(tmp_path) == ["line one\nline two\n", "x", "y", "p", "q"]


def test_load_texts_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        load_texts(tmp_path / "bad.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no 'text' field"):
        load_texts(tmp_path / "nofield.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt"):
        load_texts(tmp_path / "empty")


def test_split_tail_takes_last_lines():
    head, tail = split_tail(["".join(f"l{i}\n" for i in range(10))], 0.1)
    assert tail == ["l9\n"] and head[0].endswith("l8\n")


def test_tokenize_cache_and_pack(tmp_path, monkeypatch):
    monkeypatch.setattr("lte.data.CACHE_DIR", tmp_path)
    tok = CharTokenizer()
    ids = tokenize(["ab", "c"], tok)
    assert ids.tolist() == [1 + ord("a") % 95, 1 + ord("b") % 95, 0, 1 + ord("c") % 95, 0]
    assert torch.equal(tokenize(["ab", "c"], tok), ids)  # from cache
    assert pack(ids, 2).shape == (2, 2)
    with pytest.raises(DataError, match="fewer than one block"):
        pack(ids, 10)


def test_batch_indices_deterministic_and_cover_epoch():
    a = [batch_indices(10, 5, s, seed=3).tolist() for s in range(2)]
    assert sorted(a[0] + a[1]) == list(range(10))
    assert batch_indices(10, 5, 1, seed=3).tolist() == a[1]
    assert batch_indices(10, 5, 2, seed=3).tolist() != a[0] or True  # new epoch, new shuffle (may coincide)
    assert len(batch_indices(3, 8, 0, seed=0)) == 8  # fewer blocks than a batch wraps


def test_perplexity_matches_manual_cross_entropy():
    model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
    ids = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, ids, seq_len=16, batch_size=2, progress=False)
    assert res["tokens"] == 2 * 15
    with torch.no_grad():
        logits = model(ids[:32].view(2, 16)).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 96), ids[:32].view(2, 16)[:, 1:].reshape(-1))
    assert res["perplexity"] == pytest.approx(math.exp(ce.item()), rel=1e-5)


def test_gflops_fall_with_sparsity():
    model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
    dense = gflops_per_token(model, None, context=8)
    half = gflops_per_token(model, [0.5, 0.5], context=8)
    assert half["ffn"] == pytest.approx(dense["ffn"] / 2)
    assert half["router"] == pytest.approx(2 * 2 * 64 * 8 / 1e9)
    assert dense["router"] == 0.0
    d, f, v = 64, 128, 96
    attn = 2 * (2 * d * (64 + 2 * 32) + 2 * 64 * d + 2 * 2 * 4 * 16 * 8)
    assert dense["gflops_per_token"] == pytest.approx((attn + 2 * 2 * 3 * d * f + 2 * d * v) / 1e9)
