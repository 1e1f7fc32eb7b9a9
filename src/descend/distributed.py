"""Data-parallel training through ``torch.distributed``: the same ``fit`` on N processes.

Launch the script that calls :func:`descend.fit` with ``torchrun`` (or any launcher that starts
one process per device and sets ``RANK``/``WORLD_SIZE``), or initialize the process group
yourself; ``fit`` then trains one model on all of them:

.. code-block:: bash

    torchrun --nproc_per_node=4 train.py        # train.py calls descend.fit(...) as usual

What ``fit`` does in each of the N processes (``torch.distributed`` does the communication;
nothing here is a substitute for it):

* **The process group.** Joined if the launcher made one (``torch.distributed.is_initialized``);
  made from the launcher's environment otherwise (``nccl`` on CUDA, ``gloo`` on the CPU), each
  process on ``cuda:LOCAL_RANK`` when there are GPUs.
* **The model** is wrapped in ``DistributedDataParallel``, which starts every process from rank
  0's weights and averages the gradients in the backward pass. (The hand-written plain-MLP step
  of a single process is not used: its gradients would bypass DDP.) A model the user sharded
  with FSDP2 (``torch.distributed.fsdp.fully_shard``, the root included) is trained as it is:
  it gathers its weights and reduce-scatters its gradients itself; its checkpoints hold whole
  tensors (:func:`gathered`, :func:`sharded_like`) and the default policy's race takes turns
  on it (FSDP modules cannot be copied).
* **The data.** ``batch_size`` is the *global* batch: every process holds the in-memory set
  (the same seeded split and the same ``(seed, epoch)`` order) and takes its contiguous share of
  each batch, and its loss is weighted by that share, so the averaged gradient is the gradient of
  the whole batch's mean loss — the update one process would make on the same batch, up to the
  order of float additions. A ``DataLoader`` must use a ``DistributedSampler`` (its batches are
  then each process's own; ``sampler.set_epoch`` is called every epoch).
* **One run, one set of decisions.** The batch loss the divergence guard, the history and the
  default policy's range test and race read is the whole batch's (an ``all_reduce`` per step);
  the validation set is split among the processes and its loss and metric summed; a stop
  (Ctrl-C / SIGTERM, ``max_time``, a callback's request) on any process stops every process
  after the same step: the step's one ``all_reduce`` carries the loss and the stop flags, so a
  stop asked for after it takes effect after the next step. So every process takes the same decisions and returns the same
  :class:`~descend.train.Result`.
* **Files and output.** Only rank 0 prints progress and writes checkpoints (the directory must
  be one all processes can read, to resume); every process resumes from it, each with its own
  random-number state.

The seed (drawn by rank 0 when not given) is shared. A loss must be a mean over its batch's
samples, as every library loss and torch's default reductions are (a ``reduction="sum"`` loss
would be scaled by the share). Parameters that get no gradient in a step switch the run to
DDP's search for them, the step redone (``Loop._train_step_ddp``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, overload

import torch

from descend._errors import ConfigError, message
from descend.transforms._util import is_sharded as _is_dtensor

__all__ = ["World", "current", "is_main", "rank", "world_size"]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class World:
    """The processes training one model: this one's ``rank`` among ``size``.

    ``size == 1`` (the default) is a single process, and every method is a no-op.
    """

    rank: int = 0
    size: int = 1
    #: where this process's collectives run: CUDA for ``nccl``, the CPU for ``gloo``.
    device: torch.device = _CPU
    #: what one loop of the run learned for the next (the range test's, the race's, the
    #: run's own): ``"unused"`` — the model has parameters outside the loss.
    learned: set[str] = field(default_factory=set, compare=False, hash=False)
    #: DistributedDataParallel options for every wrapper of the run (from the user's own
    #: wrapper, :func:`ddp_options`)
    ddp_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: how to drop each DDP wrapper made in the run (:meth:`release`)
    holders: list[Callable[[], None]] = field(
        default_factory=list, compare=False, hash=False, repr=False
    )

    def release(self) -> None:
        """Drop the run's DDP wrappers and collect them now, while the process group and the
        interpreter are alive: a reducer freed at interpreter exit, after the group was torn
        down, can abort the process ("terminate called without an active exception", seen
        about once in 30 two-process test runs)."""
        for drop in self.holders:
            drop()
        self.holders.clear()
        gc.collect()

    @property
    def active(self) -> bool:
        """Several processes train one model."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def shard(self, lo: int, hi: int) -> tuple[int, int]:
        """This process's contiguous share of the rows ``[lo, hi)``: ``size`` parts that
        differ by at most one row, the larger ones first (a rank may get none when there are
        fewer rows than processes)."""
        n = hi - lo
        base, extra = divmod(n, self.size)
        start = lo + self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes, in place (returned for chaining)."""
        if self.active:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process gets the same answer)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    @overload
    def from_main(self, value: float) -> float: ...
    @overload
    def from_main(self, value: int) -> int: ...
    def from_main(self, value: int | float) -> int | float:
        """Rank 0's ``value`` on every process: an integer (a bool counts as one), or a float,
        exactly."""
        real = isinstance(value, float)
        if not self.active:
            return float(value) if real else int(value)
        dtype = torch.float64 if real else torch.int64
        t = torch.tensor([value if real else int(value)], dtype=dtype, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item()) if real else int(t.item())

    def text_from_main(self, text: str) -> str:
        """Rank 0's ``text`` on every process (a path, say): its UTF-8 bytes in a tensor, not a
        pickled object."""
        if not self.active:
            return text
        data = text.encode() if self.is_main else b""
        n = self.from_main(len(data))
        buf = torch.zeros(n, dtype=torch.uint8, device=self.device)
        if self.is_main and n:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if n:
            torch.distributed.broadcast(buf, src=0)
        return bytes(buf.cpu().tolist()).decode()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``t`` (same shape and dtype on all), in rank order."""
        if not self.active:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.size)]
        torch.distributed.all_gather(out, t)
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def is_sharded(model: torch.nn.Module) -> bool:
    """The model (or a submodule) was sharded with ``torch.distributed.fsdp.fully_shard``."""
    # Not imported here: torch.distributed.fsdp pulls in ~600 modules (DTensor, sympy), half a
    # second on the first fit of every process. A model sharded with it has imported it.
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp, "FSDPModule", None)
    return kind is not None and any(isinstance(m, kind) for m in model.modules())


def sharded_outside(model: torch.nn.Module) -> list[str]:
    """The trainable parameters of a sharded model that no ``fully_shard`` holds (their
    gradients would be averaged by nobody)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and not _is_dtensor(p)]


def gathered(tree: Any) -> Any:
    """``tree`` with every shard of a ``fully_shard`` model (a DTensor) replaced by the whole
    tensor — for a checkpoint file. Collective: every process calls it, in the same order."""
    if _is_dtensor(tree):
        return tree.full_tensor()
    if isinstance(tree, dict):
        return {k: gathered(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(gathered(v) for v in tree)
    return tree


def sharded_like(tree: Any, like: Any) -> Any:
    """``tree`` (whole tensors, read from a checkpoint file) with each tensor that is a DTensor
    in ``like`` turned into this process's shard of it, placed as in ``like``. Every process
    reads the same file, so no communication is needed."""
    if _is_dtensor(like) and torch.is_tensor(tree) and not _is_dtensor(tree):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            tree.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None
        )
    if isinstance(tree, dict) and isinstance(like, dict):
        return {k: sharded_like(v, like[k]) if k in like else v for k, v in tree.items()}
    if (
        isinstance(tree, (list, tuple))
        and isinstance(like, (list, tuple))
        and len(tree) == len(like)
    ):
        return type(tree)(sharded_like(a, b) for a, b in zip(tree, like))
    return tree


def ddp_options(ddp: torch.nn.parallel.DistributedDataParallel) -> dict[str, Any]:
    """The options of a user's own DDP wrapper that ``fit`` gives each of its wrappers (the
    range test's, every race candidate's, the run's): the search for unused parameters, a
    static graph, gradients as bucket views, the bucket size."""
    opts: dict[str, Any] = {
        "find_unused_parameters": bool(ddp.find_unused_parameters),
        "gradient_as_bucket_view": bool(ddp.gradient_as_bucket_view),
        "static_graph": bool(getattr(ddp, "static_graph", False)),
    }
    cap = getattr(ddp, "bucket_bytes_cap", None)
    if cap:
        opts["bucket_cap_mb"] = cap / 2**20
    return opts


_SINGLE = World()
_current: World = _SINGLE


def current() -> World:
    """The world of the run in progress in this process (a single process outside ``fit``)."""
    return _current


def rank() -> int:
    """This process's rank in the group (0 without one): for a callback that writes files."""
    if _current.active:
        return _current.rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    if _current.active:
        return _current.size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0, or a single process: where a callback should write its files and print."""
    return rank() == 0


def _launched() -> bool:
    """A launcher (torchrun, SLURM's srun with the variables set, ...) started several
    processes for this script."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def join(device: torch.device | None) -> tuple[World, torch.device | None]:
    """The world this process trains in, and the device it should train on.

    An initialized process group is joined as it is; a launcher's environment without one gets
    one (``nccl`` when the device is CUDA, ``gloo`` otherwise), and on a CUDA machine each
    process takes ``cuda:LOCAL_RANK`` unless a device was given. Otherwise: a single process.
    """
    if not torch.distributed.is_available():
        return _SINGLE, device
    dist = torch.distributed
    if not dist.is_initialized():
        if not _launched():
            return _SINGLE, device
        cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", 0))
            if device is None or torch.device(device).index is None:
                count = torch.cuda.device_count()
                if local >= count:  # NCCL takes one GPU per process
                    raise ConfigError(
                        message(
                            "a data-parallel launch",
                            "takes one GPU per process on each machine",
                            f"process {local} (LOCAL_RANK) on a machine with {count} GPU"
                            + "s" * (count != 1),
                            f"launch at most {count} (torchrun --nproc_per_node={count}), or "
                            "train on the CPU (device='cpu', --device cpu)",
                        )
                    )
                device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        # Made here, so torn down here: a group left alive at interpreter exit can abort the
        # process ("terminate called without an active exception") after a finished run.
        atexit.register(_destroy)
    size = dist.get_world_size()
    if size <= 1:
        return _SINGLE, device
    comm = torch.device("cpu")
    if dist.get_backend() == "nccl":
        comm = torch.device("cuda", torch.cuda.current_device())
        if device is None:
            device = comm
    return World(rank=dist.get_rank(), size=size, device=comm), device


def _destroy() -> None:
    if torch.distributed.is_initialized():
        with contextlib.suppress(Exception):  # every process leaves together
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def running(world: World) -> Iterator[World]:
    """Make ``world`` the :func:`current` one for the duration of a run (the loops the default
    policy starts inside it take it from here)."""
    global _current
    before, _current = _current, world
    try:
        yield world
    finally:
        _current = before
        if world.active:
            world.release()
