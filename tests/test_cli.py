import csv
import subprocess
import sys
from pathlib import Path

import pytest

from wcl.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Partial configs, meant to follow a full one: (overlay, the full config it is tested on).
OVERLAYS = {"multicrop.yaml": "quickstart.yaml", "simclr.yaml": "cpu_proxy/wcl.yaml",
            "selfcrops.yaml": "cpu_proxy/wcl.yaml", "imagenet/multicrop.yaml": "imagenet/wcl_resnet50.yaml",
            "official.yaml": "cifar10/wcl.yaml", "cpu_proxy/vit_tiny.yaml": "cpu_proxy/wcl.yaml",
            "fewlabel/10pct.yaml": "cpu_proxy/wcl.yaml", "fewlabel/1pct.yaml": "quickstart.yaml",
            "fewlabel/label_graph.yaml": "quickstart.yaml", "fewlabel/label_pairs.yaml": "quickstart.yaml"}
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                 if p.name not in ("data.yaml", "model.yaml") and str(p.relative_to(ROOT / "configs")) not in OVERLAYS)


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--data.batch_size", "32", "--data.train_per_class", "7", "--data.val_per_class", "4",
        "--data.num_workers", "0", "--model.knn_every_n_epochs", "1", *extra,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate" if config.parent.name == "knn" else "fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    model = printed.split("\nmodel:\n")[1].split("\n")[0]
    data = printed.split("\ndata:\n")[1].split("\n")[0]
    assert "class_path: wcl." in model and "class_path: wcl." in data


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlays_compose_with_a_full_config(overlay, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "configs" / OVERLAYS[overlay]), "--config",
              str(ROOT / "configs" / overlay), "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: wcl.WCL" in out
    if "multicrop" in overlay:  # appended to the base config's callbacks, not replacing them
        assert "class_path: wcl.callbacks.KnnMultiCrop" in out and "class_path: wcl.callbacks.Checkpoint" in out
        assert "crop_losses: weak" in out  # the model's init_args merged into the base config's


def test_fit_on_bundled_logs_metrics_and_writes_checkpoint(tmp_path, capsys):
    main(_tiny(tmp_path))
    out = capsys.readouterr().out
    assert "wcl: final val/knn_top1 = " in out
    assert "(every view and crop counted, data loading included" in out
    ckpt = Path(out.split("wcl: checkpoint: ")[1].split()[0])
    assert ckpt.is_file() and ckpt.name == "last.ckpt" and ckpt.parent == tmp_path / "checkpoints"
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    keys = set(rows[0])
    for key in ("train/loss", "train/loss_nce", "train/loss_weak", "weak_labels/num_components",
                "weak_labels/mean_component_size", "weak_labels/purity", "val/knn_top1",
                "val/online_linear_top1"):
        assert key in keys, key
    purity = [float(r["weak_labels/purity"]) for r in rows if r["weak_labels/purity"]]
    assert purity and all(0.0 <= p <= 1.0 for p in purity)
    knn = [float(r["val/knn_top1"]) for r in rows if r["val/knn_top1"]]
    assert len(knn) == 2 and all(0.0 <= k <= 1.0 for k in knn)


def test_multicrop_overlay_composes(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
              "--config", str(ROOT / "configs" / "multicrop.yaml"), "--print_config"])
    out = capsys.readouterr().out
    assert "num_small_crops: 2" in out and "dataset: bundled" in out


def test_composed_configs_override(tmp_path, capsys):
    overlay = tmp_path / "simclr.yaml"
    overlay.write_text("model:\n  init_args:\n    weak_weight: 0.0\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(overlay),
              "--print_config"])
    out = capsys.readouterr().out
    assert "weak_weight: 0.0" in out and "width: 16" in out


def test_unknown_key_fails_loudly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.init_args.widht", "8"])
    assert exc.value.code != 0
    assert "widht" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_root_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "wcl", "fit", "--config", "configs/cifar10/wcl.yaml",
         "--data.root", str(tmp_path / "missing")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "wcl: error: dataset root" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batch_size_one_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_tiny(tmp_path, "--data.batch_size", "1"))
    assert exc.value.code == 2
    assert "at least 2 samples" in capsys.readouterr().err


def test_plain_progress_lines_when_output_is_not_a_terminal(tmp_path, capsys):
    args = _tiny(tmp_path)
    i = args.index("--trainer.enable_progress_bar")
    main([*args[:i], *args[i + 2:], "--trainer.log_every_n_steps", "1"])
    out = capsys.readouterr().out
    assert "epoch 1/2 step 1/2: loss " in out and "epoch 2/2 done in " in out and "val/knn_top1" in out


def _error_line(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return next(line for line in capsys.readouterr().err.splitlines() if line.startswith("wcl: error:"))


@pytest.mark.parametrize(("args", "pointer"), [
    (["fit", "--config", "configs/quickstart.yaml", "--model.widht", "8"], "`python -m wcl fit --model.help wcl.WCL`"),
    (["fit", "--config", "configs/quickstart.yaml", "--data.batch_size", "many"],
     "`python -m wcl fit --data.help wcl.WCLDataModule`"),
    (["fit", "--config", "configs/linear/quickstart.yaml", "--model.lrr", "3"],
     "`python -m wcl fit --model.help wcl.LinearProbe`"),
    (["fit", "--config", "configs/linear/quickstart.yaml", "--data.label_fractoin", "3"],
     "`python -m wcl fit --data.help wcl.LabelledDataModule`"),
    (["validate", "--config", "configs/knn/quickstart.yaml", "--model.kk", "3"],
     "`python -m wcl validate --model.help wcl.KNNEval`"),
    (["validate", "--config", "configs/knn/quickstart.yaml", "--trainer.devicez", "1"],
     "`python -m wcl validate --help`"),
    (["test", "--config", "configs/quickstart.yaml"], "`python -m wcl --help` lists the subcommands"),
], ids=["model", "data", "probe model", "probe data", "validate model", "validate trainer", "subcommand"])
def test_errors_name_the_help_page_that_lists_the_key(args, pointer, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert pointer in _error_line(capsys, args)


def test_help_names_the_pages_of_the_model_and_data_keys_and_offers_no_test(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.help wcl.WCL" in out or "--model.help CLASS" in out
    for name in ("wcl.WCL", "wcl.WCLDataModule", "wcl.LinearProbe", "wcl.FineTune", "wcl.LabelledDataModule"):
        assert name in out, name
    assert "--print_config" in out and "class's own defaults" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "{fit,validate,predict}" in out and "test" not in out.split("{fit,validate,predict}")[1].split("\n")[0]
    with pytest.raises(SystemExit) as exc:
        main(["test", "--config", "configs/quickstart.yaml"])
    assert exc.value.code == 2


def test_model_help_describes_each_key_with_its_own_text(capsys):
    """One description per key: grouped ``a, b: …`` docstring lines would attach to ``a`` only."""
    import docstring_parser

    import wcl
    from wcl.callbacks import KnnMultiCrop, OnlineKnn
    from wcl.data.base import ImageData

    for cls in (wcl.WCL, wcl.WCLDataModule, wcl.LabelledDataModule, ImageData, wcl.LinearProbe, wcl.FineTune,
                wcl.KNNEval, OnlineKnn, KnnMultiCrop):
        described = {p.arg_name for p in docstring_parser.parse(cls.__doc__).params}
        keys = [k for k in cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount
                                                           + cls.__init__.__code__.co_kwonlyargcount]]
        assert not [k for k in keys if k not in described], cls.__name__
        assert all("," not in name for name in described), cls.__name__
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "wcl.WCL"])
    out = capsys.readouterr().out
    weak = out.split("\n  --model.weak_temperature")[1].split("\n  --model.")[0]
    assert "weak-label loss" in weak and "class defaults, a --config overrides them" in out
    assert "Set by your --config files" not in out  # no config: the class defaults are the whole story


def test_model_and_data_help_end_with_what_the_configs_set(capsys):
    """``--model.help`` shows the class's defaults (resnet50, width 64); with the quickstart's config on the line it
    ends with the values that config sets, overlays merged in order (also after ``--data.help=CLASS``)."""
    quick, multicrop = str(ROOT / "configs" / "quickstart.yaml"), str(ROOT / "configs" / "multicrop.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", quick, "--config", multicrop, "--model.help", "wcl.WCL"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    page, tail = out.split("Set by your --config files")
    assert "PositiveInt, default: 64)" in page
    assert "\n  --model.backbone resnet18\n" in tail and "\n  --model.width 16\n" in tail
    assert "\n  --model.cifar_stem true\n" in tail and "--data." not in tail
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "cpu_proxy" / "wcl.yaml"), "--data.help=wcl.WCLDataModule"])
    tail = capsys.readouterr().out.split("Set by your --config files")[1]
    assert "\n  --data.train_per_class 1000\n" in tail and "\n  --data.augment.mean [0.4914, 0.4822, 0.4465]\n" in tail


def test_bare_model_and_data_help_show_the_configs_classes(capsys):
    """``--model.help`` without a class shows the keys of the class the configs name (else wcl.WCL), not an empty
    page of LightningModule's."""
    for args, shown, key in ((["--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), "--model.help"],
                              "Help for --model.help=wcl.LinearProbe", "--model.lr"),
                             (["--model.help"], "Help for --model.help=wcl.WCL", "--model.temperature"),
                             (["--config", str(ROOT / "configs" / "quickstart.yaml"), "--data.help"],
                              "Help for --data.help=wcl.WCLDataModule", "--data.batch_size")):
        with pytest.raises(SystemExit) as exc:
            main(["fit", *args])
        assert exc.value.code in (0, None)
        out = capsys.readouterr().out
        assert shown in out and key in out, out[:500]


def test_help_into_a_closed_pipe_stops_without_a_traceback():
    """``python -m wcl fit --data.help | head -1`` where the reader has left before the page ends: exit 141
    (SIGPIPE's), nothing on stderr."""
    import os

    read, write = os.pipe()
    os.close(read)  # every write to stdout fails, as after `head` has read its line and exited
    try:
        proc = subprocess.run([sys.executable, "-m", "wcl", "fit", "--config", "configs/quickstart.yaml",
                               "--data.help"], cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr[-2000:]


@pytest.mark.parametrize(("configs", "extra", "folder"), [
    (["quickstart.yaml"], [], "runs/quickstart"),
    (["quickstart.yaml", "multicrop.yaml"], [], "runs/quickstart+multicrop"),
    (["quickstart.yaml", "simclr.yaml"], [], "runs/quickstart+simclr"),
    (["quickstart.yaml", "multicrop.yaml", "simclr.yaml"], [], "runs/quickstart+multicrop+simclr"),
    (["quickstart.yaml", "multicrop.yaml"], ["--trainer.default_root_dir", "runs/mine"], "runs/mine"),
], ids=["recipe", "multicrop", "simclr", "both", "explicit"])
def test_each_overlay_combination_has_its_own_run_folder(configs, extra, folder, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["fit", *[a for c in configs for a in ("--config", f"configs/{c}")], *extra, "--print_config"]
    with pytest.raises(SystemExit):
        main(args)
    assert f"default_root_dir: {folder}\n" in capsys.readouterr().out


def _documented_lines() -> list[str]:
    """The command lines of the README, the documentation site and the configs' comments, ``\\`` continuations
    joined."""
    texts = [(ROOT / "README.md").read_text()] + [p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))] + \
        [p.read_text() for p in (ROOT / "configs").rglob("*.yaml")]
    lines = []
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            lines.append(line.lstrip("# ").strip())
    return lines


def test_every_checkpoint_the_docs_name_is_written_by_a_documented_fit(monkeypatch):
    """A pipeline typed as documented finds its checkpoint: each ``runs/<folder>/checkpoints`` of the README and
    the configs' comments is the run folder of some documented pretraining command (overlays add ``+<name>``)."""
    import re
    import shlex

    from wcl.cli import config_files, root_dir_of, with_run_folder

    monkeypatch.chdir(ROOT)
    lines = _documented_lines()
    named = {m.group(1) for line in lines for m in re.finditer(r"(runs/[\w.+/-]+?)/checkpoints", line)}
    written = set()
    for line in lines:
        if not line.startswith("python -m wcl fit ") or "--model.checkpoint" in line:
            continue
        args = with_run_folder(shlex.split(line, comments=True)[3:])
        if "--trainer.default_root_dir" in args:
            written.add(args[args.index("--trainer.default_root_dir") + 1].rstrip("/"))
        else:
            roots = [r for f in config_files(args) if (r := root_dir_of(f))]
            written.update(roots[-1:])
    assert "runs/quickstart" in written and "runs/cifar10_wcl+10pct+label_graph" in written
    assert {"runs/quickstart", "runs/cifar10_wcl+1pct+label_graph"} <= named  # the pattern finds what it checks
    assert named <= written, f"checkpoints the docs name but no documented fit writes: {sorted(named - written)}"


def test_plain_lines_say_which_epoch_a_kept_knn_value_is_from(capsys):
    from types import SimpleNamespace

    import torch

    from wcl.callbacks import OnlineKnn, PlainProgress

    knn = OnlineKnn(k=5, every_n_epochs=3)
    knn.last_epoch = 2
    trainer = SimpleNamespace(current_epoch=4, max_epochs=6, is_global_zero=True, callbacks=[knn],
                              callback_metrics={"val/knn_top1": torch.tensor(0.31), "val/online_linear_top1":
                                                torch.tensor(0.29)})
    PlainProgress().on_train_epoch_end(trainer, None)
    line = capsys.readouterr().out
    assert line.startswith("epoch 5/6 done in ") and "val/knn_top1 0.3100 (from epoch 3)" in line
    assert "val/online_linear_top1 0.2900," not in line and "val/online_linear_top1 0.2900\n" in line
    knn.last_epoch = 4
    PlainProgress().on_train_epoch_end(trainer, None)
    assert "from epoch" not in capsys.readouterr().out


def test_rich_bar_counts_epochs_from_one_and_hides_v_num():
    from types import SimpleNamespace

    from wcl.callbacks import RichProgress

    bar = RichProgress()
    bar._trainer = SimpleNamespace(max_epochs=1)
    assert bar._get_train_description(0).strip() == "Epoch 1/1"
    bar._trainer = SimpleNamespace(max_epochs=6, loggers=[], progress_bar_metrics={"loss": 1.5})
    assert bar.get_metrics(bar._trainer, None) == {"loss": 1.5}


def test_model_table_has_no_flops_column_when_nothing_counted_them():
    import io
    import logging

    from lightning.pytorch.callbacks.model_summary import log as summary_log

    from wcl.callbacks import ModelTable

    # A handler on Lightning's own logger: earlier tests may turn its propagation to the root logger (caplog) off.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    level = summary_log.level
    summary_log.addHandler(handler)
    summary_log.setLevel(logging.INFO)
    try:
        ModelTable.summarize([("Name", ["backbone"]), ("Params", ["700 K"]), ("FLOPs", ["0"])], 965, 965, 3.8,
                             {"train": 82, "eval": 0}, 0)
    finally:
        summary_log.removeHandler(handler)
        summary_log.setLevel(level)
    text = stream.getvalue()
    assert "backbone" in text and "FLOPs" not in text and "Flops" not in text
    assert "\x1b[" not in text


@pytest.mark.slow
def test_evaluations_print_wcl_lines_and_no_noise(tmp_path, capsys, recwarn):
    """Offline kNN: rounded ``wcl:`` lines instead of Lightning's unrounded table; a linear probe (frozen backbone,
    in eval mode on purpose): no eval-mode warning, no advertisement, a throughput that says what it counts."""
    import re

    small = ["--data.train_per_class", "4", "--data.val_per_class", "2", "--data.num_workers", "0",
             "--trainer.enable_progress_bar", "false"]
    main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *small, "--trainer.max_epochs", "1",
          "--model.width", "4", "--data.batch_size", "20", "--model.knn_every_n_epochs", "0",
          "--trainer.default_root_dir", str(tmp_path / "pre")])
    ckpt = str(tmp_path / "pre" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    main(["validate", "--config", str(ROOT / "configs" / "knn" / "quickstart.yaml"), "--model.checkpoint", ckpt,
          *small, "--model.k", "5", "--trainer.default_root_dir", str(tmp_path / "knn")])
    out = capsys.readouterr().out
    assert re.search(r"^wcl: val/knn_top1 = \d\.\d{4}$", out, re.M), out
    assert not re.search(r"\d\.\d{7,}", out) and "┃" not in out
    main(["fit", "--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), "--model.checkpoint", ckpt,
          *small, "--trainer.max_epochs", "1", "--model.mode", "augment", "--data.batch_size", "10",
          "--trainer.default_root_dir", str(tmp_path / "probe")])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "each labelled training image counted once" in text
    assert "litmodels" not in text and "litlogger" not in text and "FLOPs" not in text
    assert not [w for w in recwarn if "eval mode" in str(w.message)]
    # The cached probe trains on stored features: no images/s line that would count feature rows as images.
    main(["fit", "--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), "--model.checkpoint", ckpt,
          *small, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "cached")])
    captured = capsys.readouterr()
    assert "wcl: final val/top1" in captured.out and "throughput" not in captured.out + captured.err
    # The fine-tune config as shipped (500 labelled images, 8 steps an epoch): no log_every_n_steps warning.
    recwarn.clear()
    main(["fit", "--config", str(ROOT / "configs" / "finetune" / "quickstart_10pct.yaml"), "--model.checkpoint", ckpt,
          "--data.val_per_class", "2", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "finetune")])
    assert "wcl: final val/top1" in capsys.readouterr().out
    assert not [w for w in recwarn if "log_every_n_steps" in str(w.message)]


def test_own_images_cpu_command_of_the_readme_runs(tmp_path, capsys):
    """docs/guide/own-images.md: the quickstart on an ImageFolder tree of mixed-size images, decoded to 32 px."""
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cats", "dogs"):
            (tmp_path / "mine" / split / c).mkdir(parents=True)
            for i in range(6):
                size = (40, 28) if i % 2 else (50, 64)
                arr = np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "mine" / split / c / f"{i}.jpg")
    guide = (ROOT / "docs" / "guide" / "own-images.md").read_text()
    assert "--config configs/quickstart.yaml --data.dataset imagefolder --data.root /data/mine" in guide
    main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--data.dataset", "imagefolder",
          "--data.root", str(tmp_path / "mine"), "--data.decode_size", "32",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1", "--model.width", "4",
          "--data.batch_size", "6", "--data.num_workers", "0", "--model.knn_k", "3",
          "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "wcl: final val/knn_top1 = " in out and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_first_screen_introduces_wcl_with_its_version(capsys):
    """``--help`` names wcl and its subcommands (not Lightning's tool); ``--version`` prints the versions."""
    import wcl

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out.startswith(f"wcl {wcl.__version__} (torch ")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m wcl ") and "Weakly Supervised Contrastive Learning" in out
    assert "Lightning Trainer command line tool" not in out and "--version" in out
    with pytest.raises(SystemExit):  # the class pages jsonargparse builds are named too
        main(["fit", "--model.help", "wcl.WCL"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m wcl ") and "__main__.py" not in out
    assert "(type: PositiveFloat, default: 0.1)" in " ".join(out.split())  # the constraint is on the page


@pytest.mark.slow
def test_first_screen_as_users_run_it(tmp_path):
    """``wcl``/``python -m wcl`` in a pipe: its own name and version, no hardware lines for absent devices, no note
    about Lightning's summary callbacks; ``python -m wcl.export … backbone.pt`` leaves no untracked file."""
    import os
    import shutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "wcl", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("wcl "), proc.stderr
    proc = run("fit", "--help")
    assert proc.stdout.startswith("usage: python -m wcl [options] fit") and "__main__.py" not in proc.stdout
    proc = run("fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1", "--data.train_per_class",
               "2", "--data.val_per_class", "1", "--data.batch_size", "10", "--data.num_workers", "0",
               "--model.width", "4", "--model.channels_last", "false", "--trainer.default_root_dir",
               str(tmp_path / "run"))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "wcl: fit finished" in text, text[-2000:]
    for noise in ("TPU available", "HPU available", "Trainer already configured with model summary callbacks"):
        assert noise not in text, noise
    import torch

    assert ("GPU available" in text) == torch.cuda.is_available()
    proc = run("fit", "--config", "configs/quickstart.yaml", "--config", "configs/multicrop.yaml", "--print_config")
    assert proc.returncode == 0 and "default_root_dir: runs/quickstart+multicrop" in proc.stdout, proc.stderr[-2000:]
    assert "args parameter" not in proc.stderr, proc.stderr[-2000:]  # the overlay's run folder, without a warning
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "backbone.pt"], cwd=ROOT)
        assert ignored.returncode == 0, "python -m wcl.export CKPT backbone.pt would leave an untracked file"
