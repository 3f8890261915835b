"""What every baseline shares: the selector base class, calibration, activation capture,
top-k helpers, the adaptation (fine-tuning) loop and ``remove``.

A baseline is a *selection rule* plugged into LTE's own FFN modules (``LTEFFN.selector``),
so it runs on the same model objects as LTE and is measured by the same code
(``lte.stats``, ``lte.evaluate``). A selector sees the FFN input ``x`` (what a router or
predictor sees), the activation ``a`` (``act(gate(x))``, or ``act(up(x))`` for plain FFNs)
and the intermediate ``h`` (what enters the down projection), and returns a
:class:`lte.ffn.Selection`; it may also rewrite the input of the gate/up projections
(``transform_input``, TEAL).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import LTEConfig, TrainConfig
from ..ffn import LTEFFN, Selection
from ..models import without_kv_cache
from ..sparsify import lte_layers, set_mode, sparsify

__all__ = ["Selector", "Selection", "ensure_lte", "attach", "remove", "calibrate", "capture_ffn_inputs",
           "topk_mask", "keep_count", "adapt", "abs_quantile"]


class Selector(nn.Module):
    """Base class of a pluggable FFN selection rule (see module docstring).

    Subclasses implement ``select`` and may override ``transform_input``,
    ``predictor_flops`` (per-token cost of whatever decides the selection) and
    ``flops_per_token``. ``calibrating`` is set by :func:`calibrate` while thresholds are
    being fitted on calibration data.
    """

    calibrating: bool = False
    trainable: bool = False  # whether adapt() trains its parameters with the model (joint routers)

    def transform_input(self, ffn: LTEFFN, x: torch.Tensor) -> torch.Tensor:
        """The tensor the gate/up projections read (default: ``x`` unchanged)."""
        return x

    def select(self, ffn: LTEFFN, x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> Selection:
        raise NotImplementedError

    def predictor_flops(self, ffn: LTEFFN) -> float:
        """FLOPs per token of the predictor / router (0 for threshold rules)."""
        return 0.0

    def flops_per_token(self, ffn: LTEFFN) -> tuple[float, float]:
        """(FFN FLOPs, predictor FLOPs) per token, from the layer's measured counts."""
        d, f = ffn.up.shape[1], ffn.up.shape[0]
        full = 2 * (3 if ffn.gate is not None else 2) * d * f
        frac = 1.0 if ffn.cum_flops is None else float(ffn.cum_flops) / max(int(ffn.cum_tokens), 1)
        return full * frac, self.predictor_flops(ffn)


# ---------------------------------------------------------------------------- attaching
def ensure_lte(model: nn.Module, cfg: LTEConfig | None = None) -> list[LTEFFN]:
    """The model's LTE layers, sparsifying it first (``cfg``, default balanced k-means
    experts of 32) when it has none. Grouping only permutes neurons: outputs are unchanged."""
    try:
        return lte_layers(model)
    except ValueError:
        sparsify(model, cfg or LTEConfig(), progress=False)
        return lte_layers(model)


def attach(model: nn.Module, make, cfg: LTEConfig | None = None, mode: str = "hard") -> list[Selector]:
    """Give every LTE layer the selector ``make(layer)`` and switch the model to ``mode``."""
    layers = ensure_lte(model, cfg)
    sels = []
    for layer in layers:
        sel = make(layer)
        dev = layer.up.device
        sel.to(device=dev)
        layer.selector = sel
        sels.append(sel)
    set_mode(model, mode)
    return sels


def remove(model: nn.Module) -> nn.Module:
    """Take every baseline off ``model``: selectors, and TEAL's wrapped attention projections."""
    for layer in lte_layers(model):
        layer.selector = None
    for mod in list(model.modules()):
        for attr, child in list(mod.named_children()):
            inner = getattr(child, "unwrap", None)
            if callable(inner):
                setattr(mod, attr, inner())
    return model


# ---------------------------------------------------------------------------- data helpers
def _as_inputs(batch) -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch if batch.dim() == 2 else batch.unsqueeze(0)}
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}


def _one_batch(calibration: Iterable) -> dict[str, torch.Tensor]:
    """All calibration batches as one batch (thresholds are fitted in a single pass)."""
    batches = [_as_inputs(b) for b in calibration]
    if not batches:
        raise ValueError("calibration data is empty")
    keys = batches[0].keys()
    width = max(b["input_ids"].shape[-1] for b in batches) if "input_ids" in keys else None
    if width is not None and "attention_mask" in keys:  # padded batches (encoders): right-pad to one width
        batches = [{k: F.pad(v, (0, width - v.shape[-1])) if v.dim() == 2 else v for k, v in b.items()}
                   for b in batches]  # pads ids, mask and token types with 0 (mask 0 = padding)
    try:
        return {k: torch.cat([b[k] for b in batches]) for k in keys}
    except RuntimeError as e:
        raise ValueError("calibration batches must share one sequence length (pack them to blocks)") from e


@torch.no_grad()
def _run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Forward for activation statistics: the transformer body only (no LM head, whose
    logits over a large calibration batch would dominate memory), padding masked."""
    dev = next(model.parameters()).device
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    body = getattr(model, "base_model", None)
    body = body if isinstance(body, nn.Module) else model
    state = getattr(model, "lte_state", None)
    mask = inputs.get("attention_mask")
    was = model.training
    model.eval()
    try:
        if state is not None:
            state.token_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        with without_kv_cache(model):
            body(**inputs)
    finally:
        if state is not None:
            state.token_mask = None
        model.train(was)


def calibrate(model: nn.Module, calibration: Iterable, modules: list[nn.Module] | None = None) -> None:
    """Fit every calibrating module's thresholds in one forward over all calibration data.

    Modules (selectors, TEAL projections) are switched to ``calibrating``; each one fits
    its threshold on the activations it sees and applies it at once, so a layer's
    threshold is fitted on inputs that already went through the sparsified layers below it
    (sequential calibration in a single pass). The target is then met exactly on the
    calibration data, up to ties.
    """
    mods = modules if modules is not None else [m for m in model.modules() if hasattr(m, "calibrating")]
    for m in mods:
        m.calibrating = True
    try:
        _run(model, _one_batch(calibration))
    finally:
        for m in mods:
            m.calibrating = False


def capture_ffn_inputs(model: nn.Module, calibration: Iterable, max_tokens: int = 16384,
                       mode: str | None = None) -> list[torch.Tensor]:
    """FFN inputs ``[tokens, d]`` (fp32, CPU) of every LTE layer on the calibration data, real
    tokens only; the model runs in ``mode`` (default: its current mode)."""
    layers = lte_layers(model)
    prev = layers[0].mode
    if mode is not None:
        set_mode(model, mode)
    store: list[list[torch.Tensor]] = [[] for _ in layers]
    counts = [0] * len(layers)

    def make_hook(i: int, layer: LTEFFN):
        def hook(module, args):
            x = args[0]
            m = layer.state.mask_for(x)
            x2 = x.detach()[m] if m is not None else x.detach().reshape(-1, x.shape[-1])
            room = max_tokens - counts[i]
            if room > 0:
                store[i].append(x2[:room].float().cpu())
                counts[i] += store[i][-1].shape[0]
        return hook

    handles = [layer.register_forward_pre_hook(make_hook(i, layer)) for i, layer in enumerate(layers)]
    try:
        for batch in calibration:
            _run(model, _as_inputs(batch))
            if min(counts) >= max_tokens:
                break
    finally:
        for hd in handles:
            hd.remove()
        set_mode(model, prev)
    if min(counts) == 0:
        raise ValueError("calibration data produced no tokens")
    return [torch.cat(s) for s in store]


# ---------------------------------------------------------------------------- selection helpers
def keep_count(n: int, target_sparsity: float) -> int:
    """How many of ``n`` units a top-k rule keeps for a target sparsity (at least 1)."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    return min(n, max(1, int(round((1.0 - target_sparsity) * n))))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of the last dim."""
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


def abs_quantile(v: torch.Tensor, q: float, tmask: torch.Tensor | None = None, max_values: int = 1 << 24
                 ) -> torch.Tensor:
    """The ``q``-quantile of ``|v|`` over real tokens (a threshold below which a fraction
    ``q`` of the values fall). Large inputs are subsampled with a fixed stride."""
    vals = v.detach()
    if tmask is not None:
        vals = vals[tmask]
    vals = vals.reshape(-1).abs().float()
    if vals.numel() > max_values:
        vals = vals[:: math.ceil(vals.numel() / max_values)]
    if q <= 0:
        return vals.min() - 1.0 if vals.numel() else torch.tensor(0.0)
    k = min(max(int(round(q * vals.numel())), 1), vals.numel())
    return vals.kthvalue(k).values


# ---------------------------------------------------------------------------- adaptation
def adapt(model: nn.Module, tcfg: TrainConfig, train_blocks, steps: int, teacher: nn.Module | None = None,
          aux_weight: float = 0.0, progress: bool = False, desc: str = "adapt", task=None) -> list[float]:
    """Fine-tune ``model`` in its current mode (its selectors active) for ``steps`` optimizer
    steps: the "model adaptation" every trained baseline gets, with the same optimizer,
    schedule, batch and distillation as LTE's stages (``tcfg``). ``train_blocks``: packed LM
    blocks ``[n, seq_len]`` or any ``lte.tasks.TaskData``; ``task``: its ``lte.tasks`` task
    (default causal LM; e.g. ``lte.glue.SequenceClassificationTask`` for encoders), whose
    ``loss`` and ``distill`` are used.

    Trains every parameter except LTE's own routers (not used while a selector is set) and
    the parameters of selectors that are not ``trainable`` (post-hoc predictors). ``aux_weight`` scales selectors'
    ``aux_loss`` (e.g. load balancing of top-k routers). Returns per-step losses.
    """
    from ..data import batch_indices
    from ..tasks import CausalLMTask, as_task_data
    from ..train import _lr_lambda, seed_everything

    if steps <= 0:
        return []
    data = as_task_data(train_blocks)
    task = task or CausalLMTask()
    device = next(model.parameters()).device
    mp = tcfg.mixed_precision
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get("bf16" if mp == "auto" and device.type == "cuda" else mp)
    frozen = {id(p) for layer in lte_layers(model) for p in layer.router.parameters()}
    frozen |= {id(p) for layer in lte_layers(model) if layer.selector is not None and not layer.selector.trainable
               for p in layer.selector.parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    sels = [layer.selector for layer in lte_layers(model) if layer.selector is not None]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, betas=(0.9, 0.95), weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, int(tcfg.warmup_ratio * steps), tcfg.schedule))
    seed_everything(tcfg.seed)
    model.train()
    losses = []
    a = tcfg.distill_weight if teacher is not None else 0.0
    with without_kv_cache(model, teacher):
        for step in tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(tcfg.grad_accum):
                idx = batch_indices(len(data), tcfg.batch_size, step * tcfg.grad_accum + micro, tcfg.seed)
                batch = {k: v.to(device) for k, v in data.batch(idx).items()}
                inputs = task.model_inputs(batch)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    logits = model(**inputs).logits
                    t_logits = None
                    if a > 0:
                        with torch.no_grad():
                            t_logits = teacher(**inputs).logits
                loss = task.loss(logits, batch)
                if t_logits is not None:
                    loss = (1 - a) * loss + a * task.distill(logits, t_logits, batch, tcfg.distill_temperature)
                if aux_weight > 0:
                    aux = [s.aux_loss for s in sels if getattr(s, "aux_loss", None) is not None]
                    if aux:
                        loss = loss + aux_weight * torch.stack(aux).mean()
                (loss / tcfg.grad_accum).backward()
                total += float(loss.detach()) / tcfg.grad_accum
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
            opt.step()
            sched.step()
            losses.append(total)
    model.eval()
    for p, r in zip(params, before):
        p.requires_grad_(r)
    return losses


def fit_predictor(net: nn.Module, inputs: torch.Tensor, targets_fn, epochs: int = 20, batch: int = 512,
                  lr: float = 3e-3, seed: int = 0, loss: str = "listwise") -> float:
    """Train ``net`` (fp32) to rank what ``targets_fn(x)`` measures (nonnegative importance
    per neuron or block, ``[tokens, n]``) from FFN inputs; returns the last epoch's loss.

    ``loss="listwise"`` (default): cross-entropy between the token's importance
    distribution (``y / sum(y)``) and ``softmax(scores)``, a ranking objective for top-k.
    ``loss="bce"``: MoEfication's reference objective, BCE-with-logits against ``y / max(y)``.
    On SmolLM2-135M (WikiText-2, layer 15, 4k training tokens, 50% kept) the share of the
    activation mass the top-k kept was 0.703 (listwise) vs 0.651 (BCE) for neurons and
    0.597 vs 0.591 for 32-neuron blocks (oracle 0.878 / 0.622). ``inputs`` stay on the
    CPU; training runs on the device of ``net``.
    """
    if loss not in ("listwise", "bce"):
        raise ValueError(f"loss must be 'listwise' or 'bce', got {loss!r}")
    dev = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = inputs.shape[0]
    steps = max(1, epochs * math.ceil(n / batch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    last = 0.0
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot, cnt = 0.0, 0
        for i in range(0, n, batch):
            x = inputs[perm[i:i + batch]].to(dev)
            with torch.no_grad():
                y = targets_fn(x).float()
            scores = net(x)
            if loss == "listwise":
                p = y / y.sum(-1, keepdim=True).clamp_min(1e-12)
                value = -(p * F.log_softmax(scores, dim=-1)).sum(-1).mean()
            else:
                value = F.binary_cross_entropy_with_logits(scores, y / y.amax(-1, keepdim=True).clamp_min(1e-12))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            tot += float(value.detach()) * x.shape[0]
            cnt += x.shape[0]
        last = tot / max(cnt, 1)
    net.eval()
    for p_ in net.parameters():
        p_.requires_grad_(False)
    return last
