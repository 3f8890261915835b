"""Sequence classification and regression: GLUE readers, padded batches, the task, the jobs.

Task names (``--task``): ``glue:sst2``, ``glue:cola``, ``glue:mrpc``, ``glue:rte``,
``glue:stsb``, ``glue:qnli`` read the original GLUE layout (``DIR/SST-2/train.tsv`` ...; see
``../shared/data/README.md``): tab-separated, ``csv.QUOTE_NONE`` (sentences hold unbalanced
quotes), ``utf-8-sig`` (MRPC starts with a byte-order mark), CoLA without a header.
``classification`` and ``regression`` read any ``.tsv`` / ``.csv`` / ``.jsonl`` file with
named text (and optional second text) and label columns.

GLUE protocol: train on ``train.tsv``, report on ``dev.tsv`` (test labels are hidden). QNLI
ships no training split here, so ``glue:qnli`` trains on the first 4,463 rows of its dev
file and reports on the last 1,000 (not comparable to published QNLI numbers).

Padding: batches are padded to their longest example; padding tokens carry
``attention_mask = 0``, which ``lte.sparsify``'s model-level hook turns into the LTE layers'
token mask, so they count neither toward sparsity nor toward the router losses; the task
losses are per sequence. Metrics come from scikit-learn and scipy.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .losses import distillation_loss
from .tasks import MODEL_INPUTS


class TaskError(ValueError):
    """Unknown task name, or task data that cannot be read."""


# ------------------------------------------------------------------------------ task specs
@dataclass(frozen=True)
class TaskSpec:
    """What a classification/regression task reads and how it is scored."""

    name: str
    labels: tuple[str, ...] | None  # class names in label-id order; None = regression (one output)
    metrics: tuple[str, ...]
    primary: str
    folder: str | None = None  # GLUE folder name
    header: bool = True
    text: str | int = "sentence"  # column name, or index when there is no header
    text_pair: str | int | None = None
    label: str | int = "label"
    note: str = ""

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_ACC, _F1, _MCC, _CORR = ("accuracy",), ("accuracy", "f1"), ("matthews_correlation", "accuracy"), ("pearson", "spearman")
GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("glue:sst2", ("0", "1"), _ACC, "accuracy", "SST-2"),
    "cola": TaskSpec("glue:cola", ("0", "1"), _MCC, "matthews_correlation", "CoLA", header=False, text=3, label=1),
    "mrpc": TaskSpec("glue:mrpc", ("0", "1"), _F1, "f1", "MRPC", text="#1 String", text_pair="#2 String",
                     label="Quality"),
    "rte": TaskSpec("glue:rte", ("entailment", "not_entailment"), _ACC, "accuracy", "RTE", text="sentence1",
                    text_pair="sentence2"),
    "stsb": TaskSpec("glue:stsb", None, _CORR, "pearson", "STS-B", text="sentence1", text_pair="sentence2",
                     label="score"),
    "qnli": TaskSpec("glue:qnli", ("entailment", "not_entailment"), _ACC, "accuracy", "QNLI", text="question",
                     text_pair="sentence",
                     note="QNLI has no training split here: trained on QNLI dev rows 1-4463, scored on the last 1000 "
                          "(not comparable to published QNLI results)"),
}
QNLI_TRAIN_ROWS = 4463
TASK_NAMES = tuple(f"glue:{k}" for k in GLUE_TASKS) + ("classification", "regression")


def is_classification_task(name: str | None) -> bool:
    """True for the task names this module handles (``glue:*``, ``classification``, ``regression``)."""
    return isinstance(name, str) and (name.lower().startswith("glue:") or name.lower() in ("classification",
                                                                                           "regression"))


def parse_task(name: str, text_field: str = "text", text_pair_field: str | None = None,
               label_field: str = "label", labels: Sequence[str] | None = None) -> TaskSpec:
    """The spec of ``glue:NAME`` (``sst2``/``SST-2`` ...), or of a generic ``classification`` /
    ``regression`` file task with the given columns (``labels``: class names, if known)."""
    key = name.strip().lower()
    if key.startswith("glue:"):
        sub = key[5:].replace("-", "").replace("_", "")
        if sub not in GLUE_TASKS:
            raise TaskError(f"unknown GLUE task {name!r}; choose one of {', '.join(TASK_NAMES[:6])}")
        return GLUE_TASKS[sub]
    if key == "classification":
        return TaskSpec("classification", tuple(labels) if labels else None, _ACC, "accuracy", text=text_field,
                        text_pair=text_pair_field, label=label_field)
    if key == "regression":
        return TaskSpec("regression", None, _CORR, "pearson", text=text_field, text_pair=text_pair_field,
                        label=label_field)
    raise TaskError(f"unknown classification task {name!r}; choose one of {', '.join(TASK_NAMES)}")


# ------------------------------------------------------------------------------ reading
@dataclass
class Examples:
    """Texts (and second texts) with raw string labels, in file order."""

    text: list[str]
    text_pair: list[str] | None
    label: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.text)

    def slice(self, start: int | None, stop: int | None) -> Examples:
        """Rows ``start:stop``."""
        pair = None if self.text_pair is None else self.text_pair[start:stop]
        return Examples(self.text[start:stop], pair, self.label[start:stop], f"{self.source}[{start}:{stop}]")


def _column(spec_col: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(spec_col, int):
        return spec_col
    if header is None or spec_col not in header:
        raise TaskError(f"{path}: no column {spec_col!r} (columns: {header})")
    return header.index(spec_col)


def read_rows(path: Path, spec: TaskSpec) -> Examples:
    """Read ``path`` (.tsv with QUOTE_NONE, .csv with standard quoting, or .jsonl) into examples."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, spec)
    tsv = path.suffix != ".csv"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(fh)
        rows = [r for r in reader if r]
    header = None
    if spec.header:
        if not rows:
            raise TaskError(f"{path}: empty file")
        header, rows = rows[0], rows[1:]
    cols = [_column(spec.text, header, path), None if spec.text_pair is None else _column(spec.text_pair, header, path),
            _column(spec.label, header, path)]
    need = max(c for c in cols if c is not None) + 1
    text, pair, label = [], [] if cols[1] is not None else None, []
    for i, r in enumerate(rows, 2 if header else 1):
        if len(r) < need:
            raise TaskError(f"{path}:{i}: {len(r)} fields, expected at least {need}")
        text.append(r[cols[0]])
        if pair is not None:
            pair.append(r[cols[1]])
        label.append(r[cols[2]].strip())
    if not text:
        raise TaskError(f"{path}: no examples")
    return Examples(text, pair, label, str(path))


def _read_jsonl(path: Path, spec: TaskSpec) -> Examples:
    from .data import iter_jsonl

    text, pair, label = [], [] if spec.text_pair is not None else None, []
    required = [c for c in (spec.text, spec.text_pair, spec.label) if c is not None]
    for _, obj in iter_jsonl(path, required, TaskError):
        text.append(str(obj[spec.text]))
        if pair is not None:
            pair.append(str(obj[spec.text_pair]))
        label.append(str(obj[spec.label]).strip())
    if not text:
        raise TaskError(f"{path}: no examples")
    return Examples(text, pair, label, str(path))


def _glue_dir(root: str | Path, spec: TaskSpec) -> Path:
    root = Path(root)
    for d in (root / spec.folder, root):
        if (d / "dev.tsv").is_file():
            return d
    raise TaskError(f"{root}: no {spec.folder}/dev.tsv (expected the GLUE layout, e.g. ../shared/data/glue)")


def glue_split(root: str | Path, spec: TaskSpec, split: str) -> Examples:
    """``train`` or ``dev`` examples of a GLUE task (QNLI: its dev file cut 4463 / last 1000)."""
    d = _glue_dir(root, spec)
    if spec.folder == "QNLI" and not (d / "train.tsv").is_file():
        dev = read_rows(d / "dev.tsv", spec)
        return dev.slice(None, QNLI_TRAIN_ROWS) if split == "train" else dev.slice(-1000, None)
    if not (d / f"{split}.tsv").is_file():
        raise TaskError(f"{d / f'{split}.tsv'}: no such file")
    return read_rows(d / f"{split}.tsv", spec)


def label_names(examples: Examples, regression: bool) -> tuple[str, ...] | None:
    """Class names of a generic file task, sorted (numerically when they are all integers)."""
    if regression:
        return None
    names = set(examples.label)
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


def encode_labels(examples: Examples, spec: TaskSpec) -> torch.Tensor:
    """Label ids (long) or regression targets (float32)."""
    if spec.regression:
        try:
            return torch.tensor([float(v) for v in examples.label], dtype=torch.float32)
        except ValueError as e:
            raise TaskError(f"{examples.source}: regression label is not a number ({e})") from e
    index = {n: i for i, n in enumerate(spec.labels)}
    bad = sorted({v for v in examples.label if v not in index})
    if bad:
        raise TaskError(f"{examples.source}: unknown label(s) {bad[:5]}; expected {list(spec.labels)}")
    return torch.tensor([index[v] for v in examples.label], dtype=torch.long)


# ------------------------------------------------------------------------------ data
class ClassificationData:
    """Tokenised (pairs of) texts with labels as a ``TaskData``: ``batch(idx)`` pads to the
    longest example of the batch (``attention_mask`` 0 on padding)."""

    def __init__(self, examples: Examples, tokenizer, spec: TaskSpec, max_length: int = 128) -> None:
        enc = tokenizer(examples.text, examples.text_pair, truncation=True, max_length=max_length)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] | None = enc.get("token_type_ids")
        self.labels = encode_labels(examples, spec)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lengths = torch.tensor([len(x) for x in self.input_ids])

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``, ``attention_mask`` (``token_type_ids`` if any) and ``labels``."""
        rows = [int(i) for i in idx]
        width = max(len(self.input_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if self.token_type_ids is not None else None
        for r, i in enumerate(rows):
            n = len(self.input_ids[i])
            ids[r, :n] = torch.tensor(self.input_ids[i])
            mask[r, :n] = 1
            if types is not None:
                types[r, :n] = torch.tensor(self.token_type_ids[i])
        out = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[rows]}
        if types is not None:
            out["token_type_ids"] = types
        return out


# ------------------------------------------------------------------------------ metrics
def compute_metrics(spec: TaskSpec, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The task's metrics (scikit-learn / scipy), as fractions (correlations in [-1, 1])."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    p, y = preds.cpu().numpy(), labels.cpu().numpy()
    out: dict[str, float] = {}
    for m in spec.metrics:
        if m == "accuracy":
            out[m] = float(accuracy_score(y, p))
        elif m == "f1":
            out[m] = float(f1_score(y, p, pos_label=1, average="binary", zero_division=0.0))
        elif m == "matthews_correlation":
            out[m] = float(matthews_corrcoef(y, p))
        elif m in ("pearson", "spearman"):
            if np.std(p) == 0 or np.std(y) == 0:
                out[m] = 0.0  # correlation undefined for a constant prediction; report no correlation
            else:
                out[m] = float((pearsonr if m == "pearson" else spearmanr)(p, y)[0])
    return out


# ------------------------------------------------------------------------------ the task
@torch.no_grad()
def selected_blocks(layer, x: torch.Tensor) -> torch.Tensor:
    """``[..., E]`` bool: the expert blocks ``layer`` (an ``LTEFFN`` in soft/hard mode) runs for
    each token of ``x``: its router's choice, or, with a baseline ``selector`` set, the blocks
    holding any neuron the selector keeps."""
    from .kernels.reference import activation

    sel = layer.selector
    if sel is None:
        return layer.router.logits(x) > layer.logit_threshold
    xin = sel.transform_input(layer, x)
    u = F.linear(xin, layer.up, layer.up_bias)
    a = activation(F.linear(xin, layer.gate, layer.gate_bias) if layer.gate is not None else u, layer.act)
    s = sel.select(layer, x, a, a * u if layer.gate is not None else a)
    keep = torch.ones((*x.shape[:-1], layer.up.shape[0]), dtype=torch.bool, device=x.device)
    if s.block is not None:
        keep &= (s.block != 0).repeat_interleave(layer.expert_size, dim=-1)
    if s.neuron is not None:
        keep &= s.neuron != 0
    return keep.unflatten(-1, (layer.n_experts, layer.expert_size)).any(-1)


@dataclass
class SequenceClassificationTask:
    """Cross-entropy (or MSE for regression) on ``*ForSequenceClassification`` logits;
    distillation: KL over classes (or MSE for regression); metrics per ``spec``."""

    spec: TaskSpec
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.spec.name

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys of ``batch`` the model takes (not the labels)."""
        return {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean CE over sequences (MSE for regression)."""
        y = batch["labels"]
        if self.spec.regression:
            return F.mse_loss(logits.float().squeeze(-1), y.float())
        return F.cross_entropy(logits.float(), y)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, torch.Tensor],
                temperature: float) -> torch.Tensor:
        """KL(teacher || student) over classes, times T^2 (MSE to the teacher for regression)."""
        if self.spec.regression:
            return F.mse_loss(student.float(), teacher.float())
        return distillation_loss(student, teacher, temperature=temperature)

    @torch.no_grad()
    def evaluate(self, model, data: ClassificationData, batch_size: int, max_batches: int | None = None
                 ) -> dict[str, Any]:
        """Metrics, FFN sparsity over real tokens, union sparsity per batch, GFLOPs/token."""
        from .evaluate import gflops_per_token
        from .kernels import union_sparsity
        from .sparsify import get_mode, lte_layers, reset_stats, stats

        device = next(model.parameters()).device
        layers = lte_layers(model)
        mode = get_mode(model)
        was_training = model.training
        model.eval()
        reset_stats(model)
        unions: list[list[float]] = [[] for _ in layers]

        def union_hook(i: int):
            def hook(module, args, output):
                if module.mode == "dense":
                    return
                x = args[0]
                mask = selected_blocks(module, x)
                tm = module.state.mask_for(x)
                mask = mask[tm] if tm is not None else mask.reshape(-1, mask.shape[-1])
                if mask.shape[0]:
                    unions[i].append(union_sparsity(mask))
            return hook

        handles = [layer.register_forward_hook(union_hook(i)) for i, layer in enumerate(layers)]
        use_amp = device.type == "cuda"
        preds, golds = [], []
        n_batches = math.ceil(len(data) / batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        tokens, sq = 0, 0
        try:
            for b in range(n_batches):
                idx = torch.arange(b * batch_size, min((b + 1) * batch_size, len(data)))
                batch = {k: v.to(device) for k, v in data.batch(idx).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(**self.model_inputs(batch)).logits.float()
                preds.append(logits.squeeze(-1) if self.spec.regression else logits.argmax(-1))
                golds.append(batch["labels"])
                lengths = batch["attention_mask"].sum(1)
                tokens += int(lengths.sum())
                sq += int((lengths * lengths).sum())
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        res: dict[str, Any] = compute_metrics(self.spec, torch.cat(preds), torch.cat(golds))
        st = stats(model, cumulative=True)
        context = sq / max(tokens, 1)  # every real token attends to all real tokens of its sequence
        flops = gflops_per_token(model, None if mode == "dense" else st["per_layer"], context=round(context))
        per_union = [sum(u) / len(u) for u in unions if u]
        res.update({
            "metric": self.spec.primary,
            "score": res[self.spec.primary],
            "ffn_sparsity": st["ffn_sparsity"] if mode != "dense" else 0.0,
            "per_layer_sparsity": st["per_layer"] if mode != "dense" else [0.0] * len(layers),
            "union_sparsity": sum(per_union) / len(per_union) if per_union else 0.0,
            "union_batch_size": batch_size,
            "gflops_per_token": flops["gflops_per_token"],
            "tokens": tokens,
            "examples": sum(len(g) for g in golds),
            "mode": mode,
        })
        return res


# ------------------------------------------------------------------------------ jobs
def _spec_from_args(a, labels: Sequence[str] | None = None) -> TaskSpec:
    return parse_task(a.task, getattr(a, "text_field", "text") or "text", getattr(a, "text_pair_field", None),
                      getattr(a, "label_field", "label") or "label", labels)


def _splits(a, spec: TaskSpec) -> tuple[Examples, Examples | None]:
    """(train examples, evaluation examples) for ``lte train``."""
    if spec.folder is not None:
        train = glue_split(a.data, spec, "train")
        dev = read_rows(Path(a.val_data), spec) if a.val_data else glue_split(a.data, spec, "dev")
        return train, dev
    train = read_rows(Path(a.data), spec)
    return train, read_rows(Path(a.val_data), spec) if a.val_data else None


def _max_length(tok, model, want: int) -> int:
    limit = getattr(tok, "model_max_length", None)
    if not isinstance(limit, int) or limit > 100_000:
        limit = getattr(model.config, "max_position_embeddings", want)
    return max(8, min(want, limit))


def run_train_task(a, device: str) -> dict:
    """``lte train --task glue:...|classification|regression``: load a ``*ForSequenceClassification``
    model with a fresh head, (dense fine-tune), sparsify, two LTE stages, save, score on dev."""
    from .io import save
    from .models import load_model
    from .pipeline import build_configs
    from .sparsify import set_mode, sparsify
    from .train import finetune_dense, make_teacher, seed_everything, train

    a = argparse.Namespace(**vars(a))
    if a.seq_len is None:
        a.seq_len = 128
    if a.distill_weight is None:  # the teacher is only worth distilling from once its head is trained
        a.distill_weight = 0.5 if a.dense_steps else 0.0
    spec = _spec_from_args(a)
    train_ex, dev_ex = _splits(a, spec)
    if spec.name == "classification":
        spec = _spec_from_args(a, label_names(train_ex, False))
    lcfg, tcfg = build_configs(a)
    out = Path(a.out)
    if a.resume and not (out / "checkpoint" / "trainer_state.pt").is_file():
        raise ValueError(f"--resume: no checkpoint in {out / 'checkpoint'}")
    seed_everything(a.seed)  # the classification head's initialisation
    model, tok = load_model(a.model, dtype=a.dtype, device=device, task="sequence-classification",
                            num_labels=spec.num_labels)
    if spec.labels is not None:
        model.config.id2label = dict(enumerate(spec.labels))
        model.config.label2id = {n: i for i, n in enumerate(spec.labels)}
    max_len = _max_length(tok, model, a.seq_len)
    train_data = ClassificationData(train_ex, tok, spec, max_len)
    dev_data = ClassificationData(dev_ex, tok, spec, max_len) if dev_ex is not None else None
    task = SequenceClassificationTask(spec)
    progress = not a.no_progress
    if a.dense_steps and not a.resume:
        finetune_dense(model, tcfg, train_data, a.dense_steps, progress=progress, task=task)
    teacher = make_teacher(model) if tcfg.distill_weight > 0 else None
    n_cal = min(64, len(train_data))
    calib = [task.model_inputs(train_data.batch(torch.arange(i, min(i + 8, n_cal)))) for i in range(0, n_cal, 8)]
    sparsify(model, lcfg, calibration=calib, progress=progress)
    val = dev_data if a.val_data else None  # periodic evaluation only on a set given for it
    summary = train(model, tcfg, train_data, val, out, tokenizer=tok, teacher=teacher, resume=a.resume,
                    progress=progress, task=task)
    seen = (a.dense_steps + tcfg.stage1_steps + tcfg.stage2_steps) * tcfg.batch_size * tcfg.grad_accum
    summary.pop("train_tokens", None)  # the LM trainer counts seq_len per example; meaningless here
    summary.update({"task": spec.name, "train_examples": len(train_data), "examples_seen": seen,
                    "epochs": seen / len(train_data), "seq_len": max_len})
    if spec.note:
        summary["note"] = spec.note
    if dev_data is not None:
        set_mode(model, "hard")
        ev = task.evaluate(model, dev_data, tcfg.batch_size)
        summary.update({f"dev_{k}": v for k, v in ev.items() if k != "per_layer_sparsity"})
    save(model, out / "model", tok, extra={"train_config": tcfg.to_dict(), "summary": summary, "task": spec.name})
    summary["model_dir"] = str(out / "model")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval_task(a, device: str) -> dict:
    """``lte eval DIR --task ...``: the task's metrics, FFN and union sparsity, GFLOPs/token
    (GLUE: on ``dev.tsv``; QNLI: on the last 1000 dev rows). Examples are truncated to
    ``--seq-len``, the model's limit and the length the saved model was trained with."""
    from .io import is_lte_dir, read_meta
    from .models import load_model
    from .pipeline import _ensure_lte
    from .sparsify import set_mode

    spec = _spec_from_args(a)
    if is_lte_dir(a.model):
        model, tok = load_model(a.model, device=device)
    else:
        if spec.name == "classification":
            raise TaskError("task classification needs a trained model directory (its labels are saved there)")
        model, tok = load_model(a.model, device=device, task="sequence-classification", num_labels=spec.num_labels)
    if spec.name == "classification":
        id2label = getattr(model.config, "id2label", None) or {}
        spec = _spec_from_args(a, [id2label[i] for i in sorted(id2label, key=int)])
    if spec.num_labels != model.config.num_labels:
        raise TaskError(f"{spec.name} has {spec.num_labels} label(s) but the model has {model.config.num_labels}")
    _ensure_lte(model)
    if a.mode:
        set_mode(model, a.mode)
    examples = glue_split(a.data, spec, "dev") if spec.folder is not None else read_rows(Path(a.data), spec)
    want = a.seq_len
    if is_lte_dir(a.model):  # never longer than the examples the model was trained on
        trained = read_meta(a.model).get("extra", {}).get("summary", {}).get("seq_len")
        want = min(want, trained) if isinstance(trained, int) else want
    data = ClassificationData(examples, tok, spec, _max_length(tok, model, want))
    max_batches = None if a.max_windows is None else math.ceil(a.max_windows / a.batch_size)
    res = SequenceClassificationTask(spec).evaluate(model, data, a.batch_size, max_batches)
    res["task"] = spec.name
    if spec.note:
        res["note"] = spec.note
    return res


def report(res: dict) -> dict:
    """The scalar results of ``run_eval_task`` (what ``lte eval --json`` prints)."""
    return {k: v for k, v in res.items() if k != "per_layer_sparsity"}


def format_report(res: dict) -> str:
    """One line for people."""
    spec_metrics = [k for k in ("accuracy", "f1", "matthews_correlation", "pearson", "spearman") if k in res]
    parts = [f"{k} {res[k]:.4f}" for k in spec_metrics]
    return (f"{res.get('task', '')}: " + "  ".join(parts) + f"  ffn_sparsity {res['ffn_sparsity']:.3f}  "
            f"union_sparsity {res['union_sparsity']:.3f} (batch {res['union_batch_size']})  "
            f"GFLOPs/token {res['gflops_per_token']:.4f}  examples {res['examples']}  tokens {res['tokens']}  "
            f"(mode {res['mode']})")
