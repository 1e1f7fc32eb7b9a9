"""One process of a data-parallel test run (tests/test_distributed.py starts 1 or 2 of them).

``python ddp_worker.py SCENARIO OUT RANK WORLD`` joins a gloo group through a file in OUT (no
port), runs SCENARIO's ``descend.fit`` and writes ``OUT/rank{RANK}.safetensors`` (the final
weights) and ``OUT/rank{RANK}.json`` (the result's numbers), or ``OUT/rank{RANK}.error`` with
the exception's type and message. A world of 1 runs the same fit in a plain process: the oracle.
"""

from __future__ import annotations

import gc
import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import save_file

import descend


def data(kind: str, n: int = 203):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    if kind == "clf":
        y = (X[:, :3] @ rng.standard_normal((3, 3))).argmax(1)
    else:
        y = (X @ rng.standard_normal(6) + 0.1 * rng.standard_normal(n)).astype(np.float32)
    return X, y


#: "fsdp-" scenarios on several processes: every model sharded with FSDP2's fully_shard
SHARD = False
#: "bn-" scenarios: batch norm after the first layer (running statistics per process)
BN = False


def model(out: int, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(1)
    layers = [torch.nn.Linear(6, 16), torch.nn.ReLU()]
    if BN:
        layers.insert(1, torch.nn.BatchNorm1d(16))
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    m = torch.nn.Sequential(*layers, torch.nn.Linear(16, out))
    if SHARD:  # each layer, then the root (the output layer's 3 rows split 2 + 1)
        from torch.distributed.fsdp import fully_shard

        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(m)
    return m


def whole(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state, a sharded model's gathered (collective)."""
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().contiguous()
        for k, v in m.state_dict().items()
    }


class StopOnRank(descend.train.Callback):
    """Asks to stop after epoch 2 on one process only: every process must stop there."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_epoch_end(self, loop) -> None:
        if loop.epoch == 2 and loop.world.rank == self.rank:
            loop.request_stop("rank-only stop")


class StopAtStep(descend.train.Callback):
    """Asks to stop after step 7 on one process only, mid-epoch."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_step_end(self, loop) -> None:
        if loop.step == 7 and loop.world.rank == self.rank:
            loop.request_stop("rank-only stop")


class WithSpare(torch.nn.Module):
    """An MLP and a spare layer that takes part in the loss only while ``spare_on``: its
    parameters get no gradient at the other steps."""

    def __init__(self, spare_on: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = model(1, dropout=dropout)
        torch.manual_seed(2)
        self.spare = torch.nn.Linear(6, 1)
        self.spare_on = spare_on

    def forward(self, x):
        out = self.body(x)
        return out + self.spare(x) if self.spare_on else out


class SpareOffAt(descend.train.Callback):
    """Takes the spare layer out of the loss after step 3 (on every process)."""

    def on_step_end(self, loop) -> None:
        if loop.step == 3:
            loop.model.spare_on = False


class Killed(BaseException):
    """A kill -9 stand-in: nothing in descend catches it."""


def run(scenario: str, out: Path, rank: int, world: int):
    common = dict(verbose=0, seed=3, patience=None)
    if scenario in ("reg", "clf"):
        X, y = data(scenario)
        loss = "mse" if scenario == "reg" else "cross_entropy"
        m = model(1 if scenario == "reg" else 3)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(m, (X, y), loss, optimizer=opt, epochs=4, batch_size=33, **common)
    if scenario == "weights":
        X, y = data("reg")
        w = np.random.default_rng(1).uniform(0.0, 2.0, len(y)).astype(np.float32)
        m = model(1)
        opt = descend.optim.sgd(lr=0.05, momentum=0.9)
        return m, descend.fit(
            m, (X, y), "mse", optimizer=opt, epochs=3, batch_size=33, sample_weight=w, **common
        )
    if scenario == "no-val-clf":  # the training metric, summed over the processes
        X, y = data("clf")
        m = model(3)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(
            m, (X, y), "cross_entropy", optimizer=opt, epochs=3, batch_size=None,
            validation=None, **common,
        )  # fmt: skip
    if scenario == "auto":  # the default policy: range test and race on every process
        X, y = data("clf")
        m = model(3)
        return m, descend.fit(m, (X, y), "cross_entropy", epochs=8, batch_size=32, **common)
    if scenario.startswith("ckpt"):  # ckpt-full, ckpt-part, ckpt-resume
        X, y = data("clf")
        m = model(3, dropout=0.3)
        epochs = 2 if scenario == "ckpt-part" else 4
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(
            m, (X, y), "cross_entropy", optimizer=opt, epochs=epochs, batch_size=33,
            checkpoint=out / ("ckpt-full" if scenario == "ckpt-full" else "ckpt"),
            resume=scenario == "ckpt-resume", **common,
        )  # fmt: skip
    if scenario == "stop":
        X, y = data("reg")
        m = model(1)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(
            m, (X, y), "mse", optimizer=opt, epochs=6, batch_size=32,
            callbacks=[StopOnRank(world - 1)], **common,
        )  # fmt: skip
    if scenario == "stop-step":
        X, y = data("reg")
        m = model(1)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(
            m, (X, y), "mse", optimizer=opt, epochs=6, batch_size=32,
            callbacks=[StopAtStep(world - 1)], **common,
        )  # fmt: skip
    if scenario in ("loader", "loader-plain"):
        # With shuffle=False, rank r's DistributedSampler takes rows r, r+2, ...: the two
        # processes' k-th batches of 16 are rows 32k..32k+31, one process's k-th batch of 32.
        X, y = data("reg", n=192)
        ds = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
        split = scenario == "loader" and world > 1
        sampler = torch.utils.data.DistributedSampler(ds, shuffle=False) if split else None
        dl = torch.utils.data.DataLoader(ds, batch_size=32 // world, sampler=sampler)
        m = model(1)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(m, dl, "mse", optimizer=opt, epochs=2, **common)
    if scenario.startswith("unused"):
        # unused[-auto|-bn][-frozen]: a spare layer never in the loss (dropout in the body: its
        # masks must survive a redone step), trainable or frozen, with an optimizer given or
        # the default policy (range test, race, run: three loops of one run);
        # unused-later: in the loss for steps 1-3 only
        X, y = data("reg")
        later = scenario == "unused-later"
        m = WithSpare(spare_on=later, dropout=0.0 if later else 0.3)
        if "-bn" in scenario:  # running statistics, to be restored for the redone step too
            torch.manual_seed(4)
            m.body = torch.nn.Sequential(
                torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                torch.nn.Linear(16, 1),
            )  # fmt: skip
        if scenario.endswith("-frozen"):
            m.spare.requires_grad_(False)
        kw = {} if "-auto" in scenario else {"optimizer": descend.optim.adamw(lr=3e-3)}
        return m, descend.fit(
            m, (X, y), "mse", epochs=8 if kw == {} else 2, batch_size=32,
            callbacks=[SpareOffAt()] if later else [], **kw, **common,
        )  # fmt: skip
    if scenario == "seeds":  # a seed of each process's own
        X, y = data("reg")
        m = model(1)
        return m, descend.fit(m, (X, y), "mse", epochs=1, batch_size=32, verbose=0, seed=rank)
    if scenario == "rates":  # a rate of each process's own
        X, y = data("reg")
        m = model(1)
        return m, descend.fit(m, (X, y), "mse", lr=1e-3 * (rank + 1), epochs=1, **common)
    if scenario == "estimator":  # random_state=None: each process would draw its own seed
        X, y = data("reg")
        return None, descend.Regressor(max_epochs=2, verbose=0).fit(X, y)
    if scenario == "estimator-seeded":  # the default policy inside, one seed everywhere
        X, y = data("reg")
        est = descend.Regressor(max_epochs=6, random_state=0).fit(X, y)
        history = SimpleNamespace(
            train_loss=est.loss_curve_, val_loss=est.validation_loss_curve_, metric=[],
            step_loss=[],
        )  # fmt: skip
        return est.model_, SimpleNamespace(
            epochs=est.n_iter_, steps=est.t_, stop_reason=SimpleNamespace(value=est.stop_reason_),
            stop_message=est.stop_message_, history=history, autopilot=est.autopilot_, seed=0,
        )  # fmt: skip
    if scenario.startswith("race-"):  # race-full, race-kill, race-resume: the default policy
        X, y = data("clf", n=1000 if SHARD else 2000)  # (a sharded step costs more)
        m = model(3, dropout=0.3)
        ck = out / ("race-full-ck" if scenario == "race-full" else "race-ck")
        if scenario == "race-kill":  # dies (like kill -9) right after the race's epoch-2 save
            from descend.train import autopilot

            autopilot.RACE_CHECKPOINT_RATIO = 0.0  # a checkpoint every race epoch
            save = autopilot._Race._save

            def save_then_die(race):
                save(race)
                if race.epoch == 2:
                    raise Killed

            autopilot._Race._save = save_then_die
        return m, descend.fit(
            m, (X, y), "cross_entropy", epochs=16, batch_size=32, checkpoint=ck,
            resume=scenario == "race-resume", **{**common, "seed": None if scenario == "race-resume" else 3},
        )  # fmt: skip
    if scenario == "lr-find":  # the sweep on both processes: one curve
        X, y = data("reg", n=600)
        m = model(1)
        rows: list[int] = []

        def mse(pred, target):  # the rows each process's step sees
            rows.append(pred.shape[0])
            return torch.nn.functional.mse_loss(pred, target)

        res = descend.lr_find(m, (X, y), mse, steps=40, plot=out / f"sweep-{world}-{rank}.png")
        history = SimpleNamespace(
            train_loss=res.losses, val_loss=res.lrs, metric=[], step_loss=res.losses
        )
        return m, SimpleNamespace(
            epochs=len(res.lrs), steps=len(res.lrs), stop_reason=SimpleNamespace(value=res.stop),
            stop_message=res.stop, history=history, autopilot={"lr": res.suggestion}, seed=0,
            rows=max(rows),
        )  # fmt: skip
    if scenario == "wrapped":  # the user's own DDP wrapper: its options, no redo, no warning
        X, y = data("reg")
        m = WithSpare(spare_on=False)
        ddp = torch.nn.parallel.DistributedDataParallel
        w = ddp(m, find_unused_parameters=True) if world > 1 else m
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(w, (X, y), "mse", optimizer=opt, epochs=2, batch_size=32, **common)
    if scenario == "tiny-batch-bn":  # batch norm: 2 rows per process, so batches of 4
        X, y = data("reg")
        torch.manual_seed(1)
        m = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )  # fmt: skip
        return m, descend.fit(m, (X, y), "mse", optimizer="adamw", epochs=1, batch_size=3, **common)
    if scenario == "nan-step":  # the divergence guard: a NaN loss at one step, rolled back
        X, y = data("reg")
        m = model(1)
        calls = [0]

        def spiky(pred, target):
            calls[0] += 1
            v = torch.nn.functional.mse_loss(pred, target)
            return v * float("nan") if calls[0] == 12 else v

        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(m, (X, y), spiky, optimizer=opt, epochs=3, batch_size=33, **common)
    if scenario == "optimizers":  # every library optimizer (a sharded model: on its shards)
        X, y = data("clf")
        models, r = {}, None
        for name in descend.optim.names():
            m = model(3)
            lr = 0.05 if name in ("sgd", "momentum", "nesterov", "lars") else None
            r = descend.fit(
                m, (X, y), "cross_entropy", optimizer=name, lr=lr, epochs=2, batch_size=50,
                **common,
            )  # fmt: skip
            models[name] = m
        return torch.nn.ModuleDict(models), r
    if scenario == "root-unsharded":  # layers sharded, the root not: refused
        X, y = data("reg")
        m = model(1)
        if world > 1:
            from torch.distributed.fsdp import fully_shard

            torch.manual_seed(1)
            m = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
            fully_shard(m[0])
        return m, descend.fit(m, (X, y), "mse", optimizer="adamw", epochs=1, **common)
    if scenario == "odd-last":  # 203 rows, 80% = 162 for training: batches of 23 leave 1
        X, y = data("reg")
        m = model(1)
        opt = descend.optim.adamw(lr=3e-3)
        return m, descend.fit(m, (X, y), "mse", optimizer=opt, epochs=1, batch_size=23, **common)
    if scenario == "tiny-batch":
        X, y = data("reg")
        m = model(1)
        return m, descend.fit(m, (X, y), "mse", optimizer="adamw", epochs=1, batch_size=1, **common)
    raise SystemExit(f"unknown scenario {scenario}")


def main() -> None:
    global SHARD, BN
    scenario, out, rank, world = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if scenario.startswith("bn-"):
        BN = True
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{out / ('group-' + scenario)}", rank=rank, world_size=world
        )
    scenario = scenario.removeprefix("bn-")
    if scenario.startswith("fsdp-"):
        SHARD, scenario = world > 1, scenario.removeprefix("fsdp-")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m, r = run(scenario, out, rank, world)
            state = whole(m)
    except Exception as e:  # the test reads it
        (out / f"rank{rank}.error").write_text(f"{type(e).__name__}: {e}")
        return
    except Killed:
        (out / f"rank{rank}.error").write_text("Killed")
        return
    save_file(state, out / f"rank{rank}.safetensors")
    h = r.history
    summary = {
        "epochs": r.epochs,
        "steps": r.steps,
        "stop_reason": r.stop_reason.value,
        "stop_message": r.stop_message,
        "train_loss": h.train_loss,
        "val_loss": h.val_loss,
        "metric": h.metric,
        "step_loss": h.step_loss,
        "lr": (r.autopilot or {}).get("lr"),
        "race_epochs": (r.autopilot or {}).get("race_epochs"),
        "why": (r.autopilot or {}).get("why"),
        "seed": r.seed,
        "rows": getattr(r, "rows", None),  # lr-find: the most rows one step saw
        # DDP wrappers still alive once fit returned (descend releases them: one freed at
        # interpreter exit, after the group is gone, can abort the process)
        "ddp_alive": sum(
            isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects()
        ),
        "warnings": [str(w.message) for w in caught if "descend" in str(w.message)],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    if world > 1:
        torch.distributed.barrier()  # leave together (a group torn down alone can abort)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
