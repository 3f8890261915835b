"""The GPU result scripts ``benchmarks/e2e_nlg.py`` and ``benchmarks/instruct.py`` end to end on a
tiny random LLaMA (CPU, seconds): every point's row is written with the promised keys,
generations land beside the scores, and a rerun resumes (skips finished points, reloads the
dense model instead of retraining it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_e2e import ROWS, write_csv
from test_mmlu import make_mmlu
from test_sft import save_tiny, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import e2e_nlg  # noqa: E402
import instruct  # noqa: E402

TINY = ["--seq-len", "32", "--batch-size", "2", "--epochs", "1", "--sparse-epochs", "1", "--device", "cpu"]
E2E_KEYS = {"method", "target_sparsity", "ffn_sparsity", "bleu", "rouge_l", "gflops_per_token", "decoding",
            "tokens_per_s", "train_examples", "seconds", "device", "date", "command"}
INSTRUCT_KEYS = {"model", "method", "target_sparsity", "ffn_sparsity", "response_ppl", "mmlu_acc", "mmlu_questions",
                 "chance", "gflops_per_token", "train_examples", "epochs", "seconds", "device", "date", "command"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m"), tiny_tokenizer())


@pytest.mark.slow  # ~1 min of CPU (several minutes on a loaded machine)
def test_e2e_script_runs_and_resumes(tmp_path, tiny_model, capsys):
    data = tmp_path / "e2e"
    write_csv(data / "trainset.csv", ROWS * 4)
    write_csv(data / "devset.csv", ROWS[:3])
    write_csv(data / "testset_w_refs.csv", ROWS)
    out = tmp_path / "res" / "e2e.json"
    args = ["--data", str(data), "--model", str(tiny_model), "--out", str(out), "--work-dir", str(tmp_path / "w"),
            "--gen-dir", str(tmp_path / "gen"), "--targets", "0.5", "--max-new-tokens", "6", "--speed-mrs", "1",
            "--calib-tokens", "32", *TINY]
    e2e_nlg.main(args)
    rows = json.loads(out.read_text())
    assert [(r["method"], r["target_sparsity"], r["decoding"]) for r in rows] == [
        ("dense", 0.0, "greedy"), ("dense", 0.0, "beam"), ("lte", 0.5, "greedy"), ("lte", 0.5, "beam"),
        ("cats-finetune", 0.5, "greedy"), ("cats-finetune", 0.5, "beam")]
    for r in rows:
        assert E2E_KEYS <= set(r)
        assert 0.0 <= r["rouge_l"] <= 1.0 and 0.0 <= r["bleu"] <= 100.0
        assert r["mrs"] == 3 and r["train_examples"] == len(ROWS) * 4
        gens = [json.loads(line) for line in Path(r["generations"]).read_text().splitlines()]
        assert len(gens) == 3 and all(g["references"] for g in gens)
    assert rows[0]["ffn_sparsity"] == 0.0 and rows[2]["ffn_sparsity"] > 0.0
    assert rows[4]["ffn_sparsity"] == pytest.approx(0.5, abs=0.2)
    assert rows[2]["gflops_per_token"] < rows[0]["gflops_per_token"]
    assert (tmp_path / "w" / "dense.pt").is_file()
    capsys.readouterr()
    e2e_nlg.main(args)  # all done: nothing runs
    assert "0 points to run" in capsys.readouterr().out
    json.dump(rows[:3], out.open("w"))  # lte beam and the baseline missing
    e2e_nlg.main(args)
    log = capsys.readouterr().out
    assert "dense model reloaded" in log and "dense epoch" not in log
    again = json.loads(out.read_text())
    assert len(again) == 6 and again[:3] == rows[:3]
    assert again[3]["rouge_l"] == pytest.approx(rows[3]["rouge_l"])  # LTE resumed from its finished checkpoint
    with pytest.raises(SystemExit, match="other settings"):
        e2e_nlg.main([*args, "--lr", "1e-3"])


@pytest.mark.slow
def test_instruct_script_runs_and_resumes(tmp_path, tiny_model, capsys):
    recs = [{"instruction": f"Say {w}", "input": "", "output": f"{w}."} for w in ("A", "B", "C", "D")] * 10
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst" / "data.json").write_text(json.dumps(recs))
    mmlu = make_mmlu(tmp_path / "mmlu", n_test=3)
    out = tmp_path / "instruct.json"
    args = ["--data", str(tmp_path / "inst"), "--mmlu", str(mmlu), "--model", str(tiny_model), "--out", str(out),
            "--work-dir", str(tmp_path / "w"), "--mmlu-limit", "2", *TINY, "--seq-len", "128", "--expert-size", "16"]
    instruct.main(args)
    rows = json.loads(out.read_text())
    assert [(r["method"], r["target_sparsity"]) for r in rows] == [("dense", 0.0), ("lte", 0.5), ("lte", 0.75)]
    for r in rows:
        assert INSTRUCT_KEYS <= set(r)
        assert r["model"] == tiny_model.name and r["chance"] == 0.25 and r["heldout_examples"] == 2
        assert r["response_ppl"] > 1.0 and 0.0 <= r["mmlu_acc"] <= 1.0
        assert r["mmlu_questions"] == 2 * 2  # 2 subjects x --mmlu-limit 2
        assert r["train_examples"] == 38 and r["expert_size"] == 16
    assert rows[0]["ffn_sparsity"] == 0.0 and rows[1]["ffn_sparsity"] > 0.0
    capsys.readouterr()
    instruct.main(args)
    assert "0 to run" in capsys.readouterr().out


def test_work_dir_settings_guard(tmp_path):
    settings = {"lr": 1e-4, "stage2_bias_gain": 0.2, "router_init": "random"}
    e2e_nlg.check_work_dir(tmp_path, settings)
    e2e_nlg.check_work_dir(tmp_path, settings)  # same settings: resumable
    with pytest.raises(SystemExit, match="lr"):
        e2e_nlg.check_work_dir(tmp_path, {**settings, "lr": 2e-4})
    # a work dir written before a setting was recorded counts as that setting's old value
    (tmp_path / "settings.json").write_text(json.dumps({"lr": 1e-4}))
    e2e_nlg.check_work_dir(tmp_path, settings)
    with pytest.raises(SystemExit, match="router_init"):
        e2e_nlg.check_work_dir(tmp_path, {**settings, "router_init": "calibrated"})
