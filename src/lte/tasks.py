"""Training tasks: what a batch looks like, its task loss, its distillation loss, its metric.

The trainer is task-agnostic: it draws batches (dicts of tensors) from a ``TaskData`` and
asks a ``Task`` for losses. ``CausalLMTask`` covers language modelling on packed blocks and
supervised fine-tuning (``labels`` with -100 on prompt and padding tokens). Other tasks
(sequence classification, ...) implement the same three methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .losses import distillation_loss


class TaskData(Protocol):
    """A training/eval set: ``len(data)`` examples, ``data.batch(idx)`` -> dict of tensors."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


class LMBlocks:
    """Packed ``[n, seq_len]`` token blocks as a ``TaskData`` (every token is a target)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.dim() != 2:
            raise ValueError(f"LM blocks must be [n, seq_len], got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The blocks at ``idx`` as ``input_ids``."""
        return {"input_ids": self.blocks[idx]}


def as_task_data(data: Any) -> TaskData | None:
    """Wrap a tensor of blocks; pass ``TaskData`` (and None) through."""
    if data is None or hasattr(data, "batch"):
        return data
    if isinstance(data, torch.Tensor):
        return LMBlocks(data)
    raise TypeError(f"training data must be a [n, seq_len] tensor or have .batch(idx), got {type(data).__name__}")


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class CausalLMTask:
    """Next-token prediction; ``labels`` (default: ``input_ids``) with -100 = not a target."""

    name = "causal-lm"

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys of ``batch`` the model takes."""
        return {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"]).clone()
        if "attention_mask" in batch and "labels" not in batch:
            labels[batch["attention_mask"] == 0] = -100
        return labels[:, 1:]

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over target tokens."""
        t = self._targets(batch)
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: dict[str, torch.Tensor],
                temperature: float) -> torch.Tensor:
        """KL(teacher || student) over target tokens."""
        return distillation_loss(student[:, :-1], teacher[:, :-1], mask=self._targets(batch) != -100,
                                 temperature=temperature)

    def evaluate(self, model, data: TaskData, batch_size: int, max_batches: int | None = None) -> dict[str, Any]:
        """Perplexity (and sparsity) on ``data`` (packed blocks)."""
        from .evaluate import perplexity
        blocks = data.blocks if isinstance(data, LMBlocks) else torch.cat(
            [data.batch(torch.tensor([i]))["input_ids"] for i in range(len(data))])
        return perplexity(model, blocks.reshape(-1), seq_len=blocks.shape[1], batch_size=batch_size,
                          max_windows=None if max_batches is None else max_batches * batch_size, progress=False)
