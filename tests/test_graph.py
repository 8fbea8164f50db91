import pytest
import torch
import torch.nn.functional as F

from wcl.graph import components_scipy, components_torch, nearest_neighbors, weak_label_stats, weak_labels


def _brute_force(v: torch.Tensor) -> list[int]:
    """Union-find over the undirected 1-NN graph, found by explicit loops; numbered by smallest member."""
    x = F.normalize(v.double(), dim=1)
    n = x.shape[0]
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i in range(n):
        best, best_j = -float("inf"), -1
        for j in range(n):
            if j != i and float(x[i] @ x[j]) > best + 1e-12:
                best, best_j = float(x[i] @ x[j]), j
        ra, rb = find(i), find(best_j)
        parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    order = {r: k for k, r in enumerate(sorted(set(roots)))}
    return [order[r] for r in roots]


@pytest.mark.parametrize("n,d,seed", [(2, 3, 0), (5, 2, 1), (17, 4, 2), (64, 8, 3), (200, 16, 4)])
@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_weak_labels_match_brute_force(n, d, seed, backend):
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    assert weak_labels(v, backend=backend).tolist() == _brute_force(v)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_duplicated_samples_are_deterministic_and_grouped(backend):
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(5))
    v = torch.cat([base, base, base[:2]])  # exact duplicates: ties everywhere
    first = weak_labels(v, backend=backend)
    for _ in range(3):
        assert torch.equal(weak_labels(v.clone(), backend=backend), first)
    # A duplicate is a nearest neighbour at similarity 1, so each sample shares a component with a copy.
    for i in range(6):
        assert first[i] == first[i + 6]


def test_ties_go_to_lowest_index():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_neighbors(v).tolist()[:3] == [1, 0, 0]


def test_torch_backend_equals_scipy_on_many_sizes():
    g = torch.Generator().manual_seed(6)
    for n in [2, 3, 4, 7, 31, 32, 33, 100, 257, 1000]:
        for dup in (False, True):
            v = torch.randn(n, 6, generator=g)
            if dup and n >= 4:
                v[n // 2 :] = v[: n - n // 2].clone()
            nn_idx = nearest_neighbors(v)
            assert torch.equal(components_torch(nn_idx), components_scipy(nn_idx)), (n, dup)


def test_weak_labels_scale_invariant_and_chunking():
    v = torch.randn(300, 8, generator=torch.Generator().manual_seed(7))
    ref = weak_labels(v)
    assert torch.equal(weak_labels(v * 13.0), ref)
    assert torch.equal(weak_labels(v, chunk_size=7), ref)


def test_single_sample_is_an_error():
    with pytest.raises(ValueError, match="at least 2 samples"):
        weak_labels(torch.randn(1, 4))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown graph backend"):
        weak_labels(torch.randn(4, 4), backend="networkx")


def test_stats_purity_counts_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1])
    true = torch.tensor([3, 3, 4, 5, 5])
    s = weak_label_stats(labels, true)
    # Weak-positive ordered pairs: component 0 has 6, component 1 has 2 → 8; same class: (0,1),(1,0),(3,4),(4,3).
    assert s["purity"].item() == pytest.approx(4 / 8)
    assert s["num_components"].item() == 2 and s["mean_component_size"].item() == pytest.approx(2.5)
    assert "purity" not in weak_label_stats(labels, torch.tensor([3, -1, 4, 5, 5]))
