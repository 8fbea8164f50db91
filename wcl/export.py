"""Export a checkpoint's backbone as a torchvision ResNet ``state_dict``.

    python -m wcl.export CKPT OUT.pt

With the standard stem and width 64, ``torchvision.models.resnet50()`` (or 18/34) loads the file with
``strict=True``. ``fc`` is the fine-tuned / probed classifier for ``FineTune`` and ``LinearProbe`` checkpoints
(load with ``resnetXX(num_classes=C)``); a pretraining checkpoint has no classifier, so ``fc`` is written as a
zero 1000-way layer to be replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from wcl.errors import ConfigError, WCLError
from wcl.eval.checkpoint import backbone_arch, read_checkpoint


def export_backbone(checkpoint: str | Path, out: str | Path) -> dict[str, object]:
    """Write the torchvision-style state dict; returns ``{"arch", "fc", "torchvision_compatible"}``."""
    out = Path(out).expanduser()
    if out.exists() and out.resolve() == Path(checkpoint).expanduser().resolve():
        raise ConfigError(f"the output {out} is the checkpoint being exported; write the weights to another file.")
    if out.is_dir():
        raise ConfigError(f"the output {out} is a folder; give a file name, e.g. {out / 'backbone.pt'}.")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"cannot write {out}: {blocking} is a file, not a folder; choose another output path.")
    ckpt = read_checkpoint(checkpoint)
    arch = backbone_arch(ckpt, checkpoint)
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    dim = state["layer4.0.downsample.1.weight"].shape[0]  # channels of the pooled features
    # Probe / fine-tune runs store their architecture as "arch"; a pretraining run's classifier is only the
    # online monitor, so it is not exported.
    if "arch" in ckpt.get("hyper_parameters", {}) and "classifier.weight" in ckpt["state_dict"]:
        state["fc.weight"] = ckpt["state_dict"]["classifier.weight"]
        state["fc.bias"] = ckpt["state_dict"]["classifier.bias"]
        fc = "classifier"
    else:
        state["fc.weight"] = torch.zeros(1000, dim)
        state["fc.bias"] = torch.zeros(1000)
        fc = "zeros"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    compatible = arch["width"] == 64 and not arch["cifar_stem"]
    return {"arch": arch, "fc": fc, "torchvision_compatible": compatible}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m wcl.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .ckpt of wcl.WCL, wcl.LinearProbe or wcl.FineTune")
    p.add_argument("out", help="where to write the state_dict (.pt)")
    args = p.parse_args(argv)
    try:
        info = export_backbone(args.checkpoint, args.out)
    except WCLError as err:
        print(f"wcl.export: error: {err}", file=sys.stderr)
        sys.exit(2)
    arch = info["arch"]
    print(f"wrote {args.out}: {arch['backbone']} width {arch['width']} cifar_stem={arch['cifar_stem']}, "
          f"fc={info['fc']}")
    if not info["torchvision_compatible"]:
        print("note: this backbone has a non-standard stem or width, so torchvision's constructors will not load "
              "it; use wcl.models.build_resnet(backbone, width, cifar_stem) instead.")


if __name__ == "__main__":
    main()
