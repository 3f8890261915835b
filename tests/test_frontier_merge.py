"""``benchmarks/frontier_merge.py``: how sweep folders join the frontier (labels, first row wins)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frontier_merge  # noqa: E402


def _sweep(tmp: Path, name: str, methods: list[str], **settings) -> Path:
    """A minimal sweep folder: results.json with one 0.5 row per method, and sweep_config.json."""
    d = tmp / name
    d.mkdir()
    rows = [{"method": m, "target_sparsity": 0.5, "ffn_sparsity": 0.5, "block_sparsity": 0.0, "perplexity": p,
             "gflops_per_token": 0.2, "train_tokens": 10} for p, m in enumerate(methods, start=10)]
    (d / "results.json").write_text(json.dumps(rows))
    (d / "sweep_config.json").write_text(json.dumps({"settings": {"seed": 1, "train_steps": 200, **settings}}))
    return d


def test_label_renames_lte_rows_and_records_lte_settings(tmp_path):
    d = _sweep(tmp_path, "a", ["lte", "cats-finetune"], router_init="gate", expert_size=1,
               layer_target_offsets="linear:0.1", router_form=None)
    rows = frontier_merge.source_rows(f"{d}=lte-gate")
    by = {r["method"]: r for r in rows}
    assert set(by) == {"lte-gate", "cats-finetune"}  # only the lte rows take the label
    assert by["lte-gate"]["lte_settings"]["router_init"] == "gate"
    assert by["lte-gate"]["lte_settings"]["seed"] == 1
    assert by["lte-gate"]["lte_settings"]["layer_target_offsets"] == "linear:0.1"
    assert "router_form" not in by["lte-gate"]["lte_settings"]  # unset (None) settings are left out
    assert "settings" not in by["cats-finetune"]


def test_label_renames_a_single_other_method_with_its_training_settings(tmp_path):
    d = _sweep(tmp_path, "b", ["cats-finetune"], distill_weight=1.0, router_init="gate")
    (row,) = frontier_merge.source_rows(f"{d}=cats-finetune-kd1")
    assert row["method"] == "cats-finetune-kd1"
    assert row["settings"] == {"seed": 1, "train_steps": 200, "distill_weight": 1.0}  # no LTE-only keys


def test_merge_keeps_the_first_row_of_a_point(tmp_path):
    a = _sweep(tmp_path, "a", ["cats-finetune"])
    b = _sweep(tmp_path, "b", ["cats-finetune", "teal-ffn"])
    rows = frontier_merge.merge([str(a), str(b)])
    assert [r["method"] for r in rows].count("cats-finetune") == 1
    assert {r["method"] for r in rows} == {"cats-finetune", "teal-ffn"}
