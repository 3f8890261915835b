"""lte sweep: output schema, plots, resume without recomputation, settings checks, CLI flags."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import tiny_llama

from lte.cli import build_parser, main
from lte.sweep import ROW_KEYS, SweepInputs, SweepSettings, expand_methods, parse_sparsities, plan, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"


def _ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 96, (3000,), generator=g)


def _prepare(calls: list):
    def prepare():
        calls.append(1)
        ids = _ids()
        return SweepInputs(model=tiny_llama(), train_ids=ids[:2000], heldout_ids=ids[2000:2300], eval_ids=ids[2300:])
    return prepare


SETTINGS = SweepSettings(expert_size=16, seq_len=32, batch_size=2, train_steps=2, eval_len=32, calib_tokens=128,
                         predictor_epochs=2, distill_weight=0.5, dense_steps=1)
METHODS = "base,teal-ffn,cats-nofinetune,dejavu-block,random-router"


def test_sweep_writes_schema_and_plots_then_resumes(tmp_path):
    calls: list = []
    res = run_sweep(tmp_path, METHODS, "0.5", _prepare(calls), SETTINGS, {"model": "tiny"}, progress=False)
    assert res["computed"] == 5 and len(calls) == 1
    rows = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(rows, list) and len(rows) == 5
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert isinstance(r["method"], str) and r["perplexity"] > 1 and r["gflops_per_token"] > 0
        assert 0.0 <= r["block_sparsity"] <= r["ffn_sparsity"] + 1e-9 <= 1.0
        assert isinstance(r["train_tokens"], int)
    by = {r["method"]: r for r in rows}
    assert by["base"]["target_sparsity"] == 0.0 and by["base"]["ffn_sparsity"] == 0.0
    start = 1 * 2 * 32  # the dense fine-tune every method starts from (cached for resumes)
    assert by["base"]["train_tokens"] == start and (tmp_path / "cache" / "base_dense.pt").is_file()
    assert by["random-router"]["train_tokens"] == start + 2 * 2 * 32  # + the shared training budget
    assert by["teal-ffn"]["train_tokens"] == start
    for m in ("teal-ffn", "cats-nofinetune", "dejavu-block", "random-router"):
        assert by[m]["ffn_sparsity"] == pytest.approx(0.5, abs=0.1)
        assert by[m]["gflops_per_token"] < by["base"]["gflops_per_token"]
    with (tmp_path / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:len(ROW_KEYS)] == list(ROW_KEYS) and len(table) == 5
    for name in ("sparsity.png", "gflops.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries

    # second call: nothing recomputed, the model is not even loaded
    before = (tmp_path / "results.json").read_text()
    res = run_sweep(tmp_path, METHODS, "0.5", _prepare(calls), SETTINGS, {"model": "tiny"}, progress=False)
    assert res["computed"] == 0 and len(calls) == 1
    assert (tmp_path / "results.json").read_text() == before

    # a new sparsity adds only its own points
    res = run_sweep(tmp_path, "base,teal-ffn", "0.5,0.75", _prepare(calls), SETTINGS, {"model": "tiny"},
                    progress=False)
    assert res["computed"] == 1 and len(res["rows"]) == 6
    new = [r for r in res["rows"] if r["target_sparsity"] == 0.75]
    assert [r["method"] for r in new] == ["teal-ffn"]
    assert {k: v for k, v in by["base"].items() if k != "seconds"} == \
        {k: v for k, v in res["rows"][0].items() if k != "seconds"}


def test_sweep_refuses_other_settings(tmp_path):
    run_sweep(tmp_path, "base", "0.5", _prepare([]), SETTINGS, {"model": "tiny"}, progress=False)
    with pytest.raises(ValueError, match="train_steps"):
        run_sweep(tmp_path, "base", "0.5", _prepare([]), SweepSettings(**{**SETTINGS.__dict__, "train_steps": 3}),
                  {"model": "tiny"}, progress=False)
    with pytest.raises(ValueError, match="model"):
        run_sweep(tmp_path, "base", "0.5", _prepare([]), SETTINGS, {"model": "other"}, progress=False)


def test_calibrated_lte_point_and_folders_written_before_a_setting_existed(tmp_path):
    cal = SweepSettings(**{**SETTINGS.__dict__, "router_init": "calibrated"})
    rnd = SweepSettings(**{**SETTINGS.__dict__, "router_init": "random"})
    res = run_sweep(tmp_path / "cal", "lte", "0.5", _prepare([]), cal, {"model": "tiny"}, progress=False)
    row = res["rows"][0]
    assert row["method"] == "lte" and 0.0 <= row["ffn_sparsity"] <= 1.0
    with pytest.raises(ValueError, match="router_init"):
        SweepSettings(router_init="oracle")
    with pytest.raises(ValueError, match="stage2_bias_gain"):
        SweepSettings(stage2_bias_gain=-0.1)
    # a folder whose sweep_config.json predates `router_init` was measured with random routers
    run_sweep(tmp_path / "old", "base", "0.5", _prepare([]), rnd, {"model": "tiny"}, progress=False)
    cfg_path = tmp_path / "old" / "sweep_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["settings"]["router_init"]
    cfg_path.write_text(json.dumps(cfg))
    calls: list = []
    run_sweep(tmp_path / "old", "base", "0.5", _prepare(calls), rnd, {"model": "tiny"}, progress=False)
    assert calls == []  # nothing recomputed, no settings error
    with pytest.raises(ValueError, match="router_init"):
        run_sweep(tmp_path / "old", "base", "0.5", _prepare([]), cal, {"model": "tiny"}, progress=False)


def test_method_names_and_plan():
    assert expand_methods("teal,cats") == ["teal-ffn", "teal-all", "cats-nofinetune", "cats-finetune"]
    assert expand_methods("lte,dense,teal,cats,dejavu,moefication,topk")[-1] == "topk-softmax"
    assert "lte" in expand_methods("all") and "lte" not in expand_methods("training-free")
    with pytest.raises(ValueError, match="unknown method"):
        expand_methods("lte,wanda")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        parse_sparsities("0.5,1.2")
    assert plan(["dense", "lte"], [0.25, 0.5]) == [("dense", 0.0), ("lte", 0.25), ("lte", 0.5)]


def test_sweep_cli_flags_have_help_and_errors_are_one_line(capsys, tmp_path):
    sub = build_parser()._subparsers._group_actions[0].choices["sweep"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"lte sweep {action.option_strings or action.dest} has no help text"
    code = main(["sweep", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lte: error:") and "no such file" in err
    (tmp_path / "t.txt").write_text("hello world\n" * 20)
    code = main(["sweep", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"), "--methods", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_every_method_runs(tmp_path):
    """All methods, LTE included, on a tiny model with a tiny budget (the recipes run end to end)."""
    res = run_sweep(tmp_path, "all", "0.5", _prepare([]), SETTINGS, {"model": "tiny"}, progress=False)
    assert {r["method"] for r in res["rows"]} == set(expand_methods("all"))
    for r in res["rows"]:
        if r["method"] not in ("base", "dense", "lte"):
            assert r["ffn_sparsity"] == pytest.approx(0.5, abs=0.1), r


def test_sweep_on_an_encoder_glue_task(tmp_path, tiny_bert_dir, synthetic_glue, capsys):
    """`lte sweep --task glue:rte`: a tiny BERT classifier; MoEfication and noisy top-k on the
    encoder's GELU FFN; rows carry the task's metric instead of perplexity."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "glue:rte", "--model", str(tiny_bert_dir), "--data", str(synthetic_glue),
            "--methods", "dense,lte,moefication-router,topk-softmax", "--sparsities", "0.5", "--train-steps", "2",
            "--dense-steps", "1", "--batch-size", "8", "--calib-tokens", "64", "--predictor-epochs", "2",
            "--eval-batch-size", "6", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"dense", "lte", "moefication-router", "topk-softmax"}
    for r in rows.values():
        assert r["metric"] == "accuracy" and 0.0 <= r["score"] <= 1.0 and r["accuracy"] == r["score"]
        assert "perplexity" not in r and r["train_examples"] == (1 + 2) * 8  # dense start + the shared budget
        assert 0.0 <= r["union_sparsity"] <= r["ffn_sparsity"] + 1e-9
    for m in ("moefication-router", "topk-softmax"):  # 2 of the 4 experts of 32 per token
        assert rows[m]["ffn_sparsity"] == pytest.approx(0.5) and rows[m]["block_sparsity"] == pytest.approx(0.5)
        assert rows[m]["gflops_per_token"] < rows["dense"]["gflops_per_token"]
    with (out / "results.csv").open() as fh:
        header = next(csv.reader(fh))
    assert "score" in header and "perplexity" not in header
    assert (out / "sparsity.png").read_bytes()[:8] == PNG
    assert main(argv) == 0 and "0 point(s) computed" in capsys.readouterr().out  # resumed
