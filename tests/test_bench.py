"""Generation benchmark plumbing and the compile-friendly kernel operator."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

import lte
from lte.bench import dense_copy
from lte.sparsify import lte_layers


def test_dense_copy_matches_dense_mode(family, tokens):
    model = lte.sparsify(FAMILIES[family](), lte.LTEConfig(expert_size=16), progress=False)
    with torch.no_grad():
        ref = model(tokens).logits
    dense = dense_copy(model)
    assert not any(True for _ in (m for m in dense.modules() if m.__class__.__name__ == "LTEFFN"))
    with torch.no_grad():
        assert torch.allclose(dense(tokens).logits, ref, atol=1e-5)


def test_sparse_ffn_operator_matches_reference_and_compiles():
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16, router_bias_init=0.0,
                                                             router_init_std=3.0), progress=False)
    lte.set_mode(model, "hard")
    layer = lte_layers(model)[0]
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        eager = layer(x)
        assert torch.allclose(eager, layer.reference_hard(x), atol=1e-5)
        for center in (None, torch.randn(layer.n_experts)):  # linear and folded routers
            fake = torch.library.opcheck(torch.ops.lte.sparse_ffn.default, (
                x[0], layer.up, layer.down, layer.router.weight, layer.router.bias, center, layer.gate, None, None,
                None, 16, "silu", 0.0, "auto"))
            assert all(v == "SUCCESS" for v in fake.values()), fake


@pytest.mark.slow
def test_bench_generation_rows(smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lte.bench import bench_generation
    cfg = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = lte.sparsify(LlamaForCausalLM(cfg).eval(), lte.LTEConfig(expert_size=16, router_bias_init=0.0),
                         progress=False)
    rows = bench_generation(model, smol_tokenizer, prompt_len=8, new_tokens=4, repeats=1, setups=("eager", "static"),
                            progress=False)
    assert [r["setup"] for r in rows] == ["eager", "static"]
    for r in rows:
        assert r["dense_tok_s"] > 0 and r["lte_tok_s"] > 0 and 0 <= r["sparsity"] <= 1
        assert r["speedup"] == pytest.approx(r["lte_tok_s"] / r["dense_tok_s"])


def test_bench_warmup_matches_timed_shapes_and_stats_off(monkeypatch):
    """Static setups warm up at the timed length (a new static-cache size recompiles), timed runs
    keep the selection bookkeeping off, and rows report the separate eager pass's sparsity."""
    import lte.bench as bench
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    calls = []

    # seconds per run: dense is faster with a static cache, LTE faster than dense in both setups
    secs = {(False, None): 0.8, (True, None): 0.5, (False, "static"): 0.4, (True, "static"): 0.25}

    def fake_time(m, enc, kw):
        calls.append((m is model, kw["max_new_tokens"], kw.get("cache_implementation"),
                      model.lte_state.track_stats))
        return secs[(m is model, kw.get("cache_implementation"))]

    monkeypatch.setattr(bench, "time_generate", fake_time)
    monkeypatch.setattr(bench, "measured_sparsity", lambda *a: 0.4375)
    for k in ("LTE_TRITON_VARIANT", "LTE_DISABLE_NATIVE", "LTE_DISABLE_NATIVE_OP"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LTE_TRITON_CONFIG", '{"block_f": 8}')
    rows = bench.bench_generation(model, None, prompt_len=4, new_tokens=32, repeats=2,
                                  setups=("eager", "static"), progress=False, vocab_size=100)
    assert [r["sparsity"] for r in rows] == [0.4375, 0.4375]
    assert all(r["kernel_env"] == {"LTE_TRITON_CONFIG": '{"block_f": 8}'} for r in rows)  # recorded as run
    eager = [c for c in calls if c[2] is None]
    static = [c for c in calls if c[2] == "static"]
    assert [c[1] for c in eager] == [16] * 4 + [32] * 4  # short warm-up, then 2 repeats x 2 models
    assert [c[1] for c in static] == [32] * 8
    assert not any(c[3] for c in calls) and model.lte_state.track_stats
    # every setup warms up first; then each repeat times every setup, dense then LTE
    timed = [(c[0], c[2]) for c in calls[8:]]
    assert timed == [(False, None), (True, None), (False, "static"), (True, "static")] * 2
    assert [r["speedup"] for r in rows] == pytest.approx([0.8 / 0.5, 0.4 / 0.25])
    assert {r["fastest_dense_setup"] for r in rows} == {"static"}
    assert [r["speedup_vs_fastest_dense"] for r in rows] == pytest.approx([0.4 / 0.5, 0.4 / 0.25])
    with pytest.raises(ValueError, match="distinct"):
        bench.bench_generation(model, None, prompt_len=4, new_tokens=32, setups=("static", "static"),
                               progress=False, vocab_size=100)


def test_e2e_gpu_script_runs_on_cpu(tmp_path, monkeypatch):
    """benchmarks/e2e_gpu.py end to end on its tiny shape: one row per target and setup, the
    sparsity measured once per target and near it (the router biases are calibrated to it)."""
    import importlib.util
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "e2e_gpu.py"
    spec = importlib.util.spec_from_file_location("e2e_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "e2e.json"
    monkeypatch.setattr("sys.argv", ["e2e_gpu.py", "--shape", "tiny", "--device", "cpu", "--dtype", "float32",
                                     "--setups", "eager,static", "--new-tokens", "8", "--prompt-len", "8",
                                     "--repeats", "1", "--sparsities", "0.5", "--out", str(out)])
    mod.main()
    rows = json.loads(out.read_text())
    assert [(r["target_sparsity"], r["setup"]) for r in rows] == [(0.5, "eager"), (0.5, "static")]
    assert rows[0]["sparsity"] == rows[1]["sparsity"] and abs(rows[0]["sparsity"] - 0.5) < 0.25


def test_bench_loop_setup_times_both_models_with_lte_decode(monkeypatch):
    """``static+loop`` times dense and LTE through lte.decode's greedy loop (not ``generate``),
    with the selection bookkeeping off, and reports a row like the other setups."""
    import lte.bench as bench
    import lte.decode as decode
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # plumbing only; test_decode compiles
    monkeypatch.setattr(bench, "time_generate", lambda *a: pytest.fail("static+loop must not call generate"))
    monkeypatch.setattr(bench, "measured_sparsity", lambda *a: 0.5)
    seen = []
    real = decode.GreedyDecoder.generate

    def spy(self, ids, n, on_prefill=None):
        seen.append((self.model, n, self.mode, getattr(getattr(self.model, "lte_state", None), "track_stats", None)))
        return real(self, ids, n, on_prefill=on_prefill)

    monkeypatch.setattr(decode.GreedyDecoder, "generate", spy)
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    rows = bench.bench_generation(model, None, prompt_len=5, new_tokens=6, repeats=2, setups=("static+loop",),
                                  progress=False, vocab_size=96)
    assert [r["setup"] for r in rows] == ["static+loop"] and rows[0]["dense_tok_s"] > 0 and rows[0]["lte_tok_s"] > 0
    assert len(seen) == 8 and {s[1] for s in seen} == {6} and {s[2] for s in seen} == {"default"}
    r = rows[0]  # the 5 steps after the prefill, timed apart from it
    assert r["dense_decode_tok_s"] > 0 and r["lte_decode_tok_s"] > 0
    assert r["decode_speedup"] == pytest.approx(r["lte_decode_tok_s"] / r["dense_decode_tok_s"])
    assert sum(s[0] is model for s in seen) == 4 and not any(s[3] for s in seen if s[0] is model)


def test_profile_decode_cpu_script_runs(tmp_path, monkeypatch):
    """benchmarks/profile_decode_cpu.py on a tiny saved LTE model: per-model top operators, the LTE
    model's sparse FFN among them, written as JSON."""
    import importlib.util
    import json
    import sys
    from pathlib import Path
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    lte.save(model, tmp_path / "m")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_decode_cpu.py"
    spec = importlib.util.spec_from_file_location("profile_decode_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # plumbing only; test_decode compiles
    out = tmp_path / "p.json"
    monkeypatch.setattr(sys, "argv", ["x", str(tmp_path / "m"), "--prompt-len", "4", "--tokens", "5",
                                      "--dtype", "float32", "--top", "40", "--out", str(out)])
    mod.main()
    rows = json.loads(out.read_text())
    assert rows["dense"]["top"] and rows["lte"]["tok_s_unprofiled"] > 0
    assert any(r["op"] == "lte::sparse_ffn" for r in rows["lte"]["top"])
    assert not any(r["op"] == "lte::sparse_ffn" for r in rows["dense"]["top"])
