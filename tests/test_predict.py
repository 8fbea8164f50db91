"""``python -m wcl predict``: one embeddings file per split, every image once in dataset order, on 1 or 2 ranks."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from wcl import WCL
from wcl.callbacks.predict import EmbeddingWriter
from wcl.cli import main

ROOT = Path(__file__).resolve().parents[1]
EMBED = str(ROOT / "configs" / "embed" / "quickstart.yaml")


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, weak_hidden_dim=16, num_classes=2)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def image_folder(root: Path, counts: dict[str, tuple[int, int]], corrupt: str | None = None) -> Path:
    """``root/{train,val}/<class>/<i>.png`` with (train, val) images per class; ``corrupt`` names a file to spoil."""
    for c, (n_train, n_val) in counts.items():
        for split, n in (("train", n_train), ("val", n_val)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.random.default_rng(hash((c, split, i)) % 2**32).integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")
    return root


def _args(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--config", EMBED, "--model.checkpoint", str(ckpt), "--data.dataset", "imagefolder",
            "--data.root", str(data), "--data.num_workers", "0", "--data.eval_batch_size", "4",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out), *extra]


def _read(folder: Path) -> tuple[np.ndarray, list[list[str]]]:
    with open(folder / "index.csv", newline="") as f:
        return np.load(folder / "embeddings.npy"), list(csv.reader(f))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    # 5 + 6 = 11 training images: not divisible by 2 ranks (a padded sampler would repeat one).
    return tiny_checkpoint(tmp / "tiny.ckpt"), image_folder(tmp / "data", {"a": (5, 2), "b": (6, 1)}), tmp


def test_predict_writes_every_split_in_dataset_order(setup, capsys):
    ckpt, data, tmp = setup
    main(_args(ckpt, data, tmp / "one", "--model.dtype", "float32"))
    out = capsys.readouterr().out
    assert "images/s" in out
    train, index = _read(tmp / "one" / "embeddings" / "train")
    assert train.shape == (11, 32) and train.dtype == np.float32
    assert np.allclose(np.linalg.norm(train, axis=1), 1, atol=1e-5)
    expected = sorted(str(p.resolve()) for p in (data / "train").rglob("*.png"))
    assert index[0] == ["row", "path", "label"]
    assert [r[1] for r in index[1:]] == expected and [r[0] for r in index[1:]] == [str(i) for i in range(11)]
    assert [r[2] for r in index[1:]] == ["0"] * 5 + ["1"] * 6
    val, _ = _read(tmp / "one" / "embeddings" / "val")
    assert val.shape == (3, 32)


@pytest.mark.slow
def test_predict_prints_plain_progress_into_a_pipe(setup, tmp_path):
    """Output to a pipe (a log file, CI) gets the plain progress lines, bar on as a user leaves it."""
    ckpt, data, _ = setup
    args = [a for a in _args(ckpt, data, tmp_path / "out", "--trainer.log_every_n_steps", "1")
            if a not in ("--trainer.enable_progress_bar", "false")]
    proc = subprocess.run([sys.executable, "-m", "wcl", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predict loader 1/2 batch 3/3" in proc.stdout and "predict loader 2/2 batch 1/1" in proc.stdout
    assert (tmp_path / "out" / "embeddings" / "val" / "embeddings.npy").is_file()


def test_predict_embeds_val_and_test_when_both_exist_raw_when_asked(setup, tmp_path, capsys):
    """An image folder with train/, val/ and test/ gets one file set each (val_per_class applies to both held-out
    folders); ``normalize false`` keeps the backbone's own scale."""
    ckpt, _, _ = setup
    data = image_folder(tmp_path / "data", {"a": (2, 3), "b": (2, 3)})
    for c, n in (("a", 4), ("b", 1)):
        (data / "test" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(data / "test" / c / f"t{i}.png")
    main(_args(ckpt, data, tmp_path / "out", "--model.dtype", "float32", "--model.normalize", "false",
               "--data.val_per_class", "2"))
    out = capsys.readouterr().out
    assert all(f"wcl: {split}: " in out for split in ("train", "val", "test"))  # one throughput line per split
    rows = {split: _read(tmp_path / "out" / "embeddings" / split) for split in ("train", "val", "test")}
    assert {split: x.shape[0] for split, (x, _) in rows.items()} == {"train": 4, "val": 4, "test": 3}
    assert [Path(r[1]).name for r in rows["test"][1][1:]] == ["t0.png", "t1.png", "t0.png"]
    assert not np.allclose(np.linalg.norm(rows["train"][0], axis=1), 1, atol=1e-3)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_rows_of_one_rank(setup, capsys):
    ckpt, data, tmp = setup
    if not (tmp / "one" / "embeddings" / "train").is_dir():
        main(_args(ckpt, data, tmp / "one", "--model.dtype", "float32"))
    proc = subprocess.run([sys.executable, "-m", "wcl", *_args(ckpt, data, tmp / "two", "--model.dtype", "float32"),
                           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val"):
        one, index_one = _read(tmp / "one" / "embeddings" / split)
        two, index_two = _read(tmp / "two" / "embeddings" / split)
        assert index_two == index_one  # the same rows, once each, in dataset order
        np.testing.assert_allclose(two, one, atol=1e-5)
    assert not list((tmp / "two").rglob(".shard-*"))


def test_merge_drops_the_repeats_of_a_padded_sampler(tmp_path):
    """A padded DistributedSampler gives rank 1 sample 0 again: the merge keeps each dataset index once, and reads
    only its own run's shards (another run writing into the same folder keeps its own)."""
    feats = np.arange(10, dtype=np.float16).reshape(5, 2)
    np.savez(tmp_path / ".shard-mine-0.npz", index=np.array([0, 2, 4]), features=feats[[0, 2, 4]], labels=np.zeros(3))
    np.savez(tmp_path / ".shard-mine-1.npz", index=np.array([1, 3, 0]), features=feats[[1, 3, 0]], labels=np.zeros(3))
    np.savez(tmp_path / ".shard-other-0.npz", index=np.array([5]), features=feats[[0]] + 9, labels=np.zeros(1))
    writer = EmbeddingWriter(dtype="float16")
    writer._run = "mine"
    writer._merge(SimpleNamespace(datamodule=None), tmp_path, "train", None, 1.0)
    assert np.array_equal(np.load(tmp_path / "embeddings.npy"), feats)
    assert len(list(csv.reader(open(tmp_path / "index.csv")))) == 6
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".shard-other-0.npz"]  # no temporary file left


def test_skip_corrupt_leaves_the_image_out(setup, tmp_path, capsys):
    ckpt, _, _ = setup
    data = image_folder(tmp_path / "data", {"a": (3, 1), "b": (3, 1)}, corrupt="train/a/1.png")
    main(_args(ckpt, data, tmp_path / "out", "--data.skip_corrupt", "true"))
    err = capsys.readouterr().err
    assert "1 train images could not be decoded" in err and "train/a/1.png" in err
    x, index = _read(tmp_path / "out" / "embeddings" / "train")
    assert x.shape[0] == 5 and not any(r[1].endswith("a/1.png") for r in index[1:])


def _fails(capsys, args: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("wcl: error:") and needle in lines[0], lines


def test_bad_input_ends_in_one_line(setup, tmp_path, capsys):
    ckpt, data, _ = setup
    junk = tmp_path / "junk" / "train" / "x"
    junk.mkdir(parents=True)
    (junk / "notes.txt").write_text("not an image")
    _fails(capsys, _args(ckpt, tmp_path / "junk", tmp_path / "o1"), "cannot read the image folder")
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "nobb.ckpt")
    _fails(capsys, _args(tmp_path / "nobb.ckpt", data, tmp_path / "o2"), "no backbone weights")
    corrupt = image_folder(tmp_path / "bad", {"a": (2, 1), "b": (2, 1)}, corrupt="train/b/0.png")
    _fails(capsys, _args(ckpt, corrupt, tmp_path / "o3"), "train/b/0.png")
    _fails(capsys, [*_args(ckpt, data, tmp_path / "o4"), "--ckpt_path", str(ckpt)], "--model.checkpoint")


def test_a_folder_holds_the_embeddings_of_one_checkpoint_and_one_data_set(setup, tmp_path, capsys):
    """embedding.json names the checkpoint by its content; a predict of another checkpoint, or of other images, into
    a folder that holds embeddings stops before it embeds anything and names both checkpoints; the same predict
    again replaces its own rows; --model.overwrite true replaces another's, and no split of the old rows stays."""
    ckpt, data, _ = setup
    out = tmp_path / "out"
    main(_args(ckpt, data, out))
    main(_args(ckpt, data, out))  # the same checkpoint and images again: no question asked
    meta = json.loads((out / "embeddings" / "train" / "embedding.json").read_text())
    assert meta["checkpoint_file"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["checkpoint_file"]["bytes"] == ckpt.stat().st_size
    rows = (out / "embeddings" / "train" / "embeddings.npy").read_bytes()
    capsys.readouterr()

    other = tiny_checkpoint(tmp_path / "other.ckpt", seed=1)
    _fails(capsys, _args(other, data, out), "holds the embeddings of another checkpoint")
    with pytest.raises(SystemExit):
        main(_args(other, data, out))
    line = capsys.readouterr().err.strip()
    assert str(ckpt.resolve()) in line and str(other) in line and meta["checkpoint_file"]["sha256"][:12] in line
    data2 = image_folder(tmp_path / "data2", {"a": (2, 1), "b": (2, 1)})
    shutil.rmtree(data2 / "val")  # train/ only
    _fails(capsys, _args(ckpt, data2, out), "other images")
    assert (out / "embeddings" / "train" / "embeddings.npy").read_bytes() == rows  # untouched

    main([*_args(ckpt, data2, out), "--model.overwrite", "true"])
    assert "replacing the embeddings of other images" in capsys.readouterr().out
    assert sorted(p.parent.name for p in (out / "embeddings").glob("*/embeddings.npy")) == ["train"]  # no old val/
    assert np.load(out / "embeddings" / "train" / "embeddings.npy").shape[0] == 4
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".shard-")]


def test_a_predict_writing_into_a_folder_holds_it(setup, tmp_path, capsys):
    import fcntl

    ckpt, data, _ = setup
    root = tmp_path / "out" / "embeddings"
    root.mkdir(parents=True)
    with open(root / ".wcl-predict.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        _fails(capsys, _args(ckpt, data, tmp_path / "out"), "another predict is writing into")
    main(_args(ckpt, data, tmp_path / "out"))  # free again
    assert (root / "val" / "embeddings.npy").is_file()
