"""``lte sweep``: the quality-sparsity frontier of LTE and the baselines, side by side.

Every method starts from the same model (optionally dense-fine-tuned first,
``dense_steps``), grouped once into the same experts (``lte.sparsify``), and is measured by
the same code (``lte.evaluate.perplexity``) on the same evaluation text. Methods that train
get the same budget (``train_steps`` optimizer steps of the same batch, learning rate,
schedule and distillation from the starting model); training-free methods calibrate on the
training text only.

Outputs in ``out``: ``results.json`` (a list of rows), ``results.csv`` (the same rows),
``sparsity.png`` (perplexity vs FFN sparsity) and ``gflops.png`` (perplexity vs GFLOPs per
token), ``sweep_config.json`` (the settings the rows were measured with), ``runs/lte_*``
(LTE training logs) and ``cache/base_dense.pt`` (the dense-fine-tuned start, if any). Every file is
written atomically after each point; a second call with the same settings skips finished
points (and with nothing left to do, loads no model). Plots are redrawn at most once a
minute during a run and always at its end. Settings that change the numbers
must match the existing ``sweep_config.json``; methods and sparsities may be added.

Row keys: ``method``, ``target_sparsity``, ``ffn_sparsity`` (neuron level),
``block_sparsity`` (32-neuron blocks a block kernel skips), ``perplexity``,
``gflops_per_token`` (predictors/routers included), ``train_tokens`` (tokens the model
weights were trained on, the starting fine-tune included), plus ``family``,
``calib_tokens`` (training tokens used to fit thresholds or predictors), ``eval_tokens`` and
``seconds``.

Encoders (``task="glue:sst2"`` ..., a ``*ForSequenceClassification`` model, ``SweepInputs``
with ``task``, ``train_data`` and ``eval_data``): the same recipes train on the task's loss
(``lte.glue.SequenceClassificationTask``), ``seq_len`` is the longest example (default 128),
calibration takes whole training examples up to ``calib_tokens`` real tokens, and each row
holds the task's ``metric``, ``score`` (that metric, a fraction) and all its metrics instead of
``perplexity``; ``train_examples`` (examples the weights trained on) replaces
``train_tokens``, and ``union_sparsity`` (experts no token of an evaluation batch needs) is added.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import baselines as B
from .config import LTEConfig, TrainConfig, check_layer_offsets
from .data import pack
from .evaluate import perplexity
from .sparsify import set_mode, sparsify
from .train import finetune_dense, make_teacher, train

ROW_KEYS = ("method", "target_sparsity", "ffn_sparsity", "block_sparsity", "perplexity", "gflops_per_token",
            "train_tokens")
EXTRA_KEYS = ("family", "calib_tokens", "eval_tokens", "seconds")
# classification/regression rows: these instead of perplexity and train_tokens
TASK_KEYS = ("metric", "score", "accuracy", "f1", "matthews_correlation", "pearson", "spearman", "union_sparsity",
             "train_examples")

# method -> family; families (and groups) expand to their methods on the command line
METHODS: dict[str, str] = {
    "base": "dense", "dense": "dense", "lte": "lte",
    "teal-ffn": "teal", "teal-all": "teal",
    "cats-nofinetune": "cats", "cats-finetune": "cats",
    "dejavu-neuron": "dejavu", "dejavu-block": "dejavu",
    "moefication-router": "moefication", "moefication-oracle": "moefication",
    "topk-softmax": "topk", "random-router": "random",
}
PLOT_MAX_RATIO = 8.0  # perplexity plots stop at this multiple of the best perplexity shown
SINGLE_POINT = ("base", "dense")  # dense models: one row at target 0, whatever the sparsities
TRAINING_FREE = ("teal-ffn", "teal-all", "cats-nofinetune", "dejavu-neuron", "dejavu-block")
GROUPS: dict[str, tuple[str, ...]] = {
    **{fam: tuple(m for m, f in METHODS.items() if f == fam) for fam in ("teal", "cats", "dejavu", "moefication")},
    "topk": ("topk-softmax",), "random": ("random-router",),
    "training-free": TRAINING_FREE, "all": tuple(METHODS),
}


def expand_methods(spec: str | list[str]) -> list[str]:
    """``"lte,teal,cats-finetune"`` -> method names (families and groups expanded, order kept)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in METHODS:
            new = [name]
        elif name in GROUPS:
            new = list(GROUPS[name])
        else:
            raise ValueError(f"unknown method {raw!r}; choose from {sorted(METHODS)} or the groups {sorted(GROUPS)}")
        out.extend(m for m in new if m not in out)
    if not out:
        raise ValueError("no methods given")
    return out


def parse_sparsities(spec: str | list[float]) -> list[float]:
    """``"0.25,0.5"`` -> ``[0.25, 0.5]`` (each in (0, 1))."""
    vals = [float(s) for s in spec.split(",") if s.strip()] if isinstance(spec, str) else [float(s) for s in spec]
    for v in vals:
        if not 0.0 < v < 1.0:
            raise ValueError(f"sparsities must be in (0, 1), got {v}")
    if not vals:
        raise ValueError("no sparsities given")
    return sorted(set(vals))


@dataclass
class SweepSettings:
    """Everything that changes the numbers (saved as ``sweep_config.json``)."""

    expert_size: int = 32
    grouping: str = "kmeans"
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    train_steps: int = 100          # budget of every method that trains the model
    dense_steps: int = 0            # dense fine-tune of the shared starting model
    stage1_fraction: float = 0.7    # LTE: share of train_steps in stage 1 (0.7 beat 0.5 and 0.3 on SmolLM2)
    distill_weight: float = 0.9     # KL from the starting model, for every method that trains
    separability_weight: float = 0.0  # LTE (0 measured best with the straight-through gate)
    router_lr: float = 1e-2         # LTE router weights (as `lte train`; 1e-2 beat 2e-3 on SmolLM2)
    router_init: str = "calibrated"  # LTE: fit routers to expert importance first (lte.router_init); "random"; "gate"
    router_form: str = "linear"     # LTE: sigmoid(x W + b), or "folded": sigmoid(|x W + c| + b) (lte.router)
    layer_target_offsets: list[float] | str | None = None  # LTE: per-layer targets (TrainConfig's field)
    stage2_bias_gain: float = TrainConfig.stage2_bias_gain  # LTE: bias loop holding the target in stage 2
    aux_weight: float = 1e-2        # noisy top-k: importance (load-balancing) loss weight
    eval_len: int = 1024
    eval_batch_size: int = 8
    max_windows: int | None = None
    calib_tokens: int = 16384       # training tokens for thresholds and predictors
    predictor_epochs: int = 20
    mixed_precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_steps < 0 or self.dense_steps < 0:
            raise ValueError("train_steps and dense_steps must be >= 0")
        if not 0.0 < self.stage1_fraction < 1.0:
            raise ValueError(f"stage1_fraction must be in (0, 1), got {self.stage1_fraction}")
        if self.stage2_bias_gain < 0:
            raise ValueError(f"stage2_bias_gain must be >= 0, got {self.stage2_bias_gain}")
        self.lte_config()  # LTEConfig's own checks (router_init, expert_size, grouping), before any work
        if self.calib_tokens < 1 or self.eval_len < 2 or self.seq_len < 2:
            raise ValueError("calib_tokens, eval_len and seq_len must be positive")

    def lte_config(self) -> LTEConfig:
        """The LTEConfig the shared starting model is sparsified with."""
        return LTEConfig(expert_size=self.expert_size, grouping=self.grouping, seed=self.seed,
                         separability_weight=self.separability_weight, router_init=self.router_init,
                         router_form=self.router_form)

    def train_config(self, **kw) -> TrainConfig:
        """The TrainConfig every training method shares."""
        base = dict(lr=self.lr, batch_size=self.batch_size, grad_accum=self.grad_accum, seq_len=self.seq_len,
                    distill_weight=self.distill_weight, mixed_precision=self.mixed_precision, seed=self.seed,
                    eval_every=10**9, save_every=10**9, log_every=10)
        base.update(kw)
        return TrainConfig(**base)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


@dataclass
class SweepInputs:
    """What a sweep runs on: a plain (not yet sparsified) model and token ids (1-D), or, for a
    classification/regression ``task``, its ``train_data`` / ``eval_data`` (``lte.tasks.TaskData``)."""

    model: torch.nn.Module
    train_ids: torch.Tensor | None = None
    eval_ids: torch.Tensor | None = None
    heldout_ids: torch.Tensor | None = None
    task: Any = None
    train_data: Any = None
    eval_data: Any = None


# ------------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _key(method: str, target: float) -> tuple[str, str]:
    return method, f"{float(target):.6g}"


def load_rows(out: Path) -> list[dict]:
    """Rows of ``out/results.json`` (empty when absent)."""
    path = Path(out) / "results.json"
    if not path.is_file():
        return []
    return read_rows_file(path)


def read_rows_file(path: str | os.PathLike) -> list[dict]:
    """A results file holding a JSON list of row objects (one-line errors otherwise)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); move it away to start over") from e
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of rows")
    return rows


def write_outputs(out: Path, rows: list[dict], title: str = "", plots: bool = True) -> None:
    """results.json, results.csv and (``plots``) both plots, each atomically."""
    out = Path(out)
    rows = sorted(rows, key=lambda r: (list(METHODS).index(r["method"]) if r["method"] in METHODS else 99,
                                       r["target_sparsity"]))
    _atomic_write(out / "results.json", json.dumps(rows, indent=2))
    task_rows = any("score" in r for r in rows)
    cols = [k for k in ROW_KEYS if not (task_rows and k in ("perplexity", "train_tokens"))]
    cols += [k for k in TASK_KEYS + EXTRA_KEYS if any(k in r for r in rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    _atomic_write(out / "results.csv", buf.getvalue())
    if plots:
        plot(rows, out, title)


def plot(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """``sparsity.png`` (perplexity, or a task's score, vs FFN sparsity) and ``gflops.png``
    (the same vs GFLOPs/token); dense rows are horizontal lines / single points."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("lte sweep draws its plots with matplotlib: pip install matplotlib") from e
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    out = Path(out)
    ykey = "score" if rows and "perplexity" not in rows[0] else "perplexity"  # task rows: the task's metric
    ylabel = rows[0].get("metric", "score") if ykey == "score" else "perplexity"
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    order = list(METHODS)
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>pPXh*"
    variants = [m for m in by_method if m not in order]  # e.g. tuned LTE variants (frontier_merge labels)
    vmap = plt.get_cmap("viridis")
    paths = []
    for name, xkey, xlabel in (("sparsity.png", "ffn_sparsity", "FFN sparsity (neuron level)"),
                               ("gflops.png", "gflops_per_token", "GFLOPs per token (predictors included)")):
        ncol = 1 + (len(by_method) - 1) // 20  # a legend of many variants wraps instead of running off
        fig, ax = plt.subplots(figsize=(7.5 + 2.6 * (ncol - 1), 5))
        for method, rs in by_method.items():
            if method in order:
                i = order.index(method)
                color = "black" if method == "lte" else cmap(i % 20)
            else:  # variants: their own colour scale, markers continuing the list
                k = variants.index(method)
                i, color = len(order) + k, vmap(0.9 * k / max(len(variants) - 1, 1))
            rs = sorted(rs, key=lambda r: r[xkey])
            ys = [r[ykey] for r in rs]
            lte_ = method.startswith("lte")  # LTE and its tuned variants (frontier_merge labels) stand out
            style = dict(color=color, label=method, linewidth=2.2 if lte_ else 1.3, zorder=3 if lte_ else 2)
            if method in SINGLE_POINT and xkey == "ffn_sparsity":
                ax.axhline(ys[0], linestyle="--", **style)
            else:
                ax.plot([r[xkey] for r in rs], ys, marker=markers[i % len(markers)],
                        linestyle="-" if len(rs) > 1 else "none", **style)
        ax.set_xlabel(xlabel)
        ppl = [r["perplexity"] for r in rows if r.get("perplexity", 0) > 0]
        if ykey == "score":
            ax.set_ylabel(f"{ylabel} (dev)")
        elif ppl and max(ppl) / min(ppl) > 1.5:  # log scale only where it spreads the curves
            ax.set_ylabel("perplexity (log scale)")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            top = PLOT_MAX_RATIO * min(ppl)
            if max(ppl) > top:  # collapsed methods would squash every usable curve into the bottom
                ax.set_ylim(top=top)
                ax.text(0.01, 0.99, f"clipped at {top:.0f}: higher points run off the top", fontsize=7,
                        transform=ax.transAxes, va="top")
        else:
            ax.set_ylabel("perplexity")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{title}: {ylabel} vs {xlabel.split(' (')[0]}" if title else f"{ylabel} vs {xlabel}")
        ax.legend(fontsize=8 if ncol == 1 else 7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol)
        fig.tight_layout()
        tmp = out / f".{name}.tmp{os.getpid()}"
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        os.replace(tmp, out / name)
        paths.append(out / name)
    return paths


# ------------------------------------------------------------------------------- context
class _Context:
    """Shared state of one sweep process: the grouped starting model, data, caches."""

    def __init__(self, inputs: SweepInputs, s: SweepSettings, out: Path, verbose: bool) -> None:
        self.s, self.out, self.verbose = s, out, verbose
        self.task = inputs.task  # None: causal LM on packed blocks
        self.heldout_blocks = None
        if self.task is not None:
            self._task_data(inputs)
        else:
            self.train_blocks = pack(inputs.train_ids, s.seq_len)
            if inputs.heldout_ids is not None and inputs.heldout_ids.numel() >= s.seq_len:
                self.heldout_blocks = pack(inputs.heldout_ids, s.seq_len)
            self.eval_ids = inputs.eval_ids
            n_cal = max(1, -(-s.calib_tokens // s.seq_len))
            cal = self.train_blocks[:n_cal]
            self.calibration = [cal[i:i + s.batch_size] for i in range(0, cal.shape[0], s.batch_size)]
            self.calib_tokens = int(cal.numel())
        model = inputs.model
        self.base_tokens = 0
        if s.dense_steps:  # the shared starting point; cached so a resumed sweep does not redo it
            cache = out / "cache" / "base_dense.pt"
            if cache.is_file():
                model.load_state_dict(torch.load(cache, map_location=next(model.parameters()).device))
            else:
                finetune_dense(model, s.train_config(), self.train_blocks, s.dense_steps, progress=verbose,
                               task=self.task)
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
                torch.save(model.state_dict(), tmp)
                os.replace(tmp, cache)
            self.base_tokens = s.dense_steps * s.tokens_per_step
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.lte_cfg = s.lte_config()
        sparsify(model, self.lte_cfg, calibration=self.calibration, progress=verbose)
        set_mode(model, "dense")
        self.base = model
        self._teacher = None
        self.cache: dict[Any, Any] = {}

    def _task_data(self, inputs: SweepInputs) -> None:
        """Classification: examples as they are (padded per batch); calibration = the first
        training examples up to ``calib_tokens`` real tokens."""
        if inputs.train_data is None or inputs.eval_data is None:
            raise ValueError("a sweep with a task needs train_data and eval_data")
        self.train_blocks, self.eval_data = inputs.train_data, inputs.eval_data
        self.calibration, self.calib_tokens, i = [], 0, 0
        while self.calib_tokens < self.s.calib_tokens and i < len(self.train_blocks):
            b = self.task.model_inputs(self.train_blocks.batch(torch.arange(i, min(i + self.s.batch_size,
                                                                                  len(self.train_blocks)))))
            self.calibration.append(b)
            self.calib_tokens += int(b["attention_mask"].sum())
            i += self.s.batch_size

    def fresh(self):
        """A copy of the grouped starting model (dense mode)."""
        return copy.deepcopy(self.base)

    @property
    def teacher(self):
        if self._teacher is None and self.s.distill_weight > 0:
            self._teacher = make_teacher(self.base)
        return self._teacher

    def cached(self, key, fn: Callable[[], Any]):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def adapt(self, model, steps: int | None = None, aux_weight: float = 0.0, desc: str = "adapt") -> int:
        steps = self.s.train_steps if steps is None else steps
        B.adapt(model, self.s.train_config(), self.train_blocks, steps, teacher=self.teacher, aux_weight=aux_weight,
                progress=self.verbose, desc=desc, task=self.task)
        return steps * self.s.tokens_per_step


# ------------------------------------------------------------------------------- recipes
# Each returns (model ready to evaluate, tokens its weights trained on, calibration tokens used).
def _base(ctx: _Context, t: float):
    return ctx.fresh(), 0, 0


def _dense(ctx: _Context, t: float):
    m = ctx.fresh()
    finetune_dense(m, ctx.s.train_config(), ctx.train_blocks, ctx.s.train_steps, progress=ctx.verbose, task=ctx.task)
    set_mode(m, "dense")
    return m, ctx.s.train_steps * ctx.s.tokens_per_step, 0


def _lte(ctx: _Context, t: float):
    s = ctx.s
    m = ctx.fresh()
    s1 = max(1, int(round(s.train_steps * s.stage1_fraction)))
    s2 = max(0, s.train_steps - s1)
    tcfg = s.train_config(stage1_steps=s1, stage2_steps=s2, target_sparsity=t, router_lr=s.router_lr,
                          stage2_bias_gain=s.stage2_bias_gain, layer_target_offsets=s.layer_target_offsets)
    run_dir = ctx.out / "runs" / f"lte_{t:g}"
    summary = train(m, tcfg, ctx.train_blocks, ctx.heldout_blocks, run_dir, teacher=ctx.teacher, progress=ctx.verbose,
                    task=ctx.task)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # keep the log, not the weights
    return m, summary["train_tokens"] if ctx.task is None else (s1 + s2) * s.tokens_per_step, 0


def _teal(attention: bool):
    def run(ctx: _Context, t: float):
        m = ctx.fresh()
        B.apply_teal(m, t, ctx.calibration, attention=attention)
        return m, 0, ctx.calib_tokens
    return run


def _cats(finetune: bool):
    def run(ctx: _Context, t: float):
        m = ctx.fresh()
        B.apply_cats(m, t, ctx.calibration)
        tokens = 0
        if finetune:
            tokens = ctx.adapt(m, desc="cats fine-tune")
            B.recalibrate(m, ctx.calibration)
        return m, tokens, ctx.calib_tokens
    return run


def _dejavu(granularity: str):
    def run(ctx: _Context, t: float):
        preds = ctx.cached(("dejavu", granularity), lambda: B.train_predictors(
            ctx.base, ctx.calibration, granularity, epochs=ctx.s.predictor_epochs, max_tokens=ctx.calib_tokens,
            seed=ctx.s.seed, progress=ctx.verbose))
        m = ctx.fresh()
        B.apply_dejavu(m, t, preds, granularity)
        return m, 0, ctx.calib_tokens
    return run


def _moefication(oracle: bool):
    def relu_model(ctx: _Context):
        m = ctx.fresh()
        B.relufy(m)
        tokens = ctx.adapt(m, desc="moefication relu fine-tune")  # dense mode: no selector yet
        B.regroup(m, seed=ctx.s.seed)
        return m, tokens

    def run(ctx: _Context, t: float):
        m0, tokens = ctx.cached("moefication-relu", lambda: relu_model(ctx))
        routers = None
        if not oracle:
            routers = ctx.cached("moefication-routers", lambda: B.train_routers(
                m0, ctx.calibration, epochs=ctx.s.predictor_epochs, max_tokens=ctx.calib_tokens, seed=ctx.s.seed,
                progress=ctx.verbose))
        m = copy.deepcopy(m0)
        B.apply_moefication(m, t, routers)
        return m, tokens, 0 if oracle else ctx.calib_tokens
    return run


def _topk(ctx: _Context, t: float):
    m = ctx.fresh()
    B.apply_noisy_topk(m, t)
    return m, ctx.adapt(m, aux_weight=ctx.s.aux_weight, desc="noisy top-k training"), 0


def _random(ctx: _Context, t: float):
    m = ctx.fresh()
    B.apply_random_router(m, t, seed=ctx.s.seed)
    return m, ctx.adapt(m, desc="random-router adaptation"), 0


RECIPES: dict[str, Callable] = {
    "base": _base, "dense": _dense, "lte": _lte,
    "teal-ffn": _teal(False), "teal-all": _teal(True),
    "cats-nofinetune": _cats(False), "cats-finetune": _cats(True),
    "dejavu-neuron": _dejavu("neuron"), "dejavu-block": _dejavu("block"),
    "moefication-router": _moefication(False), "moefication-oracle": _moefication(True),
    "topk-softmax": _topk, "random-router": _random,
}


def _point(ctx: _Context, method: str, target: float) -> dict:
    t0 = time.time()
    model, tokens, calib_used = RECIPES[method](ctx, target)
    s = ctx.s
    if ctx.task is not None:
        return _task_point(ctx, model, method, target, tokens, calib_used, t0)
    r = perplexity(model, ctx.eval_ids, seq_len=s.eval_len, batch_size=s.eval_batch_size, max_windows=s.max_windows,
                   progress=False)
    row = {"method": method, "target_sparsity": float(target), "ffn_sparsity": r["ffn_sparsity"],
           "block_sparsity": r["block_sparsity"], "perplexity": r["perplexity"],
           "gflops_per_token": r["gflops_per_token"], "train_tokens": ctx.base_tokens + tokens,
           "family": METHODS[method], "calib_tokens": calib_used, "eval_tokens": r["tokens"],
           "seconds": round(time.time() - t0, 2)}
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def _task_point(ctx: _Context, model, method: str, target: float, tokens: int, calib_used: int, t0: float) -> dict:
    """A classification row: the task's metrics on ``eval_data`` (see module docstring)."""
    from .evaluate import block_sparsity

    s = ctx.s
    r = ctx.task.evaluate(model, ctx.eval_data, s.eval_batch_size)
    blocks = block_sparsity(model) if r["mode"] != "dense" else [0.0]
    examples_per_step = s.batch_size * s.grad_accum
    row = {"method": method, "target_sparsity": float(target), "ffn_sparsity": r["ffn_sparsity"],
           "block_sparsity": sum(blocks) / len(blocks), "metric": r["metric"], "score": r["score"],
           **{k: r[k] for k in ctx.task.spec.metrics}, "union_sparsity": r["union_sparsity"],
           "gflops_per_token": r["gflops_per_token"],
           "train_examples": (s.dense_steps + tokens // s.tokens_per_step) * examples_per_step,
           "family": METHODS[method], "calib_tokens": calib_used, "eval_tokens": r["tokens"],
           "seconds": round(time.time() - t0, 2)}
    del model
    gc.collect()
    return row


# ------------------------------------------------------------------------------- driver
def plan(methods: list[str], sparsities: list[float]) -> list[tuple[str, float]]:
    """The (method, target) points of a sweep, dense methods once at target 0."""
    pts = []
    for m in methods:
        for t in ([0.0] if m in SINGLE_POINT else sparsities):
            pts.append((m, t))
    return pts


# settings that results folders written before the setting existed were measured with
_SETTINGS_BEFORE_RECORDED = {"router_init": "random"}


def _check_config(out: Path, settings: SweepSettings, source: dict) -> None:
    path = out / "sweep_config.json"
    cfg = {"settings": asdict(settings), "source": source}
    if path.is_file():
        old = json.loads(path.read_text())
        # a setting added after the folder was written counts as the value that was in effect before
        old["settings"] = {**asdict(SweepSettings()), **_SETTINGS_BEFORE_RECORDED, **old.get("settings", {})}
        diff = sorted(k for part in ("settings", "source")
                      for k in set(old.get(part, {})) | set(cfg[part])
                      if old.get(part, {}).get(k) != cfg[part].get(k))
        if diff:
            raise ValueError(f"{out} holds results measured with other settings ({', '.join(diff)}); "
                             f"use another --out, or move the old results away")
        return
    _atomic_write(path, json.dumps(cfg, indent=2))


def run_sweep(out: str | os.PathLike, methods: str | list[str], sparsities: str | list[float],
              prepare: Callable[[], SweepInputs], settings: SweepSettings | None = None, source: dict | None = None,
              title: str = "", progress: bool = True, verbose: bool = False) -> dict:
    """Run (or finish) a sweep; returns ``{"rows", "computed", "out"}``.

    ``prepare()`` loads the model and data; it is called only when a point is missing.
    ``source`` describes the model and data (saved with the settings; a later call into
    the same ``out`` must match it). See the module docstring for the outputs.
    """
    settings = settings or SweepSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, settings, source or {})
    points = plan(expand_methods(methods), parse_sparsities(sparsities))
    if settings.layer_target_offsets is not None:  # every LTE target's layers must stay in (0, 1), before any work
        for m, t in points:
            if m == "lte":
                check_layer_offsets(settings.layer_target_offsets, t)
    rows = load_rows(out)
    done = {_key(r["method"], r["target_sparsity"]) for r in rows}
    pending = [p for p in points if _key(*p) not in done]
    computed = 0
    if pending:
        bar = tqdm(total=len(points), initial=len(points) - len(pending), desc="lte sweep", disable=not progress,
                   dynamic_ncols=True)
        try:
            bar.set_postfix_str("loading model and data")
            ctx = _Context(prepare(), settings, out, verbose)
            last_plot = time.time()
            for method, target in pending:
                bar.set_postfix_str(f"{method} @ {target:g}")
                rows.append(_point(ctx, method, target))
                computed += 1
                replot = time.time() - last_plot > 60  # plots at most once a minute mid-run, always at the end
                write_outputs(out, rows, title, plots=replot)
                last_plot = time.time() if replot else last_plot
                bar.update(1)
        finally:
            bar.close()
    write_outputs(out, rows, title)
    return {"rows": load_rows(out), "computed": computed, "out": str(out)}


def texts_digest(*text_lists: list[str]) -> str:
    """A short content hash of text sources (part of a sweep's ``source``)."""
    h = hashlib.sha256()
    for texts in text_lists:
        for t in texts:
            h.update(hashlib.sha256(t.encode()).digest())
        h.update(b"|")
    return h.hexdigest()[:16]


def run_cli(a) -> dict:
    """``lte sweep``: load model and data from the parsed flags and run the sweep."""
    from .data import load_texts, split_tail, tokenize
    from .glue import is_classification_task
    from .models import load_model

    task = getattr(a, "task", None) or "causal-lm"
    if task != "causal-lm" and not is_classification_task(task):
        raise ValueError(f"lte sweep: unsupported --task {task!r}; use causal-lm or glue:NAME")
    if is_classification_task(task) and getattr(a, "seq_len", None) is None:
        a.seq_len = 128  # examples, not packed blocks
    fields = {f.name for f in dataclasses.fields(SweepSettings)}
    settings = SweepSettings(**{k: getattr(a, k) for k in fields if getattr(a, k, None) is not None})
    if is_classification_task(task):
        return _run_task_cli(a, task, settings)
    texts = load_texts(a.data, a.text_field)
    train_texts, heldout_texts = split_tail(texts, 0.1)
    eval_texts = load_texts(a.eval_data, a.text_field) if a.eval_data else heldout_texts
    source = {"model": a.model, "dtype": a.dtype, "data": str(a.data), "eval_data": str(a.eval_data or ""),
              "texts": texts_digest(train_texts, heldout_texts, eval_texts)}
    device = a.device

    def prepare() -> SweepInputs:
        model, tok = load_model(a.model, dtype=a.dtype, device=device)
        return SweepInputs(model=model, train_ids=tokenize(train_texts, tok),
                           heldout_ids=tokenize(heldout_texts, tok),
                           eval_ids=tokenize(eval_texts, tok, add_eos=False))

    return run_sweep(a.out, a.methods, a.sparsities, prepare, settings, source, title=Path(str(a.model)).name,
                     progress=not a.no_progress, verbose=a.verbose)


def _run_task_cli(a, task: str, settings: SweepSettings) -> dict:
    """``lte sweep --task glue:NAME``: train on the task's train split, score on its dev split
    (or ``--eval-data``, a file in the task's layout) with a fresh classification head."""
    from .glue import (
        ClassificationData,
        SequenceClassificationTask,
        _max_length,
        glue_split,
        parse_task,
        read_rows,
    )
    from .models import load_model
    from .train import seed_everything

    spec = parse_task(task)
    if spec.folder is None:
        raise ValueError(f"lte sweep: --task {task} is not supported; use a glue:NAME task")
    train_ex = glue_split(a.data, spec, "train")
    eval_ex = read_rows(Path(a.eval_data), spec) if a.eval_data else glue_split(a.data, spec, "dev")
    source = {"model": a.model, "dtype": a.dtype, "task": spec.name, "data": str(a.data),
              "eval_data": str(a.eval_data or ""),
              "texts": texts_digest(train_ex.text, train_ex.text_pair or [], train_ex.label, eval_ex.text,
                                    eval_ex.text_pair or [], eval_ex.label)}

    def prepare() -> SweepInputs:
        seed_everything(settings.seed)  # the classification head's initialisation
        model, tok = load_model(a.model, dtype=a.dtype, device=a.device, task="sequence-classification",
                                num_labels=spec.num_labels)
        max_len = _max_length(tok, model, settings.seq_len)
        return SweepInputs(model=model, task=SequenceClassificationTask(spec),
                           train_data=ClassificationData(train_ex, tok, spec, max_len),
                           eval_data=ClassificationData(eval_ex, tok, spec, max_len))

    return run_sweep(a.out, a.methods, a.sparsities, prepare, settings, source,
                     title=f"{Path(str(a.model)).name} {spec.name}", progress=not a.no_progress, verbose=a.verbose)


__all__ = ["run_sweep", "run_cli", "SweepSettings", "SweepInputs", "METHODS", "GROUPS", "ROW_KEYS", "expand_methods",
           "parse_sparsities", "plan", "plot", "load_rows", "write_outputs"]
