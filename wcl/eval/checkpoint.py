"""Loading the pretrained backbone out of a ``wcl`` checkpoint, with errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wcl.errors import ConfigError
from wcl.models.backbones import ResNetBackbone, build_resnet

ARCH_KEYS = ("backbone", "width", "cifar_stem")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist. Pass the .ckpt written by `python -m wcl fit` "
                          "(e.g. runs/quickstart/checkpoints/last.ckpt).")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"cannot read checkpoint {p}: {err}. Is it a PyTorch Lightning .ckpt file?") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{p} is not a Lightning checkpoint (no 'state_dict'); pass a wcl.WCL checkpoint.")
    return ckpt


def backbone_arch(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``{"backbone", "width", "cifar_stem"}`` of a WCL, LinearProbe or FineTune checkpoint."""
    hp = ckpt.get("hyper_parameters", {})
    arch = hp.get("arch") or {k: hp[k] for k in ARCH_KEYS if k in hp}
    if set(arch) != set(ARCH_KEYS) or not any(k.startswith("backbone.") for k in ckpt["state_dict"]):
        raise ConfigError(f"{path} is not a wcl.WCL checkpoint: it has no backbone weights or no backbone "
                          "hyper-parameters (backbone, width, cifar_stem). Pass a checkpoint written by "
                          "`python -m wcl fit --config configs/<dataset>/wcl.yaml`.")
    return dict(arch)


def load_backbone(path: str | Path, expect_backbone: str | None = None) -> tuple[ResNetBackbone, dict[str, Any]]:
    """The pretrained backbone of a checkpoint and its architecture.

    Args:
        path: a ``.ckpt`` of ``wcl.WCL`` (or of a probe / fine-tune run).
        expect_backbone: if given, the checkpoint's backbone must be this one (``resnet18`` …).
    """
    ckpt = read_checkpoint(path)
    arch = backbone_arch(ckpt, path)
    if expect_backbone is not None and expect_backbone != arch["backbone"]:
        raise ConfigError(f"backbone mismatch: the config asks for {expect_backbone} but {path} holds a "
                          f"{arch['backbone']} (width {arch['width']}); fix model.backbone or the checkpoint path.")
    backbone = build_resnet(arch["backbone"], arch["width"], arch["cifar_stem"])
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"the backbone weights in {path} do not fit a {arch['backbone']} with width "
                          f"{arch['width']} and cifar_stem={arch['cifar_stem']}: {err}") from err
    return backbone, arch
