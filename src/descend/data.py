"""From whatever the user has to device-resident batches.

:func:`prepare` turns the user's data (arrays, tensors, lists, pandas, pyarrow, an ``(X, y)``
tuple, a torch ``Dataset`` or ``DataLoader``) into a :class:`Bundle` of two :class:`Source`
objects, ``train`` and ``val``, that the training loop draws batches from.

Design:

* **Device-resident slicing.** In-memory data is converted, validated and moved to the device
  ONCE. A batch is ``X.index_select(0, perm[lo:hi])``: one gather per tensor on the device, no
  per-sample Python work and no collate (a ``DataLoader`` over a ``TensorDataset`` costs
  1.3–1.6× the training time of this on small models, DESIGN.md). With ``shuffle=False`` a batch
  is a view ``X[lo:hi]``; with ``batch_size=None`` (full batch) the tensors themselves are
  yielded, no copy at all.
* **Permutations are a pure function of ``(seed, epoch)``.** The order of epoch ``e`` comes
  from a fresh CPU ``torch.Generator`` seeded with a hash of ``(seed, e)``; ``randperm`` runs on
  the CPU (so the order is the same on every device) and the permutation is moved to the device
  once per epoch. Nothing else's use of random numbers can change the batch order.
* **Resume.** Because of the above, a position ``(epoch, batch index)`` is enough to restart
  exactly: ``source.batches(epoch, start=k)`` yields the same batches as the tail of
  ``source.batches(epoch)`` from batch ``k`` on.
* **Streaming.** A ``DataLoader`` (or an ``IterableDataset``) is streamed as given
  (``resident=False``): each batch is moved to the device with ``non_blocking=True``. Before each
  epoch a generator the loader already owns (``DataLoader(generator=...)`` or its sampler's) is
  re-seeded from ``(seed, epoch)`` and ``sampler.set_epoch(epoch)`` is called when it exists, so
  a shuffled loader with a generator resumes exactly too; ``start`` batches are skipped by
  iterating past them (they are still loaded).
* **Sample weights.** ``prepare(..., sample_weight=w)`` checks ``w`` (one finite weight >= 0
  per sample, not all 0), drops the rows whose weight is 0 (they contribute nothing to a
  weighted mean, and a batch made only of them would be 0/0), moves ``w`` to the device with
  ``X`` and ``y``, splits it along with them, and the sources then yield ``(xb, yb, wb)``
  triples sliced by the same permutation.
* **Several inputs.** ``X`` may be a tuple of arrays, one per argument of the model's
  ``forward`` (``fit(model, ((x_num, x_ids), y))`` calls ``model(x_num, x_ids)``), or a dict of
  them for keyword arguments (``model(**xb)``): each with one row per sample, each converted
  and checked on its own (integer ids stay integers), all split and sliced by the same rows.
  Batches then hold a tuple or dict ``xb``; :func:`n_rows`, :func:`take_rows`,
  :func:`cut_rows` and :func:`call_model` work on every form.
* **Bad data is refused before training** with :class:`~descend._errors.InputError` whose
  message names the input, the rule, what was received and the fix.

Example:
    >>> import numpy as np
    >>> from descend import data as D
    >>> X, y = np.random.rand(100, 3), np.array(["a", "b"] * 50)
    >>> bundle = D.prepare((X, y), validation=0.2, batch_size=16)
    >>> bundle.n_train, bundle.n_val, bundle.classes.tolist()
    (80, 20, ['a', 'b'])
    >>> for xb, yb in bundle.train.batches(epoch=0):
    ...     pass
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from descend._errors import ConfigError, InputError, check_choice, describe, message
from descend.distributed import World

__all__ = [
    "Batch",
    "Bundle",
    "DataBundle",
    "ResidentSource",
    "Source",
    "StreamSource",
    "TargetKind",
    "check_devices",
    "epoch_permutation",
    "is_streamed",
    "prepare",
    "resolve_device",
]

TargetKind = Literal["index", "float", "any"]
Features = torch.Tensor | tuple[torch.Tensor, ...]
"""One feature tensor, or a tuple of them (one per input of the model), rows first."""
Batch = (
    tuple[torch.Tensor, "torch.Tensor | None"]
    | tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor]
)
"""``(xb, yb)``, or ``(xb, yb, wb)`` when the data has per-sample weights (``yb`` may be None)."""

_ACCEPTED = (
    "a numpy array, torch Tensor, list, pandas DataFrame/Series, pyarrow Table/Array, "
    "an (X, y) tuple, a torch Dataset or a torch DataLoader"
)
_TABULAR_FIX = (
    "encode them as numbers first (e.g. one-hot with pandas.get_dummies), or train from the "
    "data file with the descend CLI / descend.tabular, which encode them for you"
)
# Separate random streams so the split and the epoch orders never share numbers.
_SPLIT_STREAM = 1
_EPOCH_STREAM = 2


# ----------------------------------------------------------------------------------------------
# Features of one input or several
# ----------------------------------------------------------------------------------------------


def is_multi(X: Any) -> bool:
    """Whether ``X`` holds several inputs: a tuple (positional) or a dict (keyword)."""
    return isinstance(X, (tuple, dict))


def inputs_of(X: Features) -> tuple[torch.Tensor, ...]:
    """The feature tensors: ``X`` itself, or each input of a multi-input ``X``."""
    if isinstance(X, dict):
        return tuple(X.values())
    return X if isinstance(X, tuple) else (X,)


def input_names(X: Any, what: str = "X") -> list[str]:
    """How messages name each input: ``X``, or ``X[0]``, ``X[1]``, ... / ``X['ids']``, ..."""
    if isinstance(X, dict):
        return [f"{what}[{k!r}]" for k in X]
    if isinstance(X, tuple):
        return [f"{what}[{i}]" for i in range(len(X))]
    return [what]


def n_rows(X: Features) -> int:
    """Samples in ``X`` (every input has that many rows)."""
    return int(inputs_of(X)[0].shape[0])


def map_inputs(X: Features, fn: Any) -> Features:
    """``fn`` applied to every input of ``X`` (a tensor, or a tuple or dict of them)."""
    return _each(X, fn)


def _each(X: Any, fn: Any) -> Any:
    """``fn`` applied to every input, keeping ``X``'s form."""
    if isinstance(X, dict):
        return {k: fn(t) for k, t in X.items()}
    return tuple(fn(t) for t in X) if isinstance(X, tuple) else fn(X)


def take_rows(X: Features, idx: torch.Tensor) -> Features:
    """Rows ``idx`` of every input (``index_select``; ``idx`` moved to each input's device)."""
    if not is_multi(X):
        return X.index_select(0, idx.to(X.device))  # type: ignore[union-attr]
    return _each(X, lambda t: t.index_select(0, idx.to(t.device)))


def cut_rows(X: Features, lo: int, hi: int) -> Features:
    """Rows ``lo:hi`` of every input (views)."""
    return _each(X, lambda t: t[lo:hi]) if is_multi(X) else X[lo:hi]  # type: ignore[index]


def call_model(model: Any, xb: Features) -> Any:
    """``model(xb)``; ``model(*xb)`` for a tuple of inputs, ``model(**xb)`` for a dict."""
    if isinstance(xb, dict):
        return model(**xb)
    return model(*xb) if isinstance(xb, tuple) else model(xb)


def _array_like(o: Any) -> bool:
    return hasattr(o, "shape") and len(getattr(o, "shape", ())) > 0


def _multi_input(obj: Any) -> bool:
    """``X`` given as a tuple (or a dict with text keys) of arrays, one per model input, rather
    than as rows."""
    if isinstance(obj, Mapping):
        return len(obj) > 0 and all(isinstance(k, str) and _array_like(v) for k, v in obj.items())
    return isinstance(obj, tuple) and len(obj) > 0 and all(_array_like(o) for o in obj)


# ----------------------------------------------------------------------------------------------
# Seeds and permutations
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _mix(seed: int, *words: int) -> int:
    """A well-mixed 64-bit seed from ``seed`` and ``words`` (a pure function of its inputs).

    Cached: numpy's ``SeedSequence`` costs ~25 us, and every epoch of the range test, of each
    race candidate and of the run asks for the same few (seed, epoch) orders (4% of a small
    scikit-learn-sized fit)."""
    entropy = [int(seed) % 2**64, *(int(w) % 2**64 for w in words)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def seed_all(seed: int) -> None:
    """``torch.manual_seed(seed)`` for the CPU and the accelerators that are present.

    ``torch.manual_seed`` also queues a lazy seeding of every accelerator backend, recording a
    Python stack trace for each (~0.25 ms a call on the 2-core CPU box: a few % of a small
    fit); this seeds the same generators and skips the backends that are not there.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.manual_seed(seed)
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        xpu.manual_seed_all(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: ``randperm(n)`` from a CPU generator seeded by ``(seed, epoch)``.

    It depends on nothing else (not on the global RNG, not on the device), so the position
    ``(epoch, batch index)`` identifies a batch exactly.

    Args:
        n: number of samples.
        seed: the run's seed.
        epoch: 0-based epoch.

    Returns:
        A CPU ``int64`` tensor holding a permutation of ``range(n)``.
    """
    gen = torch.Generator().manual_seed(_mix(seed, _EPOCH_STREAM, epoch))
    return torch.randperm(n, generator=gen)


def _check_batch_size(batch_size: Any, what: str) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ConfigError(
            message(
                what,
                "must be a positive integer, or None for one full batch",
                describe(batch_size),
                "pass e.g. batch_size=32",
            )
        )


def _check_position(epoch: int, start: int) -> None:
    for name, value in (("epoch", epoch), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ConfigError(
                message(
                    f"Source.batches: {name}",
                    "must be an integer >= 0",
                    describe(value),
                    f"pass e.g. {name}=0",
                )
            )


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class Source:
    """Where the loop draws batches from; see :class:`ResidentSource` and :class:`StreamSource`.

    Attributes:
        resident: True when the tensors live on the device and batches are slices of them.
        X: the full feature tensor when resident, else None.
        y: the full target tensor when resident and supervised, else None.
        w: the full per-sample weight tensor (N,) when resident and weighted, else None.
        n_samples: number of samples (None for a stream of unknown length).
        batch_size: samples per batch (None = one full batch).
        num_batches: batches per epoch (None for a stream of unknown length).
        exact_resume: True when ``batches(epoch, start)`` reproduces the original batches.
    """

    resident: bool = False
    X: torch.Tensor | None = None
    y: torch.Tensor | None = None
    w: torch.Tensor | None = None
    n_samples: int | None = None
    batch_size: int | None = None
    num_batches: int | None = None
    exact_resume: bool = True
    #: The processes training one model (set by :meth:`ResidentSource.shard_for`) and this
    #: process's share of the last batch's weight: 1.0 in a single process.
    world: World = World()
    share: float | torch.Tensor = 1.0

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yield the ``(xb, yb)`` batches of ``epoch`` from batch index ``start`` on.

        ``yb`` is None for unsupervised data. With per-sample weights the batches are
        ``(xb, yb, wb)`` triples.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this stream has no known number of batches")
        return self.num_batches


#: A resident training set up to this many bytes (features, targets, weights) is permuted whole
#: once per epoch and sliced into batches; a larger one is gathered batch by batch.
GATHER_ONCE_BYTES = 64 * 2**20


class ResidentSource(Source):
    """Tensors on the device, batched by indexing with the ``(seed, epoch)`` permutation.

    Args:
        X: features, first dimension = samples, already on the device.
        y: targets with the same first dimension, or None.
        batch_size: samples per batch; None = one full batch.
        shuffle: permute the samples every epoch; False = in order.
        drop_last: drop the last partial batch.
        seed: the run's seed (the order of epoch ``e`` depends only on ``(seed, e)``).
        w: per-sample weights (N,) on the device, or None. With weights every batch is a
            triple ``(xb, yb, wb)``, ``wb`` indexed like ``xb`` and ``yb``.

    Example:
        >>> src = ResidentSource(torch.arange(10.0).unsqueeze(1), None, batch_size=4)
        >>> [xb.shape[0] for xb, _ in src.batches(0)]
        [4, 4, 2]
    """

    resident = True

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor | None,
        batch_size: int | None = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        w: torch.Tensor | None = None,
    ) -> None:
        _check_batch_size(batch_size, "ResidentSource: batch_size")
        n = n_rows(X)
        if y is not None and int(y.shape[0]) != n:
            raise InputError(
                message(
                    "X and y",
                    "must have the same number of samples",
                    f"X with {n} and y with {int(y.shape[0])}",
                    "build y from the same rows as X",
                )
            )
        if w is not None and tuple(w.shape) != (n,):
            raise InputError(
                message(
                    "sample_weight",
                    f"must hold one weight per sample, shape ({n},)",
                    f"shape {tuple(w.shape)}",
                    "pass a 1-D array with one weight per row of X",
                )
            )
        self.X, self.y, self.w = X, y, w
        self.n_samples = n
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        # A batch that holds every sample is the full batch whatever its order: no gather needed.
        self._full = batch_size is None or batch_size >= n
        # Small sets are permuted whole once per epoch and sliced; large ones gathered per batch
        # (no second copy of the data).
        size = sum(t.numel() * t.element_size() for t in (*inputs_of(X), y, w) if t is not None)
        self._gather_once = size <= GATHER_ONCE_BYTES
        self.batch_size = None if batch_size is None else int(batch_size)
        self._last_hi: int | None = None  # the last batch's end, when fold_single_last moved it
        if batch_size is None:
            self.num_batches = 1
        elif drop_last:
            self.num_batches = n // batch_size
        else:
            self.num_batches = -(-n // batch_size)
        if self.num_batches == 0:
            raise ConfigError(
                message(
                    "batch_size",
                    "with drop_last=True must not exceed the number of training samples",
                    f"batch_size={batch_size} for {n} samples, which leaves no batch",
                    f"pass batch_size <= {n} or drop_last=False",
                )
            )

    def fold_single_last(self) -> bool:
        """Make a last batch of one sample part of the batch before it (``n % batch_size ==
        1``): batch norm cannot train on a single sample (torch raises "Expected more than 1
        value per channel"), so a model with it would fail at every epoch's last step. The
        epoch still sees every sample. Returns whether the batches changed."""
        return self.fold_last_below(2)

    def fold_last_below(self, rows: int) -> bool:
        """Make a last batch of fewer than ``rows`` samples part of the batch before it (see
        :meth:`fold_single_last`; data-parallel training folds one that would leave a process
        without a row). Returns whether the batches changed."""
        bs, n = self.batch_size, self.n_samples
        if self._full or self.drop_last or bs is None or self.num_batches < 2:
            return False
        if self._last_hi is not None or n - (self.num_batches - 1) * bs >= rows:
            return False
        self.num_batches -= 1
        self._last_hi = n
        return True

    def batch_rows(self) -> list[int]:
        """The rows of each of an epoch's batches, in order (the same every epoch: the
        permutation only changes which rows): the epoch's training loss weights its batches'
        mean losses by them, so a small last batch counts for its rows, not for a full batch."""
        bs, n = self.batch_size, self.n_samples or 0
        if self._full or bs is None:
            return [n]
        rows = [bs] * self.num_batches
        if not self.drop_last:
            rows[-1] = (self._last_hi or n) - (self.num_batches - 1) * bs
        return rows

    def shard_for(self, world: World) -> None:
        """Split every batch among the processes of ``world`` (a
        :class:`descend.distributed.World`): each takes its contiguous share of the batch's rows,
        and :attr:`share` is that share of the batch's weight (rows, or sample weights), by which
        its mean loss is scaled so that the processes' summed gradients are the whole batch's."""
        self.world = world
        if world.active and not self._full:
            self.fold_last_below(world.size)

    def permutation(self, epoch: int) -> torch.Tensor | None:
        """The epoch's sample order on the device, or None when batches are taken in order."""
        if not self.shuffle or self._full:
            return None
        device = inputs_of(self.X)[0].device
        return epoch_permutation(self.n_samples or 0, self.seed, epoch).to(device)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yield ``(xb, yb)`` (or ``(xb, yb, wb)`` with weights) for batches ``start, ...``.

        Args:
            epoch: 0-based epoch; with ``shuffle`` the order is a pure function of (seed, epoch).
            start: batch index to resume from (0 = the whole epoch).
        """
        _check_position(epoch, start)
        return self._iterate(int(epoch), int(start))

    def _iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        X, y, w = self.X, self.y, self.w
        world = self.world
        if self._full:
            if start != 0:
                return
            if world.active:
                yield self._part(X, y, w, None, 0, self.n_samples or 0)
                return
            yield (X, y) if w is None else (X, y, w)
            return
        bs, n = self.batch_size, self.n_samples
        assert bs is not None and n is not None
        if start >= self.num_batches:
            return
        perm = self.permutation(epoch)
        if perm is not None and self._gather_once:
            # One gather per epoch, then views: the same batches as gathering each one (rows
            # perm[lo:hi]), a third of the data-handling time of a small-MLP step (~30 -> ~10 us
            # per step in fit, benchmarks/RESULTS.md), for one extra copy of a small set.
            X = take_rows(X, perm)
            y = None if y is None else y.index_select(0, perm)
            w = None if w is None else w.index_select(0, perm)
            perm = None
        last = self.num_batches - 1
        for b in range(start, self.num_batches):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if b == last:
                hi = self._last_hi or hi  # a folded single last sample rides along
            if world.active:
                yield self._part(X, y, w, perm, lo, hi)
                continue
            if perm is None:
                xb, yb = cut_rows(X, lo, hi), (None if y is None else y[lo:hi])
                wb = None if w is None else w[lo:hi]
            else:
                idx = perm[lo:hi]
                xb, yb = take_rows(X, idx), (None if y is None else y.index_select(0, idx))
                wb = None if w is None else w.index_select(0, idx)
            yield (xb, yb) if wb is None else (xb, yb, wb)

    def _part(
        self,
        X: Features,
        y: torch.Tensor | None,
        w: torch.Tensor | None,
        perm: torch.Tensor | None,
        lo: int,
        hi: int,
    ) -> Batch:
        """This process's share of the batch of rows ``[lo, hi)`` (of ``perm`` when given),
        setting :attr:`share` to its part of the batch's weight."""
        a, b = self.world.shard(lo, hi)
        if perm is None:
            xb, yb = cut_rows(X, a, b), (None if y is None else y[a:b])
            wb = None if w is None else w[a:b]
            w_all = None if w is None else w[lo:hi]
        else:
            idx = perm[a:b]
            xb, yb = take_rows(X, idx), (None if y is None else y.index_select(0, idx))
            wb = None if w is None else w.index_select(0, idx)
            w_all = None if w is None else w.index_select(0, perm[lo:hi])
        if w is None:
            self.share = (b - a) / (hi - lo)
        else:
            total = w_all.sum()  # type: ignore[union-attr]
            self.share = torch.where(total > 0, wb.sum() / total, total)  # type: ignore[union-attr]
        return (xb, yb) if wb is None else (xb, yb, wb)


class StreamSource(Source):
    """A ``DataLoader`` streamed as given; each batch moved to the device on arrival.

    Batches must be a tensor ``x`` or a sequence ``(x,)`` / ``(x, y)``. Floating ``x`` is cast
    to ``dtype``; ``y`` to ``int64`` (integer labels, target_kind "index") or ``dtype`` (float
    targets). Values are not validated per batch (that would sync the device every step),
    except by ``host_check`` on the host before the move (fit's check of embedding ids).

    Before each epoch, generators the loader owns are re-seeded from ``(seed, epoch)`` and
    ``sampler.set_epoch(epoch)`` is called when present, so a loader built with
    ``DataLoader(..., shuffle=True, generator=torch.Generator())`` has a reproducible order and
    resumes exactly. A plain ``DataLoader(..., shuffle=True)`` (no generator: its order comes
    from torch's global random state when an epoch starts) gets that state seeded from
    ``(seed, epoch)`` in a fork for the epoch's first batch, then restored: reproducible and
    exactly resumable too. Resuming at batch ``start`` iterates past (and so loads) the
    skipped batches.
    """

    resident = False

    def __init__(
        self,
        loader: DataLoader,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        target_kind: TargetKind = "index",
        seed: int = 0,
    ) -> None:
        self.loader = loader
        self.device = device
        self.dtype = dtype
        self.target_kind = target_kind
        self.seed = int(seed)
        self.batch_size = getattr(loader, "batch_size", None)
        self.n_samples = _safe_len(getattr(loader, "dataset", None))
        self.num_batches = _safe_len(loader)
        self._generators = _loader_generators(loader)
        sampler = getattr(loader, "sampler", None)
        self._set_epoch = [
            s
            for s in (sampler, getattr(getattr(loader, "batch_sampler", None), "sampler", None))
            if s is not None and callable(getattr(s, "set_epoch", None))
        ]
        ordered = isinstance(sampler, SequentialSampler) or isinstance(
            getattr(loader, "dataset", None), IterableDataset
        )
        # A RandomSampler without a generator draws its epoch's order from torch's global
        # random state when the epoch's iterator starts: seeded here from (seed, epoch) in a
        # fork of that state (restored after), so the order is reproducible and a resumed
        # epoch is the original one, without touching the user's loader or random stream.
        self._global_order = (
            isinstance(sampler, RandomSampler) and sampler.generator is None and not self._set_epoch
        )
        self.exact_resume = bool(
            ordered or self._generators or self._set_epoch or self._global_order
        )
        #: called with each batch's features on the host before they move to the device (fit
        #: sets it to check embedding ids: on a GPU one out of range is a device-side assert)
        self.host_check: Callable[[Any], None] | None = None

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yield the loader's batches of ``epoch`` from batch index ``start`` on, on the device."""
        _check_position(epoch, start)
        return self._iterate(int(epoch), int(start))

    def _iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        for gen in self._generators:
            gen.manual_seed(_mix(self.seed, _EPOCH_STREAM, epoch))
        done = set()
        for s in self._set_epoch:
            if id(s) not in done:
                s.set_epoch(epoch)
                done.add(id(s))
        batches: Iterator[Any]
        if self._global_order:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(_mix(self.seed, _EPOCH_STREAM, epoch))
                it = iter(self.loader)  # (the workers' base seed is drawn here)
                try:
                    first = next(it)  # (the sampler draws its order at its first item)
                except StopIteration:
                    return
            batches = itertools.chain([first], it)
        else:
            batches = iter(self.loader)
        for i, batch in enumerate(batches):
            if i >= start:
                yield self._move(batch)

    def _move(self, batch: Any) -> Batch:
        if isinstance(batch, torch.Tensor):
            x, y = batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
            x, y = batch[0], (batch[1] if len(batch) == 2 else None)
        else:
            got = f"a {type(batch).__name__}" + (
                f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""
            )
            raise InputError(
                message(
                    "DataLoader batches",
                    "must be a tensor x or a pair (x, y) of tensors",
                    got,
                    "give the DataLoader a collate_fn (or the dataset a __getitem__) that "
                    "returns (x, y)",
                )
            )
        if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
            x = tuple(x)  # several inputs: the model is called as model(*x)
        if isinstance(x, Mapping) and x and all(isinstance(t, torch.Tensor) for t in x.values()):
            x = dict(x)  # keyword inputs: model(**x)
        for name, t in (("x", x), ("y", y)):
            if t is not None and not isinstance(t, (torch.Tensor, tuple, dict)):
                raise InputError(
                    message(
                        f"DataLoader batch {name}",
                        "must be a torch Tensor (x may be a tuple of them, one per model input)",
                        f"a {type(t).__name__}",
                        "convert the items to tensors in the dataset or the collate_fn",
                    )
                )
        if isinstance(y, (tuple, dict)):
            raise InputError(
                message(
                    "DataLoader batch y",
                    "must be a torch Tensor",
                    "a tuple",
                    "return one target tensor per batch (x may be a tuple of inputs)",
                )
            )
        if self.host_check is not None:
            self.host_check(x)
        x = _each(
            x,
            lambda t: t.to(
                self.device, dtype=self.dtype if _float_features(t) else None, non_blocking=True
            ),
        )
        if y is not None:
            if self.target_kind == "index" and not y.is_floating_point():
                target_dtype = torch.int64
            elif self.target_kind == "float" or y.is_floating_point():
                target_dtype = self.dtype
            else:
                target_dtype = None
            y = y.to(self.device, dtype=target_dtype, non_blocking=True)
        return x, y


def _safe_len(obj: Any) -> int | None:
    if obj is None or isinstance(obj, IterableDataset):
        return None
    try:
        return len(obj)
    except TypeError:
        return None


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The torch generators that decide a loader's order (deduplicated, in a fixed order)."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


# ----------------------------------------------------------------------------------------------
# The bundle and prepare()
# ----------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """What :func:`prepare` returns.

    Attributes:
        train: the training :class:`Source`.
        val: the validation :class:`Source`, or None.
        classes: original labels (``classes[i]`` is the label of class index ``i``) when the
            targets were encoded (strings, bools, integers not ``0..C-1``); else None.
        n_features: features per sample (product of ``X.shape[1:]``, 1 for 1-D ``X``); None
            when unknown (a stream).
        n_train: training samples (None for a stream of unknown length).
        n_val: validation samples (0 without validation; None for a stream of unknown length).
        n_classes: number of classes for target_kind "index" on in-memory data, else None.
        feature_shape: ``X.shape[1:]`` (None when unknown).
        target_kind: the target kind the data was prepared for.
        device: where the resident tensors live.
    """

    train: Source
    val: Source | None
    classes: np.ndarray | None
    n_features: int | None
    n_train: int | None
    n_val: int | None
    n_classes: int | None = None
    feature_shape: tuple[int, ...] | None = None
    target_kind: TargetKind = "index"
    device: torch.device | None = None
    #: with ``validation="auto"``: why nothing was held out (too few samples), else None
    no_split_why: str | None = None


DataBundle = Bundle
"""Alias of :class:`Bundle`."""


def is_streamed(data: Any) -> bool:
    """True when :func:`prepare` would stream ``data`` (a DataLoader or an IterableDataset).

    Streamed data cannot be split by a validation fraction; a caller whose default is a
    fraction can use this to fall back to no validation.
    """
    return isinstance(data, (DataLoader, IterableDataset))


@dataclass
class _Arrays:
    X: Any
    y: Any
    has_y: bool


@dataclass
class _Stream:
    loader: DataLoader


def prepare(
    data: Any,
    validation: Any = 0.2,
    target_kind: TargetKind = "index",
    stratify: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    batch_size: int | None = 32,
    shuffle: bool = True,
    drop_last: bool = False,
    sample_weight: Any = None,
    ignore_index: int | None = None,
) -> Bundle:
    """Validate and convert the user's data into device-resident (or streamed) batch sources.

    Args:
        data: ``(X, y)``; ``X`` alone (``y=None``, for unsupervised or custom losses); a torch
            ``Dataset`` (a ``TensorDataset``'s tensors are used directly; any other map-style
            dataset is materialized ONCE by indexing every item and stacking, so keep it to a
            size that fits in memory; an ``IterableDataset`` is streamed); or a ``DataLoader``
            (streamed as given). ``X`` and ``y`` may be numpy arrays, torch tensors, lists,
            pandas DataFrames/Series, pyarrow Tables/Arrays or anything with ``__array__``.
            Floating and bool features become ``dtype``; integer features (e.g. token ids) keep
            their integer dtype, except in DataFrames/Tables, which are tabular and become
            ``dtype``. A tuple is always read as ``(X, y)``; ``X`` itself may be a tuple of
            arrays, one per input of the model, or a dict of them (keyword inputs), each with
            one row per sample.
        validation: a fraction in (0, 1) split off with ``seed`` (stratified by class when
            ``target_kind == "index"`` and ``stratify``); explicit data in any form ``data``
            accepts; or None / 0 for no validation. A fraction needs in-memory data.
            ``"auto"``: ``AUTO_VALIDATION`` of in-memory data, and none of a stream or of a
            set too small to split (fewer than ``AUTO_MIN_VALIDATION`` samples to hold out,
            or a stratified split that cannot keep every class on both sides: the reason is
            ``Bundle.no_split_why``).
        target_kind: "index": class labels -> ``int64`` indices (labels that are not
            ``0..C-1`` are encoded by their sorted unique values, see ``Bundle.classes``);
            "float": real targets -> ``dtype``; "any": dtype kept, floating -> ``dtype``.
        stratify: keep class proportions in a fractional split (target_kind "index").
        device: where resident data goes; None = :func:`resolve_device` (accelerator if any).
        dtype: floating dtype for features and float targets.
        seed: seeds the split and every epoch's order.
        batch_size: samples per batch, or None for one full batch.
        shuffle: a new order every epoch (a pure function of ``(seed, epoch)``).
        drop_last: drop the last partial training batch.
        sample_weight: one finite weight >= 0 per sample of in-memory ``data`` (any 1-D
            array-like), not all 0. Rows of weight 0 are dropped (they would contribute nothing
            to a weighted mean); the rest are split along with ``X`` and ``y`` (a fractional
            validation part keeps its rows' weights) and the sources yield ``(xb, yb, wb)``.
            Explicit validation data is not weighted.
        ignore_index: a label value the loss skips (``cross_entropy(ignore_index=...)``,
            target_kind "index"): no class, so never encoded, and not all of ``y``.

    Returns:
        A :class:`Bundle`; in-memory data is on ``device`` (one copy).

    Raises:
        InputError: data that cannot be used (types, lengths, NaN/inf, empty, bad split, ...).
        ConfigError: a setting outside its range (batch_size, dtype, device, target_kind).

    Example:
        >>> import torch
        >>> b = prepare((torch.randn(50, 4), torch.randint(0, 3, (50,))), batch_size=None)
        >>> b.train.X.shape[0] + b.val.X.shape[0], b.train.num_batches
        (50, 1)
    """
    check_choice("target_kind", target_kind, ("index", "float", "any"), owner="prepare")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            message(
                "prepare: dtype",
                "must be a floating torch dtype",
                describe(dtype),
                "pass e.g. dtype=torch.float32",
            )
        )
    _check_batch_size(batch_size, "prepare: batch_size")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(
            message("prepare: seed", "must be an integer", describe(seed), "pass e.g. seed=0")
        )
    seed = int(seed)
    batch_size = None if batch_size is None else int(batch_size)
    device = resolve_device(device, None)

    train_raw = _unpack(data, "data", batch_size, drop_last)
    auto = isinstance(validation, str) and validation.strip().lower() == "auto"
    if auto:
        validation = None if isinstance(train_raw, _Stream) else AUTO_VALIDATION
    fraction, val_raw = _parse_validation(validation, batch_size)

    kw = {"device": device, "dtype": dtype, "target_kind": target_kind, "seed": seed}

    if isinstance(train_raw, _Stream):
        if fraction is not None:
            raise InputError(
                message(
                    f"validation={validation!r}",
                    "(a fraction) needs in-memory data to split",
                    "a DataLoader / IterableDataset, which is streamed",
                    "pass explicit validation data (a DataLoader, Dataset or (X_val, y_val)), "
                    "or validation=None",
                )
            )
        if sample_weight is not None:
            raise InputError(
                message(
                    "sample_weight",
                    "needs in-memory data (it is matched to the rows of X)",
                    "a DataLoader / IterableDataset, which is streamed",
                    "pass the data as arrays (X, y), or weight the loss inside your own loop",
                )
            )
        train: Source = StreamSource(train_raw.loader, **kw)
        val = _validation_source(val_raw, batch_size, **kw)
        dataset = getattr(train_raw.loader, "dataset", None)
        shape = None
        if isinstance(dataset, TensorDataset) and dataset.tensors:
            shape = tuple(dataset.tensors[0].shape[1:])
        return Bundle(
            train=train,
            val=val,
            classes=None,
            n_features=None if shape is None else _n_features(shape),
            n_train=train.n_samples,
            n_val=0 if val is None else val.n_samples,
            n_classes=None,
            feature_shape=shape,
            target_kind=target_kind,
            device=device,
        )

    # In memory: convert, validate, encode labels (jointly with explicit validation labels).
    X = _inputs(train_raw.X, "X", dtype)
    n = n_rows(X)
    if n == 0:
        raise InputError(
            message(
                "the training data",
                "must contain at least one sample",
                f"X of shape {shapes_of(X)}",
                "pass a non-empty X",
            )
        )
    y = _targets(train_raw.y, "y", target_kind, dtype, n) if train_raw.has_y else None

    val_arrays = None
    if isinstance(val_raw, _Arrays):
        _check_same_columns(train_raw.X, val_raw.X)
        Xv = _inputs(val_raw.X, "validation X", dtype)
        if n_rows(Xv) == 0:
            raise InputError(
                message(
                    "the validation data",
                    "must contain at least one sample",
                    f"X of shape {shapes_of(Xv)}",
                    "pass non-empty validation data, or validation=None",
                )
            )
        _check_like_training(X, Xv)
        if y is not None and not val_raw.has_y:
            raise InputError(
                message(
                    "validation",
                    "must have targets like the training data",
                    "validation X without y",
                    "pass validation=(X_val, y_val)",
                )
            )
        yv = None
        if y is not None:
            yv = _targets(val_raw.y, "validation y", target_kind, dtype, n_rows(Xv))
        val_arrays = (Xv, yv)

    classes = None
    n_classes = None
    if y is not None and target_kind == "index":
        parts = [y] if val_arrays is None or val_arrays[1] is None else [y, val_arrays[1]]
        encoded, classes, n_classes = _encode_labels(parts, ["y", "validation y"], ignore_index)
        y = encoded[0]
        if len(encoded) > 1:
            val_arrays = (val_arrays[0], encoded[1])
        if ignore_index is not None and y.numel() and bool((y == ignore_index).all()):
            raise InputError(
                message(
                    "y",
                    "must hold at least one label the loss does not skip",
                    f"every training label equals ignore_index={ignore_index}",
                    "check the labels, and the ignore_index given to the loss",
                )
            )

    _check_inputs_finite(X, "X", dtype)
    if val_arrays is not None:
        _check_inputs_finite(val_arrays[0], "validation X", dtype)

    w = None
    if sample_weight is not None:
        w = _sample_weight(sample_weight, n, dtype)
        keep = w > 0
        if not bool(keep.all()):
            # Classes were encoded above, from every row: dropping a class's only rows keeps
            # its index (and Bundle.classes) stable.
            idx = keep.nonzero().reshape(-1)
            X = take_rows(X, idx)
            y = None if y is None else y.index_select(0, idx.to(y.device))
            w = w.index_select(0, idx)
            n = int(idx.numel())

    wv = None
    no_split_why = None
    labels = None
    if fraction is not None:
        if y is not None and target_kind == "index" and stratify and y.ndim == 1:
            labels = y.cpu()
            if ignore_index is not None:  # the ignored rows are one more group to spread
                labels = labels.masked_fill(labels == ignore_index, n_classes or 0)
        if auto:
            no_split_why = _too_few_to_split(n, fraction, labels)
            if no_split_why is not None:
                fraction = None
    if fraction is not None:
        train_idx, val_idx = _split_indices(n, fraction, labels, seed)
        Xv = take_rows(X, val_idx)
        yv = None if y is None else y.index_select(0, val_idx.to(y.device))
        X = take_rows(X, train_idx)
        y = None if y is None else y.index_select(0, train_idx.to(y.device))
        if w is not None:
            wv, w = w.index_select(0, val_idx), w.index_select(0, train_idx)
        val_arrays = (Xv, yv)

    Xd, yd = _to_device(X, y, device, dtype)
    wd = None if w is None else w.to(device)
    train = ResidentSource(Xd, yd, batch_size, shuffle, drop_last, seed, w=wd)
    val = None
    if val_arrays is not None:
        Xvd, yvd = _to_device(val_arrays[0], val_arrays[1], device, dtype)
        wvd = None if wv is None else wv.to(device)
        val = ResidentSource(Xvd, yvd, batch_size, shuffle=False, drop_last=False, seed=seed, w=wvd)
    elif isinstance(val_raw, _Stream):
        val = StreamSource(val_raw.loader, **kw)
    shape = None if is_multi(Xd) else tuple(Xd.shape[1:])
    return Bundle(
        train=train,
        val=val,
        classes=classes,
        n_features=None if shape is None else _n_features(shape),
        n_train=train.n_samples,
        n_val=0 if val is None else val.n_samples,
        n_classes=n_classes,
        feature_shape=shape,
        target_kind=target_kind,
        device=device,
        no_split_why=no_split_why,
    )


def _sample_weight(obj: Any, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample weights as a CPU ``dtype`` tensor of shape (n,), or InputError."""
    fix = "pass one finite weight >= 0 per row of X, e.g. numpy.ones(len(X))"
    if isinstance(obj, numbers.Number):
        obj = np.asarray(obj)  # refused below as a scalar, naming the shape it needs
    raw = _raw(obj, "sample_weight", tabular_float=False)
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind == "O" and raw.size and _numeric_objects(raw):
            raw = _object_numbers(raw)
        if raw.dtype.kind not in "biufc":
            raise InputError(
                message("sample_weight", "must be numbers", f"values of dtype {raw.dtype}", fix)
            )
        raw = _np_to_tensor(raw)
    if raw.is_complex():
        raise InputError(
            message("sample_weight", "must be real numbers", f"dtype {raw.dtype}", fix)
        )
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1 or int(raw.shape[0]) != n:
        raise InputError(
            message(
                "sample_weight",
                f"must hold one weight per sample, shape ({n},)",
                "a scalar" if raw.ndim == 0 else f"shape {tuple(raw.shape)}",
                fix,
            )
        )
    w = raw.to("cpu", dtype=torch.float64 if raw.dtype == torch.float64 else dtype)
    _check_finite(w, "sample_weight", None, fix=fix)
    # Weights out of dtype's range (both ways) are told to be scaled, not standardized (that
    # would make some negative) nor called all 0: a weighted mean is the same for w / w.max().
    rescale = "divide them by their largest, e.g. w / w.max() (a weighted mean is the same)"
    big = float(w.abs().max()) if w.numel() else 0.0
    if big > torch.finfo(dtype).max:
        raise InputError(
            message(
                "sample_weight",
                f"must fit in {dtype} (<= {torch.finfo(dtype).max:.3g})",
                f"weights up to {big:.3g}",
                rescale,
            )
        )
    positive = bool((w > 0).any())
    w = w.to(dtype)
    if positive and not bool((w > 0).any()):
        raise InputError(
            message(
                "sample_weight",
                f"must not all round to 0 in {dtype}",
                f"weights up to {big:.3g}, below its smallest ({torch.finfo(dtype).tiny:.3g})",
                rescale,
            )
        )
    negative = w < 0
    if bool(negative.any()):
        first = int(negative.to(torch.uint8).argmax())
        raise InputError(
            message(
                "sample_weight",
                "must be >= 0",
                f"{int(negative.sum())} negative weight(s), the first {float(w[first]):g} at "
                f"row {first}",
                "use 0 to leave a sample out",
            )
        )
    if not bool((w > 0).any()):
        raise InputError(
            message(
                "sample_weight",
                "must give at least one sample a weight > 0",
                f"all {n} weights equal to 0",
                "give the samples to train on a positive weight",
            )
        )
    return w


def _n_features(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


# Feature dtypes that become the model's floating dtype besides floats: booleans and the small
# integers of pixels, flags and counts (uint16: 16-bit images, which neither a Linear layer nor
# nn.Embedding accepts as they are). int32/int64 stay integers: what nn.Embedding indexes with.
_FLOAT_FEATURES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16)


# Unsigned integers wider than a byte, which torch supports for storage but few operations.
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _float_features(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.dtype in _FLOAT_FEATURES


def _to_device(
    X: Features, y: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[Features, torch.Tensor | None]:
    # One .to() with both device and dtype: no intermediate copy on the device; a no-op when
    # the tensor already has the right dtype and device.
    Xd = _each(X, lambda t: t.to(device, dtype=dtype if _float_features(t) else None))
    yd = None if y is None else y.to(device)
    return Xd, yd


def _parse_validation(validation: Any, batch_size: int | None) -> tuple[float | None, Any]:
    """Return ``(fraction, raw)``: at most one of them is not None."""
    if validation is None:
        return None, None
    if isinstance(validation, (bool, numbers.Real)):
        ok = not isinstance(validation, bool) and (validation == 0 or 0 < float(validation) < 1)
        if not ok:
            raise InputError(
                message(
                    "validation",
                    "must be a fraction in (0, 1), validation data, or None",
                    describe(validation),
                    "pass e.g. validation=0.2, or validation=None for no validation",
                )
            )
        return (None if validation == 0 else float(validation)), None
    return None, _unpack(validation, "validation", batch_size, False)


def _validation_source(
    val_raw: Any,
    batch_size: int | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    target_kind: TargetKind,
    seed: int,
) -> Source | None:
    """Validation next to a streamed training set (no joint label encoding is possible)."""
    if val_raw is None:
        return None
    if isinstance(val_raw, _Stream):
        return StreamSource(val_raw.loader, device, dtype, target_kind, seed)
    X = _inputs(val_raw.X, "validation X", dtype)
    if n_rows(X) == 0:
        raise InputError(
            message(
                "the validation data",
                "must contain at least one sample",
                f"X of shape {shapes_of(X)}",
                "pass non-empty validation data, or validation=None",
            )
        )
    if not val_raw.has_y and target_kind != "any":
        # (a library loss compares with targets: without them every evaluation would fail)
        raise InputError(
            message(
                "validation",
                f"must have targets for a loss that compares with them (target_kind "
                f"{target_kind!r})",
                "validation X without y",
                "pass validation=(X_val, y_val)",
            )
        )
    y = None
    if val_raw.has_y:
        y = _targets(val_raw.y, "validation y", target_kind, dtype, n_rows(X))
        if target_kind == "index":
            if not isinstance(y, torch.Tensor) or y.dtype == torch.bool:
                raise InputError(
                    message(
                        "validation y",
                        "must be integer class indices when the training data is streamed",
                        f"labels of dtype {y.dtype}",
                        "encode the labels as 0..C-1 in both the DataLoader and the "
                        "validation data",
                    )
                )
            _check_integral(y, "validation y")
            y = y.long()
    _check_inputs_finite(X, "validation X", dtype)
    Xd, yd = _to_device(X, y, device, dtype)
    return ResidentSource(Xd, yd, batch_size, shuffle=False, drop_last=False, seed=seed)


# ----------------------------------------------------------------------------------------------
# Unpacking containers
# ----------------------------------------------------------------------------------------------


def _unpack(obj: Any, role: str, batch_size: int | None, drop_last: bool) -> _Arrays | _Stream:
    if isinstance(obj, DataLoader):
        return _Stream(obj)
    if isinstance(obj, IterableDataset):
        if batch_size is None:
            raise ConfigError(
                message(
                    "batch_size",
                    "must be an integer for an IterableDataset, which is streamed",
                    "batch_size=None (full batch)",
                    "pass e.g. batch_size=32, or a DataLoader(dataset, batch_size=None) if "
                    "the dataset already yields batches",
                )
            )
        return _Stream(DataLoader(obj, batch_size=batch_size, drop_last=drop_last))
    if isinstance(obj, Dataset):
        return _materialize(obj, role)
    if isinstance(obj, tuple):
        if len(obj) == 2:
            return _Arrays(obj[0], obj[1], obj[1] is not None)
        if len(obj) == 1:
            return _Arrays(obj[0], None, False)
        raise InputError(
            message(
                role,
                "as a tuple must be (X, y) or (X,)",
                f"a tuple of {len(obj)} items",
                "pass (X, y): several model inputs go in one tuple X, ((x1, x2), y), and "
                "per-sample weights as sample_weight=w",
            )
        )
    return _Arrays(obj, None, False)


def _materialize(ds: Dataset, role: str) -> _Arrays:
    """A map-style dataset as arrays: TensorDataset's tensors, else every item indexed once."""
    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset):
        idx = torch.as_tensor(list(ds.indices), dtype=torch.int64)
        tensors = [t.index_select(0, idx.to(t.device)) for t in ds.dataset.tensors]
        return _tensor_tuple(tensors, role)
    if isinstance(ds, TensorDataset):
        return _tensor_tuple(list(ds.tensors), role)
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(
            message(
                f"{role} (a {type(ds).__name__})",
                "must have a length (__len__) to be loaded in memory",
                "a dataset without __len__",
                "wrap it in a torch DataLoader to stream it",
            )
        ) from None
    if n == 0:
        return _Arrays(np.zeros((0, 0)), None, False)
    items = [ds[i] for i in range(n)]
    first = items[0]
    if isinstance(first, (tuple, list)):
        if len(first) not in (1, 2):
            raise InputError(
                message(
                    f"{role} items",
                    "must be x or (x, y)",
                    f"tuples of {len(first)} items",
                    "return (x, y) from __getitem__",
                )
            )
        x0 = first[0]
        if (
            isinstance(x0, (tuple, list))
            and x0
            and all(isinstance(o, (torch.Tensor, np.ndarray)) for o in x0)
        ):
            # items ((x1, x2, ...), y), each x an array or tensor (a 0-d id too): one stacked
            # array per input of the model (a tuple of plain numbers stays one row)
            xs: Any = tuple(
                _stack([it[0][k] for it in items], f"{role} item features [{k}]")
                for k in range(len(first[0]))
            )
        elif (
            isinstance(x0, Mapping)
            and x0
            and all(isinstance(o, (torch.Tensor, np.ndarray)) for o in x0.values())
        ):
            # items ({"ids": ..., "mask": ...}, y): one stacked array per keyword input
            xs = {
                k: _stack([it[0][k] for it in items], f"{role} item features [{k!r}]") for k in x0
            }
        else:
            xs = _stack([it[0] for it in items], f"{role} item features")
        if len(first) == 1:
            return _Arrays(xs, None, False)
        return _Arrays(xs, _stack([it[1] for it in items], f"{role} item targets"), True)
    if isinstance(first, dict):
        raise InputError(
            message(
                f"{role} items",
                "must be x or (x, y)",
                f"dicts with keys {sorted(first)[:5]}",
                "return (x, y) from __getitem__, or stream it with a DataLoader and a "
                "collate_fn that returns (x, y)",
            )
        )
    return _Arrays(_stack(items, f"{role} items"), None, False)


def _tensor_tuple(tensors: list[torch.Tensor], role: str) -> _Arrays:
    if len(tensors) == 1:
        return _Arrays(tensors[0], None, False)
    if len(tensors) == 2:
        return _Arrays(tensors[0], tensors[1], True)
    raise InputError(
        message(
            f"{role} (a TensorDataset)",
            "must hold (X,) or (X, y)",
            f"{len(tensors)} tensors",
            "build TensorDataset(X, y), and pass per-sample weights as sample_weight=w",
        )
    )


def _shape_of(v: Any) -> Any:
    """``v``'s shape for a message; a tuple of arrays shows each one's."""
    if isinstance(v, (tuple, list)) and v and all(hasattr(x, "shape") for x in v):
        return tuple(tuple(x.shape) for x in v)
    try:
        return tuple(np.shape(v))
    except ValueError:
        return f"a ragged {type(v).__name__}"


def _stack(values: list[Any], what: str, pair_hint: bool = False) -> Any:
    try:
        if all(isinstance(v, torch.Tensor) for v in values):
            return torch.stack([v.detach() for v in values])
        return np.asarray(
            [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in values]
        )
    except (RuntimeError, ValueError) as err:
        shapes = sorted({_shape_of(v) for v in values[:1000]}, key=str)[:3]
        raise InputError(
            message(
                what,
                "must all have the same shape to be stacked",
                f"shapes such as {', '.join(str(s) for s in shapes)}",
                "pass features and targets as a tuple (X, y), not a list [X, y]"
                if pair_hint
                else "pad or crop them to one shape, or stream a DataLoader with its own "
                "collate_fn",
            )
        ) from err


# ----------------------------------------------------------------------------------------------
# Conversion of one array-like
# ----------------------------------------------------------------------------------------------


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def _raw(obj: Any, what: str, tabular_float: bool) -> torch.Tensor | np.ndarray:
    """Any accepted container -> a torch tensor (numeric) or a numpy array (anything else).

    With ``tabular_float`` (features), DataFrame/Table columns must be numeric and come back as
    float64; non-numeric columns are refused naming them.
    """
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise InputError(
                message(
                    what, "must be a dense tensor", f"a {obj.layout} tensor", "call .to_dense()"
                )
            )
        return obj.detach()
    if isinstance(obj, np.ndarray):
        return obj
    mod = _module_of(obj)
    if mod.startswith("pandas"):
        return _from_pandas(obj, what, tabular_float)
    if mod.startswith("pyarrow"):
        return _from_arrow(obj, what, tabular_float)
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, torch.Tensor) for v in obj):
            # [X, y] of two tensors of different shapes is (X, y) written as a list
            pair = isinstance(obj, list) and len(obj) == 2 and obj[0].shape != obj[1].shape
            return _stack(list(obj), f"{what} rows", pair_hint=pair and obj[0].dim() > 0)
        try:
            return np.asarray(obj)
        except ValueError as err:
            if isinstance(obj, list) and all(
                isinstance(v, (tuple, list))
                and len(v) == 2
                and (isinstance(v[0], (tuple, list)) or len(getattr(v[0], "shape", ())) > 0)
                for v in obj
            ):
                # (a list of samples, as a map-style dataset holds them: not ragged rows)
                raise InputError(
                    message(
                        what,
                        "as a list must hold one row of numbers per sample",
                        f"a list of {len(obj)} (x, y) pairs",
                        "pass the pairs as (X, y), e.g. (numpy.stack([x for x, _ in data]), "
                        "numpy.array([y for _, y in data]))",
                    )
                ) from err
            raise InputError(
                message(
                    what,
                    "must be rectangular: every row the same length",
                    "a ragged list",
                    "pass features and targets as a tuple (X, y), not a list [X, y]"
                    if isinstance(obj, list)
                    and len(obj) == 2
                    and all(hasattr(v, "shape") and len(v.shape) > 0 for v in obj)
                    else "pad the rows to one length, or pass a numpy array",
                )
            ) from err
    if isinstance(obj, (str, bytes, dict, set, numbers.Number)) or not hasattr(obj, "__array__"):
        fix = "convert it with numpy.asarray(...) first"
        if hasattr(obj, "toarray"):
            fix = "densify it with .toarray() first"
        elif isinstance(obj, Iterator):
            # (a generator of batches: numpy.asarray of it is a useless 0-d object array)
            fix = (
                "fit passes over the data once per epoch and an iterator is read once: put "
                "the code that yields the batches in the __iter__ of a "
                "torch.utils.data.IterableDataset and pass DataLoader(that, batch_size=None), "
                "or pass the arrays themselves"
            )
        raise InputError(message(what, f"must be {_ACCEPTED}", f"a {type(obj).__name__}", fix))
    return np.asarray(obj)


def _from_pandas(obj: Any, what: str, tabular_float: bool) -> np.ndarray:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        # (by position: obj[c] of a name two columns share is a DataFrame, with no .dtype)
        if tabular_float:
            bad = [
                (c, dt)
                for i, (c, dt) in enumerate(zip(obj.columns, obj.dtypes))
                if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))
                # an object column of numbers (with gaps) is numbers, as an object array is
                and not (
                    pd.api.types.is_object_dtype(dt) and _numeric_objects(obj.iloc[:, i].to_numpy())
                )
            ]
            if bad:
                names = ", ".join(repr(c) for c, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
                dtypes = sorted({str(dt) for _, dt in bad})
                raise InputError(
                    message(
                        what,
                        "must contain only numeric columns",
                        f"{len(bad)} non-numeric column(s) {names} of dtype {', '.join(dtypes)}",
                        _TABULAR_FIX,
                    )
                )
            if not any(pd.api.types.is_object_dtype(dt) for dt in obj.dtypes):
                return obj.to_numpy(dtype=np.float64, na_value=np.nan)
            # (pandas.NA in an object column fails to_numpy(float): column by column)
            cols = [
                _object_numbers(obj.iloc[:, i].to_numpy())
                if pd.api.types.is_object_dtype(dt)
                else obj.iloc[:, i].to_numpy(dtype=np.float64, na_value=np.nan)
                for i, dt in enumerate(obj.dtypes)
            ]
            return np.stack(cols, axis=1) if cols else np.zeros((len(obj), 0))
        if obj.shape[1] == 1:
            return _series_numpy(obj.iloc[:, 0])[:, None]
        cols = [_series_numpy(obj.iloc[:, i]) for i in range(obj.shape[1])]
        return np.stack(cols, axis=1) if cols else np.zeros((len(obj), 0))
    if isinstance(obj, (pd.Series, pd.Index, pd.Categorical)):
        series = pd.Series(obj) if not isinstance(obj, pd.Series) else obj
        if tabular_float and not (
            pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)
        ):
            raise InputError(
                message(
                    what,
                    "must be numeric",
                    f"a Series {series.name!r} of dtype {series.dtype}",
                    _TABULAR_FIX,
                )
            )
        return _series_numpy(series)
    raise InputError(
        message(
            what,
            f"must be {_ACCEPTED}",
            f"a {type(obj).__name__}",
            "convert it with .to_numpy() first",
        )
    )


def _series_numpy(s: Any) -> np.ndarray:
    import pandas as pd

    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        # (is_numeric_dtype is False for every categorical: numbers as categories keep their
        # dtype, e.g. int labels stay ints, not objects read as floats; missing ones are NaN)
        cats = dtype.categories.dtype
        if pd.api.types.is_numeric_dtype(cats) or pd.api.types.is_bool_dtype(cats):
            return np.asarray(s)
        return s.to_numpy(dtype=object)
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        if s.isna().any():
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        numpy_dtype = getattr(dtype, "numpy_dtype", None)
        if numpy_dtype is not None:
            return s.to_numpy(dtype=numpy_dtype)
        return s.to_numpy()
    return s.to_numpy(dtype=object)


def _from_arrow(obj: Any, what: str, tabular_float: bool) -> np.ndarray:
    import pyarrow as pa

    def numeric(t: Any) -> bool:
        return bool(
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
        )

    def column(col: Any) -> np.ndarray:
        if pa.types.is_dictionary(col.type):
            # (a pandas category in Parquet: its values, so int labels stay ints, not objects
            # read as floats; features never get here, a dictionary column is not numeric)
            col = col.cast(col.type.value_type)
        if numeric(col.type) and (tabular_float or col.null_count or pa.types.is_decimal(col.type)):
            return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
        out = col.to_numpy(zero_copy_only=False)
        return out if numeric(col.type) else np.asarray(out, dtype=object)

    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        if tabular_float:
            bad = [(f.name, str(f.type)) for f in obj.schema if not numeric(f.type)]
            if bad:
                names = ", ".join(repr(n) for n, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
                types = sorted({t for _, t in bad})
                raise InputError(
                    message(
                        what,
                        "must contain only numeric columns",
                        f"{len(bad)} non-numeric column(s) {names} of type {', '.join(types)}",
                        _TABULAR_FIX,
                    )
                )
        cols = [column(obj.column(i)) for i in range(obj.num_columns)]
        if not cols:
            return np.zeros((obj.num_rows, 0))
        if len(cols) == 1 and not tabular_float:
            return cols[0][:, None]
        return np.stack(cols, axis=1)
    if isinstance(obj, (pa.Array, pa.ChunkedArray)):
        if tabular_float and not numeric(obj.type):
            raise InputError(
                message(
                    what, "must be numeric", f"a pyarrow array of type {obj.type}", _TABULAR_FIX
                )
            )
        return column(obj)
    raise InputError(
        message(
            what,
            f"must be {_ACCEPTED}",
            f"a {type(obj).__name__}",
            "convert it with .to_numpy() first",
        )
    )


def _np_to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.longdouble and arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    with warnings.catch_warnings():
        # Read-only arrays (pandas copy-on-write) are shared, never written to by descend.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        try:
            return torch.as_tensor(arr)
        except (ValueError, TypeError, RuntimeError):
            # Negative strides or non-native byte order: one host copy fixes both.
            fixed = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))
            return torch.as_tensor(fixed)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_))


def _numeric_objects(arr: np.ndarray) -> bool:
    """Whether an object array holds only numbers and missing values (None, NaN, pandas.NA):
    numbers with gaps, whose gaps the finiteness checks then name, not text to encode."""
    return all(_is_number(v) or _missing_label(v) for v in arr.flat)


def _object_numbers(arr: np.ndarray, ints: bool = False) -> np.ndarray:
    """An object array of numbers (see :func:`_numeric_objects`) as float64 with NaN for the
    missing values; complex128 if any is complex; with ``ints``, int64 when every value is an
    integer (labels 3, 5 stay 3, 5)."""
    values = [np.nan if _missing_label(v) else v for v in arr.flat]
    if any(isinstance(v, (complex, np.complexfloating)) for v in values):
        out = np.asarray(values, dtype=np.complex128)
    elif ints and values and all(isinstance(v, numbers.Integral) for v in values):
        try:
            out = np.asarray(values, dtype=np.int64)
        except OverflowError:
            out = np.asarray(values, dtype=np.float64)
    else:
        out = np.asarray(values, dtype=np.float64)
    return out.reshape(arr.shape)


def _inputs(obj: Any, what: str, dtype: torch.dtype) -> Features:
    """Features as a tensor, or a tuple/dict of tensors for a multi-input ``X`` (each converted
    and checked on its own, all with the same number of rows), or InputError."""
    if not _multi_input(obj):
        return _features(obj, what, dtype)
    if isinstance(obj, Mapping):
        parts: Any = {k: _features(v, f"{what}[{k!r}]", dtype) for k, v in obj.items()}
    else:
        parts = tuple(_features(o, f"{what}[{i}]", dtype) for i, o in enumerate(obj))
    names, tensors = input_names(parts, what), inputs_of(parts)
    n = int(tensors[0].shape[0])
    for name, t in zip(names[1:], tensors[1:]):
        if int(t.shape[0]) != n:
            raise InputError(
                message(
                    name,
                    f"must have one row per sample, as {names[0]} has ({n} rows)",
                    f"{int(t.shape[0])} rows (shape {tuple(t.shape)})",
                    "build every input from the same samples, in the same order",
                )
            )
    return parts


def shapes_of(X: Features) -> str:
    """``X``'s shape, or each input's, for a message."""
    if isinstance(X, dict):
        return "{" + ", ".join(f"{k!r}: {tuple(t.shape)}" for k, t in X.items()) + "}"
    if isinstance(X, tuple):
        return "(" + ", ".join(str(tuple(t.shape)) for t in X) + ")"
    return str(tuple(X.shape))


def _form(X: Any) -> Any:
    """What makes two ``X`` the same form: one tensor, n positional inputs, or these keys."""
    if isinstance(X, dict):
        return ("dict", tuple(sorted(X)))
    return ("tuple", len(X)) if isinstance(X, tuple) else ("tensor",)


def _form_text(X: Any) -> str:
    if isinstance(X, dict):
        return f"the keyword inputs {list(X)}"
    return f"{len(X)} positional inputs" if isinstance(X, tuple) else "one array"


def _check_like_training(X: Features, Xv: Features) -> None:
    """Refuse validation features whose inputs or shapes differ from the training ones."""
    if _form(X) != _form(Xv):
        raise InputError(
            message(
                "validation X",
                f"must have the training X's form ({_form_text(X)})",
                f"{_form_text(Xv)}, shape {shapes_of(Xv)}",
                "pass validation X in the same form as the training X",
            )
        )
    names = input_names(X, "validation X")
    # a dict's inputs pair up by name, whatever the order they were given in
    others = tuple(Xv[k] for k in X) if isinstance(X, dict) else inputs_of(Xv)  # type: ignore[index]
    for what, t, tv in zip(names, inputs_of(X), others):
        if tuple(tv.shape[1:]) != tuple(t.shape[1:]) and _n_features(
            tuple(tv.shape[1:])
        ) == _n_features(tuple(t.shape[1:])):
            # (as many features, laid out otherwise: "the same number of features" misleads)
            raise InputError(
                message(
                    what,
                    f"must have the training {what.split(' ', 1)[1]}'s shape per sample "
                    f"{tuple(t.shape[1:])}",
                    f"shape {tuple(tv.shape[1:])} per sample (shape {tuple(tv.shape)})",
                    "lay the validation samples out like the training ones, shape "
                    f"(N{''.join(f', {d}' for d in t.shape[1:])}) (reshape a column of one "
                    "feature; permute axes that are in another order)",
                )
            )
        if tuple(tv.shape[1:]) != tuple(t.shape[1:]):
            raise InputError(
                message(
                    what,
                    f"must have the same number of features as the training "
                    f"{what.split(' ', 1)[1]} "
                    f"({_n_features(tuple(t.shape[1:]))}, shape {tuple(t.shape[1:])} per sample)",
                    f"{_n_features(tuple(tv.shape[1:]))} features (shape {tuple(tv.shape)})",
                    "build the validation data with the same columns as the training data",
                )
            )
        kind, kind_v = _feature_kind(t), _feature_kind(tv)
        if kind != kind_v:
            # (integer ids would reach an embedding layer as floats, floats a Linear layer as
            # integers: a torch error at the first evaluation, after an epoch of training)
            become = {
                "integer": "stay integers for embedding layers",
                "float": "become floats",
                "complex": "stay complex",
            }
            raise InputError(
                message(
                    what,
                    f"must hold {kind} values like the training {what.split(' ', 1)[1]} "
                    f"({t.dtype}, whose values {become[kind]})",
                    f"values of dtype {tv.dtype}, which {become[kind_v]}",
                    "convert it like the training data, e.g. numpy.asarray(X_val, "
                    f"dtype={str(t.dtype).replace('torch.', '')!r})",
                )
            )


def _feature_kind(t: torch.Tensor) -> str:
    """How prepare treats a feature tensor's values: made floats, kept integers, or complex."""
    return "complex" if t.is_complex() else "float" if _float_features(t) else "integer"


def _column_names(obj: Any) -> list[Any] | None:
    """The column names of a pandas DataFrame or a pyarrow Table/RecordBatch, else None."""
    mod = _module_of(obj)
    if mod.startswith("pandas") and hasattr(obj, "columns"):
        return list(obj.columns)
    if mod.startswith("pyarrow") and hasattr(obj, "schema"):
        return list(obj.schema.names)
    return None


def _check_same_columns(X: Any, Xv: Any) -> None:
    """Refuse validation tables whose columns are not the training table's, in its order.

    Tables become arrays by position, so a validation frame with the same columns in another
    order would pass every shape check and be scored on swapped features. Tables that share no
    column name (e.g. one built from a bare array) are matched by position, as arrays are."""
    pairs: list[tuple[str, Any, Any]] = [("validation X", X, Xv)]
    if _multi_input(X) and _multi_input(Xv) and _form(X) == _form(Xv):
        names = input_names(X, "validation X")
        if isinstance(X, Mapping):
            pairs = [(f"validation X[{k!r}]", X[k], Xv[k]) for k in X]
        else:
            pairs = list(zip(names, X, Xv))
    for what, t, tv in pairs:
        cols, cols_v = _column_names(t), _column_names(tv)
        if cols is None or cols_v is None or cols == cols_v or not set(cols) & set(cols_v):
            continue
        missing = [c for c in cols if c not in cols_v]
        extra = [c for c in cols_v if c not in cols]
        if missing or extra:
            got = ", ".join(
                part
                for part in (
                    missing and f"missing {_names_text(missing)}",
                    extra and f"extra {_names_text(extra)}",
                )
                if part
            )
        elif len(cols) != len(cols_v):  # (the same names, some repeated)
            got = f"{len(cols_v)} columns ({_names_text(cols_v)})"
        else:
            i = next(i for i, (a, b) in enumerate(zip(cols, cols_v)) if a != b)
            got = (
                f"the same columns in another order (column {i} is {cols_v[i]!r}, not {cols[i]!r})"
            )
        raise InputError(
            message(
                what,
                f"must have the training table's columns in its order ({_names_text(cols)})",
                got,
                "build the validation data with the training columns and select them in the "
                "training order, e.g. X_val[X.columns] (pandas) or X_val.select(X.column_names) "
                "(pyarrow)",
            )
        )


def _names_text(names: list[Any]) -> str:
    return ", ".join(repr(c) for c in names[:5]) + (" ..." if len(names) > 5 else "")


def _check_inputs_finite(X: Features, what: str, dtype: torch.dtype) -> None:
    """:func:`_check_finite` for every input."""
    for name, t in zip(input_names(X, what), inputs_of(X)):
        _check_finite(t, name, dtype)


def _features(obj: Any, what: str, dtype: torch.dtype) -> torch.Tensor:
    """Features as a numeric tensor (dtype not yet changed), or InputError."""
    raw = _raw(obj, what, tabular_float=True)
    if isinstance(raw, np.ndarray):
        kind = raw.dtype.kind
        if kind == "O":
            if not _numeric_objects(raw):
                first = next(
                    (i, v)
                    for i, v in enumerate(raw.flat)
                    if not (_is_number(v) or _missing_label(v))
                )
                pos = _position(np.unravel_index(first[0], raw.shape))
                raise InputError(
                    message(
                        what,
                        "must contain only numbers",
                        f"an object array with {describe(first[1])} at {pos}",
                        _TABULAR_FIX,
                    )
                )
            raw = _object_numbers(raw)
        elif kind not in "biufc":
            raise InputError(
                message(
                    what,
                    "must contain only numbers",
                    f"an array of dtype {raw.dtype} (e.g. {describe(raw.flat[0]) if raw.size else 'empty'})",
                    _TABULAR_FIX,
                )
            )
        raw = _np_to_tensor(raw)
    if raw.ndim == 0:
        raise InputError(
            message(
                what,
                "must have one row per sample (at least 1 dimension)",
                f"a scalar {raw.item()!r}",
                "pass an array of shape (n_samples, n_features)",
            )
        )
    return raw


def _targets(
    obj: Any, what: str, kind: TargetKind, dtype: torch.dtype, n: int
) -> torch.Tensor | np.ndarray:
    """Targets converted for ``kind`` (labels not yet encoded for "index"), or InputError."""
    raw = _raw(obj, what, tabular_float=False)
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind == "O" and raw.size and _numeric_objects(raw):
            raw = _object_numbers(raw, ints=True)
        if raw.dtype.kind in "biufc":
            raw = _np_to_tensor(raw)
    if raw.ndim == 0:
        raise InputError(
            message(
                what, "must have one entry per sample", "a scalar", "pass an array of shape (N,)"
            )
        )
    if int(raw.shape[0]) != n:
        x_name = "validation X" if what.startswith("validation") else "X"
        raise InputError(
            message(
                f"{x_name} and {what}",
                "must have the same number of samples",
                f"{x_name} with {n} rows and {what} with {int(raw.shape[0])}",
                "build y from the same rows as X",
            )
        )
    if kind == "index":
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if isinstance(raw, torch.Tensor) and raw.dtype in _WIDE_UNSIGNED:
            # (torch's unique/searchsorted/promotion do not take them: a raw NotImplementedError)
            raw = raw.to(torch.int64)
        return raw
    if isinstance(raw, np.ndarray):
        first = raw.flat[0] if raw.size else None
        sample = repr(first.item() if isinstance(first, np.generic) else first)
        try:
            raw.astype(np.float64)
            fix = (
                "these are numbers written as text: convert them, e.g. "
                "numpy.asarray(y, dtype=float)"
            )
        except (TypeError, ValueError):
            fix = (
                "these look like class labels; use a classification loss (target_kind "
                "'index'), or encode them as numbers"
            )
        raise InputError(
            message(
                what,
                f"must be numeric for target_kind={kind!r}",
                f"values of dtype {raw.dtype} such as {sample}",
                fix,
            )
        )
    if raw.is_complex() and kind == "float":
        raise InputError(
            message(what, "must be real numbers", f"dtype {raw.dtype}", "pass real targets")
        )
    if kind == "float" or raw.is_floating_point():
        # (not the features' fix: imputing targets invents answers, and descend.tabular
        # refuses missing targets too)
        _check_finite(raw, what, dtype, fix="drop the rows whose target is missing or infinite")
        raw = raw.to(dtype)
    return raw


def _check_integral(t: torch.Tensor, what: str) -> None:
    if not t.is_floating_point():
        return
    _check_finite(t, what, None, fix="drop the rows with missing labels")
    frac = t != torch.round(t)
    if bool(frac.any()):
        first = int(frac.reshape(-1).to(torch.uint8).argmax())
        value = float(t.reshape(-1)[first])
        raise InputError(
            message(
                what,
                "must be class labels for a classification loss (target_kind 'index')",
                f"{int(frac.sum())} non-integral values such as {value:g} at "
                f"{_position(np.unravel_index(first, tuple(t.shape)))}",
                "these look like regression targets; use a regression loss such as 'mse'",
            )
        )


def _encode_labels(
    parts: list[torch.Tensor | np.ndarray], names: list[str], ignore_index: int | None = None
) -> tuple[list[torch.Tensor], np.ndarray | None, int]:
    """Class labels of train (and validation) -> int64 indices, with the originals if encoded.

    Labels already ``0..C-1`` (as integers or integral floats) are kept, ``classes=None``; any
    other set (strings, bools, {-1, 1}, {3, 5, 7}) is encoded by its sorted unique values over
    ALL parts, so train and validation share one code book. Labels equal to ``ignore_index``
    (the loss skips them) are no class: left out of the code book, they stay as they are.
    """
    for p, name in zip(parts, names):
        if isinstance(p, torch.Tensor):
            if p.is_complex():
                raise InputError(
                    message(name, "must be class labels", f"complex dtype {p.dtype}", None)
                )
            _check_integral(p, name)
    if all(isinstance(p, torch.Tensor) for p in parts):
        tensors: list[torch.Tensor] = parts  # type: ignore[assignment]
        is_bool = any(t.dtype == torch.bool for t in tensors)
        work = [t.long() if t.dtype == torch.bool else t for t in tensors]
        common = work[0].dtype
        for t in work[1:]:
            common = torch.promote_types(common, t.dtype)
        work = [t.to(common) for t in work]
        skip = None if is_bool or ignore_index is None else [t == ignore_index for t in work]
        counted = work if skip is None else [t[~k] for t, k in zip(work, skip)]
        uniques = torch.unique(torch.cat([torch.unique(t).cpu() for t in counted]))
        c = int(uniques.numel())
        if not is_bool and c and int(uniques[0]) == 0 and int(uniques[-1]) == c - 1:
            return [t.long() for t in work], None, c
        codes = [torch.searchsorted(uniques.to(t.device), t).long() for t in work]
        if skip is not None:
            codes = [code.masked_fill(k, ignore_index) for code, k in zip(codes, skip)]
        classes = uniques.numpy()
        if is_bool:
            classes = classes.astype(bool)
        return codes, classes, c
    arrays = [p.cpu().numpy() if isinstance(p, torch.Tensor) else p for p in parts]
    for a, name in zip(arrays, names):
        if a.dtype.kind == "O":
            missing = [i for i, v in enumerate(a.flat) if _missing_label(v)]
            if missing:
                raise InputError(
                    message(
                        name,
                        "must not contain missing labels",
                        f"{len(missing)} missing (None/NaN) labels, the first at "
                        f"{_position(np.unravel_index(missing[0], a.shape))}",
                        "drop those rows or fill in the labels",
                    )
                )
        elif a.dtype.kind not in "USbiuf":
            raise InputError(
                message(
                    name,
                    "must be class labels",
                    f"values of dtype {a.dtype}",
                    "convert them to strings or integers",
                )
            )
    # numpy would join numbers and text as text ('3' for 3, sorted '10' < '8'): labels that
    # never equal the other part's, and classes of another type than the user's
    kinds = [_label_kind(a) for a in arrays]
    if "text" in kinds and "numbers" in kinds:
        i = kinds.index("numbers" if kinds[0] == "text" else "text")
        sample = next(v for v in arrays[i].flat if not _missing_label(v))
        raise InputError(
            message(
                names[i],
                f"must be labels of the same type as {names[0]} ({kinds[0]})",
                f"{kinds[i]} such as {describe(sample.item() if hasattr(sample, 'item') else sample)}",
                "convert one to the other's type, e.g. "
                f"{names[i]}=numpy.asarray(y_val, dtype={'int' if kinds[0] == 'numbers' else 'str'})",
            )
        )
    try:
        classes = np.unique(np.concatenate([a.ravel() for a in arrays]))
        codes = [np.searchsorted(classes, a.ravel()).reshape(a.shape) for a in arrays]
    except TypeError as err:
        raise InputError(
            message(
                "/".join(names[: len(arrays)]),
                "must be labels of one type (e.g. all strings)",
                f"labels of mixed types ({err})",
                "convert every label to str (or every label to int)",
            )
        ) from err
    return [torch.as_tensor(c, dtype=torch.int64) for c in codes], classes, int(classes.size)


def _label_kind(a: np.ndarray) -> str:
    """ "numbers", "text" (strings, also in an object array) or "other" labels."""
    if a.dtype.kind in "biuf":
        return "numbers"
    if a.dtype.kind in "US":
        return "text"
    values = [v for v in a.flat if not _missing_label(v)]
    if values and all(isinstance(v, (str, bytes)) for v in values):
        return "text"
    if values and all(_is_number(v) or isinstance(v, (bool, np.bool_)) for v in values):
        return "numbers"
    return "other"


def _missing_label(v: Any) -> bool:
    """None, a NaN of any float type, or pandas' NA / NaT (pandas "string" and nullable
    columns hold pandas.NA, whose comparisons raise instead of sorting)."""
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(v != v)
    return type(v).__name__ in ("NAType", "NaTType")  # (pandas is optional: no import)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _position(index: tuple[Any, ...]) -> str:
    index = tuple(int(i) for i in index)
    if len(index) == 1:
        return f"row {index[0]}"
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"index {index}"


def _check_finite(
    t: torch.Tensor, what: str, target: torch.dtype | None, fix: str | None = None
) -> None:
    """Refuse NaN/inf (and finite values that would overflow ``target``) in a tensor."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return
    # A finite sum proves every value finite (NaN and inf propagate); only a non-finite sum
    # (or an overflow of the sum) pays for the element-wise mask.
    if not bool(torch.isfinite(t.sum())):
        bad = ~torch.isfinite(t)
        count = int(bad.sum())
        if count:
            n_nan = int(torch.isnan(t).sum())
            first = int(bad.reshape(-1).to(torch.uint8).argmax())
            pos = _position(np.unravel_index(first, tuple(t.shape)))
            raise InputError(
                message(
                    what,
                    "must contain only finite numbers",
                    f"{count} non-finite values ({n_nan} NaN, {count - n_nan} inf), "
                    f"the first at {pos}",
                    fix
                    or "drop or impute them (e.g. sklearn.impute.SimpleImputer), or train from "
                    "the data file with the descend CLI / descend.tabular, which imputes them",
                )
            )
    if (
        target is not None
        and t.is_floating_point()
        and (torch.finfo(t.dtype).max > torch.finfo(target).max)
    ):
        limit = torch.finfo(target).max
        big = max(abs(float(t.amax())), abs(float(t.amin())))
        if big > limit:
            raise InputError(
                message(
                    what,
                    f"must fit in {target} (|value| <= {limit:.3g})",
                    f"values up to {big:.3g} in magnitude",
                    "rescale them (e.g. sklearn.preprocessing.StandardScaler), or pass "
                    "dtype=torch.float64",
                )
            )


#: ``validation="auto"`` (fit's default) holds out this fraction of in-memory data ...
AUTO_VALIDATION = 0.2
#: ... unless that leaves fewer validation samples than this: one row would decide the early
#: stopping and the race, and a quarter of a tiny set is a quarter of what there is to learn
#: from (XOR's 4 rows: 1 held out, and the 3 left do not define XOR; 3 seeds all wrong with
#: the split, all right without). Nor when a stratified split cannot keep every class on both
#: sides (iris or wine at 8-12 rows: the default was an error). Measured on 8-32 training rows
#: of five bundled sets (benchmarks/RESULTS.md, session 31): at these sizes no split was better
#: for both regressions, but worse for breast cancer (log loss 0.72 vs 1.06 at 8 rows), so the
#: rule stays at the sizes where a split cannot work.
AUTO_MIN_VALIDATION = 2


def _too_few_to_split(n: int, fraction: float, labels: torch.Tensor | None) -> str | None:
    """Why ``validation="auto"`` holds nothing out of ``n`` samples (None: it splits)."""
    n_val = math.floor(fraction * n + 0.5)
    if n_val < AUTO_MIN_VALIDATION:
        return (
            f"{n} samples are too few to hold out {fraction:.0%} for validation ({n_val} "
            f"{'sample' if n_val == 1 else 'samples'})"
        )
    if labels is not None:
        _, present, multi = _class_counts(labels)
        if n_val < multi or n - n_val < len(present):
            return (
                f"a {fraction:.0%} split of {n} samples cannot keep every one of their "
                f"{len(present)} classes on both sides"
            )
    return None


def _class_counts(labels: torch.Tensor) -> tuple[list[int], list[int], int]:
    """``(samples per class index, the classes present, how many have >= 2 samples)``: what
    a stratified split needs to keep every class on both sides."""
    counts = torch.bincount(labels).tolist()
    return counts, [c for c, k in enumerate(counts) if k > 0], sum(1 for k in counts if k >= 2)


def _split_indices(
    n: int, fraction: float, labels: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (and, with ``labels``, stratified) split -> sorted (train, val) CPU indices."""
    n_val = math.floor(fraction * n + 0.5)
    if n_val < 1 or n - n_val < 1:
        raise InputError(
            message(
                f"validation={fraction:g}",
                "must leave at least 1 sample on each side of the split",
                f"{n_val} validation and {n - n_val} training samples out of {n}",
                "pass explicit validation data, or validation=None (one sample cannot be split)"
                if n < 2
                else "pass a larger fraction, explicit validation data, or validation=None"
                if n_val < 1
                else "pass a smaller fraction, explicit validation data, or validation=None",
            )
        )
    gen = torch.Generator().manual_seed(_mix(seed, _SPLIT_STREAM))
    perm = torch.randperm(n, generator=gen)
    if labels is None:
        return perm[n_val:].sort().values, perm[:n_val].sort().values

    # (The fixes offered below work in fit, the estimators and the CLI too: stratify=False is
    # prepare's alone.)
    counts, present, multi = _class_counts(labels)
    if n_val < multi:
        need = math.ceil(multi / n * 1000) / 1000
        raise InputError(
            message(
                f"validation={fraction:g}",
                "must leave room for every class with >= 2 samples in the validation part to "
                "stratify",
                f"{n_val} validation samples for {multi} such classes ({n} samples)",
                f"pass validation >= {need:g}, explicit validation data (X_val, y_val), or "
                "validation=None",
            )
        )
    if n - n_val < len(present):
        most = math.floor((n - len(present)) / n * 1000) / 1000
        raise InputError(
            message(
                f"validation={fraction:g}",
                "must leave at least one sample of every class in the training part to stratify",
                f"{n - n_val} training samples for {len(present)} classes ({n} samples)",
                (f"pass a smaller fraction (at most {most:g}), " if most > 0 else "pass ")
                + "explicit validation data (X_val, y_val), or validation=None",
            )
        )
    # Per class: round(fraction * count), clamped so a class with >= 2 samples lands on both
    # sides; then largest remainders fix the total to exactly n_val.
    exact = {c: fraction * counts[c] for c in present}
    lo = {c: 1 if counts[c] >= 2 else 0 for c in present}
    hi = {c: counts[c] - 1 if counts[c] >= 2 else 0 for c in present}
    alloc = {c: min(max(math.floor(exact[c]), lo[c]), hi[c]) for c in present}
    diff = n_val - sum(alloc.values())
    while diff != 0:
        if diff > 0:
            room = sorted(
                (c for c in present if alloc[c] < hi[c]), key=lambda c: alloc[c] - exact[c]
            )
            step = 1
        else:
            room = sorted(
                (c for c in present if alloc[c] > lo[c]), key=lambda c: exact[c] - alloc[c]
            )
            step = -1
        for c in room[: abs(diff)]:
            alloc[c] += step
        diff = n_val - sum(alloc.values())
    # Group the random permutation by class (stable, so each class keeps a random order).
    grouped = perm[torch.argsort(labels[perm], stable=True)]
    val_parts, train_parts, offset = [], [], 0
    for c, k in enumerate(counts):
        if k == 0:
            continue
        members = grouped[offset : offset + k]
        offset += k
        val_parts.append(members[: alloc[c]])
        train_parts.append(members[alloc[c] :])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------


def _is_accelerator(device: torch.device) -> bool:
    return device.type not in ("cpu", "meta")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _model_devices(model: Any) -> list[torch.device]:
    params = getattr(model, "parameters", None)
    buffers = getattr(model, "buffers", None)
    if not callable(params):
        return []
    found: list[torch.device] = []
    tensors = list(params()) + (list(buffers()) if callable(buffers) else [])
    for t in tensors:
        if isinstance(t, torch.Tensor) and _is_accelerator(t.device) and t.device not in found:
            found.append(t.device)
    return found


# A step of batch rows x weights below this trains faster on the CPU than on a GPU: measured
# on an H200 machine (16-core host, session 11, benchmarks/RESULTS.md), the scikit-learn
# estimators' default networks on the bundled sets (0.3-5 million) fit 1-5x faster on its CPU,
# digits (4.9 million) about evenly, and 20-80 million 1.7-3.6x faster on the GPU: a small step
# is all kernel launches there.
GPU_MIN_STEP_WORK = 8_000_000


def auto_device(
    device: str | torch.device | None, batch_size: int, model: torch.nn.Module
) -> str | torch.device | None:
    """The device for a tabular run whose user left it unset: ``device`` as given, except that
    None becomes ``"cpu"`` when one step's work (``batch_size`` rows x the model's weights) is
    under ``GPU_MIN_STEP_WORK``; for bigger steps None stays None (the accelerator, if any).

    Used by the scikit-learn estimators and the CLI, which build the network themselves;
    ``fit`` keeps its documented rule (the model's accelerator, else any accelerator).

    Example:
        >>> auto_device(None, 32, torch.nn.Linear(10, 1))
        'cpu'
    """
    if device is not None:
        return device
    weights = sum(p.numel() for p in model.parameters())
    return "cpu" if batch_size * weights < GPU_MIN_STEP_WORK else None


def resolve_device(
    device: str | torch.device | None = None, model: torch.nn.Module | None = None
) -> torch.device:
    """The device to train on.

    None (or "auto") -> the model's device if its parameters are on an accelerator, else
    "cuda" if available, else "mps" if available, else "cpu". Device types without an index
    get one (``cuda`` -> ``cuda:<current>``, ``mps`` -> ``mps:0``) so that devices compare
    equal to the ones tensors report.

    Args:
        device: a device, a string such as "cpu", "cuda", "cuda:1", "mps", or None/"auto".
        model: the model, consulted only when ``device`` is None.

    Raises:
        ConfigError: an unparsable string, or an accelerator that is not available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        found = _model_devices(model)
        if found:
            return found[0]
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps", 0)
        return torch.device("cpu")
    if isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(
                message(
                    "device",
                    "must be a torch device string such as 'cpu', 'cuda', 'cuda:1' or 'mps', "
                    "or None to pick one",
                    describe(device),
                    "pass e.g. device='cuda' or device=None",
                )
            ) from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise ConfigError(
            message(
                "device",
                "must be a string, a torch.device or None",
                f"a {type(device).__name__}: {describe(device)}",
                "pass e.g. device='cuda' or device=None",
            )
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                message(
                    "device",
                    "must be available on this machine",
                    f"{str(dev)!r}, but CUDA is not available",
                    "pass device='cpu', or device=None to pick the best available",
                )
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= count:
            raise ConfigError(
                message(
                    "device",
                    f"must be one of the {count} CUDA device(s) cuda:0..cuda:{count - 1}",
                    repr(str(dev)),
                    "pass an existing index, or device=None",
                )
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise ConfigError(
                message(
                    "device",
                    "must be available on this machine",
                    f"{str(dev)!r}, but MPS is not available",
                    "pass device='cpu', or device=None to pick the best available",
                )
            )
        return torch.device("mps", 0 if dev.index is None else dev.index)
    return dev


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors_in(item)


def check_devices(model: Any, X: Any) -> None:
    """Refuse data on a different accelerator than the model's parameters.

    Data on the CPU (or any non-tensor) is fine: it is simply moved. Only an accelerator
    mismatch (e.g. model on ``cuda:0``, X on ``cuda:1``) is refused, since moving silently
    between accelerators hides a user mistake and costs a device-to-device copy.

    Args:
        model: a ``torch.nn.Module`` (anything without ``parameters()`` is ignored).
        X: a tensor, or a tuple/list of tensors.

    Raises:
        InputError: naming both devices and the fix.
    """
    model_devices = _model_devices(model)
    if not model_devices:
        return
    for t in _tensors_in(X):
        if _is_accelerator(t.device) and t.device not in model_devices:
            want = model_devices[0]
            raise InputError(
                message(
                    "the data X",
                    "must be on the CPU or on the model's device",
                    f"X on {t.device} and the model's parameters on {want}",
                    f"pass device='{want}' (descend then moves the data), or move one of them: "
                    f"X.to('{want}') or model.to('{t.device}')",
                )
            )
