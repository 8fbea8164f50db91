"""Contrastive losses as pure functions of tensors.

One masked contrastive core (:func:`contrastive_loss`) serves every term of WCL:

* NT-Xent (SimCLR): positives are the other view of the same sample;
* the weak-label loss: positives are the other members of a sample's weak-label component;
* low-resolution crops (multi-crop): positives are the views (or component) of the crop's anchor sample.

Every function computes the similarities and the log-softmax in float32 (float64 for float64 inputs), also
under bf16/fp16 autocast.
The optional ``*_all``/``offset`` arguments let a rank score its local anchors against the gathered global
batch; with their defaults each function is the single-process definition.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wcl.distributed import gather, gather_nograd, rank_offset
from wcl.graph import GraphBackend, weak_labels

CropWeighting = Literal["anchor", "term"]


def contrastive_loss(
    anchors: Tensor,
    candidates: Tensor,
    anchor_groups: Tensor,
    candidate_groups: Tensor,
    anchor_positions: Tensor,
    temperature: float = 0.1,
    anchor_weights: Tensor | None = None,
    anchor_classes: Tensor | None = None,
    candidate_classes: Tensor | None = None,
) -> Tensor:
    """Masked (supervised) contrastive loss, averaged over anchors that have at least one positive.

    For anchor i with similarities s_ij = a_i·c_j / τ (both L2-normalized here):
    ``loss_i = -(1/|P(i)|) Σ_{j∈P(i)} log( exp(s_ij) / Σ_{k≠pos(i)} exp(s_ik) )``
    where ``P(i) = {j : group(c_j) = group(a_i), j ≠ pos(i)}`` (∪ ``{j : class(c_j) = class(a_i) ≥ 0, j ≠ pos(i)}``
    when classes are given).

    Args:
        anchors: N×D anchor embeddings.
        candidates: M×D embeddings forming the softmax denominator.
        anchor_groups: LongTensor[N], the group (sample index or component) of each anchor.
        candidate_groups: LongTensor[M], the group of each candidate.
        anchor_positions: LongTensor[N], the row of each anchor inside ``candidates`` (removed from both the
            positives and the denominator), or -1 when the anchor is not among the candidates.
        temperature: τ > 0.
        anchor_weights: optional float[N]; the loss is then ``Σ w_i·loss_i / Σ w_i`` over anchors with a
            positive, instead of the plain mean.
        anchor_classes, candidate_classes: optional LongTensor[N] / [M], known classes (-1 unknown): an anchor and a
            candidate of one known class are positives too, whatever their groups.

    Returns:
        Scalar loss, float32 (float64 for float64 inputs); 0 when no anchor has a positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(anchors.dtype, torch.float32)  # float64 stays float64
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.to(dtype), dim=1)
        c = F.normalize(candidates.to(dtype), dim=1)
        logits = a @ c.T / temperature  # N×M
        cols = torch.arange(c.shape[0], device=c.device)
        is_self = cols[None, :] == anchor_positions[:, None]  # N×M
        positive = anchor_groups[:, None] == candidate_groups[None, :]
        if anchor_classes is not None:
            positive |= (anchor_classes[:, None] == candidate_classes[None, :]) & (anchor_classes[:, None] >= 0)
        positive &= ~is_self
        logits = logits.masked_fill(is_self, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        num_pos = positive.sum(dim=1)
        pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        has_pos = num_pos > 0
        per_anchor = -pos_log_prob / num_pos.clamp(min=1)
        weights = has_pos.to(dtype) if anchor_weights is None else anchor_weights.to(dtype) * has_pos
        # No anchor with a positive (possible on one rank of several with label_graph): 0, not 0/0.
        return (weights * per_anchor).sum() / weights.sum().clamp(min=torch.finfo(dtype).tiny)


def crop_anchor_weights(num_views: int, num_crops: int, weighting: CropWeighting, device: torch.device) -> Tensor:
    """Weights of ``num_views`` high-resolution anchors followed by ``num_crops`` crop anchors: ``anchor`` weighs
    every anchor the same (a plain mean over all of them); ``term`` averages the high-resolution anchors and the
    crop anchors separately and gives each mean half of the loss, whatever the number of crops."""
    if weighting == "anchor" or num_crops == 0:
        return torch.ones(num_views + num_crops, device=device)
    if weighting != "term":
        raise ValueError(f"unknown crop weighting {weighting!r}; choose 'anchor' or 'term'")
    return torch.cat([torch.full((num_views,), 0.5 / num_views, device=device),
                      torch.full((num_crops,), 0.5 / num_crops, device=device)])


def nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    *,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
    small: Tensor | None = None,
    small_owner: Tensor | None = None,
    crop_weighting: CropWeighting = "anchor",
    small_mask: Tensor | None = None,
) -> Tensor:
    """SimCLR NT-Xent over B pairs: 2B anchors; the positive of each is the other view of the same sample,
    the negatives are the other 2B-2 embeddings. Mean over anchors.

    With low-resolution crops, each crop is one more anchor whose positives are both views of its owner
    sample, scored against all 2B views (crops are anchors only, never candidates), weighted by
    ``crop_weighting`` (see :func:`crop_anchor_weights`).

    Args:
        z1, z2: B×D projections of the two views (normalized inside).
        temperature: τ.
        z1_all, z2_all: (W·B)×D gathered global batch (default: ``z1``/``z2``, one process).
        offset: row of this rank's first sample in the global batch.
        small: S×D projections of this rank's low-resolution crops.
        small_owner: LongTensor[S], local row (0..B-1) of each crop's sample.
        small_mask: optional bool[S]: only the crops it marks are anchors (crops cut from their owner's own image,
            say); the others weigh 0 but still count in the mean, so the term is the same sum over every crop slot
            on any number of ranks.
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    b, n = z1.shape[0], z1_all.shape[0]
    dev = z1.device
    local = torch.arange(offset, offset + b, device=dev)
    global_ids = torch.arange(n, device=dev)
    anchors, groups, positions = [z1, z2], [local, local], [local, local + n]
    crops = 0 if small is None else small.shape[0]
    if crops:
        anchors.append(small)
        groups.append(small_owner + offset)
        positions.append(torch.full_like(small_owner, -1))
    weights = crop_anchor_weights(2 * b, crops, crop_weighting, dev)
    kept = weights
    if crops and small_mask is not None:
        kept = weights * torch.cat([torch.ones(2 * b, device=dev), small_mask.to(weights.dtype)])
    loss = contrastive_loss(
        anchors=torch.cat(anchors),
        candidates=torch.cat([z1_all, z2_all]),
        anchor_groups=torch.cat(groups),
        candidate_groups=torch.cat([global_ids, global_ids]),
        anchor_positions=torch.cat(positions),
        temperature=temperature,
        anchor_weights=kept,
    )
    return loss if kept is weights else loss * (kept.to(loss.dtype).sum() / weights.to(loss.dtype).sum())


def same_view_supcon_loss(v: Tensor, labels: Tensor, temperature: float = 0.1, *,
                          v_all: Tensor | None = None, offset: int = 0,
                          small: Tensor | None = None, small_owner: Tensor | None = None,
                          crop_weighting: CropWeighting = "anchor", classes: Tensor | None = None) -> Tensor:
    """Supervised-contrastive loss over the same-view similarities of one view.

    Args:
        v: B×D local embeddings (anchors).
        labels: LongTensor[W·B], the group of every sample of the global batch.
        v_all: (W·B)×D gathered embeddings (default ``v``).
        offset: row of this rank's first sample in the global batch.
        small: S×D extra anchors (low-resolution crops) that carry their owner's group; since a crop is not
            among the candidates, its owner's own embedding is one of its positives.
        small_owner: LongTensor[S], local row of each crop's sample.
        crop_weighting: see :func:`crop_anchor_weights`.
        classes: optional LongTensor[W·B], known classes (-1 unknown): samples of one known class are positives of
            each other whatever their groups (a crop carries its owner's class).
    """
    v_all = v if v_all is None else v_all
    local = torch.arange(offset, offset + v.shape[0], device=v.device)
    anchors, positions = v, local
    crops = 0 if small is None else small.shape[0]
    if crops:
        anchors = torch.cat([v, small])
        local = torch.cat([local, small_owner + offset])
        positions = torch.cat([positions, torch.full_like(small_owner, -1)])
    weights = crop_anchor_weights(v.shape[0], crops, crop_weighting, v.device)
    return contrastive_loss(anchors, v_all, labels[local], labels, positions, temperature, weights,
                            None if classes is None else classes[local], classes)


def weak_label_loss(
    v1: Tensor,
    v2: Tensor,
    temperature: float = 0.1,
    *,
    v1_all: Tensor | None = None,
    v2_all: Tensor | None = None,
    offset: int = 0,
    labels1: Tensor | None = None,
    labels2: Tensor | None = None,
    small: Tensor | None = None,
    small_owner: Tensor | None = None,
    crop_weighting: CropWeighting = "anchor",
    rank_balanced: bool = False,
    classes: Tensor | None = None,
) -> Tensor:
    """The swapped weak-label loss of WCL.

    Weak labels ``y_k = weak_labels(v_k)`` (1-NN graph components of the global batch of view k). Labels of
    view 2 supervise the same-view similarities of view 1 and vice versa; for each anchor i,
    ``-(1/|P(i)|) Σ_{j∈P(i)} log softmax_{j≠i}(v_i·v_j/τ)``, averaged over anchors, then over directions.

    Args:
        v1, v2: B×D phi-projections of the two views (normalized inside).
        v1_all, v2_all: (W·B)×D gathered global batch (default: the local tensors).
        offset: row of this rank's first sample in the global batch.
        labels1, labels2: precomputed weak labels of the global batch (LongTensor[W·B]); computed if None.
        small, small_owner: S×D phi-projections of low-resolution crops and the local row of each crop's
            sample. A crop joins both directions as an extra anchor with its owner's component (under view-2
            labels against view-1 candidates, and under view-1 labels against view-2 candidates); the graph
            itself is built from the two high-resolution views only.
        crop_weighting: see :func:`crop_anchor_weights`.
        rank_balanced: scale each direction by :func:`rank_share`, so that the mean over ranks is the global-batch
            loss also when some anchors have no positive (singleton components, which only a label graph makes).
        classes: optional LongTensor[W·B], the known classes of the global batch (-1 unknown): samples of one known
            class are positives of each other in both directions, whatever their components (the label graph
            without merging).
    """
    v1_all = v1 if v1_all is None else v1_all
    v2_all = v2 if v2_all is None else v2_all
    labels1 = weak_labels(v1_all.detach()) if labels1 is None else labels1
    labels2 = weak_labels(v2_all.detach()) if labels2 is None else labels2
    crops = {"small": small, "small_owner": small_owner, "crop_weighting": crop_weighting, "classes": classes}
    loss_1 = same_view_supcon_loss(v1, labels2, temperature, v_all=v1_all, offset=offset, **crops)
    loss_2 = same_view_supcon_loss(v2, labels1, temperature, v_all=v2_all, offset=offset, **crops)
    if rank_balanced:
        share = {"local": v1.shape[0], "offset": offset, "crops": 0 if small is None else small.shape[0],
                 "crop_weighting": crop_weighting, "classes": classes}
        loss_1 = loss_1 * rank_share(labels2, **share).to(loss_1.dtype)
        loss_2 = loss_2 * rank_share(labels1, **share).to(loss_2.dtype)
    return 0.5 * (loss_1 + loss_2)


def rank_share(labels: Tensor, local: int, offset: int, crops: int = 0,
               crop_weighting: CropWeighting = "anchor", classes: Tensor | None = None) -> Tensor:
    """This rank's anchor weight over the mean of every rank's, under the global weak labels ``labels`` ([W·B]).

    Each rank averages its loss over its own anchors that have a positive (weight ``D_r``); DDP then averages the
    ranks. Scaling rank r's loss by ``D_r / mean_k D_k`` makes that average the global-batch mean exactly. Every
    ``D_k`` follows from the global labels (a view anchor has a positive iff its component has two members; a
    crop always has its owner), so no communication is needed; the factor is 1 when no component is a singleton.
    ``crops``: crop anchors per rank (the same on every rank); ``classes``: the known classes given to the loss (a
    labelled anchor also has a positive when another sample of its class is in the batch).
    """
    world = labels.shape[0] // local
    sizes = torch.zeros_like(labels).scatter_add_(0, labels, torch.ones_like(labels))  # bincount would sync on CUDA
    has_pos = sizes[labels] >= 2
    if classes is not None:  # a W·B × W·B comparison, small at batch sizes
        has_pos |= (classes >= 0) & ((classes[:, None] == classes[None, :]).sum(1) >= 2)
    has_pos = has_pos.view(world, local).sum(1).double()
    if crop_weighting == "term" and crops > 0:
        weight = 0.5 * has_pos / local + 0.5
    else:
        weight = has_pos + crops
    return weight[offset // local] / weight.mean()  # float64; the caller casts to its loss dtype


class NTXentLoss(nn.Module):
    """NT-Xent over the global batch: each rank scores its own anchors against both views gathered from every
    rank (see :func:`wcl.distributed.gather` for ``candidates_grad``)."""

    def __init__(self, temperature: float = 0.1, candidates_grad: bool = True,
                 crop_weighting: CropWeighting = "anchor") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.candidates_grad, self.crop_weighting = temperature, candidates_grad, crop_weighting

    def forward(self, z1: Tensor, z2: Tensor, small: Tensor | None = None,
                small_owner: Tensor | None = None, small_mask: Tensor | None = None) -> Tensor:
        """z1, z2: B×D local projections (small: S×D crops, small_owner: LongTensor[S] local rows, small_mask:
        bool[S] the crops that are anchors) → scalar loss (DDP's gradient averaging makes it the global mean)."""
        return nt_xent_loss(z1, z2, self.temperature, z1_all=gather(z1, self.candidates_grad),
                            z2_all=gather(z2, self.candidates_grad), offset=rank_offset(z1.shape[0]), small=small,
                            small_owner=small_owner, crop_weighting=self.crop_weighting, small_mask=small_mask)


class WeakLabelLoss(nn.Module):
    """Swapped weak-label loss over the global batch; every rank builds the same graph from the gathered batch.

    ``candidates_grad=False`` is the official code's gradient: there the gathered batch is built under
    ``torch.no_grad()`` (its ``concat_all_gather`` puts the local tensor back in its slot, but the concatenation is
    still a constant), so only the anchors carry gradient — on one process too, where this about halves the gradient
    of the term compared with the one through anchors and candidates (``candidates_grad=True``).

    ``merge_known`` (with ``known`` labels in ``forward``): true links the labelled samples of one class in the graph,
    merging their components; false leaves the components of the 1-NN graph (different-class edges still dropped)
    and makes the labelled samples of one class positives of each other in the loss only.
    """

    def __init__(self, temperature: float = 0.1, graph_backend: GraphBackend = "auto", candidates_grad: bool = True,
                 crop_weighting: CropWeighting = "anchor", merge_known: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.graph_backend = temperature, graph_backend
        self.candidates_grad, self.crop_weighting, self.merge_known = candidates_grad, crop_weighting, merge_known

    def forward(self, v1: Tensor, v2: Tensor, small: Tensor | None = None,
                small_owner: Tensor | None = None, known: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """v1, v2: B×D local phi-projections (small/small_owner: crops, as in ``weak_label_loss``); ``known``:
        optional LongTensor[B], this rank's known classes (-1 unknown), gathered with the embeddings so both views'
        graphs are constrained on the global batch (:func:`wcl.graph.label_constraints`) →
        (scalar loss, weak labels of view 1 and of view 2, LongTensor[W·B])."""
        if self.candidates_grad:
            v1_all, v2_all = gather(v1), gather(v2)
        else:  # the official code: every candidate a constant, this rank's own included (class docstring)
            v1_all, v2_all = gather_nograd(v1).detach(), gather_nograd(v2).detach()
        known_all = None if known is None else gather_nograd(known.to(v1.device))
        labels1, labels2 = (weak_labels(v.detach(), self.graph_backend, known=known_all, merge_known=self.merge_known)
                            for v in (v1_all, v2_all))
        loss = weak_label_loss(v1, v2, self.temperature, v1_all=v1_all, v2_all=v2_all,
                               offset=rank_offset(v1.shape[0]), labels1=labels1, labels2=labels2,
                               small=small, small_owner=small_owner, crop_weighting=self.crop_weighting,
                               rank_balanced=known_all is not None,
                               classes=None if self.merge_known else known_all)
        return loss, labels1, labels2
