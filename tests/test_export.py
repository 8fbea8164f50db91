"""``python -m wcl.export``: the printed line loads the written file, as printed, for every kind of backbone."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.test_backbones import ROOT, VIT
from wcl import WCL
from wcl.eval.checkpoint import load_backbone
from wcl.export import main as export_main


def _checkpoint(path, classes: int | None = None, **model) -> WCL:
    """A randomly initialised WCL saved as a pretraining checkpoint, or (``classes``) as a probe's: ``arch`` and a
    ``classifier``."""
    torch.manual_seed(0)
    net = WCL(**{"proj_hidden_dim": 16, "weak_hidden_dim": 16, **model})
    hp = dict(net.hparams)
    state = dict(net.state_dict())
    if classes is not None:
        hp = {"arch": {k: hp[k] for k in ("backbone", "width", "cifar_stem", "backbone_args")}}
        head = torch.nn.Linear(net.backbone.out_dim, classes)
        state = {**{k: v for k, v in state.items() if k.startswith("backbone.")},
                 "classifier.weight": head.weight.detach(), "classifier.bias": head.bias.detach()}
        net.classifier = head
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return net.eval()


def _run_printed_line(capsys, ckpt, out) -> tuple[torch.nn.Module, str]:
    export_main([str(ckpt), str(out)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("load with: "))[len("load with: "):]
    scope: dict = {}
    exec(line, scope)  # noqa: S102 - exactly what a user pastes
    return scope["m"].eval(), line


def test_quickstart_export_loads_as_printed(tmp_path, capsys):
    """The quickstart's model (resnet18, width 16, CIFAR stem): the printed line builds it and loads strictly."""
    model_args = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["model"]["init_args"]
    net = _checkpoint(tmp_path / "last.ckpt", **model_args)
    m, line = _run_printed_line(capsys, tmp_path / "last.ckpt", tmp_path / "backbone.pt")
    assert "wcl.models.build_resnet('resnet18', 16, True)" in line
    assert not any(k.startswith("fc.") for k in torch.load(tmp_path / "backbone.pt"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), net.backbone(x))


@pytest.mark.parametrize("model", [
    {"backbone": "resnet18", "width": 8, "cifar_stem": True},
    {"backbone": "resnet18", "width": 64, "cifar_stem": False},  # torchvision's own resnet18(num_classes=C)
    {"backbone": "timm:vit_tiny_patch16_224", "backbone_args": VIT},
    {"backbone": "torchvision:mobilenet_v3_small"},
], ids=["wcl-resnet", "torchvision-resnet", "timm", "torchvision"])
def test_probe_export_carries_its_classifier(model, tmp_path, capsys):
    net = _checkpoint(tmp_path / "probe.ckpt", classes=7, **model)
    m, line = _run_printed_line(capsys, tmp_path / "probe.ckpt", tmp_path / "probe.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net.classifier(net.backbone(x)))
    assert "7" in line


def test_standard_resnet_export_names_torchvision(tmp_path, capsys):
    net = _checkpoint(tmp_path / "r50.ckpt", backbone="resnet50")
    m, line = _run_printed_line(capsys, tmp_path / "r50.ckpt", tmp_path / "r50.pt")
    assert line.startswith("import torch, torchvision; m = torchvision.models.resnet50()")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m(x), net.backbone(x))


def test_checkpoint_without_backbone_args_still_loads(tmp_path):
    """Checkpoints written before backbone_args existed: backbone, width, cifar_stem only."""
    net = _checkpoint(tmp_path / "old.ckpt", backbone="resnet18", width=8, cifar_stem=True)
    ckpt = torch.load(tmp_path / "old.ckpt", weights_only=False)
    del ckpt["hyper_parameters"]["backbone_args"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    backbone, arch = load_backbone(tmp_path / "old.ckpt")
    assert arch["backbone_args"] == {} and arch["width"] == 8
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.eval()(x), net.backbone(x))


def test_trailing_slash_writes_backbone_pt_into_a_new_folder(tmp_path, capsys):
    """``OUT/`` is a folder (as for ``cp``): the weights go to ``OUT/backbone.pt``, the folder created."""
    net = _checkpoint(tmp_path / "last.ckpt", backbone="resnet18", width=8, cifar_stem=True)
    m, line = _run_printed_line(capsys, tmp_path / "last.ckpt", f"{tmp_path / 'newdir'}/")
    assert (tmp_path / "newdir").is_dir() and (tmp_path / "newdir" / "backbone.pt").is_file()
    assert f"torch.load({str(tmp_path / 'newdir' / 'backbone.pt')!r})" in line
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), net.backbone(x))


def test_overwrite_replaces_an_existing_file(tmp_path, capsys):
    _checkpoint(tmp_path / "last.ckpt", backbone="resnet18", width=8, cifar_stem=True)
    (tmp_path / "backbone.pt").write_bytes(b"an older export")
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "last.ckpt"), str(tmp_path / "backbone.pt")])
    assert (tmp_path / "backbone.pt").read_bytes() == b"an older export"
    export_main([str(tmp_path / "last.ckpt"), str(tmp_path / "backbone.pt"), "--overwrite"])
    assert f"wrote {tmp_path / 'backbone.pt'}: " in capsys.readouterr().out
    assert "conv1.weight" in torch.load(tmp_path / "backbone.pt")
