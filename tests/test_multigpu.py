"""benchmarks/multigpu.py end to end on CPU (gloo): the real ``lte train`` launched as 1 process
and as 2 processes under accelerate (FSDP and DDP), on a tiny random Llama saved to disk."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("multigpu_bench", ROOT / "benchmarks" / "multigpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_model_dir(path: Path) -> Path:
    """A tiny random Llama with a word-level tokenizer over 60 words, saved as an HF directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_llama

    words = [f"w{i}" for i in range(60)]
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>", pad_token="</s>")
    model = tiny_llama(eos_token_id=1, pad_token_id=1)  # vocab 96 >= 62 tokens; FFN 128 = 4 experts of 32
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _text(path: Path) -> Path:
    rng = random.Random(0)
    lines = [" ".join(f"w{(i * 7 + j + rng.randrange(3)) % 60}" for j in range(24)) for i in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_timed_rate_excludes_warmup_intervals():
    bench = _bench()
    recs = [{"kind": "train", "stage": 1, "step": 10, "interval_steps": 10, "interval_tokens": 100, "interval_s": 10.0},
            {"kind": "train", "stage": 1, "step": 20, "interval_steps": 10, "interval_tokens": 100, "interval_s": 1.0},
            {"kind": "train", "stage": 2, "step": 30, "interval_steps": 10, "interval_tokens": 100, "interval_s": 10.0},
            {"kind": "train", "stage": 2, "step": 40, "interval_steps": 10, "interval_tokens": 300, "interval_s": 1.0}]
    r = bench.timed_rate(recs, stage1_steps=20, warmup=5)
    assert r["steps_timed"] == 20 and r["tokens_timed"] == 400
    assert r["tokens_per_s"] == pytest.approx(200.0)
    assert r["stage1_tokens_per_s"] == pytest.approx(100.0) and r["stage2_tokens_per_s"] == pytest.approx(300.0)
    with pytest.raises(RuntimeError, match="no timed steps"):
        bench.timed_rate(recs, stage1_steps=20, warmup=15)


def test_fsdp_variants_name_rows_and_set_env(monkeypatch):
    bench = _bench()
    for var in bench.FSDP_DEFAULTS:
        monkeypatch.delenv(var, raising=False)
    assert bench.fsdp_variant_env("default") == {}
    env = bench.fsdp_variant_env("bf16+noreshard")
    assert env == {"LTE_FSDP_PARAM_DTYPE": "bfloat16", "LTE_FSDP_RESHARD": "0"}
    assert bench.setup_name("fsdp", 2, fsdp=bench.fsdp_settings(env)) == "fsdp-2gpu[bf16,noreshard]"
    assert bench.setup_name("fsdp", 2, fsdp=bench.fsdp_settings({})) == "fsdp-2gpu"
    assert bench.setup_name("fsdp", 2, True, bench.fsdp_settings(bench.fsdp_variant_env("shardteacher"))) \
        == "fsdp-2gpu[shardteacher]-same-global"
    assert bench.setup_name("ddp", 2) == "ddp-2gpu" and bench.setup_name("1gpu", 1) == "1gpu"
    monkeypatch.setenv("LTE_FSDP_RESHARD", "false")  # knobs set by the caller are named too
    assert bench.setup_name("fsdp", 2) == "fsdp-2gpu[noreshard]"
    with pytest.raises(ValueError, match="unknown knob"):
        bench.fsdp_variant_env("bf16+fast")


@pytest.mark.parametrize("bad", ["5", "2:0", "x:1"])
def test_profile_flag_rejects_bad_windows(bad, tmp_path, capsys):
    data = _text(tmp_path / "text.txt")
    with pytest.raises(SystemExit):
        _bench().main(["--data", str(data), "--device", "cpu", "--out", str(tmp_path / "o.json"), "--profile", bad])
    assert "--profile: LTE_PROFILE=" in capsys.readouterr().err


@pytest.mark.slow
def test_multigpu_benchmark_on_cpu_gloo(tmp_path):
    bench = _bench()
    model = _tiny_model_dir(tmp_path / "tiny")
    data = _text(tmp_path / "text.txt")
    out = tmp_path / "multigpu.json"
    args = ["--model", str(model), "--data", str(data), "--out", str(out), "--work-dir", str(tmp_path / "runs"),
            "--device", "cpu", "--nproc", "2", "--batch-size", "2", "--seq-len", "32", "--stage1-steps", "12",
            "--stage2-steps", "12", "--warmup-steps", "2", "--train-args", "--expert-size 32 --lr 1e-3"]
    rows = bench.main(args)
    saved = json.loads(out.read_text())
    assert [r["setup"] for r in saved] == ["1gpu", "fsdp-2gpu", "ddp-2gpu"]
    keys = {"setup", "num_processes", "tokens_per_s", "per_gpu_micro_batch", "seq_len", "global_batch", "steps_timed",
            "speedup_vs_1gpu", "final_loss", "peak_mem_gb", "device", "date", "command"}
    by = {r["setup"]: r for r in saved}
    for r in saved:
        assert keys <= set(r)
        assert r["tokens_per_s"] > 0 and r["steps_timed"] == 6  # steps 11-12 of stage 1 and 21-24 of stage 2
        assert r["global_batch"] == 2 * r["num_processes"] and r["peak_mem_gb"] is None
        # packed LM blocks: every position is a real token; 6 timed steps of the global batch
        assert r["tokens_timed"] == 6 * r["global_batch"] * 32
        assert r["train_tokens"] == 24 * r["global_batch"] * 32
    assert by["1gpu"]["speedup_vs_1gpu"] == 1.0 and by["1gpu"]["parallel"] == "none"
    assert by["fsdp-2gpu"]["parallel"] == "fsdp" and by["ddp-2gpu"]["parallel"] == "ddp"
    assert by["fsdp-2gpu"]["speedup_vs_1gpu"] == pytest.approx(by["fsdp-2gpu"]["tokens_per_s"] / by["1gpu"]["tokens_per_s"])
    # FSDP and DDP train the same model on the same global batches
    assert by["fsdp-2gpu"]["final_loss"] == pytest.approx(by["ddp-2gpu"]["final_loss"], rel=1e-3)
    assert len(rows) == 3
    # a rerun finds every setup done and launches nothing
    again = bench.main(args)
    assert [r["date"] for r in again] == [r["date"] for r in rows]
