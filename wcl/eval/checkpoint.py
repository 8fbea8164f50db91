"""Loading the pretrained backbone out of a ``wcl`` checkpoint, with errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wcl.errors import ConfigError
from wcl.models.backbones import build_backbone

ARCH_KEYS = ("backbone", "width", "cifar_stem")  # every wcl checkpoint has these; backbone_args since timm/torchvision


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The Lightning checkpoint at ``path``, on the CPU, with one line for a file that is missing or is not one
    (empty, cut short by a copy or a kill, another format); ``what`` names it in that line (``--ckpt_path``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist. Pass the .ckpt written by `python -m wcl fit` "
                          "(e.g. runs/quickstart/checkpoints/last.ckpt).")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same advice
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{what} {p} cannot be read ({p.stat().st_size} bytes; {reason}): the file is empty or "
                          "cut short (a copy or save that did not finish?), or not a PyTorch Lightning .ckpt; pass "
                          "another checkpoint, e.g. an epoch=N.ckpt of the run.") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{what} {p} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by "
                          "`python -m wcl fit`.")
    return ckpt


def backbone_arch(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``{"backbone", "width", "cifar_stem", "backbone_args"}`` of a WCL, LinearProbe or FineTune checkpoint
    (``backbone_args`` is ``{}`` in checkpoints written before it existed)."""
    hp = ckpt.get("hyper_parameters", {})
    arch = dict(hp.get("arch") or {k: hp[k] for k in (*ARCH_KEYS, "backbone_args") if k in hp})
    if not set(ARCH_KEYS) <= set(arch) or not any(k.startswith("backbone.") for k in ckpt["state_dict"]):
        raise ConfigError(f"{path} is not a wcl.WCL checkpoint: it has no backbone weights or no backbone "
                          "hyper-parameters (backbone, width, cifar_stem). Pass a checkpoint written by "
                          "`python -m wcl fit --config configs/<dataset>/wcl.yaml`.")
    arch["backbone_args"] = dict(arch.get("backbone_args") or {})
    return arch


def load_backbone(path: str | Path, expect_backbone: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained backbone of a checkpoint and its architecture.

    Args:
        path: a ``.ckpt`` of ``wcl.WCL`` (or of a probe / fine-tune run).
        expect_backbone: if given, the checkpoint's backbone must be this one (``resnet18``, ``timm:…`` …).
    """
    ckpt = read_checkpoint(path)
    arch = backbone_arch(ckpt, path)
    if expect_backbone is not None and expect_backbone != arch["backbone"]:
        raise ConfigError(f"backbone mismatch: the config asks for {expect_backbone} but {path} holds a "
                          f"{arch['backbone']} (width {arch['width']}); fix model.backbone or the checkpoint path.")
    backbone = build_backbone(arch["backbone"], arch["width"], arch["cifar_stem"], arch["backbone_args"])
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"the backbone weights in {path} do not fit a {arch['backbone']} with width "
                          f"{arch['width']}, cifar_stem={arch['cifar_stem']} and backbone_args "
                          f"{arch['backbone_args']}: {err}") from err
    return backbone, arch
