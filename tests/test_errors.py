"""The catalogue of bad inputs: each ends in exit code 2 and one line ``wcl: error: …`` that names the key or the
path at fault, with no traceback and before any training step."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wcl.cli import main
from wcl.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
LINEAR = str(ROOT / "configs" / "linear" / "quickstart.yaml")
TINY = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.train_per_class", "2",
        "--data.val_per_class", "1", "--data.batch_size", "10", "--data.num_workers", "0", "--model.width", "4"]
# Runs that train: channels_last at width 4 can crash natively on some CPUs.
SAFE = ["--model.channels_last", "false"]


def _folder(root: Path, corrupt: bool = False, sizes: tuple[int, ...] = (12,)) -> Path:
    for c in ("a", "b"):
        for split in ("train", "val"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                size = sizes[i % len(sizes)]
                arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "0.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained")
    main(["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(out)])
    return out / "checkpoints" / "last.ckpt"


def _fails(capsys, args: list[str], *needles: str, entry=main) -> str:
    with pytest.raises(SystemExit) as exc:
        entry(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(("wcl: error:", "wcl.export: error:")), err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


CASES = {  # name: (extra fit arguments for the quickstart config, words the message must contain)
    "unknown model key": (["--model.widht", "8"], ["model.widht", "wcl.WCL", "did you mean model.width?"]),
    "unknown data key": (["--data.batch_sise", "8"], ["data.batch_sise", "did you mean data.batch_size?"]),
    "unknown augment key": (["--data.augment.crop_sise", "8"], ["data.augment.crop_sise",
                                                                "did you mean data.augment.crop_size?"]),
    "abbreviated key": (["--trainer.max_epoch", "1"], ["trainer.max_epoch", "did you mean trainer.max_epochs?"]),
    "wrong type": (["--data.batch_size", "many"], ["batch_size", "many"]),
    "unknown backbone": (["--model.backbone", "resnet7"], ["backbone", "resnet7"]),
    "temperature 0": (["--model.temperature", "0"], ["model.temperature"]),
    "weak temperature < 0": (["--model.weak_temperature", "-1"], ["model.weak_temperature"]),
    "negative weak weight": (["--model.weak_weight", "-1"], ["model.weak_weight"]),
    "base lr 0": (["--model.base_lr", "0"], ["model.base_lr"]),
    "knn_k 0": (["--model.knn_k", "0"], ["model.knn_k"]),
    "knn_k < 0": (["--model.knn_k", "-5"], ["model.knn_k"]),
    "knn temperature 0": (["--model.knn_temperature", "0"], ["model.knn_temperature"]),
    "crops in weak loss without it": (["--model.weak_weight", "0", "--model.crop_losses", "weak"], ["crop_losses"]),
    "crop size 0": (["--data.augment.crop_size", "0"], ["augment.crop_size"]),
    "probability > 1": (["--data.augment.blur_prob", "1.5"], ["augment.blur_prob"]),
    "crop scale reversed": (["--data.augment.crop_scale", "[0.5, 0.2]"], ["augment.crop_scale"]),
    "workers < 0": (["--data.num_workers", "-1"], ["data.num_workers"]),
    "batch size 1": (["--data.batch_size", "1"], ["data.batch_size"]),
    "eval batch size 0": (["--data.eval_batch_size", "0"], ["data.eval_batch_size"]),
    "train_per_class 0": (["--data.train_per_class", "0"], ["data.train_per_class"]),
    "batch larger than the data": (["--data.batch_size", "64"], ["data.batch_size"]),
    "images on device without device views": (["--data.in_memory", "device", "--data.augment_on", "cpu"],
                                              ["augment_on"]),
    "neighbour crops without their callback": (["--data.num_small_crops", "2"], ["KnnMultiCrop"]),
    "multicrop k larger than the data": (["--config", str(ROOT / "configs" / "multicrop.yaml"),
                                          "--trainer.callbacks.k", "500"], ["k=500"]),
    "missing dataset root": (["--data.dataset", "cifar10", "--data.root", "/nonexistent/cifar"],
                             ["/nonexistent/cifar", "does not exist"]),
    "dataset without a root": (["--data.dataset", "cifar10"], ["--data.root"]),
    "gpu without a gpu": (["--trainer.accelerator", "gpu"], ["trainer.accelerator gpu", "auto"]),
    "cuda without a gpu": (["--trainer.accelerator", "cuda"], ["trainer.accelerator cuda", "auto"]),
    "endless run": (["--trainer.max_epochs", "-1"], ["trainer.max_epochs -1", "--trainer.max_steps"]),
    # every int and float argument of the model is range-checked where it is defined, naming model.KEY
    "width 0": (["--model.width", "0"], ["model.width"]),
    "proj_layers 0": (["--model.proj_layers", "0"], ["model.proj_layers"]),
    "weak_layers 0": (["--model.weak_layers", "0"], ["model.weak_layers"]),
    "proj_hidden_dim 0": (["--model.proj_hidden_dim", "0"], ["model.proj_hidden_dim"]),
    "proj_out_dim 0": (["--model.proj_out_dim", "0"], ["model.proj_out_dim"]),
    "weak_out_dim 0": (["--model.weak_out_dim", "0"], ["model.weak_out_dim"]),
    "momentum 1": (["--model.momentum", "1"], ["model.momentum"]),
    "weight decay < 0": (["--model.weight_decay", "-0.1"], ["model.weight_decay"]),
    "lars eta 0": (["--model.lars_eta", "0"], ["model.lars_eta"]),
    "warmup epochs < 0": (["--model.warmup_epochs", "-1"], ["model.warmup_epochs"]),
    "weak warmup < 0": (["--model.weak_warmup_epochs", "-1"], ["model.weak_warmup_epochs"]),
    "min lr factor > 1": (["--model.min_lr_factor", "1.5"], ["model.min_lr_factor"]),
    "online lr 0": (["--model.online_lr", "0"], ["model.online_lr"]),
    "knn every < 0": (["--model.knn_every_n_epochs", "-1"], ["model.knn_every_n_epochs"]),
    # ... and of the data module and its augmentations, naming data.KEY
    "val_per_class 0": (["--data.val_per_class", "0"], ["data.val_per_class"]),
    "decode size 0": (["--data.decode_size", "0"], ["data.decode_size"]),
    "eval resize 0": (["--data.eval_resize", "0"], ["data.eval_resize"]),
    "augment warmup < 0": (["--data.augment_warmup_epochs", "-1"], ["data.augment_warmup_epochs"]),
    "small crop size 0": (["--data.num_small_crops", "2", "--data.small_crop_source", "self",
                           "--data.small_crop_size", "0"], ["data.small_crop_size"]),
    "small crops < 0": (["--data.num_small_crops", "-1"], ["data.num_small_crops"]),
    "small crop scale > 1": (["--data.num_small_crops", "2", "--data.small_crop_source", "self",
                              "--data.small_crop_scale", "[0.5, 1.5]"], ["data.small_crop_scale"]),
    "crop ratio reversed": (["--data.augment.crop_ratio", "[1.5, 0.5]"], ["augment.crop_ratio"]),
    "flip probability < 0": (["--data.augment.hflip_prob", "-0.1"], ["augment.hflip_prob"]),
    "jitter strength < 0": (["--data.augment.jitter_strength", "-1"], ["augment.jitter_strength"]),
    "std 0": (["--data.augment.std", "[0.2, 0, 0.2]"], ["augment.std"]),
}

# The trainer's keys and the seed: range and type, before anything is built, the key named with what it takes.
TRAINER_CASES = {
    "seed < 0": (["--seed_everything", "-5"], ["seed_everything", "-5", "[0, 4294967295]"]),
    "seed too large": (["--seed_everything", "99999999999"], ["seed_everything", "4294967295"]),
    "seed not a number": (["--seed_everything", "x"], ["seed_everything", "got x"]),
    "accumulate 0": (["--trainer.accumulate_grad_batches", "0"], ["trainer.accumulate_grad_batches", ">= 1"]),
    "max_epochs < -1": (["--trainer.max_epochs", "-5"], ["trainer.max_epochs", ">= 1", "-5"]),
    "max_epochs 0": (["--trainer.max_epochs", "0"], ["trainer.max_epochs", ">= 1"]),
    "max_epochs not an int": (["--trainer.max_epochs", "x"], ["trainer.max_epochs", "an int", "x"]),
    "max_steps < -1": (["--trainer.max_steps", "-5"], ["trainer.max_steps", ">= 1"]),
    "max_steps 0": (["--trainer.max_steps", "0"], ["trainer.max_steps", ">= 1"]),
    "min_epochs < 0": (["--trainer.min_epochs", "-1"], ["trainer.min_epochs", ">= 0"]),
    "limit_train_batches < 0": (["--trainer.limit_train_batches", "-1"], ["trainer.limit_train_batches", "[0, 1]"]),
    "limit_train_batches 0": (["--trainer.limit_train_batches", "0"], ["trainer.limit_train_batches 0",
                                                                       "trains nothing"]),
    "limit_val_batches > 1": (["--trainer.limit_val_batches", "1.5"], ["trainer.limit_val_batches", "1.5"]),
    "limit_val_batches not a number": (["--trainer.limit_val_batches", "many"], ["trainer.limit_val_batches"]),
    "val_check_interval 0": (["--trainer.val_check_interval", "0"], ["trainer.val_check_interval", "(0, 1]"]),
    "val_check_interval > 1": (["--trainer.val_check_interval", "1.5"], ["trainer.val_check_interval"]),
    "check_val_every_n_epoch 0": (["--trainer.check_val_every_n_epoch", "0"], ["trainer.check_val_every_n_epoch"]),
    "log_every_n_steps < 0": (["--trainer.log_every_n_steps", "-1"], ["trainer.log_every_n_steps", ">= 1"]),
    "log_every_n_steps 0": (["--trainer.log_every_n_steps", "0"], ["trainer.log_every_n_steps", "no training"]),
    "sanity steps < -1": (["--trainer.num_sanity_val_steps", "-5"], ["trainer.num_sanity_val_steps"]),
    "devices 0": (["--trainer.devices", "0"], ["trainer.devices", "'0'", ">= 1"]),
    "devices < -1": (["--trainer.devices", "-2"], ["trainer.devices"]),
    "devices empty list": (["--trainer.devices", "[]"], ["trainer.devices"]),
    "num_nodes 0": (["--trainer.num_nodes", "0"], ["trainer.num_nodes", ">= 1"]),
    "precision unknown": (["--trainer.precision", "foo"], ["trainer.precision", "bf16-mixed", "foo"]),
    "gradient clip < 0": (["--trainer.gradient_clip_val", "-1"], ["trainer.gradient_clip_val", ">= 0"]),
    "gradient clip algorithm": (["--trainer.gradient_clip_algorithm", "foo"], ["trainer.gradient_clip_algorithm",
                                                                              "norm or value"]),
    "fast_dev_run < 0": (["--trainer.fast_dev_run", "-1"], ["trainer.fast_dev_run"]),
    "overfit_batches < 0": (["--trainer.overfit_batches", "-1"], ["trainer.overfit_batches"]),
    "max_time malformed": (["--trainer.max_time", "abc"], ["trainer.max_time", "DD:HH:MM:SS"]),
    "max_time 0": (["--trainer.max_time", "00:00:00:00"], ["trainer.max_time", "longer than zero"]),
    "min_epochs above max_epochs": (["--trainer.max_epochs", "1", "--trainer.min_epochs", "3"],
                                    ["trainer.min_epochs 3", "trainer.max_epochs 1"]),
    "min_steps above max_steps": (["--trainer.max_steps", "2", "--trainer.min_steps", "5"],
                                  ["trainer.min_steps 5", "trainer.max_steps 2"]),
    "device indices on the cpu": (["--trainer.accelerator", "cpu", "--trainer.devices", "[0]"],
                                  ["trainer.devices [0]", "CPU accelerator", "int > 0"]),
    "strategy unknown": (["--trainer.strategy", "foo"], ["trainer.strategy foo", "ddp"]),
    "reload every < 0": (["--trainer.reload_dataloaders_every_n_epochs", "-1"],
                         ["trainer.reload_dataloaders_every_n_epochs"]),
}


@pytest.mark.parametrize("case", sorted(TRAINER_CASES))
def test_bad_trainer_or_seed_argument(case, capsys, tmp_path):
    extra, needles = TRAINER_CASES[case]
    record = tmp_path / "batches.log"
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
                    "--trainer.callbacks+=tests.helpers.RecordBatches", f"--trainer.callbacks.path={record}", *extra],
           *needles)
    assert not record.exists() and not (tmp_path / "run" / "checkpoints").exists()  # nothing ran


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_trainer_keys_are_checked_for_every_subcommand(subcommand, capsys, tmp_path):
    config = {"validate": "knn", "predict": "embed"}[subcommand]
    _fails(capsys, [subcommand, "--config", str(ROOT / "configs" / config / "quickstart.yaml"), "--model.checkpoint",
                    str(tmp_path / "none.ckpt"), "--trainer.devices", "0"], "trainer.devices")


def test_val_check_interval_beyond_the_epoch(capsys, tmp_path):
    """Known wrong only once the training loader is built (2 batches here): Lightning's ValueError as one line."""
    record = tmp_path / "batches.log"
    _fails(capsys, ["fit", "--config", QUICK, *TINY, *SAFE, "--trainer.default_root_dir", str(tmp_path / "run"),
                    "--trainer.callbacks+=tests.helpers.RecordBatches", f"--trainer.callbacks.path={record}",
                    "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "1000"],
           "trainer.val_check_interval 1000", "than the 2 training batches", "--trainer.check_val_every_n_epoch null")
    assert not record.exists() and not list((tmp_path / "run").rglob("*.ckpt"))  # no step ran, nothing saved


@pytest.mark.parametrize("case", ["validate of 0 batches", "predict of 0 batches"])
def test_evaluation_of_no_batch(case, capsys, tmp_path, pretrained):
    """validate and predict with a limit of 0 batches would do nothing: refused as fit refuses
    limit_train_batches 0."""
    args, needles = {
        "validate of 0 batches": (["validate", "--config", str(ROOT / "configs" / "knn" / "quickstart.yaml"),
                                   "--trainer.limit_val_batches", "0"], ["trainer.limit_val_batches 0", "nothing"]),
        "predict of 0 batches": (["predict", "--config", str(ROOT / "configs" / "embed" / "quickstart.yaml"),
                                  "--trainer.limit_predict_batches", "0"],
                                 ["trainer.limit_predict_batches 0", "nothing"]),
    }[case]
    _fails(capsys, [*args, "--model.checkpoint", str(pretrained), "--data.num_workers", "0",
                    "--trainer.default_root_dir", str(tmp_path)], *needles)
    assert not (tmp_path / "embeddings").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_fit_argument(case, capsys, tmp_path):
    extra, needles = CASES[case]
    if "without a gpu" in case and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path), *extra], *needles)


def test_output_folder_under_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path / "file" / "run")],
           str(tmp_path / "file"))


def test_root_without_train_folder(capsys, tmp_path):
    (tmp_path / "val").mkdir()
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "imagefolder", "--data.root", str(tmp_path)],
           "train/")


def test_empty_class_folder(capsys, tmp_path):
    (_folder(tmp_path) / "train" / "empty").mkdir()
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "imagefolder", "--data.root", str(tmp_path)],
           "empty class folders")


def test_corrupt_image_in_a_worker_is_one_line_naming_the_file(capsys, tmp_path):
    _folder(tmp_path, corrupt=True)
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "imagefolder", "--data.root", str(tmp_path),
                    "--data.num_workers", "2", "--data.batch_size", "4", "--data.augment.crop_size", "8",
                    "--trainer.default_root_dir", str(tmp_path / "run")], "0.png", "cannot decode")


def test_mixed_sizes_in_memory_need_decode_size(capsys, tmp_path):
    _folder(tmp_path, sizes=(12, 16))
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "imagefolder", "--data.root", str(tmp_path),
                    "--data.batch_size", "4", "--data.in_memory", "true", "--data.augment_on", "device",
                    "--trainer.default_root_dir", str(tmp_path / "run")], "decode_size")


@pytest.mark.parametrize("case", ["fraction > 1", "fraction and subset file", "missing subset file",
                                  "missing checkpoint", "not a checkpoint", "batch size 0"])
def test_bad_probe_argument(case, capsys, tmp_path, pretrained):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    extra, needle = {
        "fraction > 1": (["--data.label_fraction", "1.5"], "label_fraction"),
        "fraction and subset file": (["--data.label_fraction", "0.1", "--data.subset_file", "x.txt"], "subset_file"),
        "missing subset file": (["--data.subset_file", str(tmp_path / "none.txt")], "none.txt"),
        "missing checkpoint": (["--model.checkpoint", str(tmp_path / "none.ckpt")], "none.ckpt"),
        "not a checkpoint": (["--model.checkpoint", str(junk)], "junk.ckpt"),
        "batch size 0": (["--data.batch_size", "0"], "data.batch_size"),
    }[case]
    args = ["fit", "--config", LINEAR, "--model.checkpoint", str(pretrained), "--data.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path), *extra]
    _fails(capsys, args, needle)


def test_ckpt_path_of_a_pretraining_run_on_a_probe_config(capsys, tmp_path, pretrained):
    """A probe config given --ckpt_path PRETRAIN.ckpt (a wcl.WCL run) stops: --ckpt_path resumes the same run
    only, and the line says to pass the file as --model.checkpoint."""
    _fails(capsys, ["fit", "--config", LINEAR, "--model.checkpoint", str(pretrained), "--ckpt_path", str(pretrained),
                    "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path)],
           "--model.checkpoint", "wcl.WCL")


def test_ckpt_path_with_changed_model_arguments(capsys, tmp_path, pretrained):
    line = _fails(capsys, ["fit", "--config", QUICK, *TINY, "--model.width", "8", "--model.weak_weight", "0",
                           "--ckpt_path", str(pretrained), "--trainer.default_root_dir", str(tmp_path)],
                  "--resume_with_changes")
    assert "model.width: 4 in the checkpoint, 8 here" in line and "model.weak_weight" in line


def test_ckpt_path_that_does_not_exist(capsys, tmp_path):
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--ckpt_path", str(tmp_path / "none.ckpt"),
                    "--trainer.default_root_dir", str(tmp_path)], "none.ckpt")


def test_ckpt_path_that_is_a_folder(capsys, tmp_path):
    """A folder names no checkpoint: the line says so and gives the one in it."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--ckpt_path", str(folder), "--trainer.default_root_dir",
                    str(tmp_path / "run")], f"--ckpt_path {folder} is a folder", f"--ckpt_path {folder / 'last.ckpt'}")


def test_export_refuses_its_input_and_bad_outputs(capsys, tmp_path, pretrained):
    _fails(capsys, [str(pretrained), str(pretrained)], "is the checkpoint being exported", entry=export_main)
    _fails(capsys, [str(pretrained), str(tmp_path)], "is a folder", entry=export_main)
    (tmp_path / "file").write_text("x")
    _fails(capsys, [str(pretrained), str(tmp_path / "file" / "out.pt")], "is a file, not a folder",
           entry=export_main)
    assert torch.load(pretrained, weights_only=False)["state_dict"]  # the checkpoint is untouched


def test_export_over_an_existing_file_needs_overwrite(capsys, tmp_path, pretrained):
    """An existing output, here another run's checkpoint, is replaced only with --overwrite."""
    other = tmp_path / "other_run.ckpt"
    other.write_bytes(pretrained.read_bytes())
    _fails(capsys, [str(pretrained), str(other)], str(other), "already exists", "--overwrite", entry=export_main)
    assert other.read_bytes() == pretrained.read_bytes()


def test_export_into_a_file_named_like_the_folder(capsys, tmp_path, pretrained):
    """OUT/ (a trailing slash) is a folder that gets backbone.pt; a file of that name is in the way."""
    (tmp_path / "newdir").write_text("x")
    _fails(capsys, [str(pretrained), f"{tmp_path / 'newdir'}/"], str(tmp_path / "newdir"), "is a file, not a folder",
           entry=export_main)


def test_download_without_a_network(capsys, tmp_path, monkeypatch):
    import urllib.error

    from torchvision import datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.CIFAR10, "__init__", offline)
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "cifar10", "--data.root", str(tmp_path / "c"),
                    "--data.download", "true"], "could not download cifar10", "--data.download")


def test_checkpointing_off_from_the_command_line(capsys, tmp_path):
    main(["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_checkpointing", "false"])
    assert "wcl: fit finished" in capsys.readouterr().out and not (tmp_path / "checkpoints").exists()


def test_offline_knn_reports_one_metric_per_name(capsys, tmp_path, pretrained):
    main(["validate", "--config", str(ROOT / "configs" / "knn" / "quickstart.yaml"), "--model.checkpoint",
          str(pretrained), "--data.num_workers", "0", "--data.train_per_class", "10", "--data.val_per_class", "5"])
    out = capsys.readouterr().out
    assert out.count("val/knn_top1") == 1 and "dataloader_idx" not in out


@pytest.mark.slow
def test_second_fit_into_a_running_folder_names_the_running_process(capsys, tmp_path):
    """Two fits into one folder would both write checkpoints/last.ckpt; the second stops before its first step."""
    marker, log = tmp_path / "waiting", tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "wcl", "fit", "--config", QUICK, *TINY, *SAFE,
                                  "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                                  "--trainer.default_root_dir",
                                  str(tmp_path / "run"), "--trainer.callbacks+=tests.helpers.WaitAtStep",
                                  "--trainer.callbacks.step=1", f"--trainer.callbacks.marker={marker}"],
                                 cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), log.read_text()[-2000:]
        _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path / "run")],
               "another fit is running", str(tmp_path / "run"), f"pid {first.pid}")
    finally:
        marker.unlink(missing_ok=True)
        try:
            first.wait(timeout=600)
        except subprocess.TimeoutExpired:
            first.kill()
            raise
    assert first.returncode == 0, log.read_text()[-2000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_fresh_fit_into_a_folder_with_checkpoints_refuses_until_told(capsys, tmp_path):
    args = ["fit", "--config", QUICK, *TINY, *SAFE, "--trainer.limit_val_batches", "0", "--trainer.default_root_dir",
            str(tmp_path)]
    main([*args, "--trainer.max_steps", "2"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    _fails(capsys, [*args, "--trainer.max_steps", "1"], str(tmp_path / "checkpoints"), "last.ckpt",
           "--ckpt_path last", "--overwrite true")
    assert last.read_bytes() == before  # the earlier, longer run is intact
    main([*args, "--trainer.max_steps", "1", "--overwrite", "true"])
    assert torch.load(last, weights_only=False)["global_step"] == 1


@pytest.mark.parametrize("case", ["empty", "truncated", "not a checkpoint"])
def test_ckpt_path_that_is_not_a_whole_checkpoint(case, capsys, tmp_path, pretrained):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes({"empty": b"", "truncated": pretrained.read_bytes()[:5000],
                     "not a checkpoint": b"not a checkpoint"}[case])
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--ckpt_path", str(bad), "--trainer.default_root_dir",
                    str(tmp_path / "run")], f"--ckpt_path {bad} cannot be read")


def test_mixed_sizes_on_device_from_files_need_decode_size(capsys, tmp_path):
    _folder(tmp_path, sizes=(12, 16))
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--data.dataset", "imagefolder", "--data.root", str(tmp_path),
                    "--data.batch_size", "4", "--data.in_memory", "false", "--data.augment_on", "device",
                    "--trainer.default_root_dir", str(tmp_path / "run")], "decode_size", "augment_on")


def test_validate_of_a_pretraining_config_needs_weights(capsys, tmp_path):
    _fails(capsys, ["validate", "--config", QUICK, *TINY[2:], "--trainer.default_root_dir", str(tmp_path)],
           "--ckpt_path", "configs/knn", "--model.checkpoint")
    _fails(capsys, ["validate", "--config", QUICK, *TINY[2:], "--trainer.default_root_dir", str(tmp_path),
                    "--ckpt_path", "last"], "--ckpt_path last", "no checkpoint")


@pytest.mark.parametrize("case", ["file named lightning_logs", "file named checkpoints", "under /proc"])
def test_unusable_output_path_stops_before_the_first_step(case, capsys, tmp_path):
    run = tmp_path / "run"
    if case == "under /proc":
        run, needle = Path("/proc/self/wcl_run"), "/proc/self/wcl_run"
    else:
        run.mkdir()
        name = case.split()[-1]
        (run / name).write_text("in the way")
        needle = str(run / name)
    record = tmp_path / "batches.log"
    _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(run),
                    "--trainer.callbacks+=tests.helpers.RecordBatches", f"--trainer.callbacks.path={record}"], needle)
    assert not record.exists()  # no training step ran


@pytest.mark.parametrize("case", ["syntax", "tab"])
def test_yaml_error_names_the_file_and_line(case, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text({"syntax": "model:\n  init_args:\n    width: [8\n",
                    "tab": "model:\n  init_args:\n\twidth: 8\n"}[case])
    line = _fails(capsys, ["fit", "--config", QUICK, "--config", str(bad), *TINY], str(bad), "line ")
    assert case != "tab" or "tabs" in line


def test_overlay_before_its_base_says_to_swap_them(capsys, tmp_path):
    overlay = str(ROOT / "configs" / "multicrop.yaml")
    _fails(capsys, ["fit", "--config", overlay, "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path)],
           "overlay", f"--config {QUICK} before --config {overlay}")


def test_later_config_of_another_model_class(capsys, tmp_path, pretrained):
    """A probe recipe after a pretraining recipe: jsonargparse would keep wcl.WCL's arguments of the same names
    (lr_scaling, backbone, the data's augment) under wcl.LinearProbe, a mixed run."""
    _fails(capsys, ["fit", "--config", QUICK, "--config", LINEAR, "--model.checkpoint", str(pretrained),
                    "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path)],
           "model.class_path from wcl.WCL", "to wcl.LinearProbe", f"--config {LINEAR} without {QUICK}")
    assert not list(tmp_path.iterdir())


def test_settings_that_quietly_waste_a_run_get_one_warning_line_each(capsys, tmp_path):
    """Not errors: the run goes on; each setting gets one `wcl: warning:` line naming its key."""
    for split in ("train",):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / "data" / split / c / f"{i}.png")
    main(["fit", "--config", QUICK, *TINY, *SAFE, "--data.dataset", "imagefolder", "--data.root",
          str(tmp_path / "data"),
          "--data.batch_size", "4", "--data.augment.crop_size", "8", "--model.warmup_epochs", "3",
          "--model.knn_every_n_epochs", "0", "--trainer.default_root_dir", str(tmp_path / "run")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wcl: warning:")]
    assert len(warnings) == 3, warnings
    assert "model.warmup_epochs 3" in warnings[0] and "(1 epoch)" in warnings[0]
    assert "model.knn_every_n_epochs is 0" in warnings[1] and "off" in warnings[1]
    assert "no val/" in warnings[2] and str(tmp_path / "data") in warnings[2]


@pytest.mark.parametrize("section", ["trainer", "model"])
def test_unknown_key_in_a_config_file_names_the_file(section, capsys, tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text({"trainer": "trainer:\n  max_epoch: 1\n",
                        "model": "model:\n  init_args:\n    temprature: 0.2\n"}[section])
    key, close = {"trainer": ("trainer.max_epoch", "trainer.max_epochs"),
                  "model": ("model.temprature", "model.temperature")}[section]
    _fails(capsys, ["fit", "--config", QUICK, "--config", str(overlay), *TINY], f"{key} (set in {overlay})",
           f"did you mean {close}?")


def test_config_that_is_a_folder_or_missing(capsys, tmp_path):
    _fails(capsys, ["fit", "--config", str(ROOT / "configs" / "linear"), *TINY], "is a folder",
           f"--config {ROOT / 'configs' / 'linear' / 'cifar10.yaml'}")
    _fails(capsys, ["fit", "--config", str(tmp_path / "nope.yaml"), *TINY], f"the config {tmp_path / 'nope.yaml'} "
           "does not exist", "wcl:quickstart")


def test_config_given_as_text_on_the_command_line_is_read(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", QUICK, "--config", "trainer: {max_epochs: 3}", "--print_config"])
    assert exc.value.code in (0, None)
    assert "max_epochs: 3" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["", "# only a comment\n", "- a\n- list\n"], ids=["empty", "comment", "list"])
def test_config_file_without_keys_names_its_file(content, capsys, tmp_path):
    empty = tmp_path / "mine.yaml"
    empty.write_text(content)
    _fails(capsys, ["fit", "--config", QUICK, "--config", str(empty), *TINY], f"the config {empty}", "key: value")


def test_multicrop_overlay_given_twice_is_one_line(capsys, tmp_path):
    overlay = str(ROOT / "configs" / "multicrop.yaml")
    _fails(capsys, ["fit", "--config", QUICK, "--config", overlay, "--config", overlay, *TINY,
                    "--trainer.default_root_dir", str(tmp_path)], "KnnMultiCrop twice", "--config once")
    _fails(capsys, ["fit", "--config", QUICK, "--config", overlay, *TINY, "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.callbacks+=wcl.callbacks.KnnMultiCrop"], "KnnMultiCrop twice")


def test_ckpt_path_last_without_last_ckpt_among_other_checkpoints_refuses(capsys, tmp_path, pretrained):
    """Starting from scratch there would rotate the folder's epoch checkpoints away."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    kept = folder / "epoch=0-step=2.ckpt"
    kept.write_bytes(pretrained.read_bytes())
    line = _fails(capsys, ["fit", "--config", QUICK, *TINY, "--trainer.default_root_dir", str(tmp_path),
                           "--ckpt_path", "last"], str(folder), "no last.ckpt", "epoch=0-step=2.ckpt",
                  f"--ckpt_path {folder}/NAME.ckpt", "--overwrite true")
    assert kept.read_bytes() == pretrained.read_bytes() and sorted(p.name for p in folder.iterdir()) == [kept.name]
    assert line.count("wcl: error") == 1


@pytest.mark.parametrize("change", [["--model.width", "8"], ["--model.backbone", "resnet34"],
                                    ["--model.weak_weight", "0"], ["--model.optimizer", "adamw"]],
                         ids=["width", "backbone", "no phi", "optimizer"])
def test_resume_with_changes_refuses_another_network(change, capsys, tmp_path, pretrained):
    line = _fails(capsys, ["fit", "--config", QUICK, *TINY, *change, "--ckpt_path", str(pretrained),
                           "--resume_with_changes", "true", "--trainer.default_root_dir", str(tmp_path)],
                  f"model.{change[0].split('.')[-1]}", "--resume_with_changes only continues", "optimizer-level")
    assert "load_state_dict" not in line


def test_resume_with_changes_continues_with_another_learning_rate(capsys, tmp_path, pretrained):
    main(["fit", "--config", QUICK, *TINY, *SAFE, "--trainer.max_epochs", "2", "--model.base_lr", "0.1",
          "--ckpt_path", str(pretrained), "--resume_with_changes", "true", "--trainer.limit_val_batches", "0",
          "--trainer.default_root_dir", str(tmp_path)])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 1 and saved["hyper_parameters"]["base_lr"] == 0.1
