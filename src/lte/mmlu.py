"""MMLU 5-shot evaluation, exactly the protocol of ../shared/data/README.md.

Per subject (``dev/SUBJECT_dev.csv`` and ``test/SUBJECT_test.csv``; no header; columns
question, A, B, C, D, answer letter):

- the prompt is the header ``"The following are multiple choice questions (with answers)
  about {subject with underscores as spaces}.\\n\\n"``, then the subject's 5 dev questions in
  file order, each as ``"{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {letter}\\n\\n"``,
  then the test question in the same form ending at ``"Answer:"``;
- the prediction is whichever of ``" A"``/``" B"``/``" C"``/``" D"`` (one token each; their
  first token if a tokenizer splits one) has the highest next-token logit.

Prompts are tokenized with the tokenizer's default special tokens (BOS where it adds one),
batched with **left** padding (position ids follow the attention mask, so a padded prompt
scores exactly as it would alone), sorted by length within a subject to waste little padding.

Truncation: a prompt longer than ``max_length`` tokens (default: the model's context) drops
dev shots from the end (the first ``k`` shots are kept, the largest ``k`` that fits), as the
reference evaluation scripts do; if even the 0-shot prompt is too long it is cut from the
left. Both are counted per subject (``truncated``: prompts with fewer than 5 shots or cut).

Accuracy: ``accuracy`` is the micro average over all questions evaluated (the standard MMLU
number over 14,042 test questions); ``accuracy_macro`` is the mean of per-subject accuracies.
Chance is 0.25.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import DataError
from .models import without_kv_cache

LETTERS = ("A", "B", "C", "D")
SHOTS = 5
CHANCE = 0.25


@dataclass
class Question:
    """One MMLU question."""

    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"


def read_questions(path: str | Path) -> list[Question]:
    """The questions of an MMLU CSV file (no header; question, A, B, C, D, answer)."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) != 6:
                raise DataError(f"{path}:{i}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            ans = row[5].strip()
            if ans not in LETTERS:
                raise DataError(f"{path}:{i}: answer must be one of A-D, got {row[5]!r}")
            out.append(Question(row[0], (row[1], row[2], row[3], row[4]), ans))
    return out


def subjects(root: str | Path) -> list[str]:
    """The subjects of an MMLU folder (those with both a dev and a test file), sorted."""
    root = Path(root)
    if not (root / "dev").is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root}: an MMLU folder needs dev/ and test/ subfolders")
    names = sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
    names = [s for s in names if (root / "dev" / f"{s}_dev.csv").is_file()]
    if not names:
        raise DataError(f"{root}: no SUBJECT_test.csv files with a matching dev/SUBJECT_dev.csv")
    return names


def header(subject: str) -> str:
    """The prompt's first line (and the blank line after it)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_question(q: Question, with_answer: bool) -> str:
    """One question block; a shot ends with its answer and a blank line, the test question at "Answer:"."""
    s = q.question + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, q.choices)) + "\nAnswer:"
    return s + f" {q.answer}\n\n" if with_answer else s


def build_prompt(subject: str, shots: list[Question], q: Question, k: int = SHOTS) -> str:
    """The k-shot prompt for ``q`` (the first ``k`` of ``shots``)."""
    return header(subject) + "".join(format_question(s, True) for s in shots[:k]) + format_question(q, False)


def choice_token_ids(tok) -> list[int]:
    """Token id of " A", " B", " C", " D" (the first token if the tokenizer splits one)."""
    ids = []
    for letter in LETTERS:
        t = tok(f" {letter}", add_special_tokens=False)["input_ids"]
        if not t:
            raise ValueError(f"the tokenizer encodes ' {letter}' as no token")
        ids.append(t[0])
    if len(set(ids)) != 4:
        raise ValueError(f"the answer letters do not map to distinct tokens: {ids}")
    return ids


def _encode(tok, subject: str, shots: list[Question], q: Question, max_length: int) -> tuple[list[int], int, bool]:
    """(token ids, shots used, cut from the left)."""
    for k in range(min(SHOTS, len(shots)), -1, -1):
        ids = tok(build_prompt(subject, shots, q, k))["input_ids"]
        if len(ids) <= max_length:
            return ids, k, False
    return ids[-max_length:], 0, True


def _model_context(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


@torch.no_grad()
def next_token_logits(model, batch_ids: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Logits ``[B, vocab]`` of the token after each prompt, left-padded into one batch."""
    n = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), n), dtype=torch.long)
    for r, x in enumerate(batch_ids):
        ids[r, n - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[r, n - len(x):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    use_amp = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp), without_kv_cache(model):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
    return out.logits[:, -1].float()


def evaluate_mmlu(model, tok, root: str | Path, limit: int | None = None, subject_names: list[str] | None = None,
                  batch_size: int = 8, max_length: int | None = None, progress: bool = True) -> dict[str, Any]:
    """5-shot MMLU accuracy of ``model`` (see module docstring) with FFN sparsity and GFLOPs/token.

    ``limit``: the first N test questions of each subject. ``subject_names``: a subset. A plain
    model gets LTE layers in dense mode, in place: evaluate a copy if it is trained further."""
    from tqdm.auto import tqdm

    from .evaluate import gflops_per_token
    from .pipeline import _ensure_lte
    from .sparsify import get_mode, reset_stats, stats

    root = Path(root)
    names = subjects(root)
    if subject_names:
        unknown = sorted(set(subject_names) - set(names))
        if unknown:
            raise DataError(f"unknown MMLU subject(s): {', '.join(unknown)}")
        names = [s for s in names if s in set(subject_names)]
    max_length = max_length or _model_context(model)
    device = next(model.parameters()).device
    choice_ids = torch.tensor(choice_token_ids(tok), device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    work = []  # (subject, shots, questions)
    for s in names:
        shots = read_questions(root / "dev" / f"{s}_dev.csv")
        qs = read_questions(root / "test" / f"{s}_test.csv")
        if limit is not None:
            qs = qs[:limit]
        work.append((s, shots, qs))
    total_q = sum(len(qs) for _, _, qs in work)
    if total_q == 0:
        raise DataError(f"{root}: no test questions to evaluate")

    was_training = model.training
    model.eval()
    _ensure_lte(model)
    reset_stats(model)
    per_subject: dict[str, dict[str, Any]] = {}
    correct_all = tokens = 0
    predictions = []
    t0 = time.perf_counter()
    bar = tqdm(total=total_q, desc="mmlu 5-shot", disable=not progress, dynamic_ncols=True)
    for s, shots, qs in work:
        enc = [_encode(tok, s, shots, q, max_length) for q in qs]
        order = sorted(range(len(qs)), key=lambda i: len(enc[i][0]))
        preds: list[str] = [""] * len(qs)
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            logits = next_token_logits(model, [enc[i][0] for i in chunk], pad_id, device)
            best = logits[:, choice_ids].argmax(-1).tolist()
            for i, c in zip(chunk, best):
                preds[i] = LETTERS[c]
            tokens += sum(len(enc[i][0]) for i in chunk)
            bar.update(len(chunk))
        correct = sum(p == q.answer for p, q in zip(preds, qs))
        correct_all += correct
        per_subject[s] = {"accuracy": correct / len(qs) if qs else float("nan"), "questions": len(qs),
                          "correct": correct, "truncated": sum(1 for e in enc if e[1] < min(SHOTS, len(shots)) or e[2]),
                          "max_prompt_tokens": max((len(e[0]) for e in enc), default=0)}
        predictions.extend({"subject": s, "index": i, "prediction": p, "answer": q.answer}
                           for i, (p, q) in enumerate(zip(preds, qs)))
    bar.close()
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    st = stats(model, cumulative=True)
    mode = get_mode(model)
    evaluated = [v for v in per_subject.values() if v["questions"]]
    flops = gflops_per_token(model, None if mode == "dense" else st["per_layer"],
                             context=max(tokens // total_q // 2, 1))
    return {
        "accuracy": correct_all / total_q,
        "accuracy_macro": sum(v["accuracy"] for v in evaluated) / len(evaluated),
        "chance": CHANCE,
        "questions": total_q,
        "subjects": len(evaluated),
        "truncated_prompts": sum(v["truncated"] for v in per_subject.values()),
        "max_length": max_length,
        "ffn_sparsity": st["ffn_sparsity"] if mode != "dense" else 0.0,
        "gflops_per_token": flops["gflops_per_token"],
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else float("nan"),
        "mode": mode,
        "per_subject": per_subject,
        "predictions": predictions,
    }


__all__ = ["CHANCE", "Question", "build_prompt", "choice_token_ids", "evaluate_mmlu", "format_question", "header",
           "next_token_logits", "read_questions", "subjects"]
