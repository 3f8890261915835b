"""E2E NLG (meaning representation -> restaurant description): training data and evaluation.

Data (../shared/data/e2e/, CSV with header ``mr,ref``; one row per MR-reference pair):
``trainset.csv`` trains, ``devset.csv`` is the held-out set (controller, early stopping),
``testset_w_refs.csv`` is only evaluated.

Format: prompt ``PROMPT.format(mr=...)`` (``"Meaning representation: {mr}\\nDescription:"``),
target ``" " + ref + EOS``; loss on the target only (the SFT machinery of ``lte.sft``).

Evaluation: the rows are grouped by MR (in order of first appearance), one output is generated
per distinct MR (greedy, or beam search with ``num_beams``), cut at the first newline and
stripped, and scored against **all** references of that MR:
- BLEU: ``sacrebleu.corpus_bleu`` with multiple reference streams (MRs with fewer references
  get ``None`` in the missing streams, which sacrebleu skips), its default ``13a`` tokenization,
  mixed case; the sacrebleu signature is saved with the scores. Reported on a 0-100 scale.
- ROUGE-L: ``rouge_score`` ``rougeL`` F-measure with the Porter stemmer and the library's
  tokenizer (lower-cased, non-alphanumerics removed); per MR the **maximum** F over its
  references (``RougeScorer.score_multi``), averaged over MRs. Reported on a 0-1 scale.
These are not the official e2e-metrics script's numbers (that script's ROUGE-L is the
coco-caption variant); name the scorer when comparing.

Generations are written beside the scores: ``OUT/generations.jsonl`` (one line per MR: ``mr``,
``generation``, ``references``) and ``OUT/scores.json``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from .data import DataError
from .sft import IGNORE, SFTData, _pad_id, encode_segments

PROMPT = "Meaning representation: {mr}\nDescription:"
FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
SCORER = ("sacrebleu corpus BLEU (13a tokenization, multi-reference, 0-100); rouge-score rougeL F "
          "(Porter stemmer, max over references per MR, mean over MRs, 0-1)")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(mr, ref) rows of an E2E CSV file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "mr" not in reader.fieldnames or "ref" not in reader.fieldnames:
            raise DataError(f"{path}: expected a CSV with a header 'mr,ref'")
        rows = [(r["mr"], r["ref"]) for r in reader]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def split_path(data: str | Path, split: str) -> Path:
    """The CSV of ``split`` in an E2E folder (or ``data`` itself when it is a file)."""
    p = Path(data)
    if p.is_file():
        return p
    if split not in FILES:
        raise ValueError(f"E2E split must be one of {sorted(FILES)}, got {split!r}")
    f = p / FILES[split]
    if not f.is_file():
        raise DataError(f"{p}: no {FILES[split]} (an E2E folder holds {', '.join(FILES.values())})")
    return f


def group_by_mr(rows: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(mr, [refs]) per distinct MR, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for mr, ref in rows:
        groups.setdefault(mr, []).append(ref)
    return list(groups.items())


def prompt(mr: str) -> str:
    """The generation prompt of an MR."""
    return PROMPT.format(mr=mr)


def encode_pairs(rows: list[tuple[str, str]], tok, max_len: int | None = 256) -> tuple[list, int]:
    """Encoded (input_ids, labels) per pair (target = " ref" + EOS), and how many were dropped."""
    from .sft import _eos, _leading_special_ids
    pre = _leading_special_ids(tok)
    eos = _eos(tok)
    out, dropped = [], 0
    for mr, ref in rows:
        ids, labels = encode_segments([(prompt(mr), False), (" " + ref + eos, True)], tok, max_len, pre)
        if not any(lab != IGNORE for lab in labels[1:]):
            dropped += 1
            continue
        out.append((ids, labels))
    return out, dropped


def load_e2e_splits(data: str | Path, tok, max_len: int = 256, packed: bool = False,
                    val_path: str | Path | None = None) -> tuple[SFTData, SFTData]:
    """(train, held-out) of an E2E folder: trainset.csv and devset.csv (or ``val_path``)."""
    train_rows = read_pairs(split_path(data, "train"))
    val_rows = read_pairs(val_path if val_path else split_path(data, "dev"))
    tr, d1 = encode_pairs(train_rows, tok, None if packed else max_len)
    va, d2 = encode_pairs(val_rows, tok, max_len)
    pad = _pad_id(tok)
    return SFTData(tr, pad, packed=packed, max_len=max_len, dropped=d1), SFTData(va, pad, dropped=d2)


# ----------------------------------------------------------------------------- scoring
def check_scorers() -> None:
    """Fail at once (not after hours of training) when the scoring libraries are missing."""
    missing = [name for name, mod in (("sacrebleu", "sacrebleu"), ("rouge-score", "rouge_score"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"E2E scoring needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def score(hyps: list[str], refs: list[list[str]]) -> dict[str, Any]:
    """BLEU and ROUGE-L of ``hyps`` against multiple references each (see module docstring)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"need one non-empty reference list per hypothesis ({len(hyps)} vs {len(refs)})")
    if any(not r for r in refs):
        raise ValueError("every hypothesis needs at least one reference")
    n_streams = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(n_streams)]
    bleu = sacrebleu.metrics.BLEU()
    b = bleu.corpus_score(hyps, streams)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per = [scorer.score_multi(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    return {"bleu": b.score, "rouge_l": sum(per) / len(per), "rouge_l_per_mr": per,
            "bleu_signature": str(bleu.get_signature()), "scorer": SCORER}


# ----------------------------------------------------------------------------- generation
def _postprocess(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


@torch.no_grad()
def generate_batch(model, tok, prompts: list[str], max_new_tokens: int = 96, num_beams: int = 1,
                   batch_size: int = 16, progress: bool = True) -> tuple[list[str], int, float, int]:
    """(outputs, generated tokens, seconds, prompt tokens): greedy (``num_beams=1``) or beam
    search, batched with left padding, longest prompts first."""
    from tqdm.auto import tqdm

    from .sft import _leading_special_ids
    device = next(model.parameters()).device
    pre = _leading_special_ids(tok)
    enc = [pre + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    pad = _pad_id(tok)
    eos = tok.eos_token_id
    outs: list[str] = [""] * len(prompts)
    n_new, secs = 0, 0.0
    for b in tqdm(range(0, len(order), batch_size), desc=f"e2e generate ({'greedy' if num_beams == 1 else 'beam'})",
                  disable=not progress, dynamic_ncols=True):
        chunk = order[b:b + batch_size]
        n = max(len(enc[i]) for i in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, n - len(enc[i]):] = torch.tensor(enc[i])
            mask[r, n - len(enc[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=num_beams, early_stopping=num_beams > 1 or None, pad_token_id=pad,
                             eos_token_id=eos, temperature=None, top_p=None, top_k=None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        new = out[:, n:]
        for r, i in enumerate(chunk):
            row = new[r].tolist()
            if eos is not None and eos in row:
                row = row[: row.index(eos) + 1]
            n_new += len(row)
            outs[i] = _postprocess(tok.decode(row, skip_special_tokens=True))
    return outs, n_new, secs, sum(len(e) for e in enc)


def evaluate_e2e(model, tok, data: str | Path, split: str = "test", decoding: str = "greedy", num_beams: int = 4,
                 max_new_tokens: int = 96, batch_size: int = 16, limit: int | None = None,
                 out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate one output per distinct MR of ``split`` and score it (see module docstring).

    ``limit``: the first N distinct MRs. Writes ``generations.jsonl`` and ``scores.json`` to
    ``out_dir`` when given. A plain model gets LTE layers in dense mode, in place: evaluate a
    copy if it is trained further."""
    from .evaluate import gflops_per_token
    from .pipeline import _ensure_lte
    from .sparsify import get_mode, reset_stats, stats

    if decoding not in ("greedy", "beam"):
        raise ValueError(f"decoding must be greedy or beam, got {decoding!r}")
    beams = 1 if decoding == "greedy" else num_beams
    if beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    path = split_path(data, split)
    groups = group_by_mr(read_pairs(path))
    if limit is not None:
        groups = groups[:limit]
    model.eval()
    _ensure_lte(model)
    reset_stats(model)
    hyps, n_new, secs, n_prompt = generate_batch(model, tok, [prompt(mr) for mr, _ in groups], max_new_tokens, beams,
                                       batch_size, progress)
    st = stats(model, cumulative=True)
    mode = get_mode(model)
    sc = score(hyps, [refs for _, refs in groups])
    per = sc.pop("rouge_l_per_mr")
    flops = gflops_per_token(model, None if mode == "dense" else st["per_layer"],
                             context=max((n_prompt + n_new // 2) // max(len(groups), 1), 1))
    res = {"bleu": sc["bleu"], "rouge_l": sc["rouge_l"], "mrs": len(groups),
           "references": sum(len(r) for _, r in groups), "split": path.name, "decoding": decoding,
           "num_beams": beams, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
           "ffn_sparsity": st["ffn_sparsity"] if mode != "dense" else 0.0, "gflops_per_token": flops["gflops_per_token"],
           "tokens": n_new, "tokens_per_s": n_new / secs if secs > 0 else float("nan"), "mode": mode,
           "bleu_signature": sc["bleu_signature"], "scorer": sc["scorer"]}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "generations.jsonl").open("w", encoding="utf-8") as fh:
            for (mr, refs), h, r in zip(groups, hyps, per):
                fh.write(json.dumps({"mr": mr, "generation": h, "rouge_l": r, "references": refs},
                                    ensure_ascii=False) + "\n")
        (out / "scores.json").write_text(json.dumps(res, indent=2))
        res["out_dir"] = str(out)
    return res


__all__ = ["PROMPT", "SCORER", "encode_pairs", "evaluate_e2e", "generate_batch", "group_by_mr", "load_e2e_splits",
           "prompt", "read_pairs", "score", "split_path"]
