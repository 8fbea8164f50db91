import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from wcl import WCL, WCLDataModule
from wcl.data import Augmentations
from wcl.errors import ConfigError
from wcl.multicrop import FeatureBank, NeighborTable, knn_table, neighbor_purity

TINY = dict(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16,
            weak_out_dim=8, knn_every_n_epochs=0, optimizer="sgd", base_lr=0.05, lr_scaling="none",
            warmup_epochs=0)


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
    table = knn_table(x, 3, "torch", chunk=7)
    assert not (table == torch.arange(100)[:, None]).any()
    for i in range(100):
        assert (i + 50) % 100 in table[i].tolist()


def test_knn_k_too_large():
    with pytest.raises(ValueError, match="0 < K < dataset size"):
        knn_table(torch.randn(5, 3), 5)
    with pytest.raises(ConfigError, match="neighbors_k"):
        WCLDataModule(batch_size=4, num_workers=0, train_per_class=1, num_small_crops=1, neighbors_k=10)


def test_feature_bank_unseen_samples_point_to_themselves():
    bank = FeatureBank(10, 4)
    bank.write(torch.arange(8), torch.randn(8, 4))
    table, seconds = bank.neighbors(2)
    assert seconds >= 0
    assert table[8].tolist() == [8, 8] and table[9].tolist() == [9, 9]
    assert table[:8].max() < 8


def test_neighbor_purity():
    table = torch.tensor([[1, 2], [0, 2], [0, 1]])
    assert neighbor_purity(table, torch.tensor([0, 0, 1])) == pytest.approx(2 / 6)
    assert neighbor_purity(table, torch.tensor([-1, -1, -1])) is None


def test_table_state_round_trip():
    t = NeighborTable(6, 2)
    t.update(torch.arange(12).view(6, 2) % 6, epoch=3)
    u = NeighborTable(6, 2)
    u.load_state_dict(t.state_dict())
    assert torch.equal(u.table, t.table) and u.epoch == 3
    with pytest.raises(ValueError, match="shape"):
        u.update(torch.zeros(6, 3, dtype=torch.long), 0)


def test_crops_are_cut_from_neighbour_images():
    # No augmentation beyond a full-image resize: each crop must equal its source image, resized.
    aug = Augmentations(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0,
                        grayscale_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=3, augment=aug, num_small_crops=3,
                       small_crop_size=32, small_crop_scale=(1.0, 1.0), neighbors_k=2)
    ds = dm.train_dataset()
    assert ds[0]["table_epoch"] == -1 and ds[0]["small_source"].tolist() == [0, 0, 0]  # first_epoch: self
    n = len(ds)
    dm.neighbor_table.update(torch.stack([(torch.arange(n) + 1) % n, (torch.arange(n) + 2) % n], 1), epoch=0)
    sample = ds[5]
    assert sample["table_epoch"] == 0
    assert set(sample["small_source"].tolist()) <= {6, 7}
    for crop, src in zip(sample["small"], sample["small_source"].tolist(), strict=True):
        expected = torch.from_numpy(np.asarray(dm.splits.pretrain[src][0], dtype=np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(crop, expected, atol=1e-6, rtol=0)


def test_first_epoch_none_and_self_source():
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, num_small_crops=2, first_epoch="none")
    assert dm.train_dataset()[3]["small"] == []
    dm = WCLDataModule(batch_size=4, num_workers=0, train_per_class=2, num_small_crops=2, small_crop_source="self")
    assert dm.neighbor_table is None and dm.train_dataset()[3]["small_source"].tolist() == [3, 3]


class _Recorder(Callback):
    """Checks, in every batch of epoch e ≥ 1, that the workers used the table computed at the end of e-1."""

    def __init__(self):
        self.snapshots, self.checked = {}, 0

    def on_train_epoch_start(self, trainer, pl_module):
        table = trainer.datamodule.neighbor_table
        assert table.epoch == trainer.current_epoch - 1
        self.snapshots[trainer.current_epoch] = table.table.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        epoch = trainer.current_epoch
        assert (batch["table_epoch"] == epoch - 1).all()
        if epoch >= 1:
            rows = self.snapshots[epoch][batch["index"]]
            src = batch["small_source"]
            assert (src[:, :, None] == rows[:, None, :]).any(-1).all()
            self.checked += 1


def test_workers_see_each_new_table_and_checkpoint_keeps_it(tmp_path):
    dm = WCLDataModule(batch_size=10, num_workers=2, persistent_workers=True, train_per_class=4, val_per_class=1,
                       num_small_crops=2, small_crop_size=16, neighbors_k=3)
    rec = _Recorder()
    model = WCL(**TINY, num_classes=10)
    trainer = Trainer(accelerator="cpu", max_epochs=3, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[rec])
    trainer.fit(model, dm)
    assert rec.checked == 2 * 4  # epochs 1 and 2, 40 samples / batch 10
    assert dm.neighbor_table.epoch == 2
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    fresh = WCLDataModule(batch_size=10, num_workers=0, train_per_class=4, num_small_crops=2, neighbors_k=3)
    fresh.load_state_dict(ckpt["WCLDataModule"])
    assert torch.equal(fresh.neighbor_table.table, dm.neighbor_table.table) and fresh.neighbor_table.epoch == 2
    assert trainer.callback_metrics["multicrop/neighbor_purity"] >= 0
