"""torchvision and timm backbones through the whole workflow: pretrain, resume, probe, fine-tune, export — and a ViT
under 2-process DDP and with multi-crop crops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from tests.test_module import _FixedData, _Frozen
from wcl import WCL
from wcl.cli import main
from wcl.eval.checkpoint import load_backbone
from wcl.export import main as export_main
from wcl.models.layout import memory_format

ROOT = Path(__file__).resolve().parents[1]
VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2}
BACKBONES = {  # a timm ViT (2 blocks) and a BatchNorm torchvision net without dropout (resume must be exact)
    "timm_vit": ["--model.backbone", "timm:vit_tiny_patch16_224", "--model.backbone_args", json.dumps(VIT)],
    "torchvision": ["--model.backbone", "torchvision:shufflenet_v2_x0_5"],
}
# The quickstart on 20 images (2 steps per epoch) cropped to 16 px, with a constant learning rate, so 1 + 1 epochs
# equal 2 straight epochs.
PRETRAIN = ["--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.width", "64", "--model.cifar_stem", "false",
            "--model.proj_hidden_dim", "16", "--model.weak_hidden_dim", "16", "--model.optimizer", "adamw",
            "--model.base_lr", "1e-3", "--model.warmup_epochs", "0", "--model.min_lr_factor", "1.0",
            "--model.knn_every_n_epochs", "0", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
            "false", "--data.train_per_class", "2", "--data.batch_size", "10", "--data.num_workers", "0",
            "--data.augment.crop_size", "16"]
SMALL_EVAL = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.train_per_class", "10",
              "--data.val_per_class", "1", "--data.num_workers", "0"]


def _exported(capsys, ckpt: Path, out: Path):
    """Runs ``python -m wcl.export`` and then the line it prints; returns the loaded model ``m``."""
    export_main([str(ckpt), str(out)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("load with: "))
    scope: dict = {}
    exec(line[len("load with: "):], scope)  # noqa: S102 - the printed line, as a user would paste it
    return scope["m"].eval()


def _straight_and_resumed(args: list[str], tmp_path: Path, length: str, stop: int, end: int) -> tuple[dict, dict]:
    """The last checkpoints of a run straight to ``length`` ``end`` and of one stopped at ``stop`` and resumed to
    ``end``; both at global step 4 with every floating-point tensor of the model equal."""
    main(["fit", *args, length, str(end), "--trainer.default_root_dir", str(tmp_path / "straight")])
    main(["fit", *args, length, str(stop), "--trainer.default_root_dir", str(tmp_path / "resumed")])
    main(["fit", *args, length, str(end), "--trainer.default_root_dir", str(tmp_path / "resumed"), "--ckpt_path",
          "last"])
    straight, resumed = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)
                         for d in ("straight", "resumed"))
    assert straight["global_step"] == resumed["global_step"] == 4
    for key, value in straight["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    return straight, resumed


@pytest.mark.parametrize("kind", ["timm_vit", pytest.param("torchvision", marks=pytest.mark.slow)])
def test_backbone_pretrains_resumes_exactly_probes_finetunes_and_exports(kind, tmp_path, capsys):
    _straight_and_resumed([*PRETRAIN, *BACKBONES[kind]], tmp_path, "--trainer.max_epochs", 1, 2)
    ckpt = tmp_path / "straight" / "checkpoints" / "last.ckpt"
    backbone, arch = load_backbone(ckpt)  # the architecture comes from the checkpoint's hyper-parameters
    assert arch["backbone"] == BACKBONES[kind][1]
    capsys.readouterr()

    main(["fit", "--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), "--model.checkpoint", str(ckpt),
          *SMALL_EVAL, "--trainer.default_root_dir", str(tmp_path / "probe")])
    assert "wcl: final val/top1" in capsys.readouterr().out
    main(["fit", "--config", str(ROOT / "configs" / "finetune" / "quickstart_10pct.yaml"), "--model.checkpoint",
          str(ckpt), *SMALL_EVAL, "--data.batch_size", "5", "--trainer.default_root_dir", str(tmp_path / "ft")])
    assert "wcl: final val/top1" in capsys.readouterr().out
    tuned = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert tuned["global_step"] == 2 and tuned["hyper_parameters"]["arch"]["backbone"] == arch["backbone"]

    x = torch.randn(2, 3, 32, 32)
    m = _exported(capsys, ckpt, tmp_path / "backbone.pt")  # strict load, as printed
    torch.testing.assert_close(m(x), backbone.eval()(x))
    from wcl import FineTune

    ft = FineTune.load_from_checkpoint(tmp_path / "ft" / "checkpoints" / "last.ckpt").eval()
    m = _exported(capsys, tmp_path / "ft" / "checkpoints" / "last.ckpt", tmp_path / "tuned.pt")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ft.logits({"image": x}))  # backbone and classifier, 10 classes


def test_vit_stopped_by_max_steps_mid_epoch_resumes_exactly(tmp_path):
    """max_steps 3 stops in epoch 2 (batch 1 of 2); resumed to max_steps 4, the run trains on the rest of epoch 2
    (not on epoch 3's first batch) and ends with the weights, optimizer state and epoch count of a straight run."""
    straight, resumed = _straight_and_resumed([*PRETRAIN, *BACKBONES["timm_vit"]], tmp_path, "--trainer.max_steps",
                                              3, 4)
    (a,), (b,) = straight["optimizer_states"], resumed["optimizer_states"]
    for i, state in a["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(b["state"][i][name], value, rtol=0, atol=1e-6, msg=f"{i} {name}")
    loops = [c["loops"]["fit_loop"]["epoch_progress"] for c in (straight, resumed)]
    assert loops[0] == loops[1] and straight["WCLDataModule"] == resumed["WCLDataModule"]


def test_vit_probe_runs_its_frozen_backbone_without_dropout(tmp_path):
    from wcl import LinearProbe

    model = WCL(backbone="timm:vit_tiny_patch16_224", backbone_args={**VIT, "drop_rate": 0.5}, proj_hidden_dim=16,
                weak_hidden_dim=16)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "vit.ckpt")
    probe = LinearProbe(str(tmp_path / "vit.ckpt"), num_classes=3).train()
    assert not probe.backbone.training and probe.classifier.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(probe.features(x), probe.features(x))  # dropout 0.5 would differ
    assert not model.backbone.convolutional and memory_format(model.backbone, "cuda") == torch.contiguous_format


def test_vit_with_multicrop_crops_trains():
    torch.manual_seed(0)
    model = WCL(backbone="timm:vit_tiny_patch16_224", backbone_args={**VIT, "img_size": 16, "patch_size": 4},
                proj_hidden_dim=16, weak_hidden_dim=16, num_classes=3)
    g = torch.Generator().manual_seed(1)
    b = 6
    batch = {"views": [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)], "index": torch.arange(b),
             "label": torch.arange(b) % 3, "small": [torch.randn(b, 3, 8, 8, generator=g) for _ in range(2)]}
    out = model.training_step(batch, 0)
    plain = model.training_step({k: v for k, v in batch.items() if k != "small"}, 0)
    assert torch.isfinite(out["loss"]) and out["loss"].item() != plain["loss"].item()  # the crops entered the loss
    out["loss"].backward()
    assert model.backbone.pos_embed.grad is not None and model.backbone.pos_embed.grad.abs().sum() > 0


def _vit_step(devices: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = _Frozen(backbone="timm:vit_tiny_patch16_224", backbone_args={**VIT, "img_size": 8, "patch_size": 4},
                    proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16, weak_out_dim=8, optimizer="sgd",
                    base_lr=1.0, lr_scaling="none", momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                    knn_every_n_epochs=0).double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                      precision="64-true", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, _FixedData(batch_size, 2 * 6))
    end = model.state_dict()
    return {k: start[k] - end[k] for k in start if end[k].is_floating_point()}


@pytest.mark.slow
def test_vit_two_ddp_ranks_equal_one_rank_with_the_global_batch():
    single, ddp = _vit_step(1, 12), _vit_step(2, 6)
    for name, delta in single.items():
        torch.testing.assert_close(ddp[name], delta, rtol=1e-5, atol=1e-8, msg=name)
    assert float(single["backbone.pos_embed"].abs().max()) > 0 and float(single["backbone.cls_token"].abs().max()) > 0


RECIPES = ["cifar10/wcl_vit.yaml", "imagenet/wcl_vit_small.yaml"]


@pytest.mark.parametrize("overlay", ["simclr.yaml", "multicrop.yaml", "official.yaml"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_vit_recipes_compose_with_the_overlays(recipe, overlay, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "configs" / recipe), "--config", str(ROOT / "configs" / overlay),
              "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "backbone: timm:vit_small_patch16_224" in out and "optimizer: " in out
    WCL(**yaml.safe_load(out)["model"]["init_args"])  # the composed model builds


def _readme_backbone_commands() -> list[list[str]]:
    """The ``python -m wcl fit`` commands of the documentation's Backbones page, as argument lists."""
    import shlex

    section = (ROOT / "docs" / "guide" / "backbones.md").read_text()
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line, comments=True)[3:] for line in block.splitlines() if line.startswith("python -m wcl")]


def test_readme_backbone_commands_build_their_models(capsys, monkeypatch):
    """Each example of the Backbones page parses and builds its backbone (timm, torchvision, ViTs)."""
    monkeypatch.chdir(ROOT)
    commands = _readme_backbone_commands()
    assert len(commands) == 4
    for args in commands:
        with pytest.raises(SystemExit):
            main([*args, "--print_config"])
        model = WCL(**yaml.safe_load(capsys.readouterr().out)["model"]["init_args"])
        assert model.backbone.out_dim > 0, args


@pytest.mark.parametrize("recipe,crop", [(RECIPES[0], 16), (RECIPES[1], 96)])
def test_vit_recipe_builds_and_takes_its_multicrop_crops(recipe, crop):
    cfg = yaml.safe_load((ROOT / "configs" / recipe).read_text())["model"]["init_args"]
    model = WCL(**cfg).eval()
    size = cfg.get("backbone_args", {}).get("img_size", 224)
    assert model.backbone.out_dim == 384 and not model.backbone.convolutional  # ViT-S: 384 features
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == model(torch.randn(1, 3, crop, crop)).shape == (1, 384)


def test_compiled_vit_keeps_checkpoint_keys_and_outputs(eager_compile):
    calls = eager_compile
    kw = dict(backbone="timm:vit_tiny_patch16_224", backbone_args=VIT, proj_hidden_dim=16, weak_hidden_dim=16)
    torch.manual_seed(0)
    plain = WCL(**kw).eval()
    torch.manual_seed(0)
    compiled = WCL(**kw, compile_backbone=True).eval()
    compiled.setup("fit")
    assert calls == [{"mode": "default", "dynamic": False}]
    assert list(compiled.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), plain(x))
