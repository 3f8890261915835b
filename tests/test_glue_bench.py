"""benchmarks/glue_minilm.py end to end on a tiny random BERT and a synthetic GLUE folder:
record schema, equal budgets, resume without recomputation, merge and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "glue_minilm.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    spec = importlib.util.spec_from_file_location("glue_minilm_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_glue_bench_runs_resumes_merges_and_reports(tmp_path, tiny_bert_dir, synthetic_glue, capsys):
    mod = _script()
    out = tmp_path / "res.json"
    args = ["--model", str(tiny_bert_dir), "--data", str(synthetic_glue), "--tasks", "rte", "--seeds", "0",
            "--sparsities", "0.5", "--dense-epochs", "1", "--stage1-epochs", "1", "--stage2-epochs", "1",
            "--batch-size", "8", "--eval-batch-size", "6", "--seq-len", "16", "--predictor-epochs", "2",
            "--device", "cpu", "--out", str(out), "--work-dir", str(tmp_path / "work"), "--plot",
            str(tmp_path / "p.png")]
    rows = mod.main(args)
    assert sorted(r["method"] for r in rows) == ["dense", "dense-same-budget", "lte", "moefication"]
    keys = {"task", "method", "target_sparsity", "ffn_sparsity", "union_sparsity", "metric", "score", "metrics",
            "gflops_per_token", "train_examples", "epochs", "seed", "seconds", "device", "date", "command"}
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert keys <= set(r) and r["task"] == "glue:rte" and r["train_examples"] == 24
        assert 0.0 <= r["score"] <= 100.0 and r["metrics"]["accuracy"] == r["score"]
    assert by["dense"]["epochs"] == pytest.approx(1.0) and by["dense"]["ffn_sparsity"] == 0.0
    # every method after the shared dense start trains on the same number of examples
    assert {by[m]["examples_seen"] for m in ("dense-same-budget", "lte", "moefication")} == {(3 + 6) * 8}
    assert by["moefication"]["ffn_sparsity"] == pytest.approx(0.5)  # 2 of 4 experts
    assert 0.0 <= by["moefication"]["union_sparsity"] <= 0.5
    assert by["moefication"]["gflops_per_token"] < by["dense"]["gflops_per_token"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "work" / "glue_rte_seed0").exists()  # scratch removed once the seed is done

    before = out.read_text()
    assert len(mod.main(args)) == 4 and out.read_text() == before  # resume: nothing recomputed or rewritten
    assert "all points done" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="other settings"):  # a resume must not mix budgets
        mod.main([*args, "--lr", "3e-4"])

    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**by["dense"], "seed": 1, "score": by["dense"]["score"] + 2.0}]))
    merged = mod.main(["--merge", f"{out},{other}", "--out", str(tmp_path / "all.json")])
    assert len(merged) == 5
    text = capsys.readouterr().out
    assert "| rte | accuracy | dense | 0 |" in text and "(2)" in text  # mean ± std over 2 seeds
    rows2 = mod.main(["--report-only", "--out", str(tmp_path / "all.json")])
    assert len(rows2) == 5


def test_glue_bench_refuses_unequal_budget(tmp_path):
    mod = _script()
    with pytest.raises(SystemExit, match="equal budget"):
        mod.main(["--moefication-epochs", "5", "--out", str(tmp_path / "x.json")])
