"""KNN multi-crop: the neighbour search, the crop source, and the KnnMultiCrop callback's lifecycle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from wcl import WCL, WCLDataModule
from wcl.callbacks import FeatureBank, KnnMultiCrop
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


def test_knn_torch_on_the_first_queries_equals_those_rows_of_the_full_search():
    from wcl.neighbors import _knn_torch  # benchmarks/knn_table.py times ImageNet scale this way

    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
    full = _knn_torch(x, 4, torch.device("cpu"), chunk=32, db_chunk=64)
    part = _knn_torch(x, 4, torch.device("cpu"), chunk=32, db_chunk=64, num_queries=70)
    assert part.shape == (70, 5)
    assert torch.equal(part, full[:70])


def test_knn_k_out_of_range():
    with pytest.raises(ValueError, match="0 < K < dataset size"):
        knn_table(torch.randn(5, 3), 5)
    with pytest.raises(ConfigError, match="KnnMultiCrop k must be an int > 0"):
        KnnMultiCrop(k=0)


def test_feature_bank_unseen_samples_point_to_themselves():
    bank = FeatureBank(10, 4)
    bank.write(torch.arange(8), torch.randn(8, 4))
    table, seconds = bank.neighbors(2)
    assert seconds >= 0
    assert table[8].tolist() == [8, 8] and table[9].tolist() == [9, 9]
    assert table[:8].max() < 8
    copy = FeatureBank(10, 4)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.neighbors(2)[0], table)


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
    assert state["bank"]["seen"].all() and state["bank"]["features"].dtype == torch.float16
    assert trainer.callback_metrics["multicrop/neighbor_purity"] >= 0


def test_callback_is_idle_without_neighbour_crops(tmp_path):
    """The one-key ablation ``--data.small_crop_source self`` keeps working with the multicrop overlay."""
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=2, num_small_crops=2, small_crop_source="self")
    knn = KnnMultiCrop()
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, limit_val_batches=0, callbacks=[knn])
    trainer.fit(WCL(**TINY, knn_every_n_epochs=0), dm)
    assert not knn.active and knn.table is None and knn.bank is None
