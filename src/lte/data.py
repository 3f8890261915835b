"""Language-modelling data: read text sources, tokenise (cached), pack into fixed-length blocks.

Sources: a ``.txt`` file (read as is, e.g. WikiText), a ``.jsonl`` file (one JSON object per
line, text in ``text_field``), a ``.json`` file (a list of strings or objects), a directory of
such files (sorted by name), or a ``datasets`` hub name ``name[:config]`` when online.
Held-out splits are carved from the *end* of a source, by lines, never from a test file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

CACHE_DIR = Path(os.environ.get("LTE_CACHE", Path.home() / ".cache" / "lte"))
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


class DataError(ValueError):
    """A data source is missing, empty or malformed."""


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = (), error: type[Exception] = DataError,
               hint: str = "") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file (a leading
    byte-order mark is skipped); ``error`` with ``path:line`` for invalid JSON or a missing
    ``required`` field (``hint`` is appended to the latter, e.g. " (use --text-field)")."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{i}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise error(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            for field in required:
                if field not in obj:
                    raise error(f"{path}:{i}: no {field!r} field{hint}")
            yield i, obj


def _read_jsonl(path: Path, field: str) -> list[str]:
    return [str(obj[field]) for _, obj in iter_jsonl(path, (field,), hint=" (use --text-field)")]


def _read_json(path: Path, field: str) -> list[str]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from e
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of strings or objects")
    out = []
    for i, item in enumerate(obj):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and field in item:
            out.append(str(item[field]))
        else:
            raise DataError(f"{path}: item {i} is neither a string nor an object with {field!r}")
    return out


def load_texts(source: str | os.PathLike, text_field: str = "text", split: str = "train") -> list[str]:
    """Documents of a source (see module docstring). A ``.txt`` file is one document."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no {', '.join(TEXT_SUFFIXES)} files in this directory")
        return [t for f in files for t in load_texts(f, text_field)]
    if path.is_file():
        if path.suffix == ".jsonl":
            texts = _read_jsonl(path, text_field)
        elif path.suffix == ".json":
            texts = _read_json(path, text_field)
        else:
            texts = [path.read_text(encoding="utf-8")]
        if not any(t.strip() for t in texts):
            raise DataError(f"{path}: no text")
        return texts
    if os.sep in str(source) or str(source).startswith(".") or Path(str(source)).suffix in TEXT_SUFFIXES:
        raise DataError(f"{source}: no such file or directory")
    return _load_hub(str(source), text_field, split)


def _load_hub(name: str, text_field: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{name!r} is not a local path; hub datasets need `pip install datasets`") from e
    ds_name, _, ds_cfg = name.partition(":")
    try:
        ds = datasets.load_dataset(ds_name, ds_cfg or None, split=split)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds; report one line
        raise DataError(f"could not load dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from e
    return ["\n".join(ds[text_field])]


def split_tail(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(head, tail) where tail is the last ``fraction`` of the lines (held-out split)."""
    if not 0 < fraction < 1:
        raise DataError(f"held-out fraction must be in (0, 1), got {fraction}")
    lines = "".join(t if t.endswith("\n") else t + "\n" for t in texts).splitlines(keepends=True)
    cut = int(round(len(lines) * (1 - fraction)))
    if cut <= 0 or cut >= len(lines):
        raise DataError(f"too little text ({len(lines)} lines) to hold out {fraction:.0%}")
    return ["".join(lines[:cut])], ["".join(lines[cut:])]


def _tok_key(tokenizer) -> str:
    return f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{type(tokenizer).__name__}"


def tokenize(texts: list[str], tokenizer, add_eos: bool = True, cache: bool = True) -> torch.Tensor:
    """All documents' token ids concatenated (EOS after each when ``add_eos``), cached on disk."""
    h = hashlib.sha256(_tok_key(tokenizer).encode())
    h.update(str(add_eos).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    path = CACHE_DIR / "tokens" / f"{h.hexdigest()[:32]}.pt"
    if cache and path.is_file():
        try:
            return torch.load(path)
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt
            path.unlink(missing_ok=True)
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if add_eos and eos is not None:
            ids.append(eos)
    out = torch.tensor(ids, dtype=torch.long)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out


def pack(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[n_blocks, seq_len]`` non-overlapping blocks (the tail shorter than a block is dropped)."""
    n = ids.numel() // seq_len
    if n == 0:
        raise DataError(f"only {ids.numel()} tokens: fewer than one block of --seq-len {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def batch_indices(n_blocks: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Block indices of training batch ``step``: a fresh seeded shuffle every epoch, so the
    data order depends only on (seed, step) and a resumed run sees the same batches."""
    per_epoch = max(n_blocks // batch_size, 1)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_blocks, generator=g)
    idx = perm[pos * batch_size:(pos + 1) * batch_size]
    if idx.numel() < batch_size:  # fewer blocks than a batch: wrap around
        idx = perm.repeat((batch_size // n_blocks) + 1)[:batch_size]
    return idx
