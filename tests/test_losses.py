import math

import pytest
import torch
import torch.nn.functional as F

from wcl.graph import weak_labels
from wcl.losses import contrastive_loss, nt_xent_loss, weak_label_loss


def _loop_supcon(x: torch.Tensor, positives: list[list[int]], tau: float) -> float:
    """Reference: mean over anchors with a positive of -(1/|P|) Σ_p log(exp(s_ip) / Σ_{k≠i} exp(s_ik)), plain
    Python loops."""
    x = F.normalize(x.double(), dim=1)
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        if not positives[i]:
            continue
        denom = sum(math.exp(float(x[i] @ x[k]) / tau) for k in range(n) if k != i)
        total += -sum(math.log(math.exp(float(x[i] @ x[p]) / tau) / denom) for p in positives[i]) / len(positives[i])
    return total / sum(1 for p in positives if p)


def test_nt_xent_hand_computed_two_pairs():
    # B=2 in 2-D: views of sample 0 at 0° and 90°, of sample 1 at 180° and 270°. tau = 1.
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    # Every anchor: positive at cos 0, negatives at cos -1 and cos 0 → loss = -log(e^0 / (e^0 + e^-1 + e^0)).
    expected = -math.log(1 / (2 + math.exp(-1)))
    assert nt_xent_loss(z1, z2, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nt_xent_matches_loop_reference(dtype):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=dtype), torch.randn(6, 5, generator=g, dtype=dtype)
    b = 6
    positives = [[i + b] for i in range(b)] + [[i] for i in range(b)]
    ref = _loop_supcon(torch.cat([z1, z2]), positives, 0.3)
    assert nt_xent_loss(z1, z2, temperature=0.3).item() == pytest.approx(ref, rel=1e-5)


def test_nt_xent_scale_invariant_and_finite_under_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    ref = nt_xent_loss(z1, z2)
    assert nt_xent_loss(z1 * 7.0, z2 * 0.01).item() == pytest.approx(ref.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent_loss(z1.bfloat16(), z2.bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert low.item() == pytest.approx(ref.item(), rel=2e-2)


def test_weak_label_loss_matches_loop_reference_swapped():
    g = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    y1, y2 = weak_labels(v1).tolist(), weak_labels(v2).tolist()

    def members(labels):
        return [[j for j in range(10) if j != i and labels[j] == labels[i]] for i in range(10)]

    # Labels of view 2 supervise view 1 and vice versa.
    ref = 0.5 * (_loop_supcon(v1, members(y2), 0.2) + _loop_supcon(v2, members(y1), 0.2))
    assert weak_label_loss(v1, v2, temperature=0.2).item() == pytest.approx(ref, rel=1e-6)
    # Not symmetric in which labels are used: unswapped gives a different value unless partitions agree.
    if y1 != y2:
        unswapped = 0.5 * (_loop_supcon(v1, members(y1), 0.2) + _loop_supcon(v2, members(y2), 0.2))
        assert unswapped != pytest.approx(ref, rel=1e-6)


def test_weak_label_loss_with_known_classes_matches_loop_reference():
    """label_merge: false — positives are the other members of the component or labelled samples of one class."""
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(12, 4, generator=g, dtype=torch.float64)
    classes = torch.tensor([0, -1, 1, 0, -1, 1, -1, 0, 2, -1, -1, 1])
    y1, y2 = (weak_labels(v, known=classes, merge_known=False).tolist() for v in (v1, v2))

    def members(labels):
        return [[j for j in range(12) if j != i and (labels[j] == labels[i] or classes[i] == classes[j] >= 0)]
                for i in range(12)]

    # Sample 8, the only one of class 2, lost its edge to a labelled sample of another class: an anchor with no
    # positive, left out of the mean.
    assert [] in members(y2)
    ref = 0.5 * (_loop_supcon(v1, members(y2), 0.2) + _loop_supcon(v2, members(y1), 0.2))
    kw = {"labels1": torch.tensor(y1), "labels2": torch.tensor(y2)}
    assert weak_label_loss(v1, v2, 0.2, classes=classes, **kw).item() == pytest.approx(ref, rel=1e-6)
    assert weak_label_loss(v1, v2, 0.2, **kw).item() != pytest.approx(ref, rel=1e-6)  # the classes changed it
    # Unknown classes everywhere: the plain weak-label loss.
    assert weak_label_loss(v1, v2, 0.2, classes=torch.full((12,), -1), **kw).item() == pytest.approx(
        weak_label_loss(v1, v2, 0.2, **kw).item(), rel=1e-12)


def test_contrastive_loss_skips_anchors_without_positives_and_excludes_self():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    groups = torch.tensor([0, 0, 1])  # anchor 2 has no positive
    loss = contrastive_loss(x, x, groups, groups, torch.arange(3), temperature=0.5)
    # Anchor 2 has no positive and is left out of the mean, but stays a negative of anchors 0 and 1.
    xn = F.normalize(x, dim=1)
    s = (xn @ xn.T / 0.5).tolist()
    l0 = -math.log(math.exp(s[0][1]) / (math.exp(s[0][1]) + math.exp(s[0][2])))
    l1 = -math.log(math.exp(s[1][0]) / (math.exp(s[1][0]) + math.exp(s[1][2])))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_gradients_flow_to_both_views():
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4, requires_grad=True)
    (nt_xent_loss(z1, z2) + weak_label_loss(z1, z2)).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_invalid_temperature():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def test_small_crops_hand_computed():
    """Crops are extra anchors: positives = both views of their owner, candidates = the 2B views only."""
    g = torch.Generator().manual_seed(3)
    b, tau = 3, 0.5
    z1, z2 = torch.randn(b, 4, generator=g, dtype=torch.float64), torch.randn(b, 4, generator=g, dtype=torch.float64)
    small = torch.randn(2 * b, 4, generator=g, dtype=torch.float64)
    owner = torch.arange(b).repeat(2)
    views = F.normalize(torch.cat([z1, z2]), dim=1)
    crops = F.normalize(small, dim=1)
    terms = []
    for i in range(2 * b):  # view anchors: as plain NT-Xent
        logits = [float(views[i] @ views[k]) / tau for k in range(2 * b) if k != i]
        pos = float(views[i] @ views[(i + b) % (2 * b)]) / tau
        terms.append(-(pos - math.log(sum(math.exp(x) for x in logits))))
    for s in range(2 * b):  # crop anchors: all 2B views in the denominator, 2 positives
        logits = [float(crops[s] @ views[k]) / tau for k in range(2 * b)]
        lse = math.log(sum(math.exp(x) for x in logits))
        o = int(owner[s])
        terms.append(-0.5 * ((logits[o] - lse) + (logits[o + b] - lse)))
    ref = sum(terms) / len(terms)
    got = nt_xent_loss(z1, z2, tau, small=small, small_owner=owner)
    assert got.item() == pytest.approx(ref, rel=1e-10)
    assert got.item() != pytest.approx(nt_xent_loss(z1, z2, tau).item(), rel=1e-3)


def test_weak_label_loss_with_small_crops_hand_computed():
    g = torch.Generator().manual_seed(4)
    b, tau = 6, 0.3
    v1, v2 = torch.randn(b, 3, generator=g, dtype=torch.float64), torch.randn(b, 3, generator=g, dtype=torch.float64)
    small = torch.randn(b, 3, generator=g, dtype=torch.float64)
    owner = torch.arange(b)
    y1, y2 = weak_labels(v1).tolist(), weak_labels(v2).tolist()

    def direction(v, labels):
        x, c = F.normalize(v, dim=1), F.normalize(small, dim=1)
        terms = []
        for i in range(b):  # view anchors exclude themselves
            logits = {k: float(x[i] @ x[k]) / tau for k in range(b) if k != i}
            lse = math.log(sum(math.exp(t) for t in logits.values()))
            pos = [k for k in logits if labels[k] == labels[i]]
            terms.append(-sum(logits[k] - lse for k in pos) / len(pos))
        for s in range(b):  # crop anchors: every view candidate, owner's component (owner included)
            logits = [float(c[s] @ x[k]) / tau for k in range(b)]
            lse = math.log(sum(math.exp(t) for t in logits))
            pos = [k for k in range(b) if labels[k] == labels[int(owner[s])]]
            terms.append(-sum(logits[k] - lse for k in pos) / len(pos))
        return sum(terms) / len(terms)

    ref = 0.5 * (direction(v1, y2) + direction(v2, y1))
    got = weak_label_loss(v1, v2, tau, small=small, small_owner=owner)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_crop_weighting_term_averages_view_and_crop_anchors_separately():
    g = torch.Generator().manual_seed(4)
    z1, z2, small = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (4, 4, 12))
    owner = torch.arange(4).repeat(3)
    views_only = nt_xent_loss(z1, z2, 0.3)
    ids = torch.arange(4)
    crops_only = contrastive_loss(small, torch.cat([z1, z2]), owner, torch.cat([ids, ids]),
                                  torch.full((12,), -1), 0.3)
    term = nt_xent_loss(z1, z2, 0.3, small=small, small_owner=owner, crop_weighting="term")
    assert term.item() == pytest.approx(0.5 * views_only.item() + 0.5 * crops_only.item(), rel=1e-7)
    anchor = nt_xent_loss(z1, z2, 0.3, small=small, small_owner=owner)  # every anchor alike: 8 views, 12 crops
    assert anchor.item() == pytest.approx((8 * views_only.item() + 12 * crops_only.item()) / 20, rel=1e-7)
    weak_term = weak_label_loss(z1, z2, 0.3, small=small, small_owner=owner, crop_weighting="term")
    assert weak_term.item() != pytest.approx(weak_label_loss(z1, z2, 0.3, small=small, small_owner=owner).item())


def test_crop_weighting_changes_only_the_weak_term_with_two_crops_per_sample():
    # BENCHMARKS.md reads the crop_weighting runs through this: with 2 crops per sample the 2B views are already
    # half of NT-Xent's 4B anchors, while each weak-label direction has B views against 2B crops.
    g = torch.Generator().manual_seed(5)
    z1, z2, small = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (4, 4, 8))
    crops = {"small": small, "small_owner": torch.arange(4).repeat(2)}
    nce = [nt_xent_loss(z1, z2, 0.3, crop_weighting=w, **crops).item() for w in ("anchor", "term")]
    weak = [weak_label_loss(z1, z2, 0.3, crop_weighting=w, **crops).item() for w in ("anchor", "term")]
    assert nce[0] == pytest.approx(nce[1], rel=1e-12)
    assert weak[0] != pytest.approx(weak[1], rel=1e-6)


@pytest.mark.parametrize("crop_losses", ["nce", "weak", "both"])
def test_crops_enter_only_the_losses_they_are_given_to(crop_losses):
    from wcl import WCL

    torch.manual_seed(0)
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8,
                weak_hidden_dim=16, weak_out_dim=8, crop_losses=crop_losses, knn_every_n_epochs=0)
    g = torch.Generator().manual_seed(1)
    batch = {"views": [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)], "index": torch.arange(8),
             "label": torch.zeros(8, dtype=torch.long)}
    plain = model.training_step(dict(batch), 0)["terms"]
    crops = model.training_step({**batch, "small": [torch.randn(8, 3, 4, 4, generator=g)]}, 0)["terms"]
    for term, enters in (("loss_nce", crop_losses != "weak"), ("loss_weak", crop_losses != "nce")):
        same = torch.allclose(plain[term], crops[term])
        assert same != enters, term


def _no_positive_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 samples, 3 per rank. Rank 0's are labelled with three different classes and are each other's nearest
    neighbours, so label_graph drops their edges: none of them has a positive. Rank 1's are unlabelled and close
    together: one component."""
    g = torch.Generator().manual_seed(0)
    e = torch.eye(8, dtype=torch.float64)
    v1 = torch.cat([e[0] + 0.1 * torch.randn(3, 8, generator=g, dtype=torch.float64),
                    e[1] + 0.1 * torch.randn(3, 8, generator=g, dtype=torch.float64)])
    v2 = v1 + 0.01 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    return v1, v2, torch.tensor([0, 1, 2, -1, -1, -1])


def _no_positive_rank(rank: int) -> dict:
    from wcl.losses import WeakLabelLoss

    v1, v2, known = _no_positive_batch()
    own = slice(3 * rank, 3 * rank + 3)
    a, b = v1[own].clone().requires_grad_(), v2[own].clone().requires_grad_()
    loss, labels1, _ = WeakLabelLoss(0.2, "torch")(a, b, known=known[own])
    loss.backward()
    return {"loss": loss.item(), "labels": labels1.tolist(), "grad_finite": bool(a.grad.isfinite().all())}


@pytest.mark.slow
def test_label_graph_rank_without_positives_gives_zero_not_nan():
    from tests.helpers import run_gloo
    from wcl.losses import WeakLabelLoss

    ranks = run_gloo(_no_positive_rank)
    v1, v2, known = _no_positive_batch()
    whole, labels1, _ = WeakLabelLoss(0.2, "torch")(v1, v2, known=known)
    assert labels1.tolist()[:3] == [0, 1, 2] and len(set(labels1.tolist()[3:])) == 1  # the case meant
    assert ranks[0]["loss"] == 0.0 and ranks[1]["loss"] > 0 and all(r["grad_finite"] for r in ranks.values())
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(whole.item(), rel=1e-12)
