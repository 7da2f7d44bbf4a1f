"""Distributed training on PyTorch's own engine: the torchrun environment, DDP, and reductions.

Everything that touches ``torch.distributed`` lives here. A process started without ``torchrun``
(no ``WORLD_SIZE`` > 1 in the environment) gets a disabled :class:`DistContext` and every helper
below becomes a no-op, so the single-process path never imports a process group.

Choices, documented:
- backend ``nccl`` on CUDA, ``gloo`` on CPU; each rank drives ``cuda:LOCAL_RANK``.
- the epoch order is a permutation seeded ``epoch_order_seed(seed, epoch)`` on every rank, padded to a multiple
  of the world size and dealt out ``order[rank::world]`` (what ``DistributedSampler`` does), so all
  ranks take the same number of steps; noise is drawn from a generator seeded ``seed + rank``.
- BatchNorm: by default each rank normalises with its own batch statistics and DDP broadcasts
  rank 0's running statistics at every forward, and once more after each epoch's last step (so all
  ranks hold the same model); ``sync_bn=True``
  converts to ``SyncBatchNorm`` to normalise over the global batch instead (GPUs only: PyTorch's
  SyncBatchNorm has no CPU implementation).
- only rank 0 writes files; metrics are averaged over ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from daelab.seeds import epoch_order_seed


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_name: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else return a disabled context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    import torch.distributed as td
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(True, td.get_rank(), td.get_world_size(), local_rank, device)


def wrap_model(model: torch.nn.Module, ctx: DistContext, sync_bn: bool = False) -> torch.nn.Module:
    """DDP-wrap ``model`` (converting BatchNorm to SyncBatchNorm if asked); unchanged when not distributed."""
    if not ctx.enabled:
        return model
    on_gpu = ctx.device is not None and ctx.device.type == "cuda"
    if sync_bn and not on_gpu:
        from daelab.errors import ConfigError
        raise ConfigError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only)",
                          "drop --sync-bn on CPU: rank 0's running statistics are broadcast instead")
    from torch.nn.parallel import DistributedDataParallel
    if sync_bn:
        # converts the BatchNorm children in place (same Parameters), so ``model`` stays the inner module
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.local_rank] if on_gpu else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, so after an epoch's last step each rank holds
    its own update; this makes the ranks identical again before validation and checkpoints.
    """
    if not ctx.enabled:
        return
    import torch.distributed as td
    for buffer in model.buffers():
        td.broadcast(buffer, src=0)


def shard_size(n: int, ctx: DistContext) -> int:
    """Samples each rank sees per epoch: ceil(n / world_size)."""
    return -(-n // ctx.world_size)


def epoch_order(n: int, seed: int, epoch: int, ctx: DistContext, device: torch.device) -> torch.Tensor:
    """This rank's sample indices for ``epoch``: a permutation seeded ``epoch_order_seed(seed, epoch)``, by rank."""
    generator = torch.Generator().manual_seed(epoch_order_seed(seed, epoch))
    order = torch.randperm(n, generator=generator)
    if ctx.enabled:
        total = shard_size(n, ctx) * ctx.world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        order = order[ctx.rank::ctx.world_size]
    return order.to(device)


def _reduce(value: float, ctx: DistContext, op) -> float:
    if not ctx.enabled:
        return value
    import torch.distributed as td
    device = ctx.device if ctx.device is not None and ctx.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    td.all_reduce(tensor, op=getattr(td.ReduceOp, op))
    return float(tensor)


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """Mean of ``value`` over ranks."""
    return _reduce(value, ctx, "SUM") / ctx.world_size if ctx.enabled else value


def all_reduce_max(value: float, ctx: DistContext) -> float:
    """Maximum of ``value`` over ranks."""
    return _reduce(value, ctx, "MAX")


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on any rank (so all ranks stop at the same step)."""
    return bool(_reduce(float(flag), ctx, "MAX")) if ctx.enabled else flag


def cleanup(ctx: DistContext) -> None:
    """Leave the process group, all ranks together.

    The barrier keeps a rank from tearing down its connections while another still works (rank 0
    writes the last checkpoint and draws the loss curve after the last epoch): in one CI run rank 1
    aborted ("terminate called without an active exception") on its way out while rank 0 had not
    finished; it did not recur in six reruns.
    """
    if ctx.enabled:
        import torch.distributed as td
        if td.is_initialized():
            try:
                td.barrier()
            finally:
                td.destroy_process_group()
