"""``wcl.neighbors``: one module of search functions that the multi-crop table, the kNN and the explorer share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wcl.neighbors import ShardedKnn, knn_table, knn_vote, merge_topk, neighbors_of_rows, search, topk_cosine

PACKAGE = Path(__file__).resolve().parents[1] / "wcl"


def _imports() -> dict[str, set[str]]:
    """wcl module → the wcl modules it imports anywhere in its body (function-level imports included; ``from
    package import submodule`` counts as an import of the submodule)."""
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wcl"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & paths.keys()
                deps.update(subs if len(subs) == len(node.names) else {*subs, node.module})
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("wcl"))
        graph[name] = deps - {name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_search_users_form_no_import_circle():
    graph = _imports()
    assert graph["wcl.neighbors"] <= {"wcl.distributed"}  # pure functions: no callback, model or data module
    for user in ("wcl.callbacks.knn", "wcl.callbacks.multicrop", "wcl.eval.knn", "wcl.explore"):
        assert "wcl.neighbors" in graph[user] or _reaches(graph, user, "wcl.neighbors"), user
        assert not _reaches(graph, "wcl.neighbors", user)
    assert not _reaches(graph, "wcl.callbacks.knn", "wcl.eval.knn")  # no circle through the callbacks
    for name in graph:
        assert not _reaches(graph, name, name), f"{name} imports itself through others"


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_is_exact_top_k(backend):
    q, db = torch.randn(7, 16), torch.randn(50, 16)
    sim, idx = search(q, db, 5, backend)
    full = F.normalize(q, dim=1) @ F.normalize(db, dim=1).T
    top = full.topk(5, dim=1)
    assert torch.equal(idx, top.indices)
    torch.testing.assert_close(sim, top.values, atol=1e-5, rtol=0)


def test_table_and_ivf_agree_with_exact_search():
    x = torch.randn(400, 8)
    exact = knn_table(x, 3, "faiss")
    assert torch.equal(knn_table(x, 3, "torch"), exact)
    assert not (exact == torch.arange(400)[:, None]).any()  # self excluded
    sim, idx = neighbors_of_rows(x, 3, "faiss")
    assert torch.equal(idx, exact) and bool((sim[:, :-1] >= sim[:, 1:]).all())
    # IVF with every list probed is exact.
    assert torch.equal(knn_table(x, 3, "faiss_ivf", nprobe=10_000), exact)


def test_merged_shard_top_k_equals_the_whole_database():
    q, db = torch.randn(6, 8), torch.randn(30, 8)
    parts = [search(q, db[s:s + 10], 4) for s in (0, 10, 20)]
    sims = torch.cat([p[0] for p in parts], 1)
    ids = torch.cat([p[1] + 10 * j for j, p in enumerate(parts)], 1)
    s, i = merge_topk(sims, ids, 4)
    whole = search(q, db, 4)
    assert torch.equal(i, whole[1])
    torch.testing.assert_close(s, whole[0])


def test_vote_and_sharded_knn_by_hand():
    sim = torch.tensor([[0.9, 0.5, 0.1]])
    labels = torch.tensor([[1, 0, -1]])  # -1: no neighbour, no vote
    votes = knn_vote(sim, labels, 3, temperature=0.5)
    torch.testing.assert_close(votes, torch.tensor([[torch.e ** 1.0, torch.e ** 1.8, 0.0]]))
    bank, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    scorer = ShardedKnn(k=5, temperature=0.1)
    scorer.add_bank(bank, y)
    q = F.normalize(torch.randn(3, 4), dim=1)
    s, i = search(q, bank, 5, "torch")
    torch.testing.assert_close(scorer.scores(q, 3), knn_vote(s, y[i], 3, 0.1))


def test_topk_breaks_ties_by_the_lower_id_across_chunks_and_the_kth_place():
    # Rows of four ±0.5 entries: inner products are multiples of 0.25, so many candidates tie exactly at the k-th
    # place; chunking the queries and the database, or renumbering the rows, must not change the answer.
    from tests.test_multicrop import _unit_rows

    x = _unit_rows(90, d=12, seed=3)
    q = x[:25]
    full = (q.double() @ x.double().T).argsort(dim=1, descending=True, stable=True)[:, :7]
    for chunk, db_chunk in ((25, 90), (4, 13), (1, 7)):
        sim, rows = topk_cosine(q, x.half(), 7, chunk=chunk, db_chunk=db_chunk)
        assert torch.equal(rows, full), (chunk, db_chunk)
        assert bool((sim[:, :-1] >= sim[:, 1:]).all())
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(0))
    _, rows = topk_cosine(q, x[perm], 7, ids=perm, db_chunk=16)  # rows stored shuffled, ids say who they are
    assert torch.equal(perm[rows], full)


def test_topk_pads_when_the_database_is_smaller_than_k():
    sim, rows = topk_cosine(torch.randn(3, 4), torch.randn(2, 4), 5)
    assert rows[:, 2:].eq(-1).all() and sim[:, 2:].eq(-float("inf")).all() and rows[:, :2].ge(0).all()
    sim, rows = topk_cosine(torch.randn(3, 4), torch.randn(0, 4), 2)
    assert rows.eq(-1).all()


def test_merge_breaks_ties_by_id_and_carries_payload():
    sim = torch.tensor([[0.5, 0.75, 0.5, 0.5]])
    ids = torch.tensor([[7, 3, 2, 9]])
    s, i, p = merge_topk(sim, ids, 3, ids * 10)
    assert i.tolist() == [[3, 2, 7]] and p.tolist() == [[30, 20, 70]] and s.tolist() == [[0.75, 0.5, 0.5]]
