"""Save and load LTE models: safetensors weights + JSON configs + tokenizer, in one directory.

A saved directory is self-contained (loading needs nothing else: no hub, no GGUF) and is
written atomically: into a temporary sibling directory first, then renamed into place, so a
crash never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from .config import LTEConfig
from .dist import full_state_dict, is_main_process, is_sharded

LTE_FILE = "lte_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A saved LTE directory is missing a file or a file is corrupt."""


def is_lte_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a directory written by ``lte.save``."""
    return os.path.isfile(os.path.join(path, LTE_FILE))


def _atomic_dir(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


def _replace_dir(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_full(sd: dict[str, torch.Tensor], file: Path) -> None:
    """Write a gathered state dict; tensors sharing storage (tied weights) are written once."""
    from safetensors.torch import save_file
    seen: dict[int, str] = {}
    out = {}
    for k, v in sd.items():
        key = v.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen[key] = k
        out[k] = v.contiguous()
    save_file(out, str(file), metadata={"format": "pt"})


def save(model: nn.Module, path: str | os.PathLike, tokenizer=None, extra: dict | None = None) -> Path:
    """Write ``model`` (an LTE model) to ``path``: weights, configs, tokenizer (the one given,
    else the one ``lte.load_model`` attached). Returns the path. In a multi-process run only
    the main process (RANK 0) writes."""
    from .sparsify import get_mode

    cfg: LTEConfig | None = getattr(model, "lte_config", None)
    if cfg is None:
        raise ValueError("lte.save needs an LTE model: call lte.sparsify(model, cfg) first")
    path = Path(path)
    full = full_state_dict(model) if is_sharded(model) else None  # FSDP: collective, every rank calls save
    if not is_main_process():  # multi-process run: the main process writes, the others hold the same model
        return path
    tmp = _atomic_dir(path)
    try:
        model.config.save_pretrained(tmp)
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is not None:
            gen_cfg.save_pretrained(tmp)
        if full is None:
            st_save_model(model, str(tmp / WEIGHTS_FILE))
        else:
            _save_full(full, tmp / WEIGHTS_FILE)
        dtype = next(p.dtype for n, p in model.named_parameters() if ".router." not in n)
        meta = {
            "format_version": FORMAT_VERSION,
            "lte_config": cfg.to_dict(),
            "mode": get_mode(model),
            "dtype": str(dtype).replace("torch.", ""),
            "model_class": type(model).__name__,
            "extra": extra or {},
        }
        (tmp / LTE_FILE).write_text(json.dumps(meta, indent=2))
        tok = tokenizer if tokenizer is not None else getattr(model, "lte_tokenizer", None)
        if tok is not None:
            tok.save_pretrained(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The ``lte_config.json`` of a saved directory, checked."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    for name in (LTE_FILE, WEIGHTS_FILE, "config.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a complete LTE model: {name} is missing")
    try:
        meta = json.loads((path / LTE_FILE).read_text())
        LTEConfig.from_dict(meta["lte_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / LTE_FILE} is corrupt: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format version {meta.get('format_version')}")
    return meta


def load(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
         with_tokenizer: bool = False):
    """Load a directory written by ``lte.save``: the model (and its tokenizer if asked).

    Outputs are bit-identical to the saved model's in the same mode and dtype.
    """
    import transformers
    from transformers import AutoConfig

    from .sparsify import set_mode, sparsify

    path = Path(path)
    meta = read_meta(path)
    cfg = LTEConfig.from_dict(meta["lte_config"])
    saved_dtype = getattr(torch, meta.get("dtype", "float32"))
    hf_config = AutoConfig.from_pretrained(path)
    cls = getattr(transformers, meta.get("model_class", ""), None)
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {meta.get('model_class')!r}")
    model = cls(hf_config).to(saved_dtype)
    sparsify(model, cfg, group=False, progress=False)
    try:
        missing, unexpected = st_load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path / WEIGHTS_FILE} is corrupt or does not match its config: {e}") from e
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    bad = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")] + list(unexpected)
    if bad:
        raise CheckpointError(f"{path / WEIGHTS_FILE} does not match the model: {bad[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    set_mode(model, meta.get("mode", "dense"))
    if dtype is not None:
        model.to(dtype)
        for layer_router in (m for n, m in model.named_modules() if n.endswith(".router")):
            layer_router.float()
    if device is not None:
        model.to(device)
    model.eval()
    tok = None
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(path)
        model.lte_tokenizer = tok
    elif with_tokenizer:
        raise CheckpointError(f"{path} holds no tokenizer")
    return (model, tok) if with_tokenizer else model
