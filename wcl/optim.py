"""Optimizers and learning-rate schedules: LARS, parameter groups, warm-up + cosine, batch scaling."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

OptimizerName = Literal["lars", "sgd", "adamw"]
LRScaling = Literal["linear", "sqrt", "none"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Per parameter tensor, the update is scaled by ``trust = eta·‖w‖ / (‖g‖ + wd·‖w‖)`` (1 where either norm is
    zero). Parameter groups with ``lars_exclude=True`` (biases, normalisation) get neither weight decay nor
    adaptation, as in SimCLR/BYOL.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"] != 0:
                        d_p = d_p.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                buf = state["momentum_buffer"]
                d_p = d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


def param_groups(modules: dict[str, nn.Module], weight_decay: float) -> list[dict]:
    """Split parameters into decayed weights and excluded biases / normalisation parameters (1-D tensors)."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for module in modules.values():
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def scaled_lr(base_lr: float, global_batch: int, scaling: LRScaling) -> float:
    """``linear``: base·B/256; ``sqrt``: base·√B (the WCL/SimCLR LARS recipe); ``none``: base."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r}; choose 'linear', 'sqrt' or 'none'")


def build_optimizer(name: OptimizerName, groups: list[dict], lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """LARS, SGD (momentum) or AdamW over the given parameter groups."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # lars_exclude is a LARS-only key; other optimizers ignore unknown group keys.
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'lars', 'sgd' or 'adamw'")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """LR factor: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_factor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
