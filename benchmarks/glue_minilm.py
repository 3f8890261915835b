"""GLUE result script: all-MiniLM-L6-v2 (or any BERT-family encoder) dense vs LTE vs MoEfication.

Protocol, per task and seed (train on ``train.tsv``, report on ``dev.tsv``, no model selection
on dev; QNLI has no training split here, see ``lte.glue``):

1. ``dense``: the encoder with a fresh classification head (seeded), fine-tuned for
   ``--dense-epochs`` epochs (lr ``--lr``). It is the shared starting point and the
   distillation teacher of every sparse method.
2. ``dense-same-budget``: step 1's model fine-tuned for the sparse budget more (``S`` examples,
   lr ``--sparse-lr``), so dense has seen as many examples as every sparse method.
3. ``lte`` at each target sparsity: step 1's model grouped into 32-neuron experts (balanced
   k-means), LTE stage 1 (``--stage1-epochs``) + stage 2 (``--stage2-epochs``) with the
   target-sparsity controller and distillation (``--distill-weight``) from step 1's model;
   evaluated in hard mode (only the selected experts run).
4. ``moefication`` at each target sparsity (LTE paper's configuration, ``lte.baselines``):
   step 1's model ReLU-fied and fine-tuned ``--moefication-epochs`` epochs (same lr,
   distillation), experts re-clustered (k-means), one MLP router per layer trained on the
   experts' activation mass, top-k experts at each target; hard mode.

Budget equality: after the shared dense model, every sparse method trains on the same number
of examples, ``S = (stage1 + stage2 epochs) x train size`` (MoEfication's fine-tune is
required to equal it; its routers are fitted on FFN inputs of ``--calib-examples``
training examples, the model frozen), and ``dense-same-budget`` gets the same ``S``. Tasks
named by ``--large-tasks`` (SST-2: 67k examples) scale every epoch count by
``--large-task-epoch-scale`` and use ``--large-task-seeds``.

Records (a JSON list, ``--out``, written atomically after every point; a rerun skips the
finished ``(task, method, target_sparsity, seed)`` points): ``task``, ``method``,
``target_sparsity`` (0 for dense), ``ffn_sparsity`` (neuron level, real tokens),
``union_sparsity`` (experts no token of an eval batch of ``--eval-batch-size`` needs),
``metric``, ``score`` (the task's primary metric in **percent**: accuracy, F1, Matthews
correlation x 100, Pearson x 100), ``metrics`` (all the task's metrics, also in percent),
``gflops_per_token``, ``train_examples`` (training set size), ``examples_seen`` (examples the
weights were trained on, the dense start included), ``epochs`` (= examples_seen /
train_examples), ``seed``, ``seconds`` (this point's own training + evaluation),
``device``, ``date``, ``command``.

Examples:
    PYTHONPATH=src python benchmarks/glue_minilm.py --model .dev/minilm --data .dev/data/glue \\
        --out benchmarks/results/glue_minilm.json --plot benchmarks/results/glue_minilm.png
    python benchmarks/glue_minilm.py --merge a.json,b.json --out all.json --plot all.png
    python benchmarks/glue_minilm.py --report-only --out benchmarks/results/glue_minilm.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

import lte
from lte import baselines as B
from lte.config import LTEConfig, TrainConfig
from lte.glue import ClassificationData, SequenceClassificationTask, _max_length, glue_split, parse_task
from lte.sweep import read_rows_file
from lte.train import finetune_dense, make_teacher, seed_everything, train

METHODS = ("dense", "dense-same-budget", "lte", "moefication")
DENSE = ("dense", "dense-same-budget")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
# flags that change the numbers: every record keeps them, and a resumed --out must match them
SETTINGS = ("model", "large_tasks", "large_task_epoch_scale", "dense_epochs", "stage1_epochs", "stage2_epochs",
            "batch_size", "eval_batch_size", "seq_len", "lr", "sparse_lr", "router_lr", "distill_weight",
            "predictor_epochs", "calib_examples", "max_train_examples", "max_eval_examples")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _names(s: str) -> list[str]:
    return [x.strip().lower() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (every one documented)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="alias minilm-l6, or a local Hugging Face encoder dir")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="GLUE folder (SST-2/, MRPC/, ... with train/dev.tsv)")
    ap.add_argument("--tasks", default="sst2,mrpc,rte,stsb,cola", help="comma-separated GLUE task names")
    ap.add_argument("--methods", default="dense,lte,moefication",
                    help="comma-separated: dense (also records dense-same-budget), lte, moefication")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9", help="target FFN sparsities of lte and moefication")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the small tasks")
    ap.add_argument("--large-tasks", default="sst2", help="tasks that use --large-task-seeds/-epoch-scale")
    ap.add_argument("--large-task-seeds", default="0", help="seeds of the large tasks")
    ap.add_argument("--large-task-epoch-scale", type=float, default=1 / 3,
                    help="every epoch count is multiplied by this on the large tasks")
    ap.add_argument("--dense-epochs", type=float, default=3.0, help="dense fine-tune of the shared start")
    ap.add_argument("--stage1-epochs", type=float, default=2.0, help="LTE stage 1 (soft, routers + model)")
    ap.add_argument("--stage2-epochs", type=float, default=1.0, help="LTE stage 2 (hard, model adapts)")
    ap.add_argument("--moefication-epochs", type=float, default=None,
                    help="MoEfication ReLU fine-tune; must equal stage1 + stage2 (the default)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (examples)")
    ap.add_argument("--eval-batch-size", type=int, default=64, help="eval batch (also the union-sparsity batch)")
    ap.add_argument("--seq-len", type=int, default=128, help="max tokens per example (pairs truncated jointly)")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of the dense fine-tune")
    ap.add_argument("--sparse-lr", type=float, default=5e-5,
                    help="learning rate of LTE, MoEfication's fine-tune and dense-same-budget")
    ap.add_argument("--router-lr", type=float, default=2e-3, help="LTE router weights (stage 1)")
    ap.add_argument("--distill-weight", type=float, default=0.5,
                    help="KL/MSE weight to the dense model (LTE and MoEfication fine-tune)")
    ap.add_argument("--predictor-epochs", type=int, default=20, help="MoEfication router training epochs")
    ap.add_argument("--calib-examples", type=int, default=512,
                    help="training examples whose FFN inputs train the MoEfication routers")
    ap.add_argument("--max-train-examples", type=int, default=None, help="first N training examples (smoke runs)")
    ap.add_argument("--max-eval-examples", type=int, default=None, help="first N dev examples (smoke runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="benchmarks/results/glue_minilm.json", help="results JSON (list of records)")
    ap.add_argument("--work-dir", default="runs/glue_minilm",
                    help="scratch: cached dense models and LTE run logs (a (task, seed) is removed when done)")
    ap.add_argument("--plot", default=None, help="PNG: score vs FFN sparsity, one line per task")
    ap.add_argument("--merge", default=None,
                    help="comma-separated JSON files to merge into --out (later files win), then report")
    ap.add_argument("--report-only", action="store_true", help="only read --out and print the table (+ --plot)")
    return ap


# ------------------------------------------------------------------------------ records
def _key(r: dict) -> tuple:
    return r["task"], r["method"], f"{float(r['target_sparsity']):.4g}", int(r["seed"])


def load_records(paths: list[str | Path]) -> list[dict]:
    """Records of several result files, deduplicated by point (later files win)."""
    merged: dict[tuple, dict] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise SystemExit(f"glue_minilm: {p}: no such file")
        try:
            rows = read_rows_file(p)
        except ValueError as e:
            raise SystemExit(f"glue_minilm: {e}") from e
        for r in rows:
            merged[_key(r)] = r
    return list(merged.values())


def write_records(path: str | Path, rows: list[dict]) -> None:
    """Atomic write of the sorted records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["task"], METHODS.index(r["method"]) if r["method"] in METHODS else 9,
                                       r["target_sparsity"], r["seed"]))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def _stat(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (task, method, target), with the difference to dense."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], float(r["target_sparsity"])), []).append(r)
    dense = {k[0]: _stat([r["score"] for r in v])[0] for k, v in groups.items() if k[1] == "dense"}
    out = []
    for (task, method, target), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], METHODS.index(kv[0][1]) if kv[0][1] in METHODS else 9, kv[0][2])):
        mean, std = _stat([r["score"] for r in rs])
        out.append({"task": task, "method": method, "target_sparsity": target, "metric": rs[0]["metric"],
                    "score_mean": mean, "score_std": std, "n": len(rs),
                    "ffn_sparsity": _stat([r["ffn_sparsity"] for r in rs])[0],
                    "union_sparsity": _stat([r["union_sparsity"] for r in rs])[0],
                    "gflops_per_token": _stat([r["gflops_per_token"] for r in rs])[0],
                    "delta": mean - dense[task] if task in dense else None,
                    "epochs": rs[0]["epochs"]})
    return out


def table(rows: list[dict]) -> str:
    """Markdown table: mean ± std over seeds per task/method/target; delta vs dense (points)."""
    lines = ["| task | metric | method | target | FFN sparsity | union sparsity | score (%) mean ± std (n) "
             "| Δ vs dense | GFLOPs/token | epochs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summarize(rows):
        delta = "" if s["delta"] is None or s["method"] == "dense" else f"{s['delta']:+.2f}"
        lines.append(f"| {s['task'].removeprefix('glue:')} | {s['metric']} | {s['method']} | "
                     f"{s['target_sparsity']:g} | {s['ffn_sparsity']:.3f} | {s['union_sparsity']:.3f} | "
                     f"{s['score_mean']:.2f} ± {s['score_std']:.2f} ({s['n']}) | {delta} | "
                     f"{s['gflops_per_token']:.4f} | {s['epochs']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Score vs FFN sparsity (one colour per task; LTE solid, MoEfication dashed, dense a
    dotted level) and the difference to dense; mean ± std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(rows)
    tasks = sorted({s["task"] for s in summ})
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, task in enumerate(tasks):
        c = cmap(i % 10)
        name = task.removeprefix("glue:")
        for s in summ:
            if s["task"] == task and s["method"] == "dense":
                axes[0].axhline(s["score_mean"], color=c, linestyle=":", linewidth=1)
        for method, style, marker in (("lte", "-", "o"), ("moefication", "--", "s")):
            ss = sorted((s for s in summ if s["task"] == task and s["method"] == method),
                        key=lambda s: s["ffn_sparsity"])
            if not ss:
                continue
            x = [s["ffn_sparsity"] for s in ss]
            for ax, key in ((axes[0], "score_mean"), (axes[1], "delta")):
                if key == "delta" and ss[0]["delta"] is None:
                    continue
                ax.errorbar(x, [s[key] for s in ss], yerr=[s["score_std"] for s in ss], color=c, linestyle=style,
                            marker=marker, capsize=3, label=f"{name} {method}")
    axes[0].set_ylabel("dev score (%; dotted: dense)")
    axes[1].set_ylabel("score - dense (points)")
    for lvl in (-1, -2):
        axes[1].axhline(lvl, color="grey", linewidth=0.8, linestyle=":")
    axes[1].axhline(0, color="black", linewidth=0.8)
    for ax in axes:
        ax.set_xlabel("FFN sparsity (neuron level, measured on dev)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("GLUE dev: LTE (solid) and MoEfication (dashed) vs FFN sparsity; mean ± std over seeds")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def report(rows: list[dict], plot_path: str | None) -> str:
    """Print the markdown table (and draw the plot); returns the table."""
    text = table(rows)
    print(text, flush=True)
    if plot_path:
        print(f"plot: {plot(rows, plot_path)}", flush=True)
    return text


# ------------------------------------------------------------------------------ running
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def _as_lte(model):
    """A dense-mode LTE copy of a plain model: same outputs, measured by the same evaluation."""
    m = copy.deepcopy(model)
    lte.sparsify(m, LTEConfig(grouping="random"), group=False, progress=False)
    return lte.set_mode(m, "dense")


def _steps(epochs: float, n: int, batch: int) -> int:
    return max(1, math.ceil(epochs * n / batch)) if epochs > 0 else 0


class _Runner:
    """One process's run: the flags, the records so far, and the record writer."""

    def __init__(self, a, argv: list[str]) -> None:
        self.a = a
        self.device = torch.device(a.device)
        self.rows = load_records([a.out]) if Path(a.out).is_file() else []
        self.settings = {k: getattr(a, k) for k in SETTINGS}
        other = [r for r in self.rows if r.get("settings", self.settings) != self.settings]
        if other:
            diff = sorted(k for k in SETTINGS if other[0]["settings"].get(k) != self.settings[k])
            raise SystemExit(f"glue_minilm: {a.out} holds {len(other)} record(s) measured with other settings "
                             f"({', '.join(diff)}); use another --out, or move it away")
        self.done = {_key(r) for r in self.rows}
        self.meta = {"device": _device_name(self.device),
                     "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                     "command": "python benchmarks/glue_minilm.py " + " ".join(argv)}

    def pending(self, task: str, seed: int, points: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return [(m, t) for m, t in points if (task, m, f"{t:.4g}", seed) not in self.done]

    def record(self, task, method: str, target: float, seed: int, ev: dict, n_train: int, seen: int,
               seconds: float) -> None:
        spec = task.spec
        rec = {"task": spec.name, "method": method, "target_sparsity": float(target),
               "ffn_sparsity": ev["ffn_sparsity"], "union_sparsity": ev["union_sparsity"],
               "metric": spec.primary, "score": 100.0 * ev["score"],
               "metrics": {k: 100.0 * ev[k] for k in spec.metrics}, "gflops_per_token": ev["gflops_per_token"],
               "train_examples": n_train, "examples_seen": seen, "epochs": seen / n_train, "seed": seed,
               "seconds": round(seconds, 2), "eval_examples": ev["examples"], "union_batch_size": ev["union_batch_size"],
               **self.meta, "settings": self.settings}
        self.rows = [r for r in self.rows if _key(r) != _key(rec)] + [rec]
        self.done.add(_key(rec))
        write_records(self.a.out, self.rows)
        print(f"[{spec.name} seed {seed}] {method:17s} target {target:.2f}: {spec.primary} {rec['score']:.2f}  "
              f"ffn_sparsity {rec['ffn_sparsity']:.3f}  union {rec['union_sparsity']:.3f}  "
              f"GFLOPs/token {rec['gflops_per_token']:.4f}  {seconds:.1f}s", flush=True)


def run_task(r: _Runner, name: str, methods: list[str], sparsities: list[float]) -> None:
    """Every pending point of one task: tokenised once, then seed by seed."""
    a = r.a
    spec = parse_task(f"glue:{name}")
    large = name in _names(a.large_tasks)
    seeds = _ints(a.large_task_seeds if large else a.seeds)
    scale = a.large_task_epoch_scale if large else 1.0
    points = ([("dense", 0.0), ("dense-same-budget", 0.0)] if "dense" in methods else []) + [
        (m, t) for m in ("lte", "moefication") if m in methods for t in sparsities]
    if not any(r.pending(spec.name, s, points) for s in seeds):
        print(f"[{spec.name}] all points done", flush=True)
        return
    train_ex, dev_ex = glue_split(a.data, spec, "train"), glue_split(a.data, spec, "dev")
    if a.max_train_examples:
        train_ex = train_ex.slice(0, a.max_train_examples)
    if a.max_eval_examples:
        dev_ex = dev_ex.slice(0, a.max_eval_examples)
    tok = None
    for seed in seeds:
        pending = r.pending(spec.name, seed, points)
        if not pending:
            continue
        seed_everything(seed)  # the classification head's initialisation
        model, tok_ = lte.load_model(a.model, task="sequence-classification", num_labels=spec.num_labels,
                                     device=a.device)
        if tok is None:  # tokenise once per task
            tok = tok_
            max_len = _max_length(tok, model, a.seq_len)
            t0 = time.time()
            train_data = ClassificationData(train_ex, tok, spec, max_len)
            dev = ClassificationData(dev_ex, tok, spec, max_len)
            print(f"[{spec.name}] {len(train_data)} train / {len(dev)} dev examples tokenised (max {max_len} "
                  f"tokens) in {time.time() - t0:.1f}s", flush=True)
        run_seed(r, spec, seed, model, train_data, dev, pending, scale)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_seed(r: _Runner, spec, seed: int, model, train_data: ClassificationData, dev: ClassificationData,
             pending: list[tuple[str, float]], scale: float) -> None:
    """The dense start (cached in the work dir), then the pending points of one seed."""
    a = r.a
    n, bs = len(train_data), a.batch_size
    task = SequenceClassificationTask(spec)
    common = dict(batch_size=bs, seq_len=a.seq_len, seed=seed, mixed_precision="auto")
    dense_steps = _steps(a.dense_epochs * scale, n, bs)
    s1, s2 = _steps(a.stage1_epochs * scale, n, bs), _steps(a.stage2_epochs * scale, n, bs)
    budget = s1 + s2  # every sparse method's (and dense-same-budget's) training steps after the dense start
    print(f"[{spec.name} seed {seed}] {n} examples, batch {bs}: dense {dense_steps} steps, then {budget} steps per "
          f"method (LTE stage 1 {s1} + stage 2 {s2}); pending: {', '.join(f'{m}@{t:g}' for m, t in pending)}",
          flush=True)
    work = Path(a.work_dir) / f"{spec.name.replace(':', '_')}_seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "dense.pt"
    t0 = time.time()
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location=r.device))
        dense_seconds = json.loads((work / "dense.json").read_text())["seconds"]
    else:
        finetune_dense(model, TrainConfig(lr=a.lr, **common), train_data, dense_steps, progress=False, task=task)
        dense_seconds = time.time() - t0
        torch.save(model.state_dict(), work / "dense.pt.tmp")
        os.replace(work / "dense.pt.tmp", cache)
        (work / "dense.json").write_text(json.dumps({"seconds": dense_seconds}))
    for p in model.parameters():
        p.requires_grad_(False)
    start_seen = dense_steps * bs
    seen = (dense_steps + budget) * bs

    def evaluate(m) -> dict:
        return task.evaluate(m, dev, a.eval_batch_size)

    if ("dense", 0.0) in pending:
        t = time.time()
        r.record(task, "dense", 0.0, seed, evaluate(_as_lte(model)), n, start_seen, dense_seconds + time.time() - t)
    if ("dense-same-budget", 0.0) in pending:
        t = time.time()
        m = copy.deepcopy(model)
        finetune_dense(m, TrainConfig(lr=a.sparse_lr, **common), train_data, budget, progress=False, task=task)
        r.record(task, "dense-same-budget", 0.0, seed, evaluate(_as_lte(m)), n, seen, time.time() - t)
        del m
    teacher = make_teacher(model)
    lte_targets = [t for m, t in pending if m == "lte"]
    moe_targets = [t for m, t in pending if m == "moefication"]
    grouped = None
    if lte_targets or moe_targets:
        t = time.time()
        grouped = copy.deepcopy(model)
        lte.sparsify(grouped, LTEConfig(separability_weight=0.0, seed=seed), progress=False)
        group_seconds = time.time() - t
    for target in lte_targets:
        t = time.time()
        m = copy.deepcopy(grouped)
        tcfg = TrainConfig(stage1_steps=s1, stage2_steps=s2, lr=a.sparse_lr, router_lr=a.router_lr,
                           distill_weight=a.distill_weight, target_sparsity=target, eval_every=10**9,
                           save_every=10**9, log_every=10, **common)
        run_dir = work / f"lte_{target:g}"
        train(m, tcfg, train_data, None, run_dir, teacher=teacher, progress=False, task=task)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # keep the log, not the weights
        lte.set_mode(m, "hard")
        r.record(task, "lte", target, seed, evaluate(m), n, seen, group_seconds + time.time() - t)
        del m
    if moe_targets:
        t = time.time()
        m0 = copy.deepcopy(grouped)
        B.relufy(m0)
        B.adapt(m0, TrainConfig(lr=a.sparse_lr, distill_weight=a.distill_weight, **common), train_data, budget,
                teacher=teacher, desc="moefication relu fine-tune", task=task)
        B.regroup(m0, seed=seed)
        n_cal = min(a.calib_examples, n)
        calib = [task.model_inputs(train_data.batch(torch.arange(i, min(i + bs, n_cal)))) for i in range(0, n_cal, bs)]
        routers = B.train_routers(m0, calib, epochs=a.predictor_epochs, seed=seed)
        shared = time.time() - t
        for target in moe_targets:
            t = time.time()
            m = copy.deepcopy(m0)
            B.apply_moefication(m, target, routers)
            r.record(task, "moefication", target, seed, evaluate(m), n, seen, shared + time.time() - t)
            del m
        del m0
    if not r.pending(spec.name, seed, pending):
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run (or resume) the benchmark, or only report; returns the records."""
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    if a.merge:
        rows = load_records(a.merge.split(","))
        write_records(a.out, rows)
        print(f"merged {len(rows)} records into {a.out}", flush=True)
        report(rows, a.plot)
        return rows
    if a.report_only:
        rows = load_records([a.out])
        report(rows, a.plot)
        return rows
    methods = _names(a.methods)
    bad = [m for m in methods if m not in ("dense", "lte", "moefication")]
    if bad or not methods:
        raise SystemExit(f"glue_minilm: unknown method(s) {bad}; choose from dense, lte, moefication")
    sparsities = _floats(a.sparsities)
    if any(not 0 < t < 1 for t in sparsities):
        raise SystemExit("glue_minilm: --sparsities must lie in (0, 1)")
    moe_epochs = a.stage1_epochs + a.stage2_epochs
    if a.moefication_epochs is not None and not math.isclose(a.moefication_epochs, moe_epochs):
        raise SystemExit(f"glue_minilm: --moefication-epochs {a.moefication_epochs} breaks the equal budget "
                         f"(stage1 + stage2 = {moe_epochs} epochs)")
    if a.threads:
        torch.set_num_threads(a.threads)
    runner = _Runner(a, argv)
    t0 = time.time()
    print(f"glue_minilm: {a.model} on {runner.meta['device']}; out {a.out}", flush=True)
    for name in _names(a.tasks):
        run_task(runner, name, methods, sparsities)
    print(f"glue_minilm: done in {time.time() - t0:.0f}s", flush=True)
    report(runner.rows, a.plot)
    return runner.rows


if __name__ == "__main__":
    main()
