import pytest
import torch
import torchvision

from wcl import WCL, LabelledDataModule
from wcl.cli import main
from wcl.data.datasets import build_splits, targets_of
from wcl.data.subsets import class_balanced_fraction
from wcl.errors import ConfigError, DataError
from wcl.eval.checkpoint import load_backbone
from wcl.export import export_backbone

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _save_random(path, **kw):
    torch.manual_seed(0)
    model = WCL(**{"backbone": "resnet18", "width": 16, "cifar_stem": True, "proj_hidden_dim": 64,
                   "weak_hidden_dim": 64, "num_classes": 10, **kw})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return model


@pytest.fixture
def random_ckpt(tmp_path):
    """A checkpoint of an untrained small model: enough for what does not depend on what was learned."""
    _save_random(tmp_path / "random.ckpt", width=4)
    return tmp_path / "random.ckpt"


@pytest.fixture
def pretrained(quickstart_run):
    """The README quickstart's checkpoint (6 epochs on the bundled data; one run per pytest run, shared)."""
    cwd, _ = quickstart_run
    return cwd / "runs" / "quickstart" / "checkpoints" / "last.ckpt"


def _probe(ckpt, out, capsys):
    main(["fit", "--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), "--model.checkpoint", str(ckpt),
          "--trainer.max_epochs", "15", "--trainer.default_root_dir", str(out),
          "--trainer.enable_progress_bar", "false"])
    text = capsys.readouterr().out
    return float(text.split("wcl: final val/top1 = ")[1].split()[0])


@pytest.mark.slow
def test_probe_of_pretrained_beats_random_init(pretrained, tmp_path, capsys):
    _save_random(tmp_path / "random.ckpt", proj_hidden_dim=512, weak_hidden_dim=512)
    trained = _probe(pretrained, tmp_path / "a", capsys)
    random = _probe(tmp_path / "random.ckpt", tmp_path / "b", capsys)
    assert trained > random + 0.02, (trained, random)


def test_finetune_writes_labelled_subset(random_ckpt, tmp_path, capsys):
    main(["fit", "--config", str(ROOT / "configs" / "finetune" / "quickstart_10pct.yaml"),
          "--model.checkpoint", str(random_ckpt), "--trainer.max_epochs", "1", "--data.train_per_class", "50",
          "--data.val_per_class", "2", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])
    assert "wcl: final val/top1" in capsys.readouterr().out
    names = next(tmp_path.rglob("labelled_subset.txt")).read_text().split()
    assert len(names) == 50 and len(set(names)) == 50  # 10 % of 50 images of each of the 10 classes


def test_fraction_sampling_is_balanced_seeded_reproducible():
    train = build_splits("bundled").bank
    a, b = class_balanced_fraction(train, 0.01, seed=3), class_balanced_fraction(train, 0.01, seed=3)
    assert a.indices == b.indices
    assert a.indices != class_balanced_fraction(train, 0.01, seed=4).indices
    counts = torch.bincount(torch.tensor(targets_of(a)), minlength=10)
    assert counts.tolist() == [5] * 10
    with pytest.raises(ConfigError, match="gives no labelled image of 10 of the 10 classes"):
        class_balanced_fraction(train, 0.0001, seed=0)  # rounds to 0 images a class: refused, not bumped to 1


def test_label_fraction_out_of_range():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=f"label_fraction={bad}"):
            LabelledDataModule(label_fraction=bad)


def test_subset_file(tmp_path):
    listing = tmp_path / "subset.txt"
    others = ["automobile", "bird", "deer", "dog", "frog", "horse", "ship", "truck"]  # every class needs one image
    listing.write_text("airplane/0000.jpg\ncat/0003.jpg\n" + "".join(f"{c}/0000.jpg\n" for c in others))
    dm = LabelledDataModule(subset_file=str(listing), num_workers=0)
    assert len(dm.train_base) == 10 and dm.labelled_names()[3].endswith("cat/0003.jpg")
    listing.write_text("airplane/0000.jpg\nzebra/0001.jpg\n")
    with pytest.raises(DataError, match=r"1 images named .* do not exist .*zebra/0001.jpg"):
        LabelledDataModule(subset_file=str(listing))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="is not a wcl.WCL checkpoint"):
        load_backbone(tmp_path / "other.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt cannot be read"):
        load_backbone(tmp_path / "junk.ckpt")
    _save_random(tmp_path / "r18.ckpt")
    with pytest.raises(ConfigError, match="backbone mismatch.*resnet50.*resnet18"):
        load_backbone(tmp_path / "r18.ckpt", expect_backbone="resnet50")
    bad = torch.load(tmp_path / "r18.ckpt", weights_only=False)
    bad["hyper_parameters"]["width"] = 32
    torch.save(bad, tmp_path / "wrong_width.ckpt")
    with pytest.raises(ConfigError, match="do not fit a resnet18 with width 32"):
        load_backbone(tmp_path / "wrong_width.ckpt")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_export_loads_into_torchvision_strict(name, tmp_path):
    model = _save_random(tmp_path / "m.ckpt", backbone=name, width=64, cifar_stem=False)
    info = export_backbone(tmp_path / "m.ckpt", tmp_path / "out.pt")
    assert info["torchvision_compatible"] and info["fc"] == "zeros"
    tv = getattr(torchvision.models, name)()
    tv.load_state_dict(torch.load(tmp_path / "out.pt"), strict=True)
    tv.fc = torch.nn.Identity()
    tv.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model.backbone(x))


def test_linear_probe_lr_per_256_images(random_ckpt, tmp_path):
    from lightning.pytorch import Trainer

    from wcl import LinearProbe

    dm = LabelledDataModule(batch_size=128, num_workers=0, train_per_class=20, val_per_class=2, train_augment="none")
    probe = LinearProbe(str(random_ckpt), num_classes=10, lr=0.2, lr_scaling="linear")
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(probe, dm)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.2 * 128 / 256)


def test_cached_probe_needs_the_labelled_data_module(tmp_path):
    from types import SimpleNamespace

    from wcl import LinearProbe, WCLDataModule
    from wcl.callbacks import CachedFeatures

    _save_random(tmp_path / "r.ckpt")
    probe = LinearProbe(str(tmp_path / "r.ckpt"), num_classes=10, mode="cached")
    assert [type(cb).__name__ for cb in probe.configure_callbacks()] == ["LabelledSubsetFile", "CachedFeatures"]
    assert [type(cb).__name__ for cb in LinearProbe(str(tmp_path / "r.ckpt"), num_classes=10,
                                                    mode="augment").configure_callbacks()] == ["LabelledSubsetFile"]
    trainer = SimpleNamespace(datamodule=WCLDataModule(dataset="bundled"))
    with pytest.raises(ConfigError, match="wcl.LabelledDataModule"):
        CachedFeatures().setup(trainer, probe, "fit")


def test_finetune_decays_weights_only_as_pretraining_does(tmp_path):
    """Fine-tuning's weight decay skips biases and norms (here BatchNorm) like pretraining; the classifier keeps its
    own learning rate."""
    from wcl import FineTune

    _save_random(tmp_path / "r.ckpt")
    ft = FineTune(str(tmp_path / "r.ckpt"), num_classes=10, lr=0.01, classifier_lr=0.1, weight_decay=5e-4)
    groups = ft.param_groups()
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in ft.named_parameters()}
    assert {names[i] for i in decayed} == {n for n, p in ft.named_parameters() if p.ndim > 1}
    assert sum(len(g["params"]) for g in groups) == len(list(ft.parameters()))
    assert {g["lr"] for g in groups if any(p is ft.classifier.weight for p in g["params"])} == {0.1}
    assert all("lr" not in g for g in groups if any(p is ft.backbone.conv1.weight for p in g["params"]))
