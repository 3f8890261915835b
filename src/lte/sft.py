"""Supervised fine-tuning data: prompt/response records -> padded (or packed) batches whose
loss covers the response tokens only.

Records (a ``.json`` list or a ``.jsonl`` file, one object per line), in any of three shapes:
- Alpaca: ``{"instruction", "input" (optional, may be empty), "output"}``;
- ``{"prompt", "response"}``;
- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``.

Formatting (``template``):
- ``"alpaca"`` (default): the Stanford Alpaca prompt (tatsu-lab/stanford_alpaca ``train.py``,
  strings in ``ALPACA_PROMPT_INPUT`` / ``ALPACA_PROMPT_NO_INPUT``); the target is the output
  followed by EOS, appended with nothing in between, as that script does. A ``prompt`` record
  is formatted as an instruction without input; a chat record must be one user turn and one
  assistant turn (an optional system message is not representable and is an error).
- ``"chat"``: the tokenizer's chat template. The prompt is the conversation rendered up to each
  assistant turn with the generation prompt; every assistant turn (its content and the
  template's end-of-turn text) is a target, and EOS is appended to the last one unless the
  rendered turn already contains it.

Tokenization is per segment (prompt and target tokenized separately, then concatenated), so
the label mask is exact at the prompt/response boundary; this is also what the Alpaca script
does to find the boundary. With ``template="alpaca"`` the tokenizer's own leading special
tokens (BOS, for LLaMA/Gemma tokenizers) come first; a chat template renders its own.
``labels`` are -100 on prompt tokens and padding. Sequences longer than ``max_len`` are cut
at the end (the response tail and its EOS are lost); an example whose prompt alone fills
``max_len`` has no target token left and is dropped (counted in ``SFTData.dropped``).

Held-out split: the **last** 5% of the records (rounded up: 462 of the 9,229 Alpaca examples),
never shuffled in, as ../shared/data/README.md asks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import DataError
from .models import without_kv_cache
from .tasks import CausalLMTask

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
TEMPLATES = ("alpaca", "chat")
VAL_FRACTION = 0.05
IGNORE = -100

Segments = list[tuple[str, bool]]  # (text, is_target) in order


# ----------------------------------------------------------------------------- reading
def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``.json`` (list of objects) or ``.jsonl`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        recs = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from e
    elif path.suffix == ".json":
        try:
            recs = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg})") from e
        if isinstance(recs, dict) and isinstance(recs.get("data"), list):
            recs = recs["data"]
        if not isinstance(recs, list):
            raise DataError(f"{path}: expected a JSON list of records")
    else:
        raise DataError(f"{path}: SFT data must be .json or .jsonl (got {path.suffix or 'no suffix'})")
    if not recs:
        raise DataError(f"{path}: no records")
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i} is not an object")
        record_kind(r, where=f"{path}: record {i}")
    return recs


def record_kind(rec: dict[str, Any], where: str = "record") -> str:
    """``"alpaca"``, ``"prompt"`` or ``"messages"``; a DataError names what is missing."""
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                             for m in msgs):
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant message to train on")
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "response" in rec:
        return "prompt"
    raise DataError(f"{where}: expected instruction/input/output, prompt/response or messages fields "
                    f"(got {sorted(rec)})")


def split_records(records: Sequence[Any], fraction: float = VAL_FRACTION) -> tuple[list[Any], list[Any]]:
    """(train, held-out): held-out is the last ``ceil(fraction * n)`` records."""
    n = len(records)
    n_val = math.ceil(fraction * n)
    if n_val < 1 or n_val >= n:
        raise DataError(f"too few records ({n}) to hold out {fraction:.0%}")
    return list(records[: n - n_val]), list(records[n - n_val:])


# ----------------------------------------------------------------------------- formatting
def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt (with or without input)."""
    if input:
        return ALPACA_PROMPT_INPUT.format_map({"instruction": instruction, "input": input})
    return ALPACA_PROMPT_NO_INPUT.format_map({"instruction": instruction})


def _eos(tok) -> str:
    if tok.eos_token is None:
        raise DataError("the tokenizer has no EOS token to end responses with")
    return tok.eos_token


def _alpaca_fields(rec: dict[str, Any]) -> tuple[str, str, str]:
    kind = record_kind(rec)
    if kind == "alpaca":
        return str(rec["instruction"]), str(rec.get("input") or ""), str(rec["output"])
    if kind == "prompt":
        return str(rec["prompt"]), "", str(rec["response"])
    msgs = rec["messages"]
    roles = [m["role"] for m in msgs]
    if roles != ["user", "assistant"]:
        raise DataError(f"the alpaca template takes one user turn and one assistant turn, got roles {roles}; "
                        "use the chat template (--chat-template) for other conversations")
    return str(msgs[0]["content"]), "", str(msgs[1]["content"])


def _messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    kind = record_kind(rec)
    if kind == "messages":
        return [{"role": m["role"], "content": str(m["content"])} for m in rec["messages"]]
    if kind == "alpaca":
        inst, inp = str(rec["instruction"]), str(rec.get("input") or "")
        return [{"role": "user", "content": f"{inst}\n\n{inp}" if inp else inst},
                {"role": "assistant", "content": str(rec["output"])}]
    return [{"role": "user", "content": str(rec["prompt"])}, {"role": "assistant", "content": str(rec["response"])}]


def format_segments(rec: dict[str, Any], tok, template: str = "alpaca") -> Segments:
    """The record as ordered (text, is_target) segments (see module docstring)."""
    if template == "alpaca":
        inst, inp, out = _alpaca_fields(rec)
        return [(alpaca_prompt(inst, inp), False), (out + _eos(tok), True)]
    if template != "chat":
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    if not getattr(tok, "chat_template", None):
        raise DataError("the tokenizer has no chat template; use the alpaca template")
    msgs = _messages(rec)
    while msgs and msgs[-1]["role"] != "assistant":  # trailing user turns have nothing to learn
        msgs.pop()
    segs: Segments = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tok.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (prefix.startswith(done) and upto.startswith(prefix)):
            raise DataError("the chat template does not render conversations prefix by prefix; "
                            "cannot locate assistant turns")
        if len(prefix) > len(done):
            segs.append((prefix[len(done):], False))
        segs.append((upto[len(prefix):], True))
        done = upto
    eos = _eos(tok)
    text, _ = segs[-1]
    if eos not in text:
        segs[-1] = (text + eos, True)
    return segs


def _leading_special_ids(tok) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (e.g. BOS)."""
    with_sp = tok("a", add_special_tokens=True)["input_ids"]
    without = tok("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k:k + len(without)] == without:
            return list(with_sp[:k])
    return []


def encode_segments(segs: Segments, tok, max_len: int | None = None,
                    prefix_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the segments, each tokenized on its own; labels -100 on non-targets."""
    ids, labels = list(prefix_ids), [IGNORE] * len(prefix_ids)
    for text, target in segs:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids.extend(t)
        labels.extend(t if target else [IGNORE] * len(t))
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def encode_records(records: Sequence[dict[str, Any]], tok, template: str = "alpaca",
                   max_len: int | None = 512) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encoded (input_ids, labels) of each record, and how many were dropped (no target left)."""
    prefix = _leading_special_ids(tok) if template == "alpaca" else []
    out, dropped = [], 0
    for rec in records:
        ids, labels = encode_segments(format_segments(rec, tok, template), tok, max_len, prefix)
        # a target token at position 0 can never be predicted; need one at >= 1
        if not any(lab != IGNORE for lab in labels[1:]):
            dropped += 1
            continue
        out.append((ids, labels))
    return out, dropped


# ----------------------------------------------------------------------------- task data
def _pad_id(tok) -> int:
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    if tok.eos_token_id is not None:
        return tok.eos_token_id
    return 0


class SFTData:
    """Encoded examples as a ``TaskData``: ``batch(idx)`` -> right-padded ``input_ids``,
    ``attention_mask`` and ``labels`` (-100 on prompt and padding). With ``packed=True`` the
    examples are concatenated in order and cut into ``[n, max_len]`` blocks (no padding, no
    attention mask: examples in a block attend to earlier ones, as in common packed SFT)."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], pad_id: int, packed: bool = False,
                 max_len: int | None = None, dropped: int = 0) -> None:
        if not examples:
            raise DataError(f"no SFT examples left: all {dropped} prompts fill the {max_len}-token limit "
                            "(raise --seq-len)" if dropped else "no SFT examples")
        self.pad_id, self.packed, self.dropped = pad_id, packed, dropped
        self.n_examples = len(examples)
        self.target_tokens = sum(sum(1 for lab in labels[1:] if lab != IGNORE) for _, labels in examples)
        if packed:
            if not max_len:
                raise ValueError("packed SFT data needs max_len")
            ids = torch.tensor([t for e, _ in examples for t in e], dtype=torch.long)
            lab = torch.tensor([t for _, lb in examples for t in lb], dtype=torch.long)
            n = ids.numel() // max_len
            if n == 0:
                raise DataError(f"only {ids.numel()} SFT tokens: fewer than one packed block of {max_len}")
            self.ids, self.labels = ids[: n * max_len].view(n, max_len), lab[: n * max_len].view(n, max_len)
            self.examples = None
        else:
            self.examples = [(torch.tensor(i, dtype=torch.long), torch.tensor(lb, dtype=torch.long))
                             for i, lb in examples]

    def __len__(self) -> int:
        return self.ids.shape[0] if self.packed else len(self.examples)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The examples at ``idx`` (see class docstring)."""
        idx = [int(i) for i in torch.as_tensor(idx).reshape(-1)]
        if self.packed:
            return {"input_ids": self.ids[idx], "labels": self.labels[idx]}
        exs = [self.examples[i] for i in idx]
        n = max(e[0].numel() for e in exs)
        ids = torch.full((len(exs), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(exs), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(exs), n), dtype=torch.long)
        for r, (e, lb) in enumerate(exs):
            ids[r, : e.numel()] = e
            labels[r, : e.numel()] = lb
            mask[r, : e.numel()] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_sft_data(records: Sequence[dict[str, Any]], tok, template: str = "alpaca", max_len: int = 512,
                   packed: bool = False) -> SFTData:
    """Encode ``records`` into an ``SFTData`` (packed: examples are not cut, blocks are)."""
    exs, dropped = encode_records(records, tok, template, None if packed else max_len)
    return SFTData(exs, _pad_id(tok), packed=packed, max_len=max_len, dropped=dropped)


def load_sft_splits(path: str | Path, tok, template: str = "alpaca", max_len: int = 512, packed: bool = False,
                    val_path: str | Path | None = None) -> tuple[SFTData, SFTData]:
    """(train, held-out) ``SFTData`` of a file: held-out = ``val_path`` or the last 5% of ``path``.
    The held-out set is always padded (one example per row), so its perplexity is exact."""
    recs = load_records(path)
    if val_path:
        train_recs, val_recs = recs, load_records(val_path)
    else:
        train_recs, val_recs = split_records(recs)
    return (build_sft_data(train_recs, tok, template, max_len, packed),
            build_sft_data(val_recs, tok, template, max_len, packed=False))


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def response_perplexity(model, data, batch_size: int = 8, max_batches: int | None = None,
                        progress: bool = False, autocast: bool | None = None) -> dict[str, Any]:
    """Perplexity over the target (label != -100) tokens of ``data`` (any ``TaskData`` with
    labels), with the FFN sparsity it ran at (all real tokens, prompts included) and GFLOPs
    per token (at the average sequence length). A plain model gets LTE layers in dense mode,
    in place (``pipeline._ensure_lte``): evaluate a copy if it is trained further."""
    from tqdm.auto import tqdm

    from .evaluate import gflops_per_token
    from .pipeline import _ensure_lte
    from .sparsify import get_mode, reset_stats, stats

    device = next(model.parameters()).device
    use_amp = device.type == "cuda" if autocast is None else autocast
    was_training = model.training
    model.eval()
    _ensure_lte(model)
    reset_stats(model)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count, seq_tokens, seqs = 0, 0, 0
    starts = list(range(0, len(data), batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    for s in tqdm(starts, desc="eval (response ppl)", disable=not progress, leave=False):
        b = {k: v.to(device) for k, v in data.batch(torch.arange(s, min(s + batch_size, len(data)))).items()}
        inputs = {k: v for k, v in b.items() if k in ("input_ids", "attention_mask")}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp), without_kv_cache(model):
            logits = model(**inputs).logits
        t = b["labels"][:, 1:]
        nll += F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), t.reshape(-1),
                               ignore_index=IGNORE, reduction="sum").double()
        count += int((t != IGNORE).sum())
        m = b.get("attention_mask")
        seq_tokens += int(m.sum()) if m is not None else b["input_ids"].numel()
        seqs += b["input_ids"].shape[0]
    model.train(was_training)
    if count == 0:
        raise ValueError("no target tokens to evaluate")
    st = stats(model, cumulative=True)
    mode = get_mode(model)
    ctx = max(seq_tokens // max(seqs, 1) // 2, 1)
    flops = gflops_per_token(model, None if mode == "dense" else st["per_layer"], context=ctx)
    return {"perplexity": math.exp(float(nll) / count), "ffn_sparsity": st["ffn_sparsity"] if mode != "dense" else 0.0,
            "per_layer_sparsity": st["per_layer"], "gflops_per_token": flops["gflops_per_token"], "tokens": count,
            "mode": mode}


class SFTTask(CausalLMTask):
    """Causal LM on SFT batches (labels mask the prompts); evaluation is the held-out
    response perplexity (padded examples, targets only) instead of packed-block perplexity."""

    name = "sft"

    def evaluate(self, model, data, batch_size: int, max_batches: int | None = None) -> dict[str, Any]:
        """Response perplexity (and sparsity, GFLOPs) on ``data``."""
        return response_perplexity(model, data, batch_size, max_batches)


__all__ = ["ALPACA_PROMPT_INPUT", "ALPACA_PROMPT_NO_INPUT", "SFTData", "SFTTask", "alpaca_prompt",
           "build_sft_data", "encode_records", "encode_segments", "format_segments", "load_records",
           "load_sft_splits", "record_kind", "response_perplexity", "split_records"]
