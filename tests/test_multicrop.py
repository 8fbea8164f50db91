"""KNN multi-crop: the neighbour search, the crop source, and the KnnMultiCrop callback's lifecycle."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from tests.helpers import whole_image_table
from wcl import WCL, WCLDataModule
from wcl.callbacks import FeatureBank, KnnMultiCrop
from wcl.callbacks.multicrop import neighbor_table
from wcl.data import Augmentations
from wcl.data.crops import NeighborTable
from wcl.errors import ConfigError
from wcl.neighbors import knn_table, neighbor_purity

TINY = dict(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16,
            weak_out_dim=8, optimizer="sgd", base_lr=0.05, lr_scaling="none", warmup_epochs=0)


def _brute(x, k):
    xn = F.normalize(x.double(), dim=1)
    s = xn @ xn.T
    s.fill_diagonal_(-float("inf"))
    return s.topk(k, dim=1).indices


@pytest.mark.parametrize("backend", ["faiss", "torch", "faiss_ivf"])
def test_knn_table_exact_self_excluded(backend):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    table = knn_table(x, 6, backend, nprobe=10_000)  # nprobe ≥ nlist: IVF searches every list, so exact
    assert table.shape == (400, 6)
    assert not (table == torch.arange(400)[:, None]).any()
    assert torch.equal(table, _brute(x, 6))


def test_knn_table_torch_chunks_and_duplicates():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, x])  # every sample has an exact duplicate
    table = knn_table(x.half(), 3, "torch", chunk=7)
    assert not (table == torch.arange(100)[:, None]).any()
    for i in range(100):
        assert (i + 50) % 100 in table[i].tolist()


def test_knn_k_out_of_range():
    with pytest.raises(ValueError, match="0 < K < dataset size"):
        knn_table(torch.randn(5, 3), 5)
    with pytest.raises(ConfigError, match="KnnMultiCrop k must be an int > 0"):
        KnnMultiCrop(k=0)


def _unit_rows(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    """n unit rows of four ±0.5 entries: every inner product is a multiple of 0.25, exact in float16 and float32 in
    any order of summation, so equal similarities (ties) are frequent and exact."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d)
    for i in range(n):
        cols = torch.randperm(d, generator=g)[:4]
        x[i, cols] = 0.5 * (torch.randint(0, 2, (4,), generator=g) * 2 - 1).float()
    return x


def _reference_table(x: torch.Tensor, k: int, seen: torch.Tensor) -> torch.Tensor:
    """Each seen row's k best other seen rows by (inner product descending, index ascending), by a full stable sort
    (one process, every feature at hand)."""
    s = (x.double() @ x.double().T).fill_diagonal_(-float("inf"))
    unseen = torch.ones(len(x), dtype=torch.bool)
    unseen[seen] = False
    s[:, unseen] = -float("inf")
    return s.argsort(dim=1, descending=True, stable=True)[seen, :k]


def test_neighbor_table_is_exact_with_ties_and_keeps_the_rows_of_unseen_samples():
    x = _unit_rows(60)
    seen = torch.randperm(60, generator=torch.Generator().manual_seed(1))[:50]  # written in a shuffled order
    bank = FeatureBank(16, capacity=4)  # grows while written
    for part in seen.split(7):  # batches of 7, the last one partial
        bank.write(part, x[part])
    previous = torch.arange(60 * 3, dtype=torch.int32).view(60, 3) % 60
    table = neighbor_table(*bank.rows(), previous, 3, step_queries=16, chunk=5)
    assert table.dtype == torch.int32 and table.shape == (60, 3)
    unseen = torch.ones(60, dtype=torch.bool)
    unseen[seen] = False
    assert torch.equal(table[unseen], previous[unseen])
    assert torch.equal(table[seen].long(), _reference_table(x, 3, seen))
    few = FeatureBank(16)
    few.write(seen[:3], x[seen[:3]])  # no more features than neighbours: the table stays as it was
    assert torch.equal(neighbor_table(*few.rows(), previous, 3), previous)


def test_neighbor_purity():
    table = torch.tensor([[1, 2], [0, 2], [0, 1]])
    assert neighbor_purity(table, torch.tensor([0, 0, 1])) == pytest.approx(2 / 6)
    assert neighbor_purity(table, torch.tensor([-1, -1, -1])) is None


def test_table_update_checks_shape():
    t = NeighborTable(6, 2)
    t.update(torch.arange(12).view(6, 2) % 6, epoch=3)
    assert t.epoch == 3 and torch.equal(t.on(torch.device("cpu")), t.table)
    with pytest.raises(ValueError, match="shape"):
        t.update(torch.zeros(6, 3, dtype=torch.long), 0)


def test_crops_are_cut_from_neighbour_images():
    # No augmentation beyond a full-image resize: each crop must equal its source image, resized.
    aug = Augmentations(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0,
                        grayscale_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=3, augment=aug, num_small_crops=3,
                       small_crop_size=32, small_crop_scale=(1.0, 1.0))
    table = NeighborTable(30, 2)
    dm.crops.attach(table)
    ds = dm.train_dataloader().dataset
    assert ds[0]["crop_source"].tolist() == [0, 0, 0]  # first_epoch: self, before any table
    n = len(ds)
    table.update(torch.stack([(torch.arange(n) + 1) % n, (torch.arange(n) + 2) % n], 1), epoch=0)
    sample = ds[5]
    assert set(sample["crop_source"].tolist()) <= {6, 7}
    for crop, src in zip(sample["small"], sample["crop_source"].tolist(), strict=True):
        expected = torch.from_numpy(np.asarray(dm.source.pretrain[src][0], dtype=np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(crop, expected, atol=1e-6, rtol=0)


def test_first_epoch_none_and_self_source():
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, num_small_crops=2, first_epoch="none")
    dm.crops.attach(NeighborTable(20, 2))
    assert dm.train_dataloader().dataset[3]["small"] == []
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, num_small_crops=2, small_crop_source="self")
    assert not dm.crops.needs_table and dm.train_dataloader().dataset[3]["crop_source"].tolist() == [3, 3]


class _Recorder(Callback):
    """Checks, in every batch of epoch e ≥ 1, that the crops come from the table computed at the end of e-1."""

    def __init__(self):
        self.snapshots, self.checked = {}, 0

    def on_train_epoch_start(self, trainer, pl_module):
        table = next(cb for cb in trainer.callbacks if isinstance(cb, KnnMultiCrop)).table
        assert table.epoch == trainer.current_epoch - 1
        self.snapshots[trainer.current_epoch] = table.table.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch >= 1:
            rows = self.snapshots[trainer.current_epoch][batch["index"]]
            assert (batch["crop_source"][:, :, None] == rows[:, None, :]).any(-1).all()
            self.checked += 1


@pytest.mark.parametrize("path", [dict(num_workers=2, persistent_workers=True),
                                  dict(num_workers=0, augment_on="device", in_memory="device")])
def test_each_epoch_uses_the_new_table_and_checkpoints_keep_it(tmp_path, path):
    dm = WCLDataModule(batch_size=10, train_per_class=4, val_per_class=1, num_small_crops=2, small_crop_size=16,
                       **path)
    rec, knn = _Recorder(), KnnMultiCrop(k=3, backend="torch")
    trainer = Trainer(accelerator="cpu", max_epochs=3, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[rec, knn])
    trainer.fit(WCL(**TINY, num_classes=10, knn_every_n_epochs=0), dm)
    assert rec.checked == 2 * 4  # epochs 1 and 2, 40 samples / batch 10
    assert knn.table.epoch == 2
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("KnnMultiCrop"))
    assert torch.equal(state["table"], knn.table.table) and state["epoch"] == 2
    assert state["table"].dtype == torch.int32
    bank = state["bank"]  # saved after the epoch's table: its features were used up
    assert bank["epoch"] == 2 and bank["rows"] == 0 and bank["features"].shape == (0, 32)  # ResNet-18 width 4
    assert trainer.callback_metrics["multicrop/neighbor_purity"] >= 0


class _TrainMode(Callback):
    """Counts the training batches that find the module in training mode."""

    def __init__(self) -> None:
        self.training = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.training.append(pl_module.training and pl_module.backbone.training)


@pytest.mark.parametrize("path", [pytest.param(dict(num_workers=0), marks=pytest.mark.slow),
                                  dict(num_workers=0, augment_on="device", in_memory="device")])
def test_eval_features_search_the_whole_images(tmp_path, path):
    dm = WCLDataModule(batch_size=10, train_per_class=4, val_per_class=1, num_small_crops=2, small_crop_size=16,
                       **path)
    mode, knn = _TrainMode(), KnnMultiCrop(k=3, backend="torch", features="eval")
    trainer = Trainer(accelerator="cpu", max_epochs=2, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[mode, knn])
    model = WCL(**TINY, knn_every_n_epochs=0)
    trainer.fit(model, dm)
    assert mode.training == [True] * 8  # the pass after epoch 0 hands the module back in training mode
    # the last table is searched with the final weights: the same as the whole images' table computed here
    assert torch.equal(knn.searched, whole_image_table(model, dm, 3))
    assert trainer.callback_metrics["multicrop/eval_pass_seconds"] > 0


def test_callback_is_idle_without_neighbour_crops(tmp_path):
    """The one-key ablation ``--data.small_crop_source self`` keeps working with the multicrop overlay."""
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=2, num_small_crops=2, small_crop_source="self")
    knn = KnnMultiCrop()
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, limit_val_batches=0, callbacks=[knn])
    trainer.fit(WCL(**TINY, knn_every_n_epochs=0), dm)
    assert not knn.active and knn.table is None and knn.bank is None


def _drive(rank: int, world: int, stop_at: int | None = None, save_bank: bool = True) -> torch.Tensor:
    """One epoch of KnnMultiCrop on synthetic features of 41 samples, 39 of them drawn (two dropped, as
    ``drop_last`` drops them), split over ``world`` ranks unevenly (20 / 19) in batches of 4 with a partial last
    one; with ``stop_at`` the callback is saved before that batch and a fresh one resumes from the state."""
    x = _unit_rows(41, seed=5)
    drawn = torch.randperm(41, generator=torch.Generator().manual_seed(2))[:39]
    batches = list(drawn[rank::world].split(4))
    trainer = SimpleNamespace(current_epoch=0, is_global_zero=rank == 0, num_training_batches=len(batches))
    module = SimpleNamespace(backbone=SimpleNamespace(out_dim=16), device=torch.device("cpu"),
                             log=lambda *args, **kwargs: None, log_dict=lambda *args, **kwargs: None)

    def fresh(state: dict | None = None) -> KnnMultiCrop:
        cb = KnnMultiCrop(k=3, save_bank=save_bank)
        cb.table = NeighborTable(41, 3)
        if state is not None:
            cb.load_state_dict(state)
        cb.on_train_start(trainer, module)
        return cb

    cb = fresh()
    for i, index in enumerate(batches):
        if i == stop_at:
            cb = fresh(cb.state_dict())
        cb.on_train_batch_end(trainer, module, {"h1": x[index], "index": index}, None, i)
    assert cb.table.epoch == 0
    return cb.table.table.clone()


@pytest.mark.slow
def test_two_ranks_build_the_table_of_one_process_also_after_a_resume():
    from tests.helpers import run_gloo

    one = _drive(0, 1)
    drawn = torch.randperm(41, generator=torch.Generator().manual_seed(2))[:39]
    assert torch.equal(one[drawn].long(), _reference_table(_unit_rows(41, seed=5), 3, drawn))
    undrawn = [i for i in range(41) if i not in drawn.tolist()]
    assert one[undrawn].tolist() == [[i] * 3 for i in undrawn]  # no table before: they keep themselves
    for stop_at in (None, 2):
        tables = run_gloo(_drive, 2, stop_at)
        assert torch.equal(tables[0], one) and torch.equal(tables[1], one), stop_at


def test_a_resume_without_the_bank_says_what_it_changes(capsys):
    table = _drive(0, 1, stop_at=2, save_bank=False)  # batches 0 and 1 (8 samples) trained before the stop
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wcl: warning:")]
    assert len(lines) == 1 and "the 8 samples trained before the stop keep their previous neighbours" in lines[0]
    drawn = torch.randperm(41, generator=torch.Generator().manual_seed(2))[:39]
    before, after = drawn[:8], drawn[8:]
    assert table[before].tolist() == [[i] * 3 for i in before.tolist()]
    assert torch.equal(table[after].long(), _reference_table(_unit_rows(41, seed=5), 3, after))
