"""Batched, vectorised token clustering for Token Pooling (Marin et al., arXiv 2110.03860).

Token Pooling replaces N tokens by K tokens that minimise the (weighted) reconstruction error

    E = sum_i w_i * min_j ||x_i - c_j||^2       (an asymmetric Chamfer divergence)

solved approximately by a few iterations of weighted K-Means (outputs are cluster means) or
weighted K-Medoids (outputs are input tokens). Everything here works on a whole batch at once:
no Python loop over images or clusters, only over the (few) iterations. Results depend only on
the input values (no random state), on CPU and GPU alike.

Assignments need only ``|c|^2 - 2 x.c`` (``|x|^2`` is the same for every centre), one batched
matmul per iteration, which fvcore counts. fvcore does not know the assignment (``argmin``/``min``)
nor the cluster sums (``index_add``), so :mod:`bench.measure.flops` gives them handles and the
clustering's cost is counted, not assumed.

Every call runs exactly ``iterations`` steps: there is no early exit at convergence. Testing for it
(``torch.equal`` on the assignments) is a host synchronisation per step on an accelerator, and a
converged step is a fixed point (the same medoids or means give the same assignment), so running on
changes no output; the cost is fixed and the same for every input. Nothing here reads a tensor's
values on the host (no ``.item()``, ``one_hot``'s range check, ``nonzero``) unless ``track_error``
asks for the error curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.errors import UsageError


@dataclass
class Clustering:
    """The K output tokens of one pooling step and how the inputs map onto them."""

    tokens: torch.Tensor  # (B, K, C) output tokens (differentiable w.r.t. the input)
    assignment: torch.Tensor  # (B, N) index of the output token each input token is pooled into
    representative: torch.Tensor  # (B, K) input token standing for each output: the medoid (K-Means: its seed)
    errors: list[float] = field(default_factory=list)  # reconstruction error after each assignment step


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, N, C), (B, K, C) -> (B, N, K) squared Euclidean distances (one batched matmul)."""
    d = x.pow(2).sum(-1, keepdim=True) + c.pow(2).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(x, c.transpose(1, 2))
    return d.clamp_min_(0.0)


def assignment_scores(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, N, K) squared distances minus ``|x|^2``: the same argmin over centres, from one batched matmul."""
    return torch.bmm(x, c.transpose(1, 2)).mul_(-2.0).add_((c * c).sum(-1).unsqueeze(1))


def reconstruction_error(x: torch.Tensor, centers: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) weighted asymmetric Chamfer divergence from every input token to its nearest output token."""
    nearest = squared_distances(x, centers).min(dim=-1).values
    return (nearest if weights is None else nearest * weights).sum(-1)


def significance_init(significance: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) scores -> (B, K) indices of the K most significant tokens, most significant first."""
    return torch.topk(significance, k, dim=1, sorted=True).indices


def farthest_point_init(x: torch.Tensor, significance: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy farthest-point seeding, started from the most significant token (deterministic)."""
    B, N, _ = x.shape
    idx = torch.empty(B, k, dtype=torch.long, device=x.device)
    idx[:, 0] = significance.argmax(dim=1)
    nearest = squared_distances(x, _gather(x, idx[:, :1])).squeeze(-1)
    for j in range(1, k):  # a loop over seeds, not over images: each step is batched
        idx[:, j] = nearest.argmax(dim=1)
        nearest = torch.minimum(nearest, squared_distances(x, _gather(x, idx[:, j : j + 1])).squeeze(-1))
    return idx


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


def _weighted_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B * N, C + 1) rows ``[w * x, w]``: summed per cluster they give both numerator and denominator."""
    return torch.cat([x * w.unsqueeze(-1), w.unsqueeze(-1)], dim=-1).flatten(0, 1)


def _weighted_means(rows: torch.Tensor, assignment: torch.Tensor, k: int, previous: torch.Tensor) -> torch.Tensor:
    """Weighted mean of each cluster from :func:`_weighted_rows`; a cluster without weight keeps its previous centre."""
    B, _, C = previous.shape
    # one flat index_add over all images (row adds: far faster on CPU than scatter_add with (B, N, C) indices)
    flat = (assignment + torch.arange(B, device=rows.device).unsqueeze(1) * k).reshape(-1)
    sums = torch.zeros(B * k, C + 1, dtype=rows.dtype, device=rows.device).index_add(0, flat, rows).view(B, k, C + 1)
    weight = sums[..., C:]
    empty = (weight <= 0).to(rows.dtype)
    # (sum + previous * empty) / (weight + empty): the mean, or the previous centre for an empty cluster
    return torch.addcmul(sums[..., :C], previous, empty) * (weight + empty).reciprocal()


def _check(x: torch.Tensor, k: int, weights: torch.Tensor | None, init: torch.Tensor, iterations: int) -> torch.Tensor:
    if x.dim() != 3:
        raise UsageError(f"clustering expects (B, N, C) tokens, got shape {tuple(x.shape)}")
    if iterations < 1:
        raise UsageError(f"clustering needs at least 1 iteration, got {iterations}")
    if not 1 <= k <= x.shape[1]:
        raise UsageError(f"cannot pool {x.shape[1]} tokens into {k}")
    if init.shape != (x.shape[0], k):
        raise UsageError(f"initial indices must have shape {(x.shape[0], k)}, got {tuple(init.shape)}")
    w = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
    return w.detach()


def kmeans(
    x: torch.Tensor,
    k: int,
    init: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    iterations: int = 5,
    track_error: bool = False,
) -> Clustering:
    """Weighted Lloyd iterations from the tokens at ``init``; outputs are the weighted cluster means.

    Assignments are found without gradients; the output means are then recomputed from the inputs
    with gradients, so training back-propagates through the pooled tokens (the assignment is treated
    as a constant, the usual straight-through choice for hard clustering).
    """
    w = _check(x, k, weights, init, iterations)
    errors: list[float] = []
    with torch.no_grad():
        xd = x.detach()
        rows = _weighted_rows(xd, w)
        centers = _gather(xd, init)
        for _ in range(iterations):  # Lloyd step: assign to the nearest centre, move centres to the means
            scores = assignment_scores(xd, centers)
            if track_error:
                best, assignment = scores.min(dim=-1)
                errors.append(float(((best + xd.pow(2).sum(-1)).clamp_min(0) * w).sum()))
            else:
                assignment = scores.argmin(dim=-1)
            # no early exit once the assignment stops changing: a converged step is a fixed point, and
            # testing for it would synchronise with the host every step (module docstring)
            previous = centers
            centers = _weighted_means(rows, assignment, k, previous)
        if track_error:
            errors.append(float(reconstruction_error(xd, centers, w).sum()))
    # training: the last step's means again, now with gradients to the input tokens
    if x.requires_grad and torch.is_grad_enabled():
        centers = _weighted_means(_weighted_rows(x, w), assignment, k, previous)
    return Clustering(centers, assignment, init, errors)


def kmedoids(
    x: torch.Tensor,
    k: int,
    init: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    iterations: int = 5,
    track_error: bool = False,
) -> Clustering:
    """Weighted K-Medoids (alternating / Voronoi iteration); outputs are input tokens.

    Each step assigns tokens to the nearest medoid, then moves every medoid to the member of its
    cluster with the least weighted sum of squared distances to the other members, for all clusters
    at once: one (K x N) @ (N x N) batched matmul over the pairwise distance matrix.
    """
    w = _check(x, k, weights, init, iterations)
    errors: list[float] = []
    with torch.no_grad():
        xd = x.detach()
        pairwise = squared_distances(xd, xd)  # (B, N, N)
        medoids = init.clone()
        for step in range(iterations + 1):  # the last pass only assigns
            to_medoid = torch.gather(pairwise, 2, medoids.unsqueeze(1).expand(-1, x.shape[1], -1))  # (B, N, K)
            nearest, assignment = to_medoid.min(dim=-1)
            if track_error:
                errors.append(float((nearest * w).sum()))
            if step == iterations:
                break
            # (B, N, K) memberships; not one_hot, whose range check reads the indices on the host
            members = xd.new_zeros(*assignment.shape, k).scatter_(2, assignment.unsqueeze(-1), 1.0)
            cost = torch.bmm((members * w.unsqueeze(-1)).transpose(1, 2), pairwise)  # (B, K, N)
            cost = cost.masked_fill(members.transpose(1, 2) == 0, float("inf"))
            best = cost.argmin(dim=-1)
            filled = members.sum(1) > 0  # empty: keep medoid
            # no early exit once the medoids stop moving: a converged step is a fixed point, and testing
            # for it would synchronise with the host every step (module docstring)
            medoids = torch.where(filled, best, medoids)
    tokens = _gather(x, medoids)
    return Clustering(tokens, assignment, medoids, errors)
