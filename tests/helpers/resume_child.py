"""A training run for the kill-and-resume tests (run as a subprocess).

argv: checkpoint_dir out_dir kill_step [kill_in_write]
  kill_step      SIGKILL this process right after optimizer step N (-1: never)
  kill_in_write  SIGKILL inside the Nth checkpoint write, after the tensors are on disk but
                 before the manifest (-1: never)
Env DESCEND_SABOTAGE=rng|opt breaks resume on purpose (to show the test can fail).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import descend
from descend import checkpoint as C
from descend import schedules
from descend.train.loop import Loop

ckdir, out, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
kill_in_write = int(sys.argv[4]) if len(sys.argv) > 4 else -1
sabotage = os.environ.get("DESCEND_SABOTAGE", "")

if sabotage == "rng":
    Loop._set_rng_state = lambda self, rng: None
if sabotage == "opt":
    _orig = Loop.load_checkpoint

    def _no_opt(self, ckpt):
        fresh = self.opt_state
        _orig(self, ckpt)
        self.opt_state = fresh
        self.refresh_lr_state()

    Loop.load_checkpoint = _no_opt

if kill_in_write >= 0:
    _writes = {"n": 0}
    _orig_write = C._write_bytes

    def _write(path, data):
        if str(path).endswith("manifest.json"):
            _writes["n"] += 1
            if _writes["n"] == kill_in_write:
                os.kill(os.getpid(), signal.SIGKILL)
        _orig_write(path, data)

    C._write_bytes = _write

rng = np.random.default_rng(0)
X = rng.standard_normal((400, 8)).astype(np.float32)
y = (X[:, :3] @ rng.standard_normal((3, 3))).argmax(1)

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 3)
)
# The learning rate drops 10x at step 40 (a "learning-rate change" kill point).
sched = schedules.join([schedules.constant(), lambda s: 0.1], [40])


class Killer(descend.Callback):
    def on_step_end(self, loop):
        if loop.step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)


r = descend.fit(
    model,
    (X, y),
    "cross_entropy",
    optimizer=descend.optim.adamw(lr=3e-3, schedule=sched),
    epochs=6,
    batch_size=32,
    patience=None,
    checkpoint=ckdir,
    checkpoint_every=7,
    resume=ckdir,
    seed=123,
    verbose=0,
    callbacks=[Killer()],
)
os.makedirs(out, exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/params.safetensors")
with open(f"{out}/history.json", "w") as f:
    h = r.history
    json.dump(
        {
            "step_loss": h.step_loss,
            "step_lr": h.step_lr,
            "step_grad_norm": h.step_grad_norm,
            "train_loss": h.train_loss,
            "val_loss": h.val_loss,
            "metric": h.metric,
            "steps": r.steps,
            "epochs": r.epochs,
            "best_epoch": r.best_epoch,
        },
        f,
    )
