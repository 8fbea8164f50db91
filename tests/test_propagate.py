"""Label propagation (``wcl.eval.propagate``): the graph, the solve against a dense reference, the evaluation."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from wcl import WCLDataModule
from wcl.errors import ConfigError
from wcl.eval.propagate import PropagationEval, affinity, label_distribution, propagate


def _clusters(n_per: int = 30, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, 8, generator=g)
    x = torch.cat([c + torch.randn(n_per, 8, generator=g) for c in centres])
    return x, torch.arange(classes).repeat_interleave(n_per)


def _dense_affinity(x: torch.Tensor, k: int, gamma: float) -> torch.Tensor:
    xn = F.normalize(x.double(), dim=1)
    s = xn @ xn.T
    s.fill_diagonal_(-float("inf"))
    top = s.topk(k, dim=1)
    a = torch.zeros_like(s).scatter_(1, top.indices, top.values.clamp(min=0).pow(gamma))
    w = a + a.T
    d = w.sum(1).rsqrt()
    return d[:, None] * w * d[None, :]


def test_affinity_is_the_symmetric_normalised_knn_graph():
    x, _ = _clusters()
    s = affinity(x, k=5, gamma=3.0).to_dense().double()
    torch.testing.assert_close(s, _dense_affinity(x, 5, 3.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, s.T)


def test_propagation_equals_the_dense_solution():
    x, y = _clusters()
    labels = torch.full_like(y, -1)
    labels[[0, 1, 30, 60, 61, 62]] = y[[0, 1, 30, 60, 61, 62]]
    s = affinity(x, k=6)
    z = propagate(s, labels, 3, alpha=0.9, iters=200)
    dense = _dense_affinity(x, 6, 3.0)
    onehot = torch.zeros(90, 3, dtype=torch.float64)
    onehot[labels >= 0, labels[labels >= 0]] = 1
    onehot /= onehot.sum(0, keepdim=True)
    ref = torch.linalg.solve(torch.eye(90, dtype=torch.float64) - 0.9 * dense, onehot)
    torch.testing.assert_close(z.double(), ref, rtol=1e-3, atol=1e-5)
    assert (z.argmax(1) == y).float().mean() > 0.95  # three separated clusters from two labels or fewer each


def test_label_distribution_confidence():
    p, conf = label_distribution(torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 3.0]]))
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(conf, torch.tensor([1.0, 0.0, 0.0, 1.0]))


def test_evaluation_runs_and_refuses_bad_arguments(tmp_path):
    from tests.test_predict import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    model = PropagationEval(str(ckpt), num_classes=10, graph_k=5, k=10)
    for data, needle in (({"label_fraction": 0.5}, "data.bank masked"), ({"bank": "masked"}, "label_fraction")):
        with pytest.raises(ConfigError, match=needle):
            trainer.validate(model, WCLDataModule(batch_size=10, num_workers=0, train_per_class=6, val_per_class=2,
                                                  **data), verbose=False)
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=6, val_per_class=2, label_fraction=0.5,
                       bank="masked")
    out = trainer.validate(model, dm, verbose=False)
    assert 0 <= out[0]["val/propagation_top1"] <= 1
    with pytest.raises(ConfigError, match="alpha"):
        PropagationEval(str(ckpt), alpha=1.0)


@pytest.mark.parametrize("in_memory", [False, True])
def test_masked_bank_is_every_training_image_with_the_unknown_labels_hidden(in_memory):
    dm = WCLDataModule(batch_size=10, num_workers=0, train_per_class=6, val_per_class=2, label_fraction=0.5,
                       bank="masked", in_memory=in_memory)
    dm.setup("validate")
    rows = [(int(i), int(y)) for b in dm.eval_loader("bank") for i, y in zip(b["index"], b["label"], strict=True)]
    index, labels = torch.tensor(rows).T
    true = dm.source.labels("bank")
    assert sorted(index.tolist()) == list(range(60))
    assert torch.equal(labels == -1, ~dm.known[index])
    assert torch.equal(labels[labels >= 0], true[index][labels >= 0])
