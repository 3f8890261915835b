"""Instruction tuning (Alpaca random 9k): dense SFT vs LTE at 0.5 and 0.75, scored by held-out
response perplexity and MMLU 5-shot accuracy.

Protocol (../shared/data/README.md, lte.sft, lte.mmlu):
1. Records formatted with the Alpaca prompt (``--template chat``: the tokenizer's chat
   template), loss on the response tokens only; the **last** 5% of the records (462 of 9,229)
   are held out and never trained on; the rest are packed into ``--seq-len`` blocks.
2. Dense SFT for ``--epochs`` epochs (one cosine schedule); saved to ``--work-dir/dense.pt``
   (a resumed run reloads it). It is the starting point and distillation teacher of LTE.
3. LTE at each ``--targets`` sparsity (k-means experts of 32 neurons, stage 1 + 2 with the
   target controller, KL distillation from the dense model), ``--sparse-epochs`` epochs.
4. Each model: perplexity over the held-out responses (padded, one example per row; hard mode
   for LTE), its FFN sparsity and GFLOPs/token, and MMLU 5-shot accuracy (``--mmlu-limit``
   questions per subject; chance 0.25 is reported beside it: models this small sit near it).

Output: ``--out`` (JSON list, one row per model/method/target; written atomically after every
point; a rerun skips the rows already there). Checkpoints and logs: ``--work-dir``.

Usage: python benchmarks/instruct.py --model smollm2-135m --out benchmarks/results/instruct.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from e2e_nlg import (
    SHARED,
    TRAINING_KEYS,
    Results,
    add_training_args,
    budget,
    check_work_dir,
    device_name,
    free_memory,
    load_or_train_dense,
    log,
    stamp,
    train_lte,
)

import lte
from lte.mmlu import CHANCE, evaluate_mmlu
from lte.sft import SFTTask, build_sft_data, load_records, response_perplexity, split_records
from lte.train import finetune_dense, make_teacher


def model_label(name: str) -> str:
    """A short name for the results: the alias, or the file/folder name without suffix."""
    p = Path(name)
    return p.stem if (p.suffix or p.exists() or "/" in name) else name


def data_file(path: str) -> Path:
    """The records file: ``path`` itself, or the single .json/.jsonl file in a folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted([*p.glob("*.json"), *p.glob("*.jsonl")])
        if len(files) != 1:
            raise SystemExit(f"{p}: expected exactly one .json/.jsonl file, found {len(files)}")
        return files[0]
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the instruction-tuning benchmark (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "instructions"),
                    help="records file or folder holding one (default ../shared/data/instructions)")
    ap.add_argument("--mmlu", default=str(SHARED / "mmlu"), help="MMLU folder with dev/ and test/ "
                    "(default ../shared/data/mmlu)")
    ap.add_argument("--model", default="smollm2-135m", help="model alias or path (e.g. a .gguf file)")
    ap.add_argument("--label", default=None, help="model name in the results (default: alias or file stem)")
    ap.add_argument("--out", default="benchmarks/results/instruct.json", help="results JSON file")
    ap.add_argument("--work-dir", default=None, help="dense checkpoint and logs (default runs/instruct_LABEL)")
    ap.add_argument("--targets", default="0.5,0.75", help="LTE target sparsities (default 0.5,0.75)")
    ap.add_argument("--template", default="alpaca", choices=["alpaca", "chat"],
                    help="prompt format: Alpaca (default) or the tokenizer's chat template")
    ap.add_argument("--mmlu-limit", type=int, default=None,
                    help="MMLU: the first N test questions per subject (default all 14,042)")
    ap.add_argument("--mmlu-batch-size", type=int, default=16, help="MMLU prompts per forward (default 16)")
    ap.add_argument("--eval-batch-size", type=int, default=16, help="held-out examples per forward (default 16)")
    add_training_args(ap, seq_len=512, epochs=3, sparse_epochs=2.0, lr=1e-4)
    a = ap.parse_args(argv)

    label = a.label or model_label(a.model)
    targets = [float(t) for t in a.targets.split(",") if t]
    out = Path(a.out)
    work = Path(a.work_dir or f"runs/instruct_{label}")
    res = Results(out, lambda r: (r["model"], r["method"], float(r["target_sparsity"])),
                  {"device": device_name(a.device), **stamp()})
    points = [("dense", 0.0)] + [("lte", t) for t in targets]
    todo = [(m, t) for m, t in points if not res.done(label, m, t)]
    check_work_dir(work, {k: getattr(a, k) for k in TRAINING_KEYS + ("data", "template")})
    log(f"{label}: {len(points)} points, {len(todo)} to run")
    if not todo:
        return

    t_load = time.time()
    model, tok = lte.load_model(a.model, device=a.device)
    train_recs, heldout_recs = split_records(load_records(data_file(a.data)))
    if a.max_train_examples:
        train_recs = train_recs[: a.max_train_examples]
    train_data = build_sft_data(train_recs, tok, a.template, a.seq_len, packed=True)
    heldout = build_sft_data(heldout_recs, tok, a.template, a.seq_len, packed=False)
    steps_per_epoch, sparse_steps, tokens_per_step = budget(a, len(train_data))
    log(f"loaded {a.model} + data in {time.time() - t_load:.0f} s: {len(train_recs)} train records -> "
        f"{len(train_data)} blocks of {a.seq_len} ({steps_per_epoch} steps/epoch); {len(heldout)} held out "
        f"({heldout.dropped} dropped); sparse budget {sparse_steps} steps")

    def train_dense() -> dict:
        t0 = time.time()
        steps = a.epochs * steps_per_epoch
        cfg = lte.TrainConfig(lr=a.lr, batch_size=a.batch_size, grad_accum=a.grad_accum, seq_len=a.seq_len, seed=0)
        losses = finetune_dense(model, cfg, train_data, steps, progress=False, task=SFTTask())
        log(f"dense SFT: {steps} steps in {time.time() - t0:.0f} s, last loss {losses[-1]:.3f}")
        return {"steps": steps, "seconds": time.time() - t0, "final_loss": losses[-1]}

    dense_rec = load_or_train_dense(work / "dense.pt", model, train_dense)
    dense_tokens = dense_rec["steps"] * tokens_per_step
    teacher = None

    def evaluate(m, method: str, target: float, epochs: float, extra: dict, t_start: float) -> None:
        t0 = time.time()
        r = response_perplexity(m, heldout, batch_size=a.eval_batch_size)
        log(f"{method} {target:g}: held-out response ppl {r['perplexity']:.3f}, sparsity {r['ffn_sparsity']:.3f}")
        mm = evaluate_mmlu(m, tok, a.mmlu, limit=a.mmlu_limit, batch_size=a.mmlu_batch_size, progress=False)
        res.add({"model": label, "method": method, "target_sparsity": target, "ffn_sparsity": r["ffn_sparsity"],
                 "response_ppl": r["perplexity"], "mmlu_acc": mm["accuracy"], "mmlu_questions": mm["questions"],
                 "chance": CHANCE, "gflops_per_token": r["gflops_per_token"], "train_examples": len(train_recs),
                 "epochs": epochs, "seconds": round(time.time() - t_start, 1),
                 "eval_seconds": round(time.time() - t0, 1), "mmlu_acc_macro": mm["accuracy_macro"],
                 "mmlu_ffn_sparsity": mm["ffn_sparsity"], "mmlu_gflops_per_token": mm["gflops_per_token"],
                 "mmlu_limit": a.mmlu_limit, "heldout_examples": len(heldout), "heldout_tokens": r["tokens"],
                 "template": a.template, "model_path": a.model, "expert_size": a.expert_size, **extra})

    for method, target in todo:
        t0 = time.time()
        if method == "dense":
            m = copy.deepcopy(model)  # evaluation gives a plain model LTE layers in dense mode, in place
            evaluate(m, "dense", 0.0, a.epochs, {"train_tokens": dense_tokens,
                                                 "train_seconds": round(dense_rec["seconds"], 1)}, t0)
        else:
            if teacher is None and a.distill_weight > 0:
                teacher = make_teacher(model)
            m, summary = train_lte(model, a, target, sparse_steps, train_data, None, work, tok, teacher)
            evaluate(m, "lte", target, a.sparse_epochs,
                     {"train_tokens": dense_tokens + summary["train_tokens"],
                      "train_seconds": round(time.time() - t0, 1), "final_eta": summary["final_eta"],
                      "dense_epochs": a.epochs}, t0)
        del m
        free_memory()
    log(f"done: {out}")


if __name__ == "__main__":
    main()
