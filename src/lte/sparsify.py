"""The public in-place API: ``sparsify``, ``set_mode``, ``stats`` and helpers over LTE layers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import FFNWeights, get_adapter
from .config import MODES, LTEConfig
from .ffn import LTEFFN, LTEState
from .grouping import group_neurons, permute


def _capture_mask(module, args, kwargs) -> None:
    """Forward pre-hook on the model: record the real-token mask for its LTE layers. It looks
    the state up on the module it runs for, so deep copies of a model keep working."""
    mask = kwargs.get("attention_mask")
    module.lte_state.token_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def _collect_activations(model: nn.Module, sites, weights: list[FFNWeights], calibration: Iterable,
                         max_tokens: int = 8192) -> list[torch.Tensor]:
    """Run ``calibration`` batches through the dense model; return per-site FFN activations."""
    from .kernels.reference import activation

    acts: list[list[torch.Tensor]] = [[] for _ in sites]
    counts = [0] * len(sites)

    def make_hook(i: int):
        def hook(module, args):
            if counts[i] >= max_tokens:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            w = weights[i]
            h = x @ w.up.float().t() + (w.up_bias.float() if w.up_bias is not None else 0)
            if w.gate is not None:
                g = x @ w.gate.float().t() + (w.gate_bias.float() if w.gate_bias is not None else 0)
                h = activation(g, w.act) * h
            else:
                h = activation(h, w.act)
            acts[i].append(h[: max_tokens - counts[i]].cpu())
            counts[i] += acts[i][-1].shape[0]
        return hook

    handles = [s.module.register_forward_pre_hook(make_hook(i)) for i, s in enumerate(sites)]
    try:
        with torch.no_grad():
            for batch in calibration:
                if isinstance(batch, torch.Tensor):
                    batch = {"input_ids": batch}
                dev = next(model.parameters()).device
                model(**{k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)})
                if min(counts) >= max_tokens:
                    break
    finally:
        for h in handles:
            h.remove()
    if min(counts) == 0:
        raise ValueError("calibration data produced no tokens")
    return [torch.cat(a) for a in acts]


def sparsify(model: nn.Module, cfg: LTEConfig | None = None, calibration: Iterable | None = None,
             *, group: bool = True, progress: bool = True) -> nn.Module:
    """Group and permute every FFN's neurons into experts and add routers, in place.

    The model starts in ``dense`` mode, where it computes what it computed before (up to
    float reordering). ``calibration`` (batches of token ids, or dicts of model inputs) is
    needed only for ``grouping='coactivation'`` and ``router_init='calibrated'`` or ``'gate'``.
    ``group=False`` keeps the neuron order (used when loading a saved LTE model, whose weights
    are already permuted).
    """
    cfg = cfg or LTEConfig()
    if getattr(model, "lte_config", None) is not None:
        raise ValueError("model is already sparsified")
    adapter = get_adapter(model)
    sites = adapter.sites(model)
    weights = [adapter.extract(s.module, model) for s in sites]
    for w in weights:
        if w.width % cfg.expert_size:
            group_neurons(w, cfg.expert_size, "random")  # raises the explanatory error
    acts = None
    if group and cfg.router_init in ("calibrated", "gate") and calibration is None:
        raise ValueError(f"router_init={cfg.router_init!r} needs calibration data: pass calibration=... to sparsify")
    if group and cfg.grouping == "coactivation":
        if calibration is None:
            raise ValueError("grouping='coactivation' needs calibration data: pass calibration=... to sparsify")
        acts = _collect_activations(model, sites, weights, calibration)
    state = LTEState()
    gen = torch.Generator().manual_seed(cfg.seed)
    it = tqdm(list(zip(sites, weights)), desc=f"sparsify ({cfg.grouping if group else 'load'})",
              disable=not progress, leave=False)
    for i, (site, w) in enumerate(it):
        old = site.module
        if group:
            perm = group_neurons(w, cfg.expert_size, cfg.grouping, iters=cfg.kmeans_iters,
                                 seed=cfg.seed + site.layer, activations=None if acts is None else acts[i])
            w = permute(w, perm.to(w.up.device))
        new = LTEFFN(w, cfg, site.layer, state, generator=gen)
        new.to(dtype=w.up.dtype)
        new.router.float()
        new.train(old.training)
        adapter.install(site, new)
    model.lte_config = cfg
    model.lte_state = state
    model.lte_hook = model.register_forward_pre_hook(_capture_mask, with_kwargs=True)
    if group and cfg.router_init in ("calibrated", "gate"):
        from .router_init import calibrate_routers
        calibrate_routers(model, calibration, spread=cfg.router_init_std, bias_init=cfg.router_bias_init,
                          progress=progress, source="gate" if cfg.router_init == "gate" else "importance")
    return model


def lte_layers(model: nn.Module) -> list[LTEFFN]:
    """The LTE FFN layers of ``model``, in layer order."""
    layers = [m for m in model.modules() if isinstance(m, LTEFFN)]
    if not layers:
        raise ValueError("model has no LTE layers: call lte.sparsify(model, cfg) first")
    return sorted(layers, key=lambda m: m.layer)


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every LTE layer to ``dense``, ``soft`` or ``hard``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for layer in lte_layers(model):
        layer.mode = mode
    return model


def get_mode(model: nn.Module) -> str:
    """The mode of the model's LTE layers."""
    return lte_layers(model)[0].mode


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Choose the kernel backend hard-mode inference uses (``auto``, ``reference``, ``triton``, ``cpu``)."""
    for layer in lte_layers(model):
        layer.backend = backend
    return model


def reset_stats(model: nn.Module) -> None:
    """Forget cumulative sparsity counts (start of an evaluation)."""
    for layer in lte_layers(model):
        layer.reset_stats()


def _host_values(values: list) -> list[float]:
    """Scalars (tensors on any devices, or numbers) as floats, with one device-to-host copy per
    device instead of one per value (each copy from a GPU waits for all its queued work)."""
    out: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(i)
        else:
            out[i] = float(v)
    for idx in by_device.values():
        host = torch.stack([values[i].detach().reshape(()).double() for i in idx]).cpu().tolist()
        for i, x in zip(idx, host):
            out[i] = x
    return out


def stats(model: nn.Module, cumulative: bool = False) -> dict[str, Any]:
    """FFN sparsity (fraction of expert blocks not computed) over real tokens.

    Of the last forward by default; since the last ``reset_stats`` with ``cumulative=True``.
    Keys: ``ffn_sparsity`` (mean over layers), ``per_layer`` (list), ``tokens``, ``mode``.
    """
    layers = lte_layers(model)
    pairs = [(layer.cum_selected, layer.cum_tokens) if cumulative else (layer.last_selected, layer.last_tokens)
             for layer in layers]
    if any(sel is None for sel, _ in pairs):
        raise ValueError("no forward pass recorded yet: run the model first")
    values = _host_values([v for pair in pairs for v in pair])
    per_layer, tokens = [], 0
    for i, layer in enumerate(layers):
        sel, tok = values[2 * i], int(values[2 * i + 1])
        tokens = max(tokens, tok)
        per_layer.append(1.0 - sel / max(tok * layer.n_experts, 1))
    return {"ffn_sparsity": sum(per_layer) / len(per_layer), "per_layer": per_layer, "tokens": tokens,
            "mode": layers[0].mode}


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All router parameters (trained in stage 1 with their own learning rate, frozen in stage 2)."""
    return [p for layer in lte_layers(model) for p in layer.router.parameters()]
