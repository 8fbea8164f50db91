"""``torch.compile`` of the backbone with static shapes, one graph for every evaluation batch size, and one warning
line when dynamo gives up compiling.

Training batches have one size (the loaders drop a partial last batch), so the training graphs are compiled for
fixed shapes (``dynamic=False``), the fastest kernels. Evaluation batches (validation, the kNN bank pass) end with a
partial batch whose size differs per split and per rank; :func:`run_backbone` pads such a batch to the largest
evaluation batch of its image size seen so far and drops the padding rows after the forward (in evaluation mode
every row is computed independently, so the real rows are unchanged), so evaluation adds one graph per image size,
not one per batch size. Past ``torch._dynamo.config.recompile_limit`` graphs of one function dynamo silently runs
it eagerly: :func:`compile_backbone` turns that into a ``wcl: warning:`` line.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import Tensor, nn

_EVAL_ROWS = "_wcl_eval_rows"  # on a compiled backbone: image shape → (padded rows, memory format)


class _RecompileLimitWarning(logging.Handler):
    """Dynamo's log record of a recompile limit hit → one ``wcl: warning:`` line per function."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not text.startswith("torch._dynamo hit config."):
            return
        lines = text.splitlines()
        where = next((line.split(":", 1)[1].strip() for line in lines if "function:" in line), "")
        reason = next((line.split(":", 1)[1].strip() for line in lines if "last reason:" in line), "")
        if where in self.seen:
            return
        self.seen.add(where)
        limit = lines[0].removeprefix("torch._dynamo hit config.")
        print(f"wcl: warning: the compiled backbone runs without compilation from here on: torch._dynamo hit its "
              f"{limit} in {where} (last recompile: {reason}). Every new input shape or mode compiles another graph; "
              "keep the shapes fixed, raise torch._dynamo.config.recompile_limit, or set "
              "--model.compile_backbone false.", file=sys.stderr, flush=True)


_HANDLER = _RecompileLimitWarning()


def compile_backbone(backbone: nn.Module, mode: str = "default") -> None:
    """``backbone.compile`` in place (checkpoint keys unchanged) for static shapes, padded evaluation batches
    (:func:`run_backbone`) and a warning line on a recompile-limit fallback."""
    backbone.compile(mode=mode, dynamic=False)
    setattr(backbone, _EVAL_ROWS, {})
    logger = logging.getLogger("torch._dynamo.convert_frame")  # where dynamo logs the limit hit
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def run_backbone(backbone: nn.Module, x: Tensor) -> Tensor:
    """``backbone(x)``; a backbone compiled by :func:`compile_backbone`, in evaluation mode, gets ``x`` (B×…)
    padded with zero rows to the largest batch of its shape seen so far, and returns the B real rows."""
    seen: dict | None = getattr(backbone, _EVAL_ROWS, None)
    if seen is None or backbone.training:
        return backbone(x)
    shape, b = tuple(x.shape[1:]), x.shape[0]
    rows, fmt = seen.get(shape, (0, None))
    if b >= rows:  # the first or a larger batch of this shape: the size the next ones are padded to
        seen[shape] = (b, _memory_format(x))
        return backbone(x)
    padded = torch.empty((rows, *shape), dtype=x.dtype, device=x.device, memory_format=fmt)
    padded[:b].copy_(x)
    padded[b:].zero_()
    return backbone(padded)[:b]
