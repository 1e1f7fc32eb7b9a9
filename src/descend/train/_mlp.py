"""A hand-written backward pass for plain multi-layer perceptrons.

On the small networks tabular training uses (a 20-64-64-3 MLP on a 169-row batch), a step's
matrix products take ~0.2 ms on one CPU core and torch's autograd machinery around them —
recording the graph in the forward pass, the engine walking it in the backward pass — about
as long again: ``loss.backward()`` measured ~2× the same arithmetic written out by hand
(benchmarks/RESULTS.md, fit overhead). scikit-learn's MLP is hand-written backprop in numpy for
the same reason. (Wrapping the same arithmetic in a custom ``torch.autograd.Function``, so the
engine still ran but over two nodes instead of a dozen, measured no gain: the step has to keep
the loss's gradient out of the engine too.)

:class:`MLPStep` is that hand-written step for the one model shape where it is exact and
simple: an ``nn.Sequential`` of ``nn.Linear`` layers with an elementwise ``nn.ReLU``,
``nn.LeakyReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.GELU`` or ``nn.SiLU`` after any of them — what
:func:`descend.models.mlp` builds with any of its activations and without batch norm or
dropout. The forward pass runs without a graph and keeps each layer's input (and the GELU/SiLU
pre-activations). ``dL/d output`` comes in closed form for ``mse`` and ``cross_entropy`` with
their default options (:func:`loss_grad`) and from autograd on the output alone for any other
library loss (options such as label smoothing, huber, mae, ...). A user's own loss function
takes autograd's path for the whole step: it may reach the parameters other than through the
output (a penalty closing over the model), which a backward pass from the output would miss.
The backward pass through the layers is a few ``mm``/``sum`` calls per layer, the arithmetic
autograd's ``AddmmBackward`` does. The gradients equal autograd's to float rounding
(tests/test_mlp_step.py compares them for every supported activation, depth and loss).

Anything else — other module types, subclasses, hooks on a module or global ones, frozen or
shared parameters (:meth:`MLPStep.build` returns None), inputs that are not a 2-D batch of the
weights' dtype and device, autocast, anomaly mode, no_grad (:meth:`MLPStep.usable` says False:
checked at every step while user code runs between steps — step callbacks, a streamed source —
else at each epoch's first step, since nothing else can change them) — takes autograd's path,
so the fast path is only ever an exact replacement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from descend import losses as L
from descend.transforms._util import without_grad

# Activations, and their backward pass:
#   relu:        g · [h > 0]                   (from the output h)
#   leaky relu:  g · (h > 0 ? 1 : slope)       (slope > 0 keeps sign(h) = sign(pre-activation))
#   tanh:        g · (1 − h²)
#   gelu, silu:  torch's own gelu_backward / silu_backward of the pre-activation (kept)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU)
# The overload itself: the packet's Python dispatch costs about as much as the kernel here.
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.default
# Activation codes of a layer plan (no activation, then _ACTS in order).
_NONE, _RELU, _LEAKY, _TANH, _SIGMOID, _GELU, _SILU = range(7)
_CODE = {nn.ReLU: _RELU, nn.LeakyReLU: _LEAKY, nn.Tanh: _TANH, nn.Sigmoid: _SIGMOID,
         nn.GELU: _GELU, nn.SiLU: _SILU}  # fmt: skip
# F.mse_loss's kernel without its Python wrapper (the library's mse calls F.mse_loss, so the
# value is the same number; the wrapper's checks cost ~3x the kernel on a small batch)
_MSE = torch._C._nn.mse_loss  # (pred, target, 1): reduction "mean"


def _global_hooks() -> bool:
    return bool(
        _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or getattr(_module, "_global_backward_pre_hooks", None)
        or getattr(_module, "_global_forward_hooks_always_called", None)
    )


@functools.lru_cache(maxsize=8)
def _minus_ones(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A constant ``(n, 1)`` tensor of −1 (read, never written: the one-hot of the gradient)."""
    return torch.full((n, 1), -1.0, dtype=dtype, device=device)


def _closed_form(loss: object, out: torch.Tensor, target: torch.Tensor | None) -> str | None:
    """``"mse"`` or ``"cross_entropy"`` where the closed forms below are exact for ``(out,
    target)`` — the library's loss with its default options, a 2-D output, a target of the
    output's shape and dtype (mse) or 1-D class indices (cross-entropy) — else None."""
    if not isinstance(loss, L.Loss) or loss.kwargs or target is None or out.dim() != 2:
        return None
    if loss.fn is L.mse:
        ok = target.shape == out.shape and target.dtype == out.dtype
        return "mse" if ok else None
    if loss.fn is L.cross_entropy:
        ok = target.dim() == 1 and (not target.is_floating_point() or target.dtype == out.dtype)
        return "cross_entropy" if ok else None
    return None


#: Up to this many output elements the mse value is a dot product of the residual with itself
#: (see _mse_closed); above it torch's mse kernel, whose pairwise sum keeps a large batch's
#: mean accurate in float32.
_DOT_MSE_MAX = 1 << 16


@functools.lru_cache(maxsize=8)
def _mse_scales(
    n: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant 0-dim tensors ``1/n`` and ``2/n`` (read, never written): a Python number in an
    in-place product is wrapped in a fresh tensor at every call, ~2 us each on a CPU."""
    return (
        torch.tensor(1.0 / n, dtype=dtype, device=device),
        torch.tensor(2.0 / n, dtype=dtype, device=device),
    )


def _mse_closed(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean squared error, its gradient 2 (out - target) / n)``, unweighted.

    On a small batch (up to ``_DOT_MSE_MAX`` float32/float64 elements) the value is ``r·r / n``
    of the residual ``r`` the gradient is made from: one subtraction, a dot product and two
    scalings, where torch's mse kernel recomputed the residual, squared it and took a mean
    (a division through a temporary): ~14 -> ~8 us of a ~0.3 ms step on the 3-output tabular set
    (benchmarks/RESULTS.md, estimators). The same number to float rounding; the gradient is
    the same bits (``2/n`` rounds to the same float either way)."""
    diff = out - target
    n = diff.numel()
    if not _dot_ok(diff):
        return _MSE(out, target, 1), diff.mul_(2.0 / n)
    return _dot_mse(diff), diff.mul_(_mse_scales(n, diff.dtype, diff.device)[1])


def _dot_ok(diff: torch.Tensor) -> bool:
    """Whether the residual takes the dot-product value: a small float32/float64 batch."""
    return diff.numel() <= _DOT_MSE_MAX and diff.dtype in (torch.float32, torch.float64)


def _dot_mse(diff: torch.Tensor) -> torch.Tensor:
    """``diff·diff / n`` (the caller checked the size and dtype; ``diff`` is only read)."""
    flat = diff.reshape(-1)  # (a view where the output is contiguous, as a Linear's is)
    return torch.dot(flat, flat).mul_(_mse_scales(flat.numel(), diff.dtype, diff.device)[0])


def loss_grad(
    loss: object, out: torch.Tensor, target: torch.Tensor | None, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(value, dL/d out)`` in closed form for the two losses tabular training uses most —
    ``mse`` and ``cross_entropy`` on class indices, with their default options and optional
    per-sample weights — or None (the caller differentiates the loss with autograd).

    The formulas are the losses' own reductions (``descend.losses``): mean over elements, or
    ``Σ w_i l_i / (Σ w_i · elements per sample)`` with weights; for cross-entropy the gradient
    is ``(softmax(out) − onehot(y)) · w_i / Σ w``.
    """
    kind = _closed_form(loss, out, target)
    if kind is None:
        return None
    assert target is not None
    if kind == "mse":
        if weight is None:
            return _mse_closed(out, target)
        diff = out - target
        w = weight.to(out.dtype)[:, None]
        denom = w.sum() * out.shape[1]
        value = (diff.square() * w).sum() / denom
        return value, diff.mul_(w * (2.0 / denom))
    if kind == "cross_entropy":
        target = target if target.dtype == torch.long else target.long()
        idx = target[:, None]
        logp = torch.log_softmax(out, 1)
        minus_one = _minus_ones(out.shape[0], out.dtype, out.device)
        if weight is None:
            value = F.nll_loss(logp, target)
            g = logp.exp_().scatter_add_(1, idx, minus_one)
            return value, g.mul_(1.0 / out.shape[0])
        nll = logp.gather(1, idx).neg_().squeeze(1)
        g = logp.exp_().scatter_add_(1, idx, minus_one)
        w = weight.to(out.dtype)
        denom = w.sum()
        return (nll * w).sum() / denom, g.mul_((w / denom)[:, None])
    return None


def loss_value(loss: object, out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor | None:
    """The mean loss of ``out`` in one or two kernels, where :func:`loss_grad` has the closed
    form (``mse``, ``cross_entropy`` on class indices, default options, no weights); else None
    (the caller goes through the loss). For evaluation: the loss's own wrapper and checks cost
    several times the arithmetic on a small validation set."""
    kind = _closed_form(loss, out, target)
    if kind is None:
        return None
    assert target is not None
    if kind == "mse":
        # the value alone (no gradient to scale): the same number as the training step's
        diff = out - target
        if not _dot_ok(diff):
            return _MSE(out, target, 1)
        return _dot_mse(diff)
    return F.cross_entropy(out, target if target.dtype == torch.long else target.long())


class MLPStep:
    """The hand-written forward/backward of a plain MLP; see the module docstring.

    Build it with :meth:`build`, which returns ``None`` for any model it does not cover.
    """

    def __init__(
        self,
        model: nn.Sequential,
        layers: list[tuple[nn.Linear, nn.Module | None]],
        index: list[tuple[int, int | None]],
    ) -> None:
        self.model = model
        self.modules = list(model.modules())
        self.layers = layers
        # Per layer: the position of its weight and bias in the loop's parameter list.
        self.index = index
        self.n_params = sum(1 + (b is not None) for _, b in index)
        self._flat: torch.Tensor | None = None  # the flat gradient buffer (see _buffer)
        self._views: list[torch.Tensor] = []
        # Per layer, what the step reads, resolved once: the Linear's own parameter dict (a
        # dict read per step; ``lin.weight`` goes through nn.Module.__getattr__, ~1 us each,
        # and a parameter replaced between steps is still seen), the activation's code and
        # option, and the gradient positions. The step's cost on a small tabular MLP is
        # mostly such per-call overhead (benchmarks/RESULTS.md, estimators, session 23).
        self._plan = [
            (
                lin._parameters,
                lin.bias is not None,
                _NONE if act is None else _CODE[type(act)],
                act.negative_slope if type(act) is nn.LeakyReLU else
                act.approximate if type(act) is nn.GELU else None,
                wi,
                bi,
            )
            for (lin, act), (wi, bi) in zip(layers, index)
        ]  # fmt: skip
        # Every module's hook registries, read by usable() (each epoch and each evaluation):
        # registering a hook adds to these dicts, it does not replace them.
        self._hook_dicts = [
            d
            for m in self.modules
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                      m._backward_pre_hooks)
        ]  # fmt: skip
        self._loss_key: tuple = ()  # the last (loss, shapes, dtypes) and its closed form
        self._loss_kind: str | None = None

    @classmethod
    def build(cls, model: nn.Module, plist: Sequence[torch.Tensor], loss: object) -> MLPStep | None:
        """An :class:`MLPStep` for ``model`` trained with ``loss`` when the model is a plain MLP
        whose trainable parameters are exactly ``plist`` (each Linear's weight and bias, none
        frozen or shared) and the loss is one of the library's own, else None.

        The loss is required, not optional: a library loss sees only ``(pred, target, weight)``,
        while a user's function may reach the parameters by another road (``mse(pred, y) +
        λ·Σ‖θ‖²`` closing over the model), which a backward pass from the output alone misses.
        """
        if not (isinstance(loss, L.Loss) and loss.fn in L._BUILTIN_NAMES):
            return None
        if type(model) is not nn.Sequential or len(model) == 0:
            return None
        layers: list[tuple[nn.Linear, nn.Module | None]] = []
        for m in model:
            if type(m) is nn.Linear:
                layers.append((m, None))
            elif type(m) in _ACTS and layers and layers[-1][1] is None:
                if type(m) is nn.LeakyReLU and not m.negative_slope > 0:
                    return None
                layers[-1] = (layers[-1][0], m)
            else:
                return None
        position = {id(p): i for i, p in enumerate(plist)}
        if len(position) != len(plist):
            return None
        index: list[tuple[int, int | None]] = []
        seen = 0
        for lin, _ in layers:
            w = position.get(id(lin.weight))
            b = None if lin.bias is None else position.get(id(lin.bias))
            if w is None or (lin.bias is not None and b is None):
                return None
            index.append((w, b))
            seen += 1 + (b is not None)
        used = [i for pair in index for i in pair if i is not None]
        if seen != len(plist) or len(set(used)) != len(used):
            return None  # a frozen, extra or shared parameter: autograd's path
        return cls(model, layers, index)

    def usable(self, xb: torch.Tensor, *, training: bool = True) -> bool:
        """Whether this step is exact for ``xb`` now (cheap; see the module doc for when).

        ``training=False`` asks about :meth:`forward` alone (evaluation, under ``no_grad``).
        """
        w = self.layers[0][0].weight
        if (
            not isinstance(xb, torch.Tensor)
            or xb.dim() != 2
            or xb.dtype != w.dtype
            or xb.device != w.device
            or (training and (xb.requires_grad or not torch.is_grad_enabled()))
            or torch.is_autocast_enabled(w.device.type)
            or torch.is_anomaly_enabled()  # the user asked for autograd's own NaN checks
            or _global_hooks()
        ):
            return False
        return not any(self._hook_dicts)  # any module hook

    @without_grad
    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """The model's output for ``xb``, without a graph (what ``model(xb)`` computes)."""
        return self._forward(xb, keep=False)[0][-1]

    def _forward(
        self, xb: torch.Tensor, keep: bool
    ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """``([output], {})``, or with ``keep`` every layer's input then the output, and the
        pre-activations of the GELU/SiLU layers by index (their derivatives need them).
        The caller has turned gradients off."""
        acts = [xb]
        pre: dict[int, torch.Tensor] = {}
        h = xb
        linear = F.linear
        for i, (ps, _, code, opt, _, _) in enumerate(self._plan):
            h = linear(h, ps["weight"], ps["bias"])
            if code:
                if code == _RELU:
                    h = h.relu_()
                elif code == _TANH:
                    h = h.tanh_()
                elif code == _SIGMOID:
                    h = h.sigmoid_()
                elif code == _LEAKY:
                    h = F.leaky_relu_(h, opt)
                else:
                    if keep:
                        pre[i] = h
                    h = F.gelu(h, approximate=opt) if code == _GELU else F.silu(h)
            if keep:
                acts.append(h)
        return (acts, pre) if keep else ([h], pre)

    def _buffer(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Views, in the loop's parameter order, into one flat gradient buffer of ``like``'s
        dtype and device (made on first use)."""
        flat = self._flat
        if flat is None or flat.dtype != like.dtype or flat.device != like.device:
            shapes: list[torch.Size | None] = [None] * self.n_params
            for (lin, _), (wi, bi) in zip(self.layers, self.index):
                shapes[wi] = lin.weight.shape
                if bi is not None:
                    shapes[bi] = lin.bias.shape
            total = sum(s.numel() for s in shapes)  # type: ignore[union-attr]
            flat = self._flat = torch.empty(total, dtype=like.dtype, device=like.device)
            self._views, start = [], 0
            for shape in shapes:
                n = shape.numel()  # type: ignore[union-attr]
                self._views.append(flat[start : start + n].view(shape))  # type: ignore[arg-type]
                start += n
        return self._views

    def _loss_grad(
        self,
        loss: object,
        out: torch.Tensor,
        target: torch.Tensor | None,
        weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:func:`loss_grad`, with the closed-form check remembered for the last loss and
        shapes (a training run asks the same question every step)."""
        if target is None or weight is not None:
            return loss_grad(loss, out, target, weight)
        key = (loss, out.shape, out.dtype, target.shape, target.dtype)
        if key != self._loss_key:
            self._loss_key, self._loss_kind = key, _closed_form(loss, out, target)
        if self._loss_kind == "mse":
            return _mse_closed(out, target)
        if self._loss_kind is None:
            return None
        return loss_grad(loss, out, target, None)

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients of the last ``grads(..., flat=True)`` call: one
        kernel over the flat buffer (the per-tensor norms, stacked and reduced, were three;
        ~25 us of a 0.3 ms step on the 3-output tabular set, benchmarks/RESULTS.md)."""
        assert self._flat is not None
        return torch.linalg.vector_norm(self._flat)

    @without_grad  # one switch for the whole step
    def grads(
        self,
        xb: torch.Tensor,
        loss: Callable[..., torch.Tensor],
        target: torch.Tensor | None,
        weight: torch.Tensor | None,
        *,
        flat: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(loss value, output, gradients in the loop's parameter order)`` for one batch.

        ``loss(out, target[, weight=])`` is the loop's loss: differentiated in closed form by
        :func:`loss_grad` where it can be, by autograd on the output alone otherwise.

        With ``flat=True`` the gradients are views into one buffer that the next call
        overwrites (and :meth:`grad_norm` reads): for an optimizer step that consumes them at
        once (the loop's fused AdamW/SGD path), never for one that may keep them.
        """
        acts, pre = self._forward(xb, keep=True)
        h = acts[-1]
        closed = self._loss_grad(loss, h, target, weight)
        if closed is not None:
            value, g = closed
            out = h
        else:
            with torch.enable_grad():
                out = h.requires_grad_()
                if weight is None:
                    value = loss(out, target, validate=False)
                else:
                    value = loss(out, target, weight=weight, validate=False)
                (g,) = torch.autograd.grad(value, out)
            out = out.detach()
            value = value.detach()
        grads: list[torch.Tensor | None] = self._buffer(g) if flat else [None] * self.n_params  # type: ignore[assignment]
        mm, total = torch.mm, torch.sum
        plan = self._plan
        for i in range(len(plan) - 1, -1, -1):
            ps, has_bias, code, opt, wi, bi = plan[i]
            if code:
                h = acts[i + 1]
                if code == _RELU:
                    g = _THRESHOLD_BACKWARD(g, h, 0)
                elif code == _TANH:
                    g = g * (1 - h * h)
                elif code == _SIGMOID:
                    g = g * (h * (1 - h))
                elif code == _LEAKY:
                    g = torch.where(h > 0, g, g * opt)
                elif code == _GELU:
                    g = torch.ops.aten.gelu_backward(g, pre[i], approximate=opt)
                else:
                    g = torch.ops.aten.silu_backward(g, pre[i])
            if flat:
                mm(g.t(), acts[i], out=grads[wi])
                if has_bias:
                    total(g, 0, out=grads[bi])
            else:
                grads[wi] = g.t().mm(acts[i])
                if has_bias:
                    grads[bi] = g.sum(0)
            if i > 0:
                g = g.mm(ps["weight"])
        return value, out, grads  # type: ignore[return-value]
