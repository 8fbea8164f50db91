"""Distributed helpers: gathers that keep the gradient, rank offsets, teardown, and the errors of a lost rank.

Every helper is the identity when no process group is initialised, so single-process code needs no branch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and hands each rank its own slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Rank r's loss depends on every rank's slice: the gradient of the sum of all ranks' losses w.r.t. this
        # rank's slice is the all-reduced gradient, restricted to that slice. (DDP then averages parameters'
        # gradients over ranks, which makes the total the gradient of the mean loss.)
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


@torch.no_grad()
def gather_varlen(x: Tensor) -> Tensor:
    """Concatenate ``x`` (n_r×…, n_r may differ between ranks) from all ranks in rank order, without gradient."""
    if not is_distributed():
        return x
    sizes = gather_nograd(torch.tensor([x.shape[0]], device=x.device)).tolist()
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    # reshape, not split: split(0) of an empty gather gives one part, not one per rank.
    parts = gather_nograd(padded).reshape(len(sizes), longest, *x.shape[1:])
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather(x: Tensor, grad: bool = True) -> Tensor:
    """The global batch: ``x`` (B×…, the same B on every rank) from all ranks in rank order.

    ``grad=True``: the gradient of every rank's loss flows back to every rank's rows (the single-process gradient
    of the global-batch loss). ``grad=False`` (the official WCL code): other ranks' rows are constants and only
    this rank's own rows (which keep their autograd history) carry gradient. Both are equal on one process. (The
    official weak-label term makes every row a constant: :class:`~wcl.losses.WeakLabelLoss` uses ``gather_nograd``.)
    """
    if not is_distributed():
        return x
    if grad:
        return _GatherWithGrad.apply(x)
    parts = list(gather_nograd(x).split(x.shape[0]))
    parts[rank()] = x
    return torch.cat(parts)


@torch.no_grad()
def gather_nograd(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B×…, the same B on every rank) from all ranks in rank order, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def rank_offset(local_batch: int) -> int:
    """Row of this rank's first sample in the gathered global batch."""
    return rank() * local_batch


# How the libraries word the error a surviving rank gets when another rank's process is gone (killed, out of memory,
# crashed), as torch 2.x builds them: gloo's TCP pairs; NCCL's remote error, its aborted communicator and its
# watchdog's timeout (what a survivor waiting in a collective gets under NCCL, after the process group's timeout);
# the TCP store that torchrun's elastic agent (or rank 0) holds, whose clients lose their connection.
LOST_PEER_TEXTS = {
    "gloo": ("Connection closed by peer", "Connection reset by peer"),
    "nccl": ("ncclRemoteError", "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
             "Some NCCL operations have failed or timed out"),
    "store": ("Connection was likely closed. Did the remote server shutdown or crash?",
              "Remote peer closed the connection"),
}


def lost_peer(text: str) -> str | None:
    """The backend (``gloo``, ``nccl``, ``store``) whose "another rank is gone" error ``text`` is, or None."""
    return next((backend for backend, texts in LOST_PEER_TEXTS.items() if any(t in text for t in texts)), None)


def destroy_process_group() -> None:
    """Destroy the default process group if one exists (avoids gloo aborts at interpreter exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
