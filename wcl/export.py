"""Export a checkpoint's backbone as a ``state_dict`` and print the Python line that loads it.

    python -m wcl.export CKPT OUT.pt      # or OUT/ (a trailing slash): OUT/backbone.pt, the folder created

An existing file is never replaced without ``--overwrite`` (it may be another run's checkpoint), nor the
checkpoint being exported even with it.

What loads the file with ``strict=True``, by backbone:

- ``resnet18|34|50`` at width 64 with the standard stem: ``torchvision.models.resnet50()`` (or 18/34). ``fc`` is
  the probed / fine-tuned classifier of a ``LinearProbe`` / ``FineTune`` checkpoint (``resnet50(num_classes=C)``);
  a pretraining checkpoint has no classifier, so ``fc`` is written as a zero 1000-way layer to be replaced.
- other widths or the CIFAR stem: ``wcl.models.build_resnet(name, width, cifar_stem)`` (its ``fc`` is the
  identity; a classifier is loaded into ``m.fc = torch.nn.Linear(D, C)``).
- ``torchvision:<name>``: ``torchvision.models.get_model(name, **backbone_args)`` with its last linear layer
  replaced by ``torch.nn.Identity()`` (or by ``torch.nn.Linear(D, C)`` for a classifier).
- ``timm:<name>``: ``timm.create_model(name, num_classes=0, **backbone_args)`` (``num_classes=C`` for a
  classifier).

The exact line is printed after the export.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from wcl.errors import ConfigError, WCLError
from wcl.eval.checkpoint import load_backbone, read_checkpoint
from wcl.files import stops_cleanly, write_whole
from wcl.models.backbones import module_expression


def _kwargs(args: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in args.items())


DEFAULT_NAME = "backbone.pt"


def output_file(out: str | Path) -> Path:
    """The file ``out`` names: ``out`` itself, or ``out/backbone.pt`` where it ends in a slash (a folder, as for
    ``cp``)."""
    text = str(out)
    path = Path(text).expanduser()
    return path / DEFAULT_NAME if text.endswith(("/", os.sep)) else path


def export_backbone(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the state dict to :func:`output_file` of ``out`` (an existing file only with ``overwrite``); returns
    ``{"out", "arch", "fc", "torchvision_compatible", "load"}`` where ``out`` is the file written, ``fc`` is
    ``classifier`` (a probe's / fine-tune's classifier was written), ``zeros`` (a zero torchvision ``fc``) or
    ``none``, and ``load`` is a Python line that builds ``m`` and loads the file into it with ``strict=True``."""
    out = output_file(out)
    if out.exists() and out.resolve() == Path(checkpoint).expanduser().resolve():
        raise ConfigError(f"the output {out} is the checkpoint being exported; write the weights to another file.")
    if out.is_dir():
        raise ConfigError(f"the output {out} is a folder; give a file name, e.g. {out / DEFAULT_NAME} (or {out}/, "
                          "which writes that file).")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"cannot write {out}: {blocking} is a file, not a folder; choose another output path.")
    if out.exists() and not overwrite:
        what = " (a checkpoint: another run's?)" if out.suffix == ".ckpt" else ""
        raise ConfigError(f"{out} already exists{what}; pass --overwrite to replace it, or give another output "
                          "path (nothing was written).")
    ckpt = read_checkpoint(checkpoint)
    backbone, arch = load_backbone(checkpoint)  # the weights fit the recorded architecture (strict)
    info = backbone.backbone_info
    state = backbone.state_dict()
    dim = backbone.out_dim
    # Probe / fine-tune runs store their architecture as "arch"; a pretraining run's classifier is only the
    # online monitor, so it is not exported.
    head = None
    if "arch" in ckpt.get("hyper_parameters", {}) and "classifier.weight" in ckpt["state_dict"]:
        head = ckpt["state_dict"]["classifier.weight"], ckpt["state_dict"]["classifier.bias"]
    classes = None if head is None else head[0].shape[0]
    load = f"m.load_state_dict(torch.load({str(out)!r}), strict=True)"
    compatible = info.kind == "resnet" and arch["width"] == 64 and not arch["cifar_stem"] and not info.args
    fc = "none" if head is None else "classifier"
    if compatible:  # torchvision's own ResNet: its fc must be in the file
        if head is None:
            head, fc = (torch.zeros(1000, dim), torch.zeros(1000)), "zeros"
        path, build = "fc", f"import torch, torchvision; m = torchvision.models.{info.model}(" \
                            f"{'' if classes is None else f'num_classes={classes}'}); {load}"
        if classes is None:
            build += "; m.fc = torch.nn.Identity()"
    elif info.kind == "resnet":
        path = "fc"
        build = f"import torch, wcl.models; m = wcl.models.build_resnet({info.model!r}, {arch['width']}, " \
                f"{arch['cifar_stem']}{_kwargs(info.args)}); "
        build += load if head is None else f"m.fc = torch.nn.Linear({dim}, {classes}); {load}"
    elif info.kind == "torchvision":
        path = info.classifier
        layer = "torch.nn.Identity()" if head is None else f"torch.nn.Linear({dim}, {classes})"
        build = f"import torch, torchvision; m = torchvision.models.get_model({info.model!r}{_kwargs(info.args)}); " \
                f"m{module_expression(path)} = {layer}; {load}"
    else:
        path = info.classifier
        if head is not None and path is None:
            raise ConfigError(f"timm:{info.model} does not say where its classifier lives; export the pretraining "
                              "checkpoint instead.")
        build = f"import torch, timm; m = timm.create_model({info.model!r}, num_classes={classes or 0}" \
                f"{_kwargs(info.args)}); {load}"
    if head is not None:
        state[f"{path}.weight"], state[f"{path}.bias"] = head
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, lambda f: torch.save(state, f))  # a stop or a full disk never leaves half a file
    return {"out": out, "arch": arch, "fc": fc, "torchvision_compatible": compatible, "load": build}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m wcl.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .ckpt of wcl.WCL, wcl.LinearProbe or wcl.FineTune")
    p.add_argument("out", help=f"where to write the state_dict (.pt); a path ending in / is a folder (created if "
                               f"needed) that gets {DEFAULT_NAME}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    try:
        with stops_cleanly("wcl.export"):
            info = export_backbone(args.checkpoint, args.out, overwrite=args.overwrite)
    except WCLError as err:
        print(f"wcl.export: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the output folder cannot be made (read-only, ...): what and where, not a traceback
        print(f"wcl.export: error: cannot write {args.out}: {err.strerror or err}; free space or choose another "
              "output path (nothing was written).", file=sys.stderr)
        sys.exit(2)
    arch = info["arch"]
    what = arch["backbone"] if not arch["backbone"].startswith("resnet") else \
        f"{arch['backbone']} width {arch['width']} cifar_stem={arch['cifar_stem']}"
    extra = f" {arch['backbone_args']}" if arch["backbone_args"] else ""
    print(f"wrote {info['out']}: {what}{extra}, classifier={info['fc']}")
    print(f"load with: {info['load']}")


if __name__ == "__main__":
    main()
