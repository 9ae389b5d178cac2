"""Data parallelism for the curriculum loops: every worker sees the same global batches, takes its slice of
each, and the workers together take exactly the step one worker would take on the whole batch.

Each loss is a mean over the global batch (over examples, or over target tokens for stage 3), so a worker
contributes its slice's *sum* divided by the global count; one all_reduce per step gives the counts (and the
global means for the logs), one more sums the gradients (flattened into one buffer, as DDP's buckets are).
DDP itself (``ray.train.torch.prepare_model``) does not fit these loops: it synchronises only what runs
through ``forward`` and averages per-worker means, which differ from the global mean whenever the workers'
slices hold different numbers of tokens. Gloo on CPU, NCCL on GPU (Ray Train picks the backend; every
tensor here lives on the worker's device).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeanTerm:
    """A mean kept as (sum, count) so that several workers' parts add up to the global batch's mean."""

    total: torch.Tensor  # the (differentiable) sum over this worker's rows or tokens
    count: torch.Tensor  # how many (or the sum of their weights), no gradient
    floor: float = 1.0  # the smallest denominator (an empty term is 0, not NaN)

    @staticmethod
    def of(values: torch.Tensor, weights: torch.Tensor | None = None, floor: float = 1.0) -> MeanTerm:
        if weights is None:
            return MeanTerm(values.sum(), values.new_tensor(float(values.numel())), floor)
        weights = weights.to(values.dtype)
        return MeanTerm((values * weights).sum(), weights.sum().detach(), floor)

    @staticmethod
    def empty(device: torch.device | str) -> MeanTerm:
        zero = torch.zeros((), device=device)
        return MeanTerm(zero, zero)

    def mean(self, count: torch.Tensor | None = None) -> torch.Tensor:
        return self.total / (self.count if count is None else count).clamp(min=self.floor)


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def global_means(terms: dict[str, MeanTerm]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(per term, what this worker backpropagates: its sum over the global count; per term, the global mean).

    The workers' first values add up to the global batch's mean (with one worker they are that mean);
    their gradients are then summed by :func:`sum_gradients`. Every worker must pass the same names.
    """
    dist = _group()
    names = sorted(terms)
    if dist is None:
        means = {n: terms[n].mean() for n in names}
        return means, {n: float(v.detach()) for n, v in means.items()}
    device = terms[names[0]].total.device
    packed = torch.stack([terms[n].count.float().to(device) for n in names]
                         + [terms[n].total.detach().float().to(device) for n in names]).double()
    dist.all_reduce(packed)
    counts, totals = packed[: len(names)], packed[len(names):]
    local = {n: terms[n].total / counts[i].to(terms[n].total.dtype).clamp(min=terms[n].floor)
             for i, n in enumerate(names)}
    logged = {n: float(totals[i] / counts[i].clamp(min=terms[n].floor)) for i, n in enumerate(names)}
    return local, logged


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every worker's gradients (a parameter this worker's slice did not reach counts as zero)."""
    dist = _group()
    if dist is None:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def epoch_batches(items: Sequence, batch_size: int, seed: int, epoch: int) -> list[list]:
    """The global batches of an epoch: the same shuffle (seed + epoch) on every worker."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def rank_batches(items: Sequence, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list]:
    """This worker's slice of each global batch (rows rank, rank + world, ...). With several workers a final
    batch with fewer rows than workers is dropped (as ``DistributedSampler(drop_last=True)`` would): every
    worker must take every step."""
    batches = epoch_batches(items, batch_size, seed, epoch)
    if world > 1 and batches and len(batches[-1]) < world:
        if epoch == 0 and rank == 0:
            log.warning("%d worker(s): the last batch of each epoch has %d row(s) and is dropped", world,
                        len(batches[-1]))
        batches = batches[:-1]
    return [b[rank::world] for b in batches]
