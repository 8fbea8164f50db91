import pytest
import torch
import torch.nn.functional as F

from wcl.graph import (
    components_scipy,
    components_torch,
    label_constraints,
    nearest_neighbors,
    weak_label_stats,
    weak_labels,
)


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


# ---------------------------------------------------------------- known labels in the graph (label_graph)
def _union_find_reference(nn_index: list[int], labels: list[int], merge: bool = True) -> list[int]:
    """The constrained graph by its definition, with explicit loops: every 1-NN edge except those between labelled
    samples of different classes, plus (``merge``) an edge between every two labelled samples of one class."""
    n = len(nn_index)
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    def union(a, b):
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)

    for i, j in enumerate(nn_index):
        if labels[i] < 0 or labels[j] < 0 or labels[i] == labels[j]:
            union(i, j)
        for k in range(n):
            if merge and labels[i] >= 0 and labels[k] == labels[i]:
                union(i, k)
    roots = [find(i) for i in range(n)]
    order = {r: k for k, r in enumerate(sorted(set(roots)))}
    return [order[r] for r in roots]


def test_label_constraints_hand_built():
    #   0 → 1 (same class 0: kept), 1 → 0, 2 → 3 (class 1 vs class 0: dropped), 3 → 2 (dropped),
    #   4 → 5 and 5 → 4 (unlabelled: kept), 6 → 4 (class 1 → unlabelled: kept); 2 and 6 share class 1.
    nn_index = torch.tensor([1, 0, 3, 2, 5, 4, 4])
    labels = torch.tensor([0, 0, 1, 0, -1, -1, 1])
    kept, link = label_constraints(nn_index, labels)
    assert kept.tolist() == [1, 0, 2, 3, 5, 4, 4]
    assert link.tolist() == [0, 0, 2, 0, 4, 5, 2]
    # {0, 1, 3} class 0 (3 through its class link); {2, 6, 4, 5}: 2–6 by class 1, 6–4 by its edge.
    expected = [0, 0, 1, 0, 1, 1, 1]
    assert components_scipy(kept, link).tolist() == expected
    assert components_torch(kept, link).tolist() == expected
    assert _union_find_reference(nn_index.tolist(), labels.tolist()) == expected
    # Without the labels 2–3 were one component with 0–1 apart: the constraint really changed the partition.
    assert components_scipy(nn_index).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # Without merging (label_merge: false) only the 2–3 edge goes: 2 and 3 alone, 6 stays with 4–5.
    kept_only, no_link = label_constraints(nn_index, labels, merge=False)
    assert torch.equal(kept_only, kept) and no_link is None
    assert components_scipy(kept).tolist() == components_torch(kept).tolist() == [0, 0, 1, 2, 3, 3, 3]
    assert _union_find_reference(nn_index.tolist(), labels.tolist(), merge=False) == [0, 0, 1, 2, 3, 3, 3]


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_label_graph_matches_union_find_reference(backend, merge):
    g = torch.Generator().manual_seed(11)
    for trial in range(120):
        n = int(torch.randint(2, 48, (1,), generator=g))
        v = torch.randn(n, 3, generator=g)
        labels = torch.randint(0, 4, (n,), generator=g)
        labels[torch.rand(n, generator=g) < float(torch.rand(1, generator=g))] = -1
        ref = _union_find_reference(nearest_neighbors(v).tolist(), labels.tolist(), merge)
        assert weak_labels(v, backend=backend, known=labels, merge_known=merge).tolist() == ref, trial


def test_label_graph_unlabelled_rows_and_empty_batch_unchanged():
    v = torch.randn(40, 4, generator=torch.Generator().manual_seed(12))
    plain = weak_labels(v, backend="scipy")
    for backend in ("scipy", "torch"):  # no labelled sample: exactly the paper's graph
        assert torch.equal(weak_labels(v, backend=backend, known=torch.full((40,), -1)), plain)
    labels = torch.full((40,), -1)
    labels[:6] = torch.tensor([0, 1, 0, 1, 2, 2])
    kept, link = label_constraints(nearest_neighbors(v), labels)
    nn_index = nearest_neighbors(v)
    unlabelled = labels < 0
    assert torch.equal(kept[unlabelled], nn_index[unlabelled]) and torch.equal(link[unlabelled],
                                                                               torch.arange(40)[unlabelled])
    comp = weak_labels(v, backend="torch", known=labels)
    assert comp[0] == comp[2] and comp[1] == comp[3] and comp[4] == comp[5]  # same class: one component


def test_label_graph_torch_equals_scipy_many_sizes():
    g = torch.Generator().manual_seed(13)
    for n in [2, 3, 31, 32, 33, 100, 257]:
        v = torch.randn(n, 6, generator=g)
        labels = torch.randint(-1, 10, (n,), generator=g)
        assert torch.equal(weak_labels(v, backend="torch", known=labels), weak_labels(v, backend="scipy",
                                                                                       known=labels))
