"""Architecture adapters: where each model family keeps its FFN, and how to read its weights.

One table (``ADAPTERS``) maps a Hugging Face ``model_type`` to an adapter. An adapter finds
the FFN sites of a model, reads their weights into one neutral form (``FFNWeights``,
neuron-contiguous ``[f, d]`` matrices) and puts an LTE module in place of the original FFN.
Everything else in lte works on ``FFNWeights`` and never looks at model classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Hugging Face activation names -> the kernel's activation names.
_ACT_NAMES = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


class UnsupportedModelError(ValueError):
    """The model's architecture has no LTE adapter."""


@dataclass
class FFNWeights:
    """One FFN in neutral, neuron-contiguous form (all matrices ``[f, d]``)."""

    up: torch.Tensor
    down: torch.Tensor  # transposed down projection: row j = neuron j's output vector
    act: str
    gate: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    dropout: float = 0.0

    @property
    def width(self) -> int:
        """Number of intermediate neurons ``f``."""
        return self.up.shape[0]

    @property
    def hidden(self) -> int:
        """Model width ``d``."""
        return self.up.shape[1]


@dataclass
class FFNSite:
    """Where one FFN lives: ``getattr(parent, attr)`` is the FFN module of layer ``layer``."""

    name: str
    parent: nn.Module
    attr: str
    layer: int

    @property
    def module(self) -> nn.Module:
        """The module currently at this site."""
        return getattr(self.parent, self.attr)


def _act_name(config) -> str:
    raw = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None) \
        or getattr(config, "activation_function", None)
    if raw not in _ACT_NAMES:
        raise UnsupportedModelError(f"unsupported FFN activation {raw!r}; supported: {sorted(_ACT_NAMES)}")
    return _ACT_NAMES[raw]


def _text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _layer_index(name: str) -> int:
    for part in reversed(name.split(".")):
        if part.isdigit():
            return int(part)
    raise UnsupportedModelError(f"cannot find a layer index in module name {name!r}")


class Adapter:
    """Base adapter: subclasses say which child module is the FFN and how to read it."""

    def sites(self, model: nn.Module) -> list[FFNSite]:
        """All FFN sites, in layer order."""
        raise NotImplementedError

    def extract(self, module: nn.Module, model: nn.Module) -> FFNWeights:
        """Read one FFN's weights (copies, detached) into neutral form."""
        raise NotImplementedError

    def install(self, site: FFNSite, module: nn.Module) -> None:
        """Put the LTE ``module`` in place of the FFN at ``site`` (deterministic: ``lte.load``
        rebuilds a saved model by running it again on a fresh model)."""
        setattr(site.parent, site.attr, module)

    def _collect(self, model: nn.Module, is_ffn) -> list[FFNSite]:
        found = []
        for name, mod in model.named_modules():
            for attr, child in mod.named_children():
                if is_ffn(attr, child):
                    full = f"{name}.{attr}" if name else attr
                    found.append(FFNSite(full, mod, attr, _layer_index(full)))
        if not found:
            raise UnsupportedModelError(f"no FFN modules found in {type(model).__name__}")
        return sorted(found, key=lambda s: s.layer)


class GatedAdapter(Adapter):
    """LLaMA-style gated FFN: ``down(act(gate(x)) * up(x))`` with ``nn.Linear`` projections
    (LLaMA, Mistral, Qwen2/3, SmolLM, Gemma 1-3, OLMo, Granite)."""

    def sites(self, model: nn.Module) -> list[FFNSite]:
        def is_ffn(attr: str, child: nn.Module) -> bool:
            return attr == "mlp" and all(isinstance(getattr(child, p, None), nn.Linear)
                                         for p in ("gate_proj", "up_proj", "down_proj"))
        return self._collect(model, is_ffn)

    def extract(self, module: nn.Module, model: nn.Module) -> FFNWeights:
        def bias(lin: nn.Linear):
            return None if lin.bias is None else lin.bias.detach().clone()
        return FFNWeights(
            up=module.up_proj.weight.detach().clone(),
            gate=module.gate_proj.weight.detach().clone(),
            down=module.down_proj.weight.detach().t().contiguous(),
            up_bias=bias(module.up_proj), gate_bias=bias(module.gate_proj), down_bias=bias(module.down_proj),
            act=_act_name(_text_config(model)),
        )


class GPT2Adapter(Adapter):
    """GPT-2: ``c_proj(act(c_fc(x)))`` with Conv1D (weights stored ``[in, out]``) and dropout."""

    def sites(self, model: nn.Module) -> list[FFNSite]:
        def is_ffn(attr: str, child: nn.Module) -> bool:
            return attr == "mlp" and hasattr(child, "c_fc") and hasattr(child, "c_proj")
        return self._collect(model, is_ffn)

    def extract(self, module: nn.Module, model: nn.Module) -> FFNWeights:
        cfg = model.config
        return FFNWeights(
            up=module.c_fc.weight.detach().t().contiguous(),  # Conv1D [d, f] -> [f, d]
            up_bias=module.c_fc.bias.detach().clone(),
            down=module.c_proj.weight.detach().clone(),  # Conv1D [f, d] is already neuron-contiguous
            down_bias=module.c_proj.bias.detach().clone(),
            act=_act_name(cfg),
            dropout=float(getattr(cfg, "resid_pdrop", 0.0)),
        )


class BertAdapter(Adapter):
    """BERT / RoBERTa (and MiniLM, a small BERT): ``output.dense(act(intermediate.dense(x)))``,
    then ``LayerNorm(dropout(.) + x)`` inside ``BertOutput``.

    The routed part is the FFN proper (up, activation, down, biases); the residual and the
    LayerNorm stay outside it. The LTE module takes the place of ``layer.intermediate`` (its
    input is the FFN input, the router's input) and returns the down projection;
    ``layer.output.dense`` becomes ``nn.Identity`` so ``BertOutput`` still applies dropout and
    ``LayerNorm(h + input)``. Dropout stays there (the LTE module gets none).
    """

    @staticmethod
    def _is_layer(mod: nn.Module) -> bool:
        inter, out = getattr(mod, "intermediate", None), getattr(mod, "output", None)
        return (isinstance(getattr(inter, "dense", None), nn.Linear)
                and isinstance(getattr(out, "dense", None), nn.Linear) and hasattr(out, "LayerNorm"))

    def sites(self, model: nn.Module) -> list[FFNSite]:
        found = [FFNSite(f"{name}.intermediate" if name else "intermediate", mod, "intermediate",
                         _layer_index(name))
                 for name, mod in model.named_modules() if self._is_layer(mod)]
        if not found:
            raise UnsupportedModelError(f"no FFN modules found in {type(model).__name__}")
        return sorted(found, key=lambda s: s.layer)

    def extract(self, module: nn.Module, model: nn.Module) -> FFNWeights:
        layer = next((m for m in model.modules() if getattr(m, "intermediate", None) is module), None)
        if layer is None or not self._is_layer(layer):
            raise UnsupportedModelError("BERT FFN: the intermediate module has no sibling output.dense Linear")
        up, down = module.dense, layer.output.dense
        return FFNWeights(
            up=up.weight.detach().clone(),  # [f, d]
            up_bias=None if up.bias is None else up.bias.detach().clone(),
            down=down.weight.detach().t().contiguous(),  # nn.Linear [d, f] -> [f, d]
            down_bias=None if down.bias is None else down.bias.detach().clone(),
            act=_act_name(_text_config(model)),
        )

    def install(self, site: FFNSite, module: nn.Module) -> None:
        """LTE module for ``intermediate``; ``output.dense`` becomes the identity (its weights moved)."""
        setattr(site.parent, site.attr, module)
        site.parent.output.dense = nn.Identity()


_GATED = GatedAdapter()
_BERT = BertAdapter()
ADAPTERS: dict[str, Adapter] = {
    **{t: _GATED for t in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2", "gemma3",
                           "gemma3_text", "olmo", "olmo2", "granite")},
    "gpt2": GPT2Adapter(),
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta")},
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model`` (by ``config.model_type``), or a clear error."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"LTE has no adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}"
        )
    return ADAPTERS[model_type]
