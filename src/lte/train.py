"""The two-stage LTE trainer.

Stage 1 (soft): routers and model train together; loss = task + eta * efficiency +
lambda * separability (eta fixed, or set by the target-sparsity controller).
Stage 2 (hard): routers frozen, threshold selection, the model adapts on the task loss.
Either stage can add distillation from a frozen dense teacher (KL on logits):
``loss_task = (1 - a) * CE + a * KL``.

Everything a long run needs: AdamW with warm-up and cosine/linear decay per stage, gradient
accumulation and clipping, bf16 autocast on GPU, optional gradient checkpointing, seeded
data order that depends only on the step (so a resumed run sees the same batches),
JSONL logs (and TensorBoard when installed), evaluation every N steps, and atomic
checkpoints every N steps and at each stage's end. ``resume=True`` continues from
``out_dir/checkpoint``.

Throughput: each train record carries ``tokens`` (real input tokens of the step over all
processes: attention-mask tokens when the batch has a mask, else every token), ``step_s``
(wall time of the step, CUDA synchronised) and ``tokens_per_s`` = tokens / step_s; logged
records add ``interval_tokens`` / ``interval_s`` / ``interval_steps`` summed over every step
since the previous logged record (so a logged rate covers all steps, not a sample), and on
CUDA ``peak_mem_gb`` (this process's peak allocated memory). ``train_tokens`` in the summary
is the sum of ``tokens``.

Profiling: ``LTE_PROFILE=START:COUNT`` (e.g. ``20:5``) runs ``torch.profiler`` (CPU, plus CUDA
when available; no shapes, no stacks) around optimizer steps START..START+COUNT-1, counted
from 0 (log records' ``step`` START+1..START+COUNT). Each step's phases are labelled
(``lte/data``, ``lte/forward_loss``, ``lte/backward``, ``lte/stats``: sparsity and loss readout,
``lte/grad_clip``, ``lte/optimizer_step``, ``lte/sync_log``: cross-process mean, controller,
router-bias shift, CUDA sync). Every process writes ``out_dir/profile_rank{R}.txt`` (wall time of
the profiled steps; per phase host/device ms and DTensor dispatches, collectives and kernel
launches per step; FSDP's labels summed over units; top-40 tables by self CPU and self device time) and
``out_dir/profile_rank{R}.json`` (chrome trace; above 20 MB gzipped to ``.json.gz``, skipped if
that is still above 20 MB; the txt says which).
The profiler slows the profiled steps; their losses are unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from torch.profiler import record_function
from tqdm.auto import tqdm

from .compiling import compile_blocks, uncompile_blocks
from .config import TrainConfig, layer_offsets
from .controller import SparsityController
from .data import batch_indices
from .dist import DistEnv, fsdp_param_dtype, is_sharded
from .io import WEIGHTS_FILE, save
from .losses import router_losses
from .models import without_kv_cache
from .profiling import StepProfiler, profile_window
from .sparsify import lte_layers, router_parameters, set_mode, stats
from .tasks import CausalLMTask, as_task_data

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def make_teacher(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen dense copy of a model (LTE or plain), for distillation."""
    teacher = copy.deepcopy(model)
    if getattr(teacher, "lte_config", None) is not None:
        set_mode(teacher, "dense")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Input tokens of a batch that are not padding (attention-mask ones, else all ``input_ids``)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(batch["input_ids"].numel())


def _lr_lambda(total: int, warmup: int, schedule: str):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


@dataclass
class _Logger:
    path: Path
    tb: Any = None
    records: list = field(default_factory=list)
    enabled: bool = True

    def log(self, rec: dict) -> None:
        self.records.append(rec)
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{rec.get('kind', 'train')}/{k}", v, rec["step"])


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(out / "tb"))
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None


class Trainer:
    """Runs both LTE stages on packed token blocks (see module docstring)."""

    def __init__(self, model, tcfg: TrainConfig, train_data, val_data, out_dir: str | os.PathLike, tokenizer=None,
                 teacher=None, progress: bool = True, task=None) -> None:
        self.model, self.cfg, self.tok = model, tcfg, tokenizer
        self.lte_cfg = model.lte_config
        self.train_data, self.val_data = as_task_data(train_data), as_task_data(val_data)
        self.task = task or CausalLMTask()
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dist = DistEnv()
        self.progress = progress and self.dist.is_main
        if self.dist.device is not None:
            model.to(self.dist.device)
            if teacher is not None:
                teacher.to(self.dist.device)
        self.device = next(model.parameters()).device
        self.teacher = teacher
        if tcfg.distill_weight > 0 and teacher is None:
            self.teacher = make_teacher(model)
        mp = tcfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if self.device.type == "cuda" else "no"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
        self.layers = lte_layers(model)
        offsets = None if tcfg.layer_target_offsets is None else layer_offsets(
            tcfg.layer_target_offsets, len(self.layers), tcfg.target_sparsity)
        self.controller = SparsityController(
            tcfg.target_sparsity, tcfg.stage1_steps, tcfg.ramp_fraction, tcfg.controller_gain,
            eta_init=tcfg.eta_init if tcfg.target_sparsity is not None else max(self.lte_cfg.efficiency_weight, 1e-4),
            eta_max=tcfg.eta_max, separability=self.lte_cfg.separability_weight,
            separability_ramp=tcfg.separability_ramp, bias_gain=tcfg.bias_control_gain, layer_offsets=offsets)
        self.step = 0
        self.tokens_seen = 0  # real (non-padding) input tokens trained on, over all processes
        self._interval = [0, 0.0, 0]  # tokens, seconds, steps since the last logged record
        self.opt = self.sched = None
        self._stage_built = None
        self.run_model = model  # what forward/backward go through (DDP-wrapped when distributed)
        if tcfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.logger = _Logger(self.out / "log.jsonl", _tensorboard(self.out) if self.dist.is_main else None,
                              enabled=self.dist.is_main)
        self.profiler = StepProfiler(profile_window(), self.out, self.dist.rank)  # LTE_PROFILE (inactive unless set)

    # ------------------------------------------------------------------ setup
    @property
    def total_steps(self) -> int:
        return self.cfg.stage1_steps + self.cfg.stage2_steps

    def stage_of(self, step: int) -> int:
        return 1 if step < self.cfg.stage1_steps else 2

    def _build_stage(self, stage: int) -> None:
        cfg = self.cfg
        pdt = fsdp_param_dtype()  # None: gather fp32 (routers stay fp32); bf16 compute comes from autocast
        self.dist.shard(self.model, pdt)  # FSDP: shard before the optimizer sees the parameters
        if self.teacher is not None:  # replicated per rank unless LTE_FSDP_SHARD_TEACHER=1 (no per-step gathers)
            self.dist.prepare_teacher(self.teacher, pdt)
        routers = set(map(id, router_parameters(self.model)))
        body = [p for p in self.model.parameters() if id(p) not in routers]
        for p in body:
            p.requires_grad_(True)
        for p in router_parameters(self.model):
            p.requires_grad_(stage == 1)
        groups = [{"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        if stage == 1:
            layers = lte_layers(self.model)
            maps = [p for m in layers for p in (m.router.weight, m.router.center) if p is not None]
            groups.append({"params": maps, "lr": cfg.router_lr, "weight_decay": 0.0})
            groups.append({"params": [m.router.bias for m in layers], "lr": cfg.router_bias_lr, "weight_decay": 0.0})
        steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
        self.opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_lambda(steps, int(cfg.warmup_ratio * steps), cfg.schedule))
        set_mode(self.model, "soft" if stage == 1 else "hard")
        for layer in lte_layers(self.model):
            layer.soft_gate = cfg.stage1_gate
        if cfg.compile:  # after sharding: FSDP's hooks stay eager around each compiled block forward
            compile_blocks(self.model)
            if self.teacher is not None:
                compile_blocks(self.teacher)
        self.run_model = self.dist.wrap(self.model)  # re-wrapped per stage: the trainable set changed
        self._stage_built = stage

    # ------------------------------------------------------------------ one step
    def _loss(self, batch: dict, stage: int, local_step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        inputs = self.task.model_inputs(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.run_model(**inputs).logits
            t_logits = None
            if self.teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    t_logits = self.teacher(**inputs).logits
        ce = self.task.loss(logits, batch)
        parts = {"ce": ce.detach()}
        loss = ce
        if t_logits is not None:
            kd = self.task.distill(logits, t_logits, batch, cfg.distill_temperature)
            loss = (1 - cfg.distill_weight) * ce + cfg.distill_weight * kd
            parts["kd"] = kd.detach()
        if stage == 1:
            eff, sep = router_losses(self.layers, self.lte_cfg.efficiency_loss, self.lte_cfg.threshold,
                                     self.lte_cfg.separability_eps)
            eta = self.controller.eta
            lam = self.controller.separability_at(local_step)
            loss = loss + eta * eff + lam * sep
            parts.update(eff=eff.detach(), sep=sep.detach(), eta=eta, lam=lam)
        return loss, parts

    def train_step(self) -> dict:
        """One optimizer step (with accumulation); returns its log record."""
        cfg, step = self.cfg, self.step
        stage = self.stage_of(step)
        if self._stage_built != stage:
            self._build_stage(stage)
        local = step if stage == 1 else step - cfg.stage1_steps
        self.model.train()
        self.profiler.begin(step)
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        spars, layer_spars = [], []
        n_tokens = 0
        self.opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            with record_function("lte/data"):
                idx = self.dist.slice_batch(batch_indices(len(self.train_data), cfg.batch_size * self.dist.world,
                                                    step * cfg.grad_accum + micro, cfg.seed))
                batch = {k: v.to(self.device) for k, v in self.train_data.batch(idx).items()}
                n_tokens += real_tokens(batch)
            with record_function("lte/forward_loss"):
                loss, parts = self._loss(batch, stage, local)
            with record_function("lte/backward"):
                (loss / cfg.grad_accum).backward()
            with record_function("lte/stats"):
                st = stats(self.model)
                spars.append(st["ffn_sparsity"])
                layer_spars.append(st["per_layer"])
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + float(v) / cfg.grad_accum
        with record_function("lte/grad_clip"):
            params = [p for g in self.opt.param_groups for p in g["params"]]
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        with record_function("lte/optimizer_step"):
            self.opt.step()
            self.sched.step()
        with record_function("lte/sync_log"):  # cross-process mean, controller, bias shift, CUDA sync
            sparsity = sum(spars) / len(spars)
            per_layer = [sum(v) / len(v) for v in zip(*layer_spars)]
            if self.dist.world > 1:  # every process must see the same numbers to take the same control action
                lk = [f"_layer{i:04d}" for i in range(len(per_layer))] if self.controller.offsets else []
                avg = self.dist.mean({**totals, "sparsity": sparsity, "_tokens": n_tokens, **dict(zip(lk, per_layer))})
                sparsity = avg.pop("sparsity")
                per_layer = [avg.pop(k) for k in lk]
                n_tokens = int(round(avg.pop("_tokens") * self.dist.world))  # global: the sum over processes
                totals = avg
            shift = 0.0
            if stage == 1:  # without a target eta stays fixed; the controller still schedules separability
                shift = self.controller.bias_shift(local, sparsity, per_layer=per_layer)
                self.controller.update(local, sparsity)
            elif cfg.stage2_bias_gain > 0:  # routers' weights frozen; only their biases follow the target
                shift = self.controller.bias_shift(cfg.stage1_steps, sparsity, gain=cfg.stage2_bias_gain,
                                                   per_layer=per_layer)
            if isinstance(shift, list) or shift:  # one shift per layer with per-layer targets
                with torch.no_grad():  # one foreach op (one DTensor dispatch under FSDP, not one per layer)
                    torch._foreach_add_([layer.router.bias for layer in self.layers], shift)
            gnorm = float(gnorm)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the step's kernels (optimizer included) are done
        dt = time.perf_counter() - t0
        self.profiler.end(step, dt)
        self.tokens_seen += n_tokens
        self._interval = [self._interval[0] + n_tokens, self._interval[1] + dt, self._interval[2] + 1]
        rec = {"kind": "train", "step": step + 1, "stage": stage, **totals, "sparsity": sparsity,
               "grad_norm": gnorm, "lr": self.sched.get_last_lr()[0],
               "tokens": n_tokens, "step_s": dt, "tokens_per_s": n_tokens / dt}
        if self.controller.target is not None:  # the router bias shift the fast loop has accumulated
            rec["bias_shift"] = self.controller.bias_total
        if self.controller.offsets is not None:
            rec["layer_sparsity"] = [round(v, 4) for v in per_layer]
        if self.device.type == "cuda":
            rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        if stage == 1 and self.controller.target is not None:
            rec["target"] = self.controller.target_at(local)
        self.step += 1
        return rec

    # ------------------------------------------------------------------ eval / checkpoint
    def evaluate(self, mode: str | None = None, max_batches: int | None = None) -> dict:
        """The task's metric and sparsity on the validation data, in ``mode`` (default hard),
        over at most ``max_batches`` batches of ``batch_size`` (None: all of it)."""
        if self.val_data is None:
            return {}
        prev = self.layers[0].mode
        set_mode(self.model, mode or "hard")
        res = self.task.evaluate(self.model, self.val_data, self.cfg.batch_size, max_batches)
        set_mode(self.model, prev)
        return res

    def save_checkpoint(self) -> Path:
        """Atomically write model + optimizer + controller + RNG state to ``out/checkpoint``
        (main process only; the others wait)."""
        path = self.out / CHECKPOINT
        save(self.model, path, self.tok, extra={"step": self.step})  # every rank: FSDP gathers, rank 0 writes
        optim = None
        if self.opt is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            optim = get_optimizer_state_dict(self.model, self.opt, options=StateDictOptions(
                full_state_dict=True, cpu_offload=is_sharded(self.model)))
        if not self.dist.is_main:
            self.dist.barrier()
            return path
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "stage": self._stage_built, "optimizer": optim,
                 "scheduler": self.sched.state_dict() if self.sched else None,
                 "controller": self.controller.state_dict(), "rng": torch.get_rng_state(),
                 "train_config": self.cfg.to_dict()}
        tmp = path / f"{STATE_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path / STATE_FILE)
        self.dist.barrier()
        return path

    def load_checkpoint(self) -> bool:
        """Resume from ``out/checkpoint`` if it exists; returns whether it did."""
        path = self.out / CHECKPOINT
        if not (path / STATE_FILE).is_file():
            return False
        state = torch.load(path / STATE_FILE, weights_only=False)
        st_load_model(self.model, str(path / WEIGHTS_FILE), strict=False)
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        self.step = state["step"]
        cfg = self.cfg  # checkpoints written before tokens were counted: every position was a token
        self.tokens_seen = state.get("tokens_seen", self.step * cfg.batch_size * cfg.grad_accum * cfg.seq_len
                                     * self.dist.world)
        self.controller.load_state_dict(state["controller"])
        torch.set_rng_state(state["rng"])
        if state["stage"] is not None and self.step < self.total_steps:
            self._build_stage(state["stage"])
            if self.stage_of(self.step) == state["stage"]:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
                set_optimizer_state_dict(self.model, self.opt, state["optimizer"],
                                         options=StateDictOptions(full_state_dict=True))
                self.sched.load_state_dict(state["scheduler"])
            else:
                self._stage_built = None
        return True

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> dict:
        """Run (or finish) both stages; returns the final summary."""
        cfg = self.cfg
        if resume and self.load_checkpoint():
            self.logger.log({"kind": "resume", "step": self.step})
        else:
            seed_everything(cfg.seed)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="lte train", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < self.total_steps:
                # per step, not around the loop: checkpoints keep the model's own use_cache
                with without_kv_cache(self.model, self.teacher):
                    rec = self.train_step()
                if rec["step"] % cfg.log_every == 0 or rec["step"] in (cfg.stage1_steps, self.total_steps):
                    tokens, secs, steps = self._interval
                    self._interval = [0, 0.0, 0]
                    self.logger.log({**rec, "interval_tokens": tokens, "interval_s": secs, "interval_steps": steps})
                post = {"stage": rec["stage"], "loss": f"{rec['loss']:.3f}", "sparsity": f"{rec['sparsity']:.2f}"}
                if "eta" in rec:
                    post["eta"] = f"{rec['eta']:.3g}"
                bar.set_postfix(post)
                bar.update(1)
                boundary = self.step == cfg.stage1_steps or self.step == self.total_steps
                if self.val_data is not None and (self.step % cfg.eval_every == 0 or boundary):
                    with without_kv_cache(self.model, self.teacher):
                        ev = self.evaluate(max_batches=cfg.eval_batches)
                    self.logger.log({"kind": "eval", "step": self.step, "stage": rec["stage"],
                                     **{k: v for k, v in ev.items() if isinstance(v, (int, float))}})
                if self.step % cfg.save_every == 0 or boundary:
                    self.save_checkpoint()
        finally:
            bar.close()
            self.profiler.close()  # a window cut short by the end of the run still gets its reports
            uncompile_blocks(self.model)  # the trained model leaves as a plain module (copies, saves)
            if self.teacher is not None:
                uncompile_blocks(self.teacher)
        set_mode(self.model, "hard")
        self.model.eval()
        summary = {"steps": self.step, "train_tokens": self.tokens_seen,
                   "final_eta": self.controller.eta, "processes": self.dist.world,
                   "parallel": "fsdp" if self.dist.fsdp else ("ddp" if self.dist.world > 1 else "none")}
        if self.val_data is not None:
            ev = self.evaluate("hard")
            summary.update({f"val_{k}": v for k, v in ev.items() if isinstance(v, (int, float)) and k != "tokens"})
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def train(model, tcfg: TrainConfig, train_data, val_data, out_dir: str | os.PathLike, tokenizer=None,
          teacher=None, resume: bool = False, progress: bool = True, task=None) -> dict:
    """Run both LTE stages on ``model`` (already ``lte.sparsify``-ed); returns the summary.

    ``train_data``/``val_data``: packed LM blocks ``[n, seq_len]`` or any ``lte.tasks.TaskData``;
    ``task``: an ``lte.tasks`` task (default causal LM). The trained model is left in hard
    mode; the last checkpoint is in ``out_dir/checkpoint``."""
    trainer = Trainer(model, tcfg, train_data, val_data, out_dir, tokenizer, teacher, progress, task)
    return trainer.fit(resume=resume)


def finetune_dense(model, tcfg: TrainConfig, train_data, steps: int, progress: bool = True,
                   task=None) -> list[float]:
    """Plain fine-tuning on the task loss (the dense baseline, and the step before grouping);
    returns the per-step losses."""
    data = as_task_data(train_data)
    task = task or CausalLMTask()
    device = next(model.parameters()).device
    mp = tcfg.mixed_precision
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get("bf16" if mp == "auto" and device.type == "cuda" else mp)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=(0.9, 0.95), weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, int(tcfg.warmup_ratio * steps), tcfg.schedule))
    seed_everything(tcfg.seed)
    losses = []
    with without_kv_cache(model):
        for step in tqdm(range(steps), desc="dense fine-tune", disable=not progress, dynamic_ncols=True):
            opt.zero_grad(set_to_none=True)
            for micro in range(tcfg.grad_accum):
                idx = batch_indices(len(data), tcfg.batch_size, step * tcfg.grad_accum + micro, tcfg.seed + 7)
                batch = {k: v.to(device) for k, v in data.batch(idx).items()}
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    logits = model(**task.model_inputs(batch)).logits
                loss = task.loss(logits, batch)
                (loss / tcfg.grad_accum).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses
