"""Per-client conv2d and max_pool2d under vmap, K clients packed channels-last (CPU kernels).

vmap's own batching rules run K clients' ``conv2d`` as one grouped convolution but hand
``max_pool2d`` a ``[K*B, C, H, W]`` tensor: every pooling layer then copies the activations
out of the grouped layout and back, and pools 6 or 16 channels at a time, which oneDNN and
ATen's CPU kernels do slowly. Here the activations of a vmapped model stay packed as one
``[B, K*C, H, W]`` channels-last tensor from convolution to pooling to convolution (ReLU and
other elementwise ops keep the strides), so both run vectorized over K*C channels. The weight
gradient of a convolution with few input channels per group (an RGB stem) runs client by
client, where oneDNN's grouped kernel is slower than K small ones (benchmarks/README.md,
"Simulation engines").

How it plugs in: :class:`PackedKernels`, a ``TorchFunctionMode``, routes a model's
``conv2d``/``max_pool2d`` calls to ``autograd.Function``s whose ``vmap`` rules (torch.func's
extension point) pack the clients and run plain ATen ops, or :class:`_GroupedConv2d`, on the
packed tensors. The engine runs the model's forward pass under ``vmap`` and differentiates the
sum of the K losses with ordinary autograd (each client's loss depends on its own parameters
only, so that gives every client's gradient); the backward pass therefore runs on the packed
tensors directly. ``torch.func.grad`` over these kernels is refused with that explanation.
Values equal vmap's grouped convolution up to float rounding. Written by hand: torch ships no
such batching rules. A model that ``.view()``s a packed activation fails here; the engine then
retries with vmap's own rules (simulations/batched/grid.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten

# Weight gradients of convolutions with at most this many input channels per group run one
# client at a time: the loop wins on an RGB stem (3 -> 6 channels), the grouped kernel from
# 6 -> 16 channels on (benchmarks/README.md).
LOOP_WEIGHT_GRAD_MAX_CHANNELS = 4


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _batched(t: torch.Tensor, dim: int | None, k: int) -> torch.Tensor:
    """``t`` with its client dimension first (expanded when it has none)."""
    return t.movedim(dim, 0) if dim is not None else t.expand(k, *t.shape)


def _pack(t: torch.Tensor, dim: int | None, k: int) -> torch.Tensor:
    """[B, K*C, H, W] channels-last from a per-client [B, C, H, W] batched along ``dim``.

    A view when ``t`` already lies packed (the output of another packed kernel), else a copy.
    """
    if dim is None:
        t = t.unsqueeze(1).expand(t.shape[0], k, *t.shape[1:])
    else:
        t = t.movedim(dim, 1)
    b, _, c, h, w = t.shape
    return t.permute(0, 3, 4, 1, 2).reshape(b, h, w, k * c).permute(0, 3, 1, 2)


def _unpack(t: torch.Tensor, k: int) -> torch.Tensor:
    """[B, K, C, H, W] view of a packed channels-last [B, K*C, H, W] (client dimension 1)."""
    b, kc, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b, h, w, k, kc // k).permute(0, 3, 4, 1, 2)


def _weights(w: torch.Tensor, dim: int | None, k: int) -> torch.Tensor:
    """[K*O, C/g, kh, kw] grouped weight from per-client [O, C/g, kh, kw] weights."""
    w = _batched(w, dim, k)
    return w.reshape(k * w.shape[1], *w.shape[2:])


class _ConvConfig:
    __slots__ = ("stride", "padding", "dilation", "groups")

    def __init__(self, stride, padding, dilation, groups) -> None:
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.dilation, self.groups = _pair(dilation), int(groups)

    def backward(self, gout, x, w, mask, groups):
        return aten.convolution_backward(
            gout, x, w, None, self.stride, self.padding, self.dilation, False, [0, 0],
            groups, mask,
        )  # fmt: skip


def _client_major(t: torch.Tensor, k: int) -> torch.Tensor:
    """[K, B, C, H, W] from a packed [B, K*C, H, W], each client's block contiguous (one copy)."""
    return _unpack(t, k).permute(1, 0, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class _GroupedConv2d(torch.autograd.Function):
    """K clients' convolution on packed tensors; backward with per-client RGB weight grads.

    ``x_clients`` is the same input as ``x`` with clients first ([K, B, C, H, W], a view): the
    per-client weight gradients read it, which for a first layer is the minibatch as stored.
    """

    @staticmethod
    def forward(ctx, x, w, b, conf, k, x_clients):
        ctx.save_for_backward(x, w, x_clients)
        ctx.conf, ctx.k, ctx.has_bias = conf, k, b is not None
        groups = conf.groups * k
        return F.conv2d(x, w, b, conf.stride, conf.padding, conf.dilation, groups)

    @staticmethod
    def backward(ctx, gout):
        x, w, x_clients = ctx.saved_tensors
        conf, k = ctx.conf, ctx.k
        needs_x, needs_w = ctx.needs_input_grad[:2]
        loop = needs_w and w.device.type == "cpu" and w.shape[1] <= LOOP_WEIGHT_GRAD_MAX_CHANNELS
        gx = gw = None
        if needs_x or (needs_w and not loop):
            mask = (needs_x, needs_w and not loop, False)
            gx, gw, _ = conf.backward(gout, x, w, mask, conf.groups * k)
        if loop:
            gouts, ws = _client_major(gout, k), w.view(k, -1, *w.shape[1:])
            mask = (False, True, False)
            per_client = [
                conf.backward(gouts[i], x_clients[i], ws[i], mask, conf.groups)[1] for i in range(k)
            ]
            gw = torch.cat(per_client)
        gb = gout.sum(dim=(0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


def _refuse_functorch_grad(*_):
    raise RuntimeError(
        "the packed kernels differentiate with ordinary autograd: run the model under vmap and "
        "call torch.autograd.grad on the summed losses (as simulations/batched/training.py "
        "does), not torch.func.grad"
    )


class ClientConv2d(torch.autograd.Function):
    """``F.conv2d`` of one client's [B, C, H, W] batch; subclasses batch it over clients (vmap)."""

    @staticmethod
    def forward(x, w, b, conf):
        return F.conv2d(x, w, b, conf.stride, conf.padding, conf.dilation, conf.groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(_refuse_functorch_grad)


class PackedConv2d(ClientConv2d):
    """Batched over clients, packed (one grouped convolution on [B, K*C, H, W])."""

    @staticmethod
    def vmap(info, in_dims, x, w, b, conf):
        k = info.batch_size
        bias = None if b is None else _batched(b, in_dims[2], k).reshape(-1)
        packed = _pack(x, in_dims[0], k)
        out = _GroupedConv2d.apply(
            packed, _weights(w, in_dims[1], k), bias, conf, k, _batched(x, in_dims[0], k)
        )
        return _unpack(out, k), 1


class _PoolConfig:
    __slots__ = ("kernel", "stride", "padding", "dilation", "ceil_mode")

    def __init__(self, kernel, stride, padding, dilation, ceil_mode) -> None:
        self.kernel = _pair(kernel)
        self.stride = _pair(stride) if stride not in (None, [], ()) else self.kernel
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.ceil_mode = bool(ceil_mode)

    def __call__(self, x):
        return F.max_pool2d(
            x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, True
        )


class PackedMaxPool2d(torch.autograd.Function):
    """``F.max_pool2d`` of one client's [B, C, H, W] batch; batched over clients, packed."""

    @staticmethod
    def forward(x, conf):
        return conf(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])

    backward = staticmethod(_refuse_functorch_grad)

    @staticmethod
    def vmap(info, in_dims, x, conf):
        k = info.batch_size
        out, indices = conf(_pack(x, in_dims[0], k))
        return (_unpack(out, k), _unpack(indices, k)), (1, 1)


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return PackedConv2d.apply(input, weight, bias, _ConvConfig(stride, padding, dilation, groups))


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    out, indices = PackedMaxPool2d.apply(
        input, _PoolConfig(kernel_size, stride, padding, dilation, ceil_mode)
    )
    return (out, indices) if return_indices else out


_CONV = {torch.conv2d, F.conv2d}
_POOL = {F.max_pool2d, F._max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}


class PackedKernels(TorchFunctionMode):
    """While active, ``conv2d``/``max_pool2d`` calls on 4-D inputs run the packed kernels above.

    Anything else (string padding, 3-D inputs, other ops) passes through unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV and args and args[0].dim() == 4:
            padding = kwargs.get("padding", args[4] if len(args) > 4 else 0)
            if not isinstance(padding, str):
                return _conv2d(*args, **kwargs)
        if func in _POOL and args and args[0].dim() == 4:
            return_indices = func is F.max_pool2d_with_indices or kwargs.get(
                "return_indices", args[6] if len(args) > 6 else False
            )
            kwargs = {k: v for k, v in kwargs.items() if k != "return_indices"}
            return _max_pool2d(*args[:6], return_indices=return_indices, **kwargs)
        return func(*args, **kwargs)
