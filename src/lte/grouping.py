"""Neuron -> expert grouping, and the permutation that makes each expert a contiguous block.

``kmeans`` is balanced spherical k-means on the L2-normalised input weight vectors (the gate
rows for gated FFNs, the up rows otherwise), as MoEfication's parameter clustering does.
Balance is kept exactly: every cluster gets ``expert_size`` neurons. Assignment is a
vectorised capacity-constrained greedy (each round, every unassigned neuron proposes its
most similar cluster with room left; each cluster accepts its best proposers up to its
room), which is fast at f=11008 and close to the optimal balanced assignment.
``coactivation`` clusters neurons by their co-activation profile on calibration data (the
same balanced clustering on rows of the normalised co-activation matrix: a fast stand-in
for a METIS graph partition). ``random`` is a seeded random partition.
"""

from __future__ import annotations

import torch

from .arch import FFNWeights


def balanced_assign(sim: torch.Tensor, capacity: int) -> torch.Tensor:
    """Assign each row of ``sim`` ``[n, k]`` to a column, at most ``capacity`` rows per column,
    greedily by similarity. Needs ``n <= k * capacity``. Returns ``[n]`` column ids."""
    n, k = sim.shape
    if n > k * capacity:
        raise ValueError(f"{n} items do not fit {k} clusters of {capacity}")
    assign = torch.full((n,), -1, dtype=torch.long)
    room = torch.full((k,), capacity, dtype=torch.long)
    sim = sim.clone().float()
    neg = torch.finfo(sim.dtype).min
    while True:
        free = (assign < 0).nonzero().squeeze(1)
        if free.numel() == 0:
            return assign
        s = sim[free]
        s[:, room == 0] = neg
        best_sim, best = s.max(dim=1)
        # Each cluster takes its best proposers, up to its remaining room.
        order = torch.argsort(best_sim, descending=True)
        cl = best[order]
        # rank of each proposer within its cluster (stable order by similarity)
        idx = torch.argsort(cl, stable=True)
        cl_sorted = cl[idx]
        counts = torch.bincount(cl_sorted, minlength=k)
        starts = torch.cumsum(counts, 0) - counts
        rank_sorted = torch.arange(cl_sorted.numel()) - starts[cl_sorted]
        rank = torch.empty_like(rank_sorted)
        rank[idx] = rank_sorted
        accept = rank < room[cl]
        chosen = free[order[accept]]
        assign[chosen] = cl[accept]
        room -= torch.bincount(cl[accept], minlength=k)


def balanced_kmeans(features: torch.Tensor, n_clusters: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Spherical balanced k-means: ``[n, d]`` features -> ``[n]`` cluster ids, equal sizes."""
    n = features.shape[0]
    if n % n_clusters:
        raise ValueError(f"{n} neurons cannot form {n_clusters} equal clusters")
    size = n // n_clusters
    x = torch.nn.functional.normalize(features.detach().float().cpu(), dim=1)  # grouping runs on the CPU
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=g)[:n_clusters]].clone()
    assign = None
    for _ in range(iters):
        new = balanced_assign(x @ centroids.t(), size)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return assign


def coactivation_features(acts: torch.Tensor) -> torch.Tensor:
    """Co-activation profile per neuron from ``[tokens, f]`` activations: row j of the
    normalised matrix of how often neurons j and k are both in a token's top half."""
    a = acts.abs().float()
    active = (a > a.median(dim=1, keepdim=True).values).float()
    co = active.t() @ active
    return co / co.diagonal().clamp_min(1.0).unsqueeze(1)


def group_neurons(
    w: FFNWeights, expert_size: int, method: str, *, iters: int = 30, seed: int = 0,
    activations: torch.Tensor | None = None,
) -> torch.Tensor:
    """Permutation ``[f]`` that places each expert's neurons in one contiguous block."""
    f = w.width
    if f % expert_size:
        raise ValueError(
            f"expert_size {expert_size} does not divide the FFN width {f}; "
            f"choose a divisor of {f} (e.g. {', '.join(str(s) for s in _divisors_near(f, expert_size))})"
        )
    n_exp = f // expert_size
    if method == "random":
        return torch.randperm(f, generator=torch.Generator().manual_seed(seed))
    if method == "kmeans":
        feats = w.gate if w.gate is not None else w.up
        assign = balanced_kmeans(feats, n_exp, iters=iters, seed=seed)
    elif method == "coactivation":
        if activations is None:
            raise ValueError("grouping='coactivation' needs calibration data: pass calibration=... to sparsify")
        assign = balanced_kmeans(coactivation_features(activations.cpu()), n_exp, iters=iters, seed=seed)
    else:
        raise ValueError(f"unknown grouping method {method!r}")
    return torch.argsort(assign, stable=True)


def _divisors_near(f: int, s: int) -> list[int]:
    divs = [k for k in range(1, min(f, 4 * s) + 1) if f % k == 0]
    return sorted(divs, key=lambda k: abs(k - s))[:3]


def permute(w: FFNWeights, perm: torch.Tensor) -> FFNWeights:
    """Reorder the neurons of ``w`` by ``perm`` (rows of gate/up/down and the up/gate biases)."""
    def take(t):
        return None if t is None else t[perm].contiguous()
    return FFNWeights(up=take(w.up), down=take(w.down), act=w.act, gate=take(w.gate),
                      up_bias=take(w.up_bias), gate_bias=take(w.gate_bias), down_bias=w.down_bias,
                      dropout=w.dropout)
