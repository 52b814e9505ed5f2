"""Data-parallel training across processes (``torchrun``): who am I, the process group, data shards.

The environment is read in ONE place, ``DistContext.from_env`` (called by the ``fusionedge train``
entry point); the library takes the context explicitly::

    ctx = DistContext.from_env(os.environ)      # WORLD_SIZE / RANK / LOCAL_RANK set by torchrun
    with process_group(ctx, device):            # gloo on the CPU, NCCL on CUDA; no-op for one process
        train(cfg, dist=ctx)

Sharding follows ``torch.utils.data.DistributedSampler``: every rank draws the same epoch
permutation from the shared, seeded generator, pads it to a multiple of the world size by
repeating its head, and keeps ``perm[rank::world]``, so all ranks run the same number of steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from fusionedge.sdk.errors import FusionEdgeError

from .dataset import ClipCache
from .siren_swap import SirenSwap

__all__ = ["DistContext", "resolve_device", "process_group", "shard_indices", "take_clips", "parameter_digest"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (one process: the defaults)."""

    rank: int = 0  # global rank, 0..world_size-1
    world_size: int = 1  # processes in the job, over all nodes
    local_rank: int = 0  # rank on this node (picks the GPU)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise FusionEdgeError(f"invalid distributed context: rank={self.rank}, world_size={self.world_size}, "
                                  f"local_rank={self.local_rank}")

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DistContext":
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (as set by ``torchrun``); absent: one process.

        Args:
            env: the environment, e.g. ``os.environ``.

        Raises:
            FusionEdgeError: a variable is not an integer, or the values are inconsistent.

        Returns:
            The context.
        """
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise FusionEdgeError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers: {e}") from e
        return cls(rank=rank, world_size=world, local_rank=local)


def resolve_device(requested: str, ctx: DistContext) -> torch.device:
    """The training device: ``"auto"`` is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Args:
        requested: ``"auto"`` or a torch device string (``"cpu"``, ``"cuda:1"``).
        ctx: this process's place in the job.

    Raises:
        FusionEdgeError: not a device string.

    Returns:
        The device.
    """
    if requested == "auto":
        return torch.device(f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(requested)
    except RuntimeError as e:
        raise FusionEdgeError(f"invalid device {requested!r}: {e}") from e


@contextlib.contextmanager
def process_group(ctx: DistContext, device: torch.device) -> Iterator[None]:
    """Initialize the default process group for the job (and destroy it on exit).

    Rendezvous is ``env://`` (``MASTER_ADDR``/``MASTER_PORT``, set by ``torchrun``). Does nothing for
    one process or when a group already exists (then the caller owns it).

    Args:
        ctx: this process's place in the job.
        device: the training device: NCCL for CUDA, gloo otherwise.

    Raises:
        FusionEdgeError: the group cannot be formed.
    """
    import torch.distributed as dist

    if not ctx.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
    except (RuntimeError, ValueError) as e:
        raise FusionEdgeError(f"cannot join the {backend} process group as rank {ctx.rank}/{ctx.world_size}: "
                              f"{e}") from e
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_indices(perm: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch's permutation, as ``DistributedSampler`` shards it.

    Args:
        perm: ``(N,)`` sample order, the same on every rank.
        rank, world_size: this process's place in the job.

    Returns:
        ``(ceil(N / world_size),)`` indices: ``perm`` padded with its own head to a multiple of
        ``world_size``, then every ``world_size``-th element from ``rank``.
    """
    n = len(perm)
    total = -(-n // world_size) * world_size
    if total > n:
        perm = perm.repeat(-(-total // n))[:total]
    return perm[rank:total:world_size]


def take_clips(clips: ClipCache, idx: torch.Tensor) -> ClipCache:
    """A ``ClipCache`` of the samples ``idx`` of ``clips``, in that order (tensors are copied).

    Every per-sample field (tensors, lists and dicts of tensors of length ``N``, the per-row parts
    of a siren swap) is indexed; shared fields (geometry, labels) are kept.
    """
    n = len(clips)
    pos = idx.tolist()
    changes = {}
    for f in dataclasses.fields(clips):
        v = getattr(clips, f.name)
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
            changes[f.name] = v[idx]
        elif isinstance(v, list) and len(v) == n:
            changes[f.name] = [v[i] for i in pos]
        elif isinstance(v, SirenSwap):
            changes[f.name] = v.take(idx)
        elif isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) and t.shape[0] == n for t in v.values()):
            changes[f.name] = {k: t[idx] for k, t in v.items()}
    return dataclasses.replace(clips, **changes)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters (names and exact bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
