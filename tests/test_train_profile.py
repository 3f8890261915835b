"""LTE_PROFILE: a profiled window of steps writes per-rank reports and leaves the losses as they are."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from conftest import tiny_llama

import lte
import lte.profiling
from lte.profiling import PROFILE_PHASES, profile_window
from lte.train import train


def _run(out, monkeypatch, profile: str | None) -> list[float]:
    if profile is None:
        monkeypatch.delenv("LTE_PROFILE", raising=False)
    else:
        monkeypatch.setenv("LTE_PROFILE", profile)
    g = torch.Generator().manual_seed(0)
    blocks = (torch.arange(24).repeat(16, 1) * 5 + torch.randint(0, 4, (16, 24), generator=g)) % 96
    model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
    cfg = lte.TrainConfig(stage1_steps=3, stage2_steps=1, batch_size=4, seq_len=24, lr=1e-3, target_sparsity=0.4,
                          distill_weight=0.5, log_every=1, eval_every=1000, save_every=1000)
    train(model, cfg, blocks, None, out, progress=False)
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r.get("kind") == "train"]


def test_profile_window_writes_reports_and_keeps_losses(tmp_path, monkeypatch):
    plain = _run(tmp_path / "plain", monkeypatch, None)
    assert not list((tmp_path / "plain").glob("profile_*"))
    profiled = _run(tmp_path / "prof", monkeypatch, "1:2")
    assert profiled == plain
    txt = (tmp_path / "prof" / "profile_rank0.txt").read_text()
    assert "LTE_PROFILE=1:2 rank 0: 2 steps profiled" in txt
    for phase in PROFILE_PHASES:
        assert phase in txt, phase
    assert "top 40 by self CPU time" in txt and "top 40 by self device time" in txt
    trace = tmp_path / "prof" / "profile_rank0.json"
    assert json.loads(trace.read_text())["traceEvents"] and "chrome trace: profile_rank0.json" in txt
    # a trace over the size limit is kept gzipped if that fits, else skipped; the txt says which
    monkeypatch.setattr(lte.profiling, "PROFILE_TRACE_MAX_BYTES", trace.stat().st_size // 2)
    assert _run(tmp_path / "gz", monkeypatch, "1:2") == plain
    assert json.loads(gzip.decompress((tmp_path / "gz" / "profile_rank0.json.gz").read_bytes()))["traceEvents"]
    assert not (tmp_path / "gz" / "profile_rank0.json").exists()
    assert "gzipped" in (tmp_path / "gz" / "profile_rank0.txt").read_text()
    monkeypatch.setattr(lte.profiling, "PROFILE_TRACE_MAX_BYTES", 10)
    _run(tmp_path / "big", monkeypatch, "1:2")
    assert not list((tmp_path / "big").glob("profile_rank0.json*"))
    assert "chrome trace skipped" in (tmp_path / "big" / "profile_rank0.txt").read_text()


def test_profile_window_cut_short_by_the_run_end(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, "3:10")  # steps 3..12 of a 4-step run: only the last is profiled
    assert "1 steps profiled" in (tmp_path / "profile_rank0.txt").read_text()


@pytest.mark.parametrize("bad", ["5", "a:2", "3:0", "-1:2", "1:2:3"])
def test_profile_window_rejects_bad_values(bad):
    assert profile_window("") is None and profile_window("20:5") == (20, 5)
    with pytest.raises(ValueError, match="LTE_PROFILE"):
        profile_window(bad)
