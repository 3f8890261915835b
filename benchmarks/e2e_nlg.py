"""E2E NLG with SmolLM2-135M: dense fine-tune vs LTE at several target sparsities vs a baseline.

Protocol (../shared/data/README.md, lte.e2e):
1. Dense fine-tune on ``trainset.csv`` (prompt ``"Meaning representation: {mr}\\nDescription:"``,
   target ``" ref" + EOS``, loss on the target only; examples packed into ``--seq-len``
   blocks) for ``--epochs`` epochs; after each epoch the response perplexity on the first
   ``--dev-examples`` pairs of ``devset.csv`` is measured and the best epoch's weights are kept
   (early stopping). The dense model is saved to ``--work-dir/dense.pt`` (a resumed run
   reloads it) and is the starting point and distillation teacher of every sparse method.
2. LTE at each ``--targets`` sparsity: balanced k-means experts of 32 neurons, stage 1 + 2
   with the target controller and KL distillation from the dense model, ``--sparse-epochs``
   epochs of the same packed blocks (stage 1 gets ``--stage1-fraction`` of the steps).
3. One baseline (``--baseline``, at ``--baseline-target``) from ``lte.baselines`` with the same
   budget: trained baselines are adapted with ``lte.baselines.adapt`` on the same packed
   blocks for the same steps with the same distillation (its public API takes token blocks, so
   its loss covers every token, MR included; LTE's covers the references only).
4. Each model generates one output per distinct MR of ``testset_w_refs.csv`` (greedy, and
   beam search with ``--beams``), scored against all references (sacrebleu BLEU, rouge-score
   ROUGE-L; lte.e2e). Generation runs batched (``--gen-batch-size``) in ``--gen-dtype`` with
   the kernel backend ``--backend`` (``auto``: Triton on CUDA); ``tokens_per_s`` is that
   batched run's rate. ``tokens_per_s_batch1`` is greedy generation one MR at a time over the
   first ``--speed-mrs`` MRs (after a warm-up), where hard mode runs the decode kernel.

Output: ``--out`` (JSON list, one row per method/target/decoding; written atomically after every
point; a rerun skips the rows already there). Generations: ``--gen-dir/<method>_<target>_<decoding>/
generations.jsonl`` (+ ``scores.json``). Checkpoints and training logs: ``--work-dir``.

Usage: python benchmarks/e2e_nlg.py --data ../shared/data/e2e --out benchmarks/results/e2e_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lte
from lte import baselines as B
from lte.e2e import encode_pairs, evaluate_e2e, generate_batch, group_by_mr, prompt, read_pairs, split_path
from lte.sft import SFTData, SFTTask, _pad_id, response_perplexity
from lte.train import finetune_dense, make_teacher, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAINING_KEYS = ("model", "seq_len", "batch_size", "grad_accum", "epochs", "sparse_epochs", "stage1_fraction", "lr",
                 "stage_lr", "router_lr", "router_bias_lr", "stage2_bias_gain", "distill_weight", "separability_weight",
                 "max_train_examples", "expert_size", "router_init")
# training settings added after work dirs were first written: the value they were trained with
_SETTINGS_BEFORE_RECORDED = {"stage2_bias_gain": 0.2, "router_init": "random"}
BASELINES = ("cats-finetune", "cats-nofinetune", "teal-ffn", "topk-softmax", "none")


# ----------------------------------------------------------------------------- shared helpers
def log(msg: str) -> None:
    """A progress line (flushed, time-stamped)."""
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def device_name(device: str) -> str:
    """The accelerator's name, or the CPU's."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class Results:
    """The rows of an output JSON file, keyed for resuming; ``add`` rewrites the file."""

    def __init__(self, path: Path, key: Callable[[dict], tuple], stamp: dict) -> None:
        self.path, self.key, self.stamp = path, key, stamp
        self.rows: list[dict] = json.loads(path.read_text()) if path.is_file() else []
        if not isinstance(self.rows, list):
            raise SystemExit(f"{path}: not a JSON list of results")

    def done(self, *key) -> bool:
        """Whether a row with this key exists."""
        return any(self.key(r) == tuple(key) for r in self.rows)

    def add(self, row: dict) -> None:
        """Append a row (with device/date/command) and write the file."""
        row = {**row, **self.stamp}
        self.rows = [r for r in self.rows if self.key(r) != self.key(row)] + [row]
        atomic_write_json(self.path, self.rows)
        log("result " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                    for k, v in row.items() if k != "command"}))


def stamp() -> dict:
    """``date`` and ``command`` of this run."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + " ".join(sys.argv)}


def free_memory() -> None:
    """Collect garbage and release cached GPU memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dense_finetune_best(model, tcfg: lte.TrainConfig, train_data, dev_data, epochs: int, steps_per_epoch: int,
                        batch_size: int) -> tuple[list[dict], int]:
    """Fine-tune ``epochs`` times one epoch (a cosine schedule each), measuring the dev response
    perplexity after each; leaves the best epoch's weights in ``model``. Returns (per-epoch
    records, steps trained up to the best epoch)."""
    hist, best, best_state = [], float("inf"), None
    for ep in range(epochs):
        t0 = time.time()
        losses = finetune_dense(model, lte.TrainConfig(**{**tcfg.to_dict(), "seed": tcfg.seed + ep}), train_data,
                                steps_per_epoch, progress=False, task=SFTTask())
        probe = copy.deepcopy(model)  # the evaluation gives a plain model LTE layers (dense mode) in place
        ppl = response_perplexity(probe, dev_data, batch_size=batch_size)["perplexity"]
        del probe
        hist.append({"epoch": ep + 1, "train_loss": sum(losses[-20:]) / len(losses[-20:]), "dev_perplexity": ppl,
                     "seconds": round(time.time() - t0, 1)})
        log(f"dense epoch {ep + 1}/{epochs}: dev response ppl {ppl:.3f} ({hist[-1]['seconds']} s)")
        if ppl < best:
            best, best_state = ppl, {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None and hist[-1]["dev_perplexity"] > best:
        model.load_state_dict(best_state)
    best_ep = min(range(len(hist)), key=lambda i: hist[i]["dev_perplexity"]) + 1
    return hist, best_ep * steps_per_epoch


def load_or_train_dense(path: Path, model, train_fn: Callable[[], dict]) -> dict:
    """Reload the dense model's weights (and its training record) from ``path``, or train it
    with ``train_fn`` (which returns the record) and save both atomically."""
    if path.is_file():
        blob = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
        model.load_state_dict(blob["state"])
        log(f"dense model reloaded from {path}")
        return blob["record"]
    rec = train_fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"state": model.state_dict(), "record": rec}, tmp)
    os.replace(tmp, path)
    return rec


def check_work_dir(work: Path, settings: dict) -> None:
    """Refuse a work dir whose saved checkpoints were made with other training settings."""
    f = work / "settings.json"
    if f.is_file():
        old = {**{k: v for k, v in _SETTINGS_BEFORE_RECORDED.items() if k in settings}, **json.loads(f.read_text())}
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SystemExit(f"{work} holds checkpoints of other settings ({', '.join(diff)} differ); "
                             "use another --work-dir or delete it")
    else:
        atomic_write_json(f, settings)


def budget(a, n_blocks: int) -> tuple[int, int, int]:
    """(dense steps per epoch, steps of every sparse method, tokens per step) for ``n_blocks``."""
    steps_per_epoch = max(n_blocks // (a.batch_size * a.grad_accum), 1)
    return (steps_per_epoch, max(int(round(a.sparse_epochs * steps_per_epoch)), 2),
            a.batch_size * a.grad_accum * a.seq_len)


def lte_train_config(a, steps: int, target: float) -> lte.TrainConfig:
    """The TrainConfig of an LTE run of ``steps`` steps at ``target`` (flags of both scripts)."""
    s1 = max(1, int(round(steps * a.stage1_fraction)))
    return lte.TrainConfig(stage1_steps=s1, stage2_steps=max(steps - s1, 1), lr=a.stage_lr or a.lr,
                           router_lr=a.router_lr, router_bias_lr=a.router_bias_lr, batch_size=a.batch_size,
                           grad_accum=a.grad_accum, seq_len=a.seq_len, distill_weight=a.distill_weight,
                           target_sparsity=target, stage1_gate="ste", stage2_bias_gain=a.stage2_bias_gain,
                           eval_every=10**9, save_every=10**9,
                           log_every=10, seed=0)


def sparsify_lte(model, a, train_data=None) -> None:
    """k-means experts of ``--expert-size`` neurons + routers (the LTE configuration both scripts use);
    with ``--router-init calibrated`` the routers are fitted on the first 16 blocks of
    ``train_data`` (baselines pass none: they do not use the LTE routers)."""
    calib, init = None, a.router_init if train_data is not None else "random"
    if init == "calibrated":
        n = min(16, len(train_data))
        calib = [train_data.batch(torch.arange(i, min(i + 4, n))) for i in range(0, n, 4)]
    lte.sparsify(model, lte.LTEConfig(expert_size=a.expert_size, separability_weight=a.separability_weight,
                                      router_init=init), calibration=calib, progress=False)


def train_lte(dense, a, target: float, steps: int, train_data, val_data, work: Path, tok, teacher) -> tuple[Any, dict]:
    """(LTE copy of ``dense`` trained at ``target`` for ``steps`` steps, trainer summary); resumes
    from ``work/lte_TARGET/checkpoint`` when a previous run left one."""
    m = copy.deepcopy(dense)
    sparsify_lte(m, a, train_data)
    tcfg = lte_train_config(a, steps, target)
    log(f"LTE {target:g}: {tcfg.stage1_steps} + {tcfg.stage2_steps} steps")
    summary = train(m, tcfg, train_data, val_data, work / f"lte_{target:g}", tokenizer=tok, teacher=teacher,
                    resume=True, progress=False, task=SFTTask())
    return m, summary


def add_training_args(ap: argparse.ArgumentParser, seq_len: int, epochs: int, sparse_epochs: float,
                      lr: float) -> None:
    """The training flags both scripts share."""
    ap.add_argument("--seq-len", type=int, default=seq_len, help=f"packed block length (default {seq_len})")
    ap.add_argument("--batch-size", type=int, default=16, help="blocks per optimizer micro-step (default 16)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (default 1)")
    ap.add_argument("--epochs", type=int, default=epochs,
                    help=f"dense fine-tune epochs, best on the held-out set kept (default {epochs})")
    ap.add_argument("--sparse-epochs", type=float, default=sparse_epochs,
                    help=f"training budget of every sparse method, in epochs of the train blocks "
                         f"(default {sparse_epochs})")
    ap.add_argument("--stage1-fraction", type=float, default=0.67, help="LTE: share of steps in stage 1 (default 0.67)")
    ap.add_argument("--lr", type=float, default=lr, help=f"dense fine-tune learning rate (default {lr})")
    ap.add_argument("--stage-lr", type=float, default=None, help="model lr of the sparse methods (default --lr)")
    ap.add_argument("--router-lr", type=float, default=1e-2,
                    help="LTE router weight lr (default 1e-2, as lte train; the GPU results of 2026-11-28 used 2e-3)")
    ap.add_argument("--router-bias-lr", type=float, default=5e-2, help="LTE router bias lr (default 5e-2)")
    ap.add_argument("--stage2-bias-gain", type=float, default=lte.TrainConfig.stage2_bias_gain,
                    help="LTE: gain of the router-bias loop that holds the target in stage 2 "
                         f"(default {lte.TrainConfig.stage2_bias_gain})")
    ap.add_argument("--distill-weight", type=float, default=0.9,
                    help="KL weight of distillation from the dense model (default 0.9)")
    ap.add_argument("--separability-weight", type=float, default=0.0,
                    help="LTE separability loss weight (default 0: measured best with the ste gate)")
    ap.add_argument("--max-train-examples", type=int, default=None, help="use only the first N training examples")
    ap.add_argument("--expert-size", type=int, default=32, help="neurons per LTE expert block (default 32)")
    ap.add_argument("--router-init", choices=["random", "calibrated"], default="random",
                    help="LTE router start: random (default) or calibrated (fitted to expert importance first)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device (default cuda when available)")


# ----------------------------------------------------------------------------- E2E
def baseline_model(name: str, dense, a, train_blocks: torch.Tensor, steps: int, teacher) -> tuple[Any, int]:
    """(model with the baseline at ``--baseline-target``, optimizer steps it trained)."""
    m = copy.deepcopy(dense)
    sparsify_lte(m, a)
    lte.set_mode(m, "dense")
    n_cal = max(1, -(-a.calib_tokens // a.seq_len))
    cal = [train_blocks[i:i + a.batch_size] for i in range(0, min(n_cal, len(train_blocks)), a.batch_size)]
    tcfg = lte.TrainConfig(lr=a.stage_lr or a.lr, batch_size=a.batch_size, grad_accum=a.grad_accum,
                           seq_len=a.seq_len, distill_weight=a.distill_weight, seed=0)
    t = a.baseline_target
    if name.startswith("cats"):
        B.apply_cats(m, t, cal)
        if name == "cats-finetune":
            B.adapt(m, tcfg, train_blocks, steps, teacher=teacher, desc="cats fine-tune")
            B.recalibrate(m, cal)
            return m, steps
        return m, 0
    if name == "teal-ffn":
        B.apply_teal(m, t, cal)
        return m, 0
    if name == "topk-softmax":
        B.apply_noisy_topk(m, t)
        B.adapt(m, tcfg, train_blocks, steps, teacher=teacher, aux_weight=1e-2, desc="noisy top-k training")
        return m, steps
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


def main(argv: list[str] | None = None) -> None:
    """Run the E2E benchmark (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "e2e"), help="E2E folder (trainset.csv, devset.csv, "
                    "testset_w_refs.csv); default ../shared/data/e2e")
    ap.add_argument("--model", default="smollm2-135m", help="model alias or path (e.g. a .gguf file)")
    ap.add_argument("--out", default="benchmarks/results/e2e_smollm2.json", help="results JSON file")
    ap.add_argument("--work-dir", default="runs/e2e_nlg", help="dense checkpoint and training logs")
    ap.add_argument("--gen-dir", default="benchmarks/results/e2e_generations",
                    help="generations (one folder per method/target/decoding)")
    ap.add_argument("--targets", default="0.5,0.75,0.9", help="LTE target sparsities (default 0.5,0.75,0.9)")
    ap.add_argument("--baseline", default="cats-finetune", choices=BASELINES,
                    help="the baseline method (default cats-finetune; none to skip)")
    ap.add_argument("--baseline-target", type=float, default=0.5, help="the baseline's target sparsity (default 0.5)")
    ap.add_argument("--calib-tokens", type=int, default=16384, help="baseline calibration tokens (default 16384)")
    ap.add_argument("--decodings", default="greedy,beam", help="greedy and/or beam (default both)")
    ap.add_argument("--beams", type=int, default=4, help="beam width of beam decoding (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated at most per MR (default 64)")
    ap.add_argument("--gen-batch-size", type=int, default=128, help="MRs per generation batch (default 128)")
    ap.add_argument("--gen-dtype", default=None, choices=["bfloat16", "float32"],
                    help="weights dtype for generation (default bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--backend", default="auto", help="hard-mode kernel backend (default auto: triton on CUDA)")
    ap.add_argument("--speed-mrs", type=int, default=4,
                    help="MRs generated one at a time for tokens_per_s_batch1 (default 4; 0 skips)")
    ap.add_argument("--dev-examples", type=int, default=1000,
                    help="devset pairs (first N) for early stopping and the LTE held-out set (default 1000)")
    ap.add_argument("--max-test-mrs", type=int, default=None, help="evaluate only the first N distinct test MRs")
    add_training_args(ap, seq_len=256, epochs=2, sparse_epochs=0.5, lr=1e-4)
    a = ap.parse_args(argv)
    from lte.e2e import check_scorers
    check_scorers()  # before any training: a missing scorer must not cost the run

    decodings = [d for d in a.decodings.split(",") if d]
    if not decodings or any(d not in ("greedy", "beam") for d in decodings):
        raise SystemExit(f"--decodings must be greedy and/or beam, got {a.decodings!r}")
    targets = [float(t) for t in a.targets.split(",") if t]
    device = a.device
    gen_dtype = getattr(torch, a.gen_dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    out, work, gen_dir = Path(a.out), Path(a.work_dir), Path(a.gen_dir)
    res = Results(out, lambda r: (r["method"], float(r["target_sparsity"]), r["decoding"]),
                  {"device": device_name(device), **stamp()})
    points = [("dense", 0.0)] + [("lte", t) for t in targets]
    if a.baseline != "none":
        points.append((a.baseline, a.baseline_target))
    todo = [(m, t) for m, t in points if not all(res.done(m, t, d) for d in decodings)]
    check_work_dir(work, {k: getattr(a, k) for k in TRAINING_KEYS + ("data", "dev_examples")})
    log(f"{len(points)} points x {len(decodings)} decodings; {len(todo)} points to run")
    if not todo:
        return

    t_load = time.time()
    model, tok = lte.load_model(a.model, device=device)
    train_rows = read_pairs(split_path(a.data, "train"))
    if a.max_train_examples:
        train_rows = train_rows[: a.max_train_examples]
    dev_rows = read_pairs(split_path(a.data, "dev"))[: a.dev_examples]
    tr, dropped = encode_pairs(train_rows, tok, None)
    pad = _pad_id(tok)
    train_data = SFTData(tr, pad, packed=True, max_len=a.seq_len, dropped=dropped)
    dv, d2 = encode_pairs(dev_rows, tok, a.seq_len)
    dev_data = SFTData(dv, pad, dropped=d2)
    test_groups = group_by_mr(read_pairs(split_path(a.data, "test")))
    if a.max_test_mrs:
        test_groups = test_groups[: a.max_test_mrs]
    steps_per_epoch, sparse_steps, tokens_per_step = budget(a, len(train_data))
    log(f"loaded {a.model} + data in {time.time() - t_load:.0f} s: {len(train_rows)} train pairs -> "
        f"{len(train_data)} blocks of {a.seq_len} ({steps_per_epoch} steps/epoch), {len(dev_data)} dev pairs, "
        f"{len(test_groups)} test MRs; sparse budget {sparse_steps} steps")

    base_cfg = lte.TrainConfig(lr=a.lr, batch_size=a.batch_size, grad_accum=a.grad_accum, seq_len=a.seq_len, seed=0)

    def train_dense() -> dict:
        t0 = time.time()
        hist, steps = dense_finetune_best(model, base_cfg, train_data, dev_data, a.epochs, steps_per_epoch,
                                          a.batch_size)
        return {"history": hist, "steps": steps, "seconds": time.time() - t0}

    dense_rec = load_or_train_dense(work / "dense.pt", model, train_dense)
    dense_tokens = dense_rec["steps"] * tokens_per_step
    teacher = None

    def speed_b1(m) -> float | None:
        if a.speed_mrs <= 0:
            return None
        prompts = [prompt(mr) for mr, _ in test_groups[: a.speed_mrs]]
        generate_batch(m, tok, prompts[:1], 8, 1, 1, progress=False)  # warm-up (kernel compilation)
        _, n_new, secs, _ = generate_batch(m, tok, prompts, a.max_new_tokens, 1, 1, progress=False)
        return n_new / secs if secs > 0 else None

    def evaluate(m, method: str, target: float, extra: dict, t_start: float) -> None:
        gm = copy.deepcopy(m).to(gen_dtype)
        from lte.pipeline import _ensure_lte
        _ensure_lte(gm)
        lte.set_backend(gm, a.backend)
        b1 = speed_b1(gm)
        for dec in decodings:
            if res.done(method, target, dec):
                continue
            t0 = time.time()
            r = evaluate_e2e(gm, tok, a.data, "test", dec, a.beams, a.max_new_tokens, a.gen_batch_size,
                             a.max_test_mrs, gen_dir / f"{method}_{target:g}_{dec}", progress=False)
            res.add({"method": method, "target_sparsity": target, "ffn_sparsity": r["ffn_sparsity"],
                     "bleu": r["bleu"], "rouge_l": r["rouge_l"], "gflops_per_token": r["gflops_per_token"],
                     "decoding": dec, "num_beams": r["num_beams"], "tokens_per_s": r["tokens_per_s"],
                     "tokens_per_s_batch1": b1, "generated_tokens": r["tokens"], "mrs": r["mrs"],
                     "train_examples": len(train_rows), "seconds": round(time.time() - t_start, 1),
                     "eval_seconds": round(time.time() - t0, 1), "gen_dtype": str(gen_dtype).replace("torch.", ""),
                     "backend": a.backend, "bleu_signature": r["bleu_signature"],
                     "generations": str(Path(r["out_dir"]) / "generations.jsonl"), **extra})
        del gm
        free_memory()

    for method, target in todo:
        t0 = time.time()
        if method == "dense":
            m = copy.deepcopy(model)
            evaluate(m, "dense", 0.0, {"train_tokens": dense_tokens, "dense_epochs": dense_rec["history"],
                                       "train_seconds": round(dense_rec["seconds"], 1)}, t0)
            del m
            continue
        if teacher is None and a.distill_weight > 0:
            teacher = make_teacher(model)
        if method == "lte":
            m, summary = train_lte(model, a, target, sparse_steps, train_data, dev_data, work, tok, teacher)
            extra = {"train_tokens": dense_tokens + summary["train_tokens"], "train_seconds": round(time.time() - t0, 1),
                     "dev_perplexity": summary.get("val_perplexity"), "dev_ffn_sparsity": summary.get("val_ffn_sparsity"),
                     "final_eta": summary["final_eta"]}
        else:
            log(f"{method} {target:g}: {sparse_steps} steps")
            m, steps = baseline_model(method, model, a, train_data.ids, sparse_steps, teacher)
            extra = {"train_tokens": dense_tokens + steps * tokens_per_step,
                     "train_seconds": round(time.time() - t0, 1), "calib_tokens": a.calib_tokens}
        evaluate(m, method, target, extra, t0)
        del m
        free_memory()
    log(f"done: {out}")


if __name__ == "__main__":
    main()
