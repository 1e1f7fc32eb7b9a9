"""Data-parallel fit (descend/distributed.py): two gloo processes on the CPU against one.

Each scenario of tests/ddp_worker.py runs in two processes joined through a file (no port) and,
as the oracle, in this process alone. Splitting every batch between the processes and weighting
each share's loss must give the single process's run: the same weights up to the order of float
additions, the same history, the same decisions (the default policy's rate, the stop), and both
processes must hold the same weights bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import descend

WORKER = Path(__file__).with_name("ddp_worker.py")

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this torch build",
)


def _worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def launch(scenario: str, out: Path, world: int = 2) -> list[tuple[dict, dict] | str]:
    """Run ``scenario`` in ``world`` processes; per rank (summary, weights) or the error."""
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(out), str(r), str(world)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    try:
        logs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{scenario}: the processes did not finish (a hang between them?)")
    results: list[tuple[dict, dict] | str] = []
    for r, p in enumerate(procs):
        err = out / f"rank{r}.error"
        if err.exists():
            results.append(err.read_text())
            continue
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r][-3000:]}"
        summary = json.loads((out / f"rank{r}.json").read_text())
        results.append((summary, load_file(out / f"rank{r}.safetensors")))
    return results


def alone(scenario: str, out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The same fit in this process, a world of one."""
    out.mkdir(parents=True, exist_ok=True)
    mod = _worker()
    m, r = mod.run(scenario.removeprefix("fsdp-"), out, 0, 1)  # one process: nothing to shard
    h = r.history
    summary = {
        "epochs": r.epochs,
        "stop_reason": r.stop_reason.value,
        "val_loss": h.val_loss,
        "metric": h.metric,
        "step_loss": h.step_loss,
        "lr": (r.autopilot or {}).get("lr"),
        "rows": getattr(r, "rows", None),
    }
    return summary, {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize(
    "scenario",
    [
        "reg",  # mse, R² on a split validation set, uneven shares (33 rows over 2)
        "clf",  # cross-entropy, accuracy summed over the processes
        "weights",  # sample weights: each share weighted by its part of the batch's weight
        "no-val-clf",  # full batch, the training metric summed over the processes
        "loader",  # a DataLoader with a DistributedSampler
        "auto",  # the default policy: range test, race and decisions the same everywhere
        "stop",  # a stop asked for on one process stops both after the same epoch
        "unused-later",  # a layer leaves the loss after step 3: step 4 redone, DDP's search on
        "estimator-seeded",  # descend.Regressor(random_state=0): the estimator's fit, shared
        "lr-find",  # descend.lr_find: one sweep over both processes, the same suggestion
        "wrapped",  # the user's DDP(model, find_unused_parameters=True): its module, its options
        # A model sharded with FSDP2's fully_shard (no DDP): each process holds a shard of
        # every parameter and of its optimizer state; the output layer's 3 rows split 2 + 1.
        "fsdp-clf",
        "fsdp-reg",  # R² over a validation set split between the processes
        "fsdp-auto",  # range test on the model itself (restored), the race taking turns on it
        "fsdp-lr-find",  # the sweep runs on the model and puts its weights back
        "fsdp-optimizers",  # all fifteen optimizers on the shards (fused kernels, Muon, Prodigy)
        "nan-step",  # the divergence guard: one step's NaN loss rolled back on every process
        "fsdp-nan-step",  # ... its rollback copies of a sharded model's shards
    ],
)
def test_two_processes_train_as_one(scenario, tmp_path):
    two = launch(scenario, tmp_path / "two")
    assert all(not isinstance(r, str) for r in two), two
    (s0, w0), (s1, w1) = two  # type: ignore[misc]
    one, w = alone(scenario, tmp_path / "one")
    assert w0.keys() == w.keys()
    for k in w:
        assert torch.equal(w0[k], w1[k]), f"the processes' {k} differ"
        torch.testing.assert_close(w0[k], w[k], rtol=1e-5, atol=1e-5)
    for s in (s0, s1):
        assert s["ddp_alive"] == 0  # every wrapper released when fit returned (World.release)
        assert s["epochs"] == one["epochs"] and s["stop_reason"] == one["stop_reason"]
        assert s["lr"] == pytest.approx(one["lr"]) if one["lr"] else s["lr"] is None
        assert s["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
        assert s["metric"] == pytest.approx(one["metric"], rel=1e-5, abs=1e-6)
        assert s["step_loss"] == pytest.approx(one["step_loss"], rel=1e-4, abs=1e-6, nan_ok=True)
    if scenario == "stop":
        assert one["epochs"] == 2  # the rank-1 callback of the one process stopped it too
    if scenario == "lr-find":
        # one data-parallel sweep: each process's step took half of each batch of 32; rank 0
        # alone saved the plot
        assert one["rows"] == 32 and s0["rows"] == s1["rows"] == 16
        assert (tmp_path / "two" / "sweep-2-0.png").stat().st_size > 0
        assert not (tmp_path / "two" / "sweep-2-1.png").exists()
    if scenario.endswith("nan-step"):  # the step was rolled back, and the run went on
        assert math.isnan(one["step_loss"][1]) and s0["epochs"] == 3
    if scenario == "wrapped":  # the search was on from the start: nothing found, nothing said
        assert not s0["warnings"] and not s1["warnings"]
    if scenario == "unused-later":
        # said once, by the main process, naming the parameters and the step
        assert len(s0["warnings"]) == 1 and not s1["warnings"], (s0["warnings"], s1["warnings"])
        assert "spare.weight, spare.bias got no gradient at step 4" in s0["warnings"][0]
        assert not torch.equal(w0["spare.weight"], _initial_spare())  # trained 3 steps


def _initial_spare() -> torch.Tensor:
    return _worker().WithSpare(spare_on=True).spare.weight.detach().clone()


@pytest.mark.parametrize("policy", ["", "-auto", "-bn"])
def test_a_parameter_outside_the_loss_costs_no_step_and_no_random_draw(policy, tmp_path):
    """A layer that never reaches the loss: DDP's default mode would leave step 1's gradients
    partly unreduced and fail at step 2. The step is redone with DDP's search for unused
    parameters, from the same dropout streams: the run equals one with the layer frozen (no
    redo) bit for bit, and the layer keeps its initial weights. Under the default policy the
    range test's loop finds it, and the race's and the run's loops start with the search on:
    one warning for the run."""
    used = launch("unused" + policy, tmp_path / "unused")
    frozen = launch(f"unused{policy}-frozen", tmp_path / "frozen")
    assert all(not isinstance(r, str) for r in used + frozen), used + frozen
    for s, _ in used + frozen:  # (batch norm's folded last batch is said too: not this test's)
        s["warnings"] = [w for w in s["warnings"] if "the last batch of each epoch" not in w]
    for (s, w), (s_f, w_f) in zip(used, frozen):  # type: ignore[misc]
        for k in w_f:
            assert torch.equal(w[k], w_f[k]), k
        assert s["step_loss"] == s_f["step_loss"] and not s_f["warnings"]
    assert torch.equal(used[0][1]["spare.weight"], _initial_spare())  # type: ignore[index]
    said = used[0][0]["warnings"]  # type: ignore[index]
    assert len(said) == 1 and "spare.weight, spare.bias got no gradient at step 1" in said[0]
    assert not used[1][0]["warnings"]  # type: ignore[index]


def test_a_stop_asked_mid_epoch_on_one_process_stops_both(tmp_path):
    """A step callback's request on rank 1 reaches rank 0 through the next step's all_reduce:
    both stop after that same step (one process alone stops after the step it asked at)."""
    two = launch("stop-step", tmp_path)
    assert all(not isinstance(r, str) for r in two), two
    (s0, w0), (s1, w1) = two  # type: ignore[misc]
    assert s0["steps"] == s1["steps"] == 8 and s0["stop_reason"] == s1["stop_reason"] == "callback"
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize(
    ("scenario", "says"),
    [
        ("loader-plain", "must split the data among them with a DistributedSampler"),
        ("tiny-batch", "pass batch_size >= 2"),
        ("tiny-batch-bn", "each needing 2 rows (batch norm), so it must be at least 4"),
        ("seeds", "must be the same on every process"),
        ("rates", "lr must be the same on every process"),
        ("estimator", "needs an int random_state"),
        ("root-unsharded", "must be sharded at its root too"),
    ],
)
def test_refused_on_every_process(scenario, says, tmp_path):
    two = launch(scenario, tmp_path)
    for r in two:
        assert isinstance(r, str) and r.startswith("ConfigError") and says in r, r


def test_a_last_batch_too_small_to_split_is_folded_and_said_once(tmp_path):
    """162 training rows in batches of 23 leave a last batch of 1 row: one process takes it as
    a step, two processes cannot split it, so it joins the batch before — said once, on rank 0,
    with a batch size that avoids it."""
    two = launch("odd-last", tmp_path)
    assert all(not isinstance(r, str) for r in two), two
    (s0, _), (s1, _) = two  # type: ignore[misc]
    one, _ = alone("odd-last", tmp_path / "one")
    assert s0["steps"] == 7 and len(one["step_loss"]) == 8
    assert len(s0["warnings"]) == 1 and not s1["warnings"]
    assert "1 of 162 rows" in s0["warnings"][0] and "batch_size=24" in s0["warnings"][0]


@pytest.mark.parametrize("shard", ["", "bn-", "bn-fsdp-"])
def test_resume_is_exact_with_dropout(shard, tmp_path):
    """Killed after epoch 2 (a run of 2 epochs) and resumed to 4: the weights of a run never
    stopped, bit for bit, though each process drew its own dropout masks; only rank 0 wrote.
    A sharded model (fsdp-) writes whole tensors and reads its shards of them back. With batch
    norm (bn-) each process updates the running statistics from its share: they are rank 0's
    on every process before each evaluation and at the end (and, sharded, before each step, as
    DDP does), so the processes hand back one model and a resumed run (rank 0's statistics)
    goes on exactly (sharded, rank 1's drifted: resumed validation losses differed)."""
    full = launch(shard + "ckpt-full", tmp_path)
    part = launch(shard + "ckpt-part", tmp_path)
    assert all(not isinstance(r, str) for r in full + part), full + part
    resumed = launch(shard + "ckpt-resume", tmp_path)
    assert all(not isinstance(r, str) for r in resumed), resumed
    for (s_full, w_full), (s, w_res) in zip(full, resumed):  # type: ignore[misc]
        assert s["epochs"] == 4 and s["val_loss"] == s_full["val_loss"]
        for k in w_full:
            assert torch.equal(w_full[k], w_res[k]), k
    for k in full[0][1]:  # type: ignore[index]
        assert torch.equal(full[0][1][k], full[1][1][k]), k  # type: ignore[index]
    # one writer: the checkpoints of one run, no leftovers of a second
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names and not [n for n in names if n.startswith((".tmp", ".write-test"))], names


@pytest.mark.parametrize("shard", ["", "fsdp-"])
def test_a_run_killed_during_the_race_resumes_the_race_exactly(shard, tmp_path):
    """The default policy's race writes its checkpoints under DDP too (rank 0, every process's
    random streams gathered): killed after race epoch 2, the resumed run goes on from there
    and ends bit for bit where the run never killed ends, on both processes. A sharded model
    (fsdp-): the candidates' turns on the one model, whole tensors in the files."""
    full = launch(shard + "race-full", tmp_path)
    assert all(not isinstance(r, str) for r in full), full
    assert full[0][0]["race_epochs"] > 2  # type: ignore[index]
    killed = launch(shard + "race-kill", tmp_path)
    assert killed == ["Killed", "Killed"], killed
    race_dir = tmp_path / "race-ck" / "race"
    assert max(p.name for p in race_dir.iterdir()) == "ckpt-000000002"
    for p in tmp_path.glob("rank*.error"):  # the kill's, read above
        p.unlink()
    resumed = launch(shard + "race-resume", tmp_path)
    assert all(not isinstance(r, str) for r in resumed), resumed
    for (s_full, w_full), (s, w) in zip(full, resumed):  # type: ignore[misc]
        assert "the race went on from its checkpoint after epoch 2" in s["why"]
        assert s["lr"] == s_full["lr"] and s["val_loss"] == s_full["val_loss"]
        for k in w_full:
            assert torch.equal(w_full[k], w[k]), k


SCRIPT = """
import json, os, sys
import numpy as np, torch, descend
torch.set_num_threads(1)
rng = np.random.default_rng(0)
X = rng.standard_normal((200, 6)).astype(np.float32)
y = X.sum(1)
torch.manual_seed(1)
m = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
r = descend.fit(m, (X, y), "mse", optimizer=descend.optim.adamw(lr=3e-3), epochs=3,
                batch_size=32, seed=0, verbose=1, device="cpu")
out = {"world": descend.distributed.world_size(), "val": r.history.val_loss}
with open(f"result{os.environ['RANK']}.json", "w") as f:
    json.dump(out, f)
"""


def test_torchrun_launch_needs_no_code(tmp_path):
    """Under torchrun fit makes the process group itself (gloo on the CPU), trains one model
    on both processes, and only rank 0 prints the progress."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    p = subprocess.run(
        [*cmd, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and results[0]["world"] == 2
    assert p.stdout.count("descend: Sequential") == 1  # one progress display, rank 0's


def _torchrun(args: list[str], cwd: Path, n: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, "-m", "descend", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env=env,
    )  # fmt: skip


def test_the_command_line_under_torchrun_trains_one_model(tmp_path):
    """`torchrun -m descend fit`: rank 0 draws the seed and makes the one run directory, both
    processes train one model, rank 0 alone writes and prints — the same run as one process's
    (weights to float rounding, the same choices), so `descend predict` needs nothing new."""
    fit = ["fit", "diabetes", "--epochs", "6", "--seed", "0", "--device", "cpu"]
    two = _torchrun([*fit, "--out", "two"], tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "descend", *fit, "--out", "one"], capture_output=True, text=True,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("run saved to two") == 1 and two.stdout.count("test (") == 1
    w2, w1 = (
        load_file(tmp_path / "two" / "model.safetensors"),
        load_file(tmp_path / "one" / "model.safetensors"),
    )
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-5)
    s2, s1 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one"))
    assert s2["epochs"] == s1["epochs"] and s2["seed"] == s1["seed"] == 0
    assert s2["autopilot"]["lr"] == pytest.approx(s1["autopilot"]["lr"])
    assert s2["test"] == pytest.approx(s1["test"], rel=1e-4)
    metrics = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == s2["epochs"]  # one writer

    # No seed given: rank 0's, for both (one directory, not two)
    drawn = _torchrun(
        ["fit", "diabetes", "--epochs", "2", "--runs-dir", "rr", "--device", "cpu"], tmp_path
    )
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert len(list((tmp_path / "rr").iterdir())) == 1


def test_the_command_line_under_torchrun_refuses_once(tmp_path):
    """rank 0 refuses a non-empty --out; every process stops, and the error is said once."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    p = _torchrun(
        ["fit", "diabetes", "--epochs", "2", "--out", "full", "--device", "cpu"], tmp_path
    )
    assert p.returncode != 0
    assert p.stderr.count("error: ") == 1 and "--out" in p.stderr, p.stderr[-3000:]
    assert sorted(x.name for x in (tmp_path / "full").iterdir()) == ["keep.txt"]


def test_more_processes_than_gpus_is_refused_with_the_fix(monkeypatch):
    """torchrun with 2 processes on a 1-GPU machine: NCCL takes a GPU per process, so the
    second is refused before any group is made, naming --nproc_per_node and the CPU."""
    import descend.distributed as dd

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    made = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: made.append(1))
    with pytest.raises(descend.ConfigError, match=r"--nproc_per_node=1\), or train on the CPU"):
        dd.join(None)
    assert not made
