"""What the optimizer tests (test_optim.py, test_optim_modern.py) share: a fixed float64
regression problem, a training loop in descend, state-tree layouts, and two test functions
with their analytic gradients. Each test file keeps its own model (``_mlp``)."""

from __future__ import annotations

import torch

from descend.transforms import Transform, apply_updates, swap_to_eval, update_and_apply


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = torch.randn(64, 3, generator=g, dtype=torch.float64)
    return x, y


def loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def layout(state):
    """The state tree with every tensor replaced by its shape and dtype."""
    if isinstance(state, dict):
        return {k: layout(v) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return [layout(v) for v in state]
    if isinstance(state, torch.Tensor):
        return ("tensor", tuple(state.shape), state.dtype)
    return type(state).__name__


def train_descend(
    model: torch.nn.Module, tx: Transform, steps=100, *, schedule_free=False, fused=False
):
    """``steps`` full-batch steps of ``tx`` on :func:`data`; returns ``(model, state)``.

    ``fused``: step with ``update_and_apply``; ``schedule_free``: end at the averaged point."""
    x, y = data()
    params = dict(model.named_parameters())
    state = tx.init(params)
    for _ in range(steps):
        for p in params.values():
            p.grad = None
        loss(model, x, y).backward()
        grads = {n: p.grad for n, p in params.items()}
        if fused:
            state = update_and_apply(tx, grads, state, params)
        else:
            updates, state = tx.update(grads, state, params)
            apply_updates(params, updates)
    if schedule_free:
        assert swap_to_eval(state, params)
    return model, state


def torch_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y, n: int) -> None:
    """``n`` steps of a torch optimizer on ``(x, y)``."""
    for _ in range(n):
        opt.zero_grad()
        loss(model, x, y).backward()
        opt.step()


def forbid_host_sync(monkeypatch) -> None:
    """Make ``.item()``, ``float()``, ``bool()``, ``.tolist()`` and ``int()`` on any tensor (a
    host-device synchronization on GPUs) fail until ``monkeypatch.undo()``."""

    def refuse(*args, **kwargs):
        raise AssertionError("host-device synchronization in update()")

    for attr in ("item", "__float__", "__bool__", "tolist", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, refuse)


def minimize(tx: Transform, f, grad, x0, steps) -> float:
    """``f`` after ``steps`` steps of ``tx`` from ``x0`` with the analytic ``grad``, evaluated
    at the averaged point for schedule-free optimizers (a no-op for the others)."""
    params = {"x": torch.tensor(x0, dtype=torch.float64)}
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update({"x": grad(params["x"])}, state, params)
        apply_updates(params, updates)
    swap_to_eval(state, params)
    return f(params["x"]).item()


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def rosenbrock_grad(x):
    a, b = x[0], x[1]
    return torch.stack([-2 * (1 - a) - 400 * a * (b - a**2), 200 * (b - a**2)])


SCALES = torch.arange(1, 6, dtype=torch.float64)


def quadratic(x):
    """An ill-conditioned quadratic in 5 dimensions, minimum 0 at x = 1."""
    return 0.5 * (SCALES * (x - 1) ** 2).sum()


def quadratic_grad(x):
    return SCALES * (x - 1)


def plain_tree(tree):
    """What a checkpoint round trip does: tuples become lists, tensors are copied."""
    if isinstance(tree, dict):
        return {k: plain_tree(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return [plain_tree(v) for v in tree]
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    return tree


def tensors_in(tree):
    """Every tensor of a state tree (dicts, tuples, lists), depth first."""
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from tensors_in(v)
    elif isinstance(tree, (tuple, list)):
        for v in tree:
            yield from tensors_in(v)
