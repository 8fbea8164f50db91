"""Optimizers and learning-rate schedules: LARS, parameter groups, warm-up + cosine, batch scaling."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wcl.errors import ConfigError

OptimizerName = Literal["lars", "sgd", "adamw"]
LRScaling = Literal["linear", "sqrt", "none"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as in the official WCL code.

    Per parameter tensor w with gradient g: ``d = g + wd·w``, ``trust = eta·‖w‖ / ‖d‖`` (1 where either norm
    is zero), ``buf = momentum·buf + trust·d``, ``w -= lr·buf``. With ``clip`` (solo-learn's ``clip_lr``,
    LARC's clip mode) the factor is ``min(trust / lr, 1)`` instead, so a layer's effective step ``lr·factor``
    never exceeds the global learning rate. Parameter groups with ``lars_exclude=True`` (biases and
    normalisation, by :func:`param_groups`) get neither adaptation nor, there, weight decay. The update runs with
    ``torch._foreach`` kernels over each group's tensors, without a host synchronisation.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, clip: bool = False, nesterov: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, nesterov=nesterov,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, wd, m = group["lr"], group["weight_decay"], group["momentum"]
            d = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
            if not group["lars_exclude"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                d_norm = torch.stack(torch._foreach_norm(d))
                trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                    torch.ones_like(w_norm))
                if group["clip"]:
                    trust = (trust / lr).clamp(max=1.0)
                torch._foreach_mul_(d, list(trust.unbind()))
            bufs = []
            for p, dp in zip(params, d, strict=True):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = dp.clone()
                    bufs.append(None)
                else:
                    bufs.append(state["momentum_buffer"])
            old = [b for b in bufs if b is not None]
            if old:
                torch._foreach_mul_(old, m)
                torch._foreach_add_(old, [dp for dp, b in zip(d, bufs, strict=True) if b is not None])
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            update = torch._foreach_add(d, bufs, alpha=m) if group["nesterov"] else bufs
            torch._foreach_add_(params, update, alpha=-lr)
        return loss


def param_groups(modules: dict[str, nn.Module], weight_decay: float, exclude_bias_norm: bool = True) -> list[dict]:
    """Split parameters into decayed, LARS-adapted weights and the ones that get neither: biases and normalisation
    parameters (1-D tensors, exactly the official code's ``bn``/``bias`` names for ResNets and these heads) and the
    parameters a backbone declares in ``no_decay_names`` (a ViT's class token and position embedding, timm's
    ``no_weight_decay()``) — unless ``exclude_bias_norm`` is False, which treats every tensor alike."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for module in modules.values():
        declared = getattr(module, "no_decay_names", frozenset())
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            excluded = p.ndim <= 1 or name in declared
            (no_decay if excluded and exclude_bias_norm else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def load_training_loader(trainer: Any) -> None:
    """Has Lightning build the training loader where ``configure_optimizers`` needs it (the lr scales with its batch,
    the schedule spans its length) and Lightning has not built it yet. The public ``Trainer.estimated_stepping_batches``
    builds it, except where it returns ``max_steps`` without it (``max_epochs -1``); there the fit loop's
    ``setup_data`` does, a private call (checked with Lightning 2.6.6), kept in this one place."""
    if trainer.train_dataloader is None:
        trainer.estimated_stepping_batches  # noqa: B018 - a property that builds the loader
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()


def global_batch_size(trainer: Any) -> int:
    """Images per optimizer step over all ranks: the training loader's batch × world size × accumulation."""
    load_training_loader(trainer)
    per_device = getattr(trainer.train_dataloader, "batch_size", None)
    if per_device is None:
        raise ConfigError("the learning rate scales with the batch, but the training loader has no batch_size.")
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def scaled_lr(base_lr: float, global_batch: int, scaling: LRScaling) -> float:
    """``linear``: base·B/256; ``sqrt``: base·√B (the WCL/SimCLR LARS recipe); ``none``: base."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r}; choose 'linear', 'sqrt' or 'none'")


def build_optimizer(name: OptimizerName, groups: list[dict], lr: float, momentum: float, weight_decay: float,
                    lars_eta: float = 0.001, lars_clip: bool = False) -> torch.optim.Optimizer:
    """LARS, SGD (momentum) or AdamW over the given parameter groups."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip=lars_clip)
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


def steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps per epoch on this rank (schedules and warm-ups are given in epochs)."""
    load_training_loader(trainer)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ConfigError("the training loader has no length, so epoch-based schedules are undefined; "
                          "use a map-style dataset.")
    return max(1, int(batches) // trainer.accumulate_grad_batches)


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """:func:`warmup_cosine` per optimizer step over a run of ``total_steps`` steps, ``steps_per_epoch`` an epoch.

    The learning rate at step ``s`` is the curve's value at ``s + offset``; ``offset`` is 0 unless the run was
    resumed from a checkpoint whose run took another number of steps per epoch (another number of processes, batch
    size or accumulation) for the same number of epochs. Then ``load_state_dict`` keeps the planned length: the
    schedule continues from the fraction of the run the checkpoint had reached and ends at the resumed run's last
    step (followed step by step on the old step count, the new run would end early at lr 0 or stop mid-curve).
    A resume that changes the run's length (``max_epochs`` / ``max_steps``) follows the new length's curve from the
    resumed step, as before (:func:`note_schedule_change` says so).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, steps_per_epoch: int,
                 min_factor: float = 0.0) -> None:
        self.warmup_steps, self.total_steps, self.min_factor = warmup_steps, total_steps, min_factor
        self.steps_per_epoch = steps_per_epoch
        self.offset = 0.0
        self.kept_from: int | None = None  # steps per epoch of the checkpoint's run, when its length was kept
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        return warmup_cosine(step + self.offset, self.warmup_steps, self.total_steps, self.min_factor)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}  # a LambdaLR's (older checkpoints)
        mine = {k: getattr(self, k) for k in ("warmup_steps", "total_steps", "steps_per_epoch", "min_factor")}
        old_total, old_per_epoch = saved.get("total_steps"), saved.get("steps_per_epoch")
        self.__dict__.update(saved)
        self.__dict__.update(mine)  # this run's plan; the step count and rates come from the checkpoint
        self.kept_from = None
        same_epochs = old_total is not None and old_total * self.steps_per_epoch == self.total_steps * old_per_epoch
        if old_per_epoch is not None and old_per_epoch != self.steps_per_epoch and same_epochs:
            progress = (self.last_epoch + saved.get("offset", 0.0)) / old_total
            self.offset = progress * self.total_steps - self.last_epoch
            self.kept_from = old_per_epoch
        elif old_total != self.total_steps:
            self.offset = 0.0


def warmup_cosine_schedule(opt: torch.optim.Optimizer, trainer: Any, warmup_epochs: float,
                           min_factor: float = 0.0) -> dict[str, Any]:
    """Lightning's scheduler config of :class:`WarmupCosineLR`, stepped per optimizer step over the whole fit."""
    total = int(trainer.estimated_stepping_batches)
    per_epoch = steps_per_epoch(trainer)
    stepping = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)  # as the total counts them
    sched = WarmupCosineLR(opt, int(warmup_epochs * per_epoch), total, stepping, min_factor)
    return {"scheduler": sched, "interval": "step"}


def note_schedule_change(trainer: Any, saved: int | None, total: int | None, constant: bool = False) -> None:
    """One line when a run resumed with ``--ckpt_path`` spans another number of optimizer steps than the run that
    saved the checkpoint planned (``saved``): the schedule follows the new length from the resume on, so the run
    does not equal a straight run of either length (the learning rate jumps to the new curve). Nothing when the
    schedule does not depend on the length (``constant``: no cosine decay). A run resumed with another number of
    steps per epoch for the same epochs keeps its planned length (:class:`WarmupCosineLR`): one note says so."""
    if saved is None or total is None or saved == total or constant or not trainer.is_global_zero:
        return
    kept = next((c.scheduler for c in trainer.lr_scheduler_configs
                 if getattr(c.scheduler, "kept_from", None) is not None), None)
    if kept is not None:
        print(f"wcl: resumed with {kept.steps_per_epoch} optimizer steps per epoch where the checkpoint's run took "
              f"{kept.kept_from} (another number of processes, batch size or accumulation): the learning-rate "
              f"schedule keeps the run's planned length and ends at its last step ({total - kept.offset:.0f} steps "
              "in all).", flush=True)
        return
    print(f"wcl: warning: the learning-rate schedule now spans {total} steps, the checkpoint's run planned {saved}: "
          f"from step {trainer.global_step} on the lr follows the {total}-step curve, so this run will not equal a "
          "straight run (resume with the same trainer.max_steps / max_epochs to continue exactly).",
          file=sys.stderr, flush=True)
