"""CPU smoke benchmark: all-MiniLM-L6-v2 on one GLUE task, dense vs LTE, short budget.

Protocol (GLUE dev, train on train.tsv, no model selection on dev):
1. dense fine-tune ``--dense-steps`` steps from the package's encoder + a fresh head -> "dense";
2. continue dense fine-tuning ``--stage1-steps + --stage2-steps`` more steps -> "dense (same budget)";
3. from the model of step 1: sparsify (kmeans), LTE stage 1 + stage 2 at ``--target-sparsity``,
   distilling from the model of step 1 -> "lte" (evaluated in hard mode).

This is a small CPU run, not the issue's GPU result. Example:
    python benchmarks/glue_minilm_cpu.py --task glue:sst2 --out benchmarks/results/glue_minilm_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import lte
from lte.config import TrainConfig
from lte.glue import ClassificationData, SequenceClassificationTask, glue_split, parse_task
from lte.train import finetune_dense, make_teacher, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="glue:sst2")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    ap.add_argument("--out", default="benchmarks/results/glue_minilm_cpu.json")
    ap.add_argument("--dense-steps", type=int, default=200)
    ap.add_argument("--stage1-steps", type=int, default=100)
    ap.add_argument("--stage2-steps", type=int, default=50)
    ap.add_argument("--target-sparsity", type=float, default=0.8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lte-lr", type=float, default=5e-5)
    ap.add_argument("--distill-weight", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 measured fastest on a busy 2-core box)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.time()
    spec = parse_task(a.task)
    torch.manual_seed(a.seed)
    model, tok = lte.load_model("minilm-l6", task="sequence-classification", num_labels=spec.num_labels)
    train_data = ClassificationData(glue_split(a.data, spec, "train"), tok, spec, a.seq_len)
    dev = ClassificationData(glue_split(a.data, spec, "dev"), tok, spec, a.seq_len)
    task = SequenceClassificationTask(spec)
    common = dict(batch_size=a.batch_size, seq_len=a.seq_len, seed=a.seed, mixed_precision="no")
    records = []

    def record(method: str, m, steps: int, target: float | None, wall: float) -> None:
        ev = task.evaluate(m, dev, 64)
        seen = steps * a.batch_size
        rec = {"task": spec.name, "method": method, "target_sparsity": target, "ffn_sparsity": ev["ffn_sparsity"],
               "union_sparsity_batch64": ev["union_sparsity"], "metric": ev["metric"], "score": ev["score"],
               **{k: ev[k] for k in spec.metrics}, "gflops_per_token": ev["gflops_per_token"],
               "dev_examples": ev["examples"], "train_examples": len(train_data), "steps": steps,
               "examples_seen": seen, "epochs": seen / len(train_data), "seed": a.seed, "train_wall_s": round(wall, 1)}
        records.append(rec)
        print(json.dumps(rec), flush=True)

    def as_lte(m):  # a copy with dense-mode LTE layers: same outputs, and the FLOPs counter works
        m = copy.deepcopy(m)
        lte.sparsify(m, lte.LTEConfig(grouping="random"), group=False, progress=False)
        return lte.set_mode(m, "dense")

    t = time.time()
    finetune_dense(model, TrainConfig(lr=a.lr, **common), train_data, a.dense_steps, progress=False, task=task)
    t_dense = time.time() - t
    record("dense", as_lte(model), a.dense_steps, None, t_dense)
    start = copy.deepcopy(model)  # the dense fine-tuned model: LTE's starting point and its teacher
    extra = a.stage1_steps + a.stage2_steps
    t = time.time()
    finetune_dense(model, TrainConfig(lr=a.lte_lr, **common), train_data, extra, progress=False, task=task)
    record("dense (same budget)", as_lte(model), a.dense_steps + extra, None, t_dense + time.time() - t)
    del model

    teacher = make_teacher(start)
    lte.sparsify(start, lte.LTEConfig(separability_weight=0.0, seed=a.seed), progress=False)
    tcfg = TrainConfig(stage1_steps=a.stage1_steps, stage2_steps=a.stage2_steps, lr=a.lte_lr,
                       distill_weight=a.distill_weight, target_sparsity=a.target_sparsity, eval_every=10_000,
                       save_every=10_000, log_every=10, **common)
    t = time.time()
    train(start, tcfg, train_data, None, Path("runs") / "glue_minilm_cpu", tokenizer=tok, teacher=teacher,
          progress=False, task=task)
    lte.set_mode(start, "hard")
    record("lte", start, a.dense_steps + extra, a.target_sparsity, t_dense + time.time() - t)

    meta = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.node()} CPU, {platform.processor() or platform.machine()}, "
            f"torch threads {a.threads} (2-core VM shared with other jobs)", "device": "cpu",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "total_wall_s": round(time.time() - t_start),
            "note": "CPU smoke result, not the issue's GPU result: one seed, a short budget, GLUE dev; dense fine-tune "
                    f"{a.dense_steps} steps, LTE = those + stage 1 {a.stage1_steps} + stage 2 {a.stage2_steps} steps "
                    f"(distill {a.distill_weight} from the dense model), 'dense (same budget)' = dense for all steps",
            "config": vars(a)}
    for r in records:
        r.update({"device": "cpu", "date": meta["date"]})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": records}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
