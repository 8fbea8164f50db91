import torch

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
    bank, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    q = torch.randn(7, 4)
    torch.testing.assert_close(knn_predict(q, bank, labels, 3, k=200, chunk_size=2),
                               knn_predict(q, bank, labels, 3, k=5))
