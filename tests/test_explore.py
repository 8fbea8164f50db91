"""``python -m wcl.explore``: weak-label clusters of a whole set, their scores, duplicates, queries, pictures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wcl import WCL
from wcl.explore import components, duplicates, main, neighbors, nmi, purity
from wcl.graph import weak_labels


def test_components_equal_the_training_weak_labels():
    x = torch.randn(500, 16)
    _, idx = neighbors(x.numpy(), 1)
    assert np.array_equal(components(idx[:, 0]), weak_labels(x).numpy())
    _, idx = neighbors(x.numpy(), 1, exact_max=100, nprobe=10_000)  # IVF, every list probed
    assert np.array_equal(components(idx[:, 0]), weak_labels(x).numpy())


def test_purity_and_nmi_by_hand():  # NMI: torchmetrics', checked against the formula
    pred, true = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 1])
    assert purity(pred, true) == pytest.approx(5 / 6)  # majorities 2 + 2 + 1 of 6
    ln = math.log
    mi = 1 / 3 * ln(2) + 1 / 6 * ln(2 / 3) + 1 / 3 * ln(4 / 3) + 1 / 6 * ln(2)
    h_pred = -(1 / 3 * ln(1 / 3) + 1 / 2 * ln(1 / 2) + 1 / 6 * ln(1 / 6))
    assert nmi(pred, true) == pytest.approx(mi / ((h_pred + ln(2)) / 2))
    assert nmi(true, true) == pytest.approx(1.0) and purity(np.arange(6), true) == 1.0


def test_duplicates_are_found_once_each():
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x[7] = x[3] + 1e-3
    sim, idx = neighbors(x / np.linalg.norm(x, axis=1, keepdims=True), 3)
    pairs = duplicates(sim, idx, 0.99)
    assert [(a, b) for a, b, _ in pairs] == [(3, 7)] and pairs[0][2] > 0.99


def _split(folder: Path, n: int = 40, ckpt: Path | None = None) -> Path:
    """A predict-like folder: n rows of 2 classes, each with a 12-px image file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) + 6 * np.eye(8)[labels]  # class c around axis c
    np.save(folder / "embeddings.npy", x.astype(np.float16))
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label"])
        for i in range(n):
            p = folder / "img" / f"{i}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(p)
            w.writerow([i, p, labels[i]])
    meta = {"classes": ["a", "b"], "checkpoint": str(ckpt) if ckpt else None,
            "transform": {"crop_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "embedding.json").write_text(json.dumps(meta))
    return folder


def test_explore_writes_every_output(tmp_path, capsys):
    torch.manual_seed(0)
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, weak_hidden_dim=16, num_classes=2)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / "m.ckpt")
    folder = _split(tmp_path / "val", ckpt=tmp_path / "m.ckpt")
    # The query rows were embedded by another model here (random 8-D rows), so only shapes are checked for it.
    np.save(folder / "embeddings.npy", np.random.default_rng(0).normal(size=(40, 32)).astype(np.float16))
    main([str(folder), "--query", str(folder / "img" / "3.png"), "--k", "4", "--min-size", "3"])
    out = capsys.readouterr().out
    for name in ("clusters.csv", "duplicates.csv", "query.csv", "query.png", "map.png", "clusters.png"):
        assert (folder / name).is_file() and name in out, name
    rows = list(csv.DictReader(open(folder / "clusters.csv")))
    assert len(rows) == 40 and all(int(r["cluster"]) == -1 or int(r["size"]) >= 3 for r in rows)
    assert len(list(csv.DictReader(open(folder / "query.csv")))) == 4
    summary = json.loads((folder / "explore.json").read_text())
    assert {"purity", "nmi", "kmeans_purity", "kmeans_nmi"} <= summary.keys()


def test_clusters_score_against_labels(tmp_path, capsys):
    folder = _split(tmp_path / "s")  # two well separated classes
    main([str(folder), "--no-pictures"])
    summary = json.loads((folder / "explore.json").read_text())
    assert summary["purity"] > 0.95 and 0 < summary["nmi"] <= 1
    assert "purity" in capsys.readouterr().out


def _fails(capsys, args: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m wcl.explore: error:") and needle in lines[0], lines


def test_bad_input_ends_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, [str(tmp_path / "empty")], "no embeddings.npy")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (4, 4)).save(pictures / "a.png")
    _fails(capsys, [str(pictures)], "no embeddings.npy")
    split = _split(tmp_path / "emb" / "val")
    _fails(capsys, [str(tmp_path / "emb")], "pass one of them")
    (tmp_path / "notes.txt").write_text("hello")
    _fails(capsys, [str(split), "--no-pictures", "--query", str(tmp_path / "notes.txt")], "is not an image")
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "nobb.ckpt")
    meta = json.loads((split / "embedding.json").read_text())
    (split / "embedding.json").write_text(json.dumps({**meta, "checkpoint": str(tmp_path / "nobb.ckpt")}))
    _fails(capsys, [str(split), "--no-pictures", "--query", str(split / "img" / "0.png")], "no backbone weights")


def test_an_option_out_of_range_is_one_line_naming_it_and_its_range(tmp_path, capsys):
    split = str(_split(tmp_path / "s"))
    _fails(capsys, [split, "--k", "0"], "error: --k must be an int >= 1, got 0")
    _fails(capsys, [split, "--per-row", "x"], "error: --per-row must be an int >= 1, got 'x'")
    _fails(capsys, [split, "--dup-threshold", "1.5"], "error: --dup-threshold must be a cosine in [-1, 1], got 1.5")
    _fails(capsys, [split, "--dup-threshold", "nan"], "got nan")
    _fails(capsys, [split, "--bogus"], "unrecognized arguments: --bogus (`python -m wcl.explore --help` lists")
    assert not (tmp_path / "s" / "clusters.csv").exists()


def test_umap_map_calls_umap_learn_and_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    """``--map umap`` hands the rows to umap-learn (a fake module here: the extra is not in [dev]) and draws what it
    returns; without umap-learn it is one line naming the extra."""
    import sys
    import types

    folder = _split(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "umap", None)  # as when umap-learn is not installed
    _fails(capsys, [str(folder), "--map", "umap"], "pip install 'wcl[umap]'")
    calls = []

    class UMAP:
        def __init__(self, **kwargs) -> None:
            calls.append(kwargs)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            calls.append(x.shape)
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    main([str(folder), "--map", "umap", "--seed", "3"])
    assert calls[0] == {"n_components": 2, "metric": "cosine", "random_state": 3}
    n = len(list(csv.DictReader(open(folder / "clusters.csv"))))
    assert calls[1][0] == n and (folder / "map.png").is_file()


def _model_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, weak_hidden_dim=16, num_classes=2)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_bad_rows_a_bad_out_and_a_bad_query_are_one_line_before_any_work(tmp_path, capsys):
    """Each of these is one line before the clustering (not a scipy traceback, a SIGFPE after clusters.csv, a
    FileExistsError or a late query error), and nothing is written."""
    split = _split(tmp_path / "nan")
    x = np.load(split / "embeddings.npy")
    x[5, 2] = np.nan
    np.save(split / "embeddings.npy", x)
    _fails(capsys, [str(split)], "1 row(s) with NaN or inf values (row 5")
    empty = _split(tmp_path / "nx0")
    np.save(empty / "embeddings.npy", np.zeros((40, 0), np.float16))
    _fails(capsys, [str(empty)], "shape (40, 0)")
    split = _split(tmp_path / "ok")
    (tmp_path / "a_file").write_text("")
    _fails(capsys, [str(split), "--out", str(tmp_path / "a_file")], "is a file, not a folder")
    _fails(capsys, [str(split), "--out", str(tmp_path / "a_file" / "sub")], "cannot be created")
    _fails(capsys, [str(split), "--query", str(tmp_path / "missing.png")], "does not exist")
    assert not (split / "clusters.csv").exists() and not (tmp_path / "nan" / "clusters.csv").exists()


def test_a_query_needs_the_checkpoint_that_wrote_the_rows(tmp_path, capsys):
    """embedding.json records the checkpoint's identity; a query after the checkpoint changed (a fit that went on
    writes a new last.ckpt at the same path) names both and stops before any work."""
    from wcl.files import file_identity

    ckpt = _model_checkpoint(tmp_path / "last.ckpt")
    split = _split(tmp_path / "val", ckpt=ckpt)
    np.save(split / "embeddings.npy", np.random.default_rng(0).normal(size=(40, 32)).astype(np.float16))
    meta = json.loads((split / "embedding.json").read_text())
    (split / "embedding.json").write_text(json.dumps({**meta, "checkpoint_file": file_identity(ckpt)}))
    query = [str(split), "--no-pictures", "--query", str(split / "img" / "3.png"), "--k", "3"]
    main(query)
    assert (split / "query.csv").is_file()
    (split / "query.csv").unlink()
    (split / "clusters.csv").unlink()
    sha = json.loads((split / "embedding.json").read_text())["checkpoint_file"]["sha256"]
    _model_checkpoint(ckpt, seed=1)  # the fit went on
    with pytest.raises(SystemExit) as exc:
        main(query)
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "the checkpoint changed since predict wrote" in line and sha[:12] in line
    assert file_identity(ckpt)["sha256"][:12] in line and line.count(str(ckpt)) == 2
    assert not (split / "clusters.csv").exists() and not (split / "query.csv").exists()
