import pytest
import torch

from tests.helpers import run_gloo
from wcl.eval.knn import knn_predict


def test_weighted_knn_votes():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_predict(torch.tensor([[1.0, 0.05], [0.1, 1.0]]), bank, labels, num_classes=2, k=2)
    assert scores.argmax(1).tolist() == [0, 1]
    # k=1 → only the nearest votes, with weight exp(cos/T).
    s1 = knn_predict(torch.tensor([[0.0, 1.0]]), bank, labels, num_classes=2, k=1, temperature=0.5)
    torch.testing.assert_close(s1, torch.tensor([[0.0, float(torch.exp(torch.tensor(2.0)))]]))


def test_k_larger_than_bank_and_chunks():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 1, 0])
    q = torch.randn(7, 4, generator=g)
    # votes are summed in top-k order, which chunking may change: equal up to float32 summation order
    torch.testing.assert_close(knn_predict(q, bank, labels, 3, k=200, chunk_size=2),
                               knn_predict(q, bank, labels, 3, k=5), rtol=1e-5, atol=0)


def _sharded_worker(rank: int) -> dict[str, float]:
    from wcl.eval.knn import ShardedKnn

    bank, labels, queries, qlabels = _knn_data()
    scorer = ShardedKnn(k=7, temperature=0.2, chunk_size=4)
    scorer.add_bank(bank[rank::2], labels[rank::2])  # each rank holds half of the bank
    # queries split unevenly, with a repeat (as a padded distributed sampler does)
    mine = torch.arange(0, 6) if rank == 0 else torch.tensor([6, 7, 8, 9, 0])
    scorer.add_queries(mine, queries[mine], qlabels[mine])
    return {k: float(v) for k, v in scorer.accuracy(num_classes=5).items()}


def _knn_data():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(40, 6, generator=g), torch.randint(0, 5, (40,), generator=g)
    queries = bank[:10] + 0.3 * torch.randn(10, 6, generator=g)
    return bank, labels, queries, labels[:10]


@pytest.mark.slow
def test_bank_sharded_over_two_ranks_equals_one_process():
    ranks = run_gloo(_sharded_worker)
    bank, labels, queries, qlabels = _knn_data()
    scores = knn_predict(queries, bank, labels, 5, k=7, temperature=0.2)
    top1 = float((scores.argmax(1) == qlabels).float().mean())
    top5 = float((scores.topk(5, dim=1).indices == qlabels[:, None]).any(1).float().mean())
    assert ranks[0] == ranks[1] == {"top1": top1, "top5": top5}
