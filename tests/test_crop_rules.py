"""Which neighbours a crop may be cut from (``KnnMultiCrop(rule=…)``), and crops routed by where they were cut
(``crop_losses: auto``)."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from tests.helpers import run_gloo
from wcl import WCL, WCLDataModule
from wcl.callbacks import KnnMultiCrop
from wcl.data.crops import restrict_neighbors
from wcl.losses import nt_xent_loss
from wcl.neighbors import neighbor_purity

# 0 ↔ 1 and 2 ↔ 3 are each other's first neighbours; 4 points at 0, which does not point back.
TABLE = torch.tensor([[1, 2], [0, 4], [3, 0], [2, 1], [0, 3]])


def test_all_keeps_the_table():
    assert torch.equal(restrict_neighbors(TABLE, "all"), TABLE)


def test_reciprocal_keeps_the_pairs_that_point_at_each_other():
    expected = torch.tensor([[1, 2], [0, 1], [3, 0], [2, 3], [4, 4]])
    # 0→2 stays (2 lists 0); 1→4, 3→1, 4→0, 4→3 are one-way: replaced by the sample itself
    assert torch.equal(restrict_neighbors(TABLE, "reciprocal"), expected)


def test_stable_keeps_what_the_previous_table_had_and_nothing_without_one():
    previous = torch.tensor([[2, 3], [0, 4], [1, 4], [2, 1], [3, 1]])
    expected = torch.tensor([[0, 2], [0, 4], [2, 2], [2, 1], [4, 3]])
    assert torch.equal(restrict_neighbors(TABLE, "stable", previous), expected)
    assert torch.equal(restrict_neighbors(TABLE, "stable"), torch.arange(5)[:, None].expand(5, 2))


def test_nearest_fills_every_slot_with_the_first_neighbour():
    assert torch.equal(restrict_neighbors(TABLE, "nearest"), TABLE[:, :1].repeat(1, 2))


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown neighbour rule"):
        restrict_neighbors(TABLE, "mutual")


def test_purity_of_the_kept_entries_only():
    labels = torch.tensor([0, 0, 1, 1, 1])
    kept = restrict_neighbors(TABLE, "reciprocal")
    neighbor = kept != torch.arange(5)[:, None]
    # kept neighbour entries: 0→1 (same), 0→2 (no), 1→0 (same), 2→3 (same), 2→0 (no), 3→2 (same)
    assert neighbor_purity(kept, labels, neighbor) == pytest.approx(4 / 6)
    assert neighbor_purity(TABLE, labels) == pytest.approx(5 / 10)


def _anchors_loss(z1, z2, small, owner, tau):
    """Per-anchor NT-Xent losses, written out: views against all 2B views, crops against both views."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    b = z1.shape[0]
    logits = z @ z.T / tau
    logits.fill_diagonal_(-float("inf"))
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    views = -(logits.log_softmax(1)[torch.arange(2 * b), pos])
    c = F.normalize(small.double(), dim=1) @ z.T / tau
    lp = c.log_softmax(1)
    crops = -0.5 * (lp[torch.arange(len(owner)), owner] + lp[torch.arange(len(owner)), owner + b])
    return views, crops


def test_crop_mask_drops_anchors_and_keeps_the_normalisation():
    g = torch.Generator().manual_seed(0)
    z1, z2, small = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(12, 8, generator=g)
    owner = torch.arange(6).repeat(2)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    views, crops = _anchors_loss(z1, z2, small, owner, 0.2)
    got = nt_xent_loss(z1.double(), z2.double(), 0.2, small=small.double(), small_owner=owner, small_mask=mask)
    assert got.item() == pytest.approx(((views.sum() + crops[mask].sum()) / (12 + 12)).item(), rel=1e-9)
    every = nt_xent_loss(z1, z2, 0.2, small=small, small_owner=owner, small_mask=torch.ones(12, dtype=torch.bool))
    assert torch.allclose(every, nt_xent_loss(z1, z2, 0.2, small=small, small_owner=owner))


def _masked_data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(8, 6, generator=g, dtype=torch.float64)
    small = torch.randn(2, 8, 6, generator=g, dtype=torch.float64)  # crop slot × sample × dim
    mask = torch.rand(2, 8, generator=g) < 0.5
    return x1, x2, small, mask


def _masked_loss(net, x1, x2, small, mask):
    from wcl.losses import NTXentLoss

    b = x1.shape[0]
    return NTXentLoss(0.2)(net(x1), net(x2), net(small.reshape(-1, 6)), torch.arange(b).repeat(2), mask.reshape(-1))


def _masked_worker(rank: int) -> tuple[float, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    net = DistributedDataParallel(torch.nn.Linear(6, 4).double())
    x1, x2, small, mask = _masked_data()
    rows = slice(4 * rank, 4 * rank + 4)
    loss = _masked_loss(net, x1[rows], x2[rows], small[:, rows], mask[:, rows])
    loss.backward()
    return loss.item(), net.module.weight.grad.clone()


@pytest.mark.slow
def test_crop_mask_on_two_ranks_equals_one_process():
    """Two ranks of 4 samples train like one process of 8 (loss and gradient), whatever each rank's kept crops."""
    ranks = run_gloo(_masked_worker)
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4).double()
    x1, x2, small, mask = _masked_data()
    assert mask[:, :4].sum() != mask[:, 4:].sum()  # the ranks keep different numbers of crops
    one = _masked_loss(net, x1, x2, small, mask)
    one.backward()
    assert (ranks[0][0] + ranks[1][0]) / 2 == pytest.approx(one.item(), abs=1e-10)
    for _, grad in ranks.values():
        torch.testing.assert_close(grad, net.weight.grad, rtol=1e-6, atol=1e-10)


TINY = dict(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8, weak_hidden_dim=16,
            weak_out_dim=8, optimizer="sgd", base_lr=0.05, lr_scaling="none", warmup_epochs=0, knn_every_n_epochs=0)


class _Routes(torch.nn.Module):
    """Records the crop mask the model hands to NT-Xent."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.masks = loss, []

    def forward(self, z1, z2, small=None, owner=None, mask=None):
        self.masks.append(None if mask is None else mask.clone())
        return self.loss(z1, z2, small, owner, mask)


def test_auto_routes_own_crops_to_both_losses_and_the_rule_reaches_the_table(tmp_path):
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=4, val_per_class=1, num_small_crops=2,
                       small_crop_size=16, augment_on="device", in_memory="device")
    knn = KnnMultiCrop(k=3, backend="torch", rule="reciprocal")
    model = WCL(**TINY, crop_losses="auto")
    model.nce_loss = routes = _Routes(model.nce_loss)
    trainer = Trainer(accelerator="cpu", max_epochs=2, default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[knn])
    trainer.fit(model, dm)
    first, later = routes.masks[:4], routes.masks[4:]
    assert all(m is not None and m.all() for m in first)  # epoch 0: no table yet, every crop is the sample's own
    searched = knn.searched
    assert torch.equal(knn.table.table, restrict_neighbors(searched, "reciprocal"))
    own = (knn.table.table == torch.arange(40)[:, None]).float().mean()
    share = sum(m.float().mean() for m in later) / len(later)
    assert 0 < own < 1 and share.item() == pytest.approx(own.item(), abs=0.25)
    metrics = trainer.callback_metrics
    assert 0 < metrics["multicrop/neighbor_share"] < 1 and "multicrop/kept_purity" in metrics
    state = knn.state_dict()
    assert torch.equal(state["searched"], searched)
