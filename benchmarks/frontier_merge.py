"""Merge the results of several ``lte sweep`` output folders (one sweep split over processes
or GPUs) into the frontier JSON, its plots and a markdown table.

    python benchmarks/frontier_merge.py --out benchmarks/results/frontier_smollm2_wikitext2 DIR1 DIR2 ...

writes ``OUT.json`` (a list of rows: method, target_sparsity, ffn_sparsity, block_sparsity,
perplexity, gflops_per_token, train_tokens, ...), ``OUT_sparsity.png`` (perplexity vs
neuron-level FFN sparsity), ``OUT_block.png`` (vs the 32-wide block sparsity a kernel gets),
``OUT_gflops.png``, and prints a table (perplexity; block sparsity in brackets).

An input may also be a merged JSON file (to add rows to an earlier merge), and ``SRC=LABEL``
renames that input's ``lte`` rows to ``LABEL`` and records its LTE settings in them (how the
tuned LTE variants join the frontier beside the default ``lte`` rows); a folder that ran one
other method (a CATS run at another seed, say) has that method's rows renamed instead, with the
sweep's training settings recorded as ``settings``:

    python benchmarks/frontier_merge.py --out benchmarks/results/frontier_smollm2_wikitext2 \
        benchmarks/results/frontier_smollm2_wikitext2.json runs/e8=lte-e8 runs/tuned=lte-tuned
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from lte.sweep import METHODS, load_rows, plot, read_rows_file

TRAIN_SETTINGS = ("train_steps", "distill_weight", "lr", "seed")
LTE_SETTINGS = ("expert_size", "router_lr", "router_init", "router_form", "layer_target_offsets", "stage1_fraction",
                "separability_weight", "stage2_bias_gain") + TRAIN_SETTINGS


def source_rows(spec: str) -> list[dict]:
    """The rows of one input: ``DIR`` (an lte sweep folder) or a merged ``FILE.json``; with
    ``=LABEL``, its ``lte`` rows (or the rows of its only method) are renamed LABEL and carry the
    sweep's settings."""
    src, _, label = spec.partition("=")
    path = Path(src)
    if path.is_file():
        rows = read_rows_file(path)
    elif (path / "results.json").is_file():
        rows = load_rows(path)
    else:
        raise SystemExit(f"{src}: neither a merged JSON file nor an lte sweep folder with results.json")
    if not label:
        return rows
    cfg_file = path / "sweep_config.json"
    settings = json.loads(cfg_file.read_text())["settings"] if cfg_file.is_file() else {}
    methods = {r["method"] for r in rows}
    target = "lte" if "lte" in methods or len(methods) != 1 else methods.pop()
    keys, field = (LTE_SETTINGS, "lte_settings") if target == "lte" else (TRAIN_SETTINGS, "settings")
    extra = {k: settings[k] for k in keys if settings.get(k) is not None}
    return [{**r, "method": label, field: extra} if r["method"] == target else r for r in rows]


def merge(dirs: list[str]) -> list[dict]:
    """Rows of every input; a (method, target) point found twice keeps the first input's row."""
    seen, rows = set(), []
    for d in dirs:
        for r in source_rows(d):
            key = (r["method"], round(float(r["target_sparsity"]), 6))
            if key not in seen:
                seen.add(key)
                rows.append(r)
    order = list(METHODS)
    return sorted(rows, key=lambda r: (order.index(r["method"]) if r["method"] in order else 99, r["target_sparsity"]))


def _block(row: dict) -> str:
    """The row's 32-wide block sparsity, or "-" where it was not measured (LTE rows with experts
    under 32 recorded before sweeps counted kernel blocks: they kept ``expert_block_sparsity``)."""
    b = row.get("block_sparsity")
    return "-" if b is None else f"{b:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per method, one column per target sparsity."""
    targets = sorted({r["target_sparsity"] for r in rows if r["target_sparsity"] > 0})
    lines = ["| method | " + " | ".join(f"{t:g}" for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = {r["target_sparsity"]: r for r in rows if r["method"] == m}
        if set(rs) == {0.0}:
            lines.append(f"| {m} | " + " | ".join(f"{rs[0.0]['perplexity']:.2f}" for _ in targets) + " |")
            continue
        cells = [f"{rs[t]['perplexity']:.2f} ({rs[t]['ffn_sparsity']:.2f}/{_block(rs[t])})" if t in rs else ""
                 for t in targets]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="lte sweep output folders or merged JSON files, each optionally "
                                             "DIR=LABEL (its lte rows renamed LABEL)")
    ap.add_argument("--out", required=True, help="output path prefix (no extension)")
    ap.add_argument("--title", default="SmolLM2-135M, WikiText-2 test")
    ap.add_argument("--no-plots", action="store_true", help="write the JSON and print the table only")
    a = ap.parse_args()
    rows = merge(a.dirs)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    if a.no_plots:
        print(table(rows))
        return
    with tempfile.TemporaryDirectory() as tmp:
        plot(rows, Path(tmp), a.title)
        shutil.move(Path(tmp) / "sparsity.png", f"{out}_sparsity.png")
        shutil.move(Path(tmp) / "gflops.png", f"{out}_gflops.png")
        block_rows = [{**r, "ffn_sparsity": r["block_sparsity"]} for r in rows if r.get("block_sparsity") is not None]
        plot(block_rows, Path(tmp), a.title + " (x: 32-neuron block sparsity)")
        shutil.move(Path(tmp) / "sparsity.png", f"{out}_block.png")
    print(table(rows))
    print("cells: perplexity (neuron-level FFN sparsity / 32-wide block sparsity, - = not measured)")


if __name__ == "__main__":
    main()
