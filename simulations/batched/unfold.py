"""Per-client conv2d under vmap as im2col and one batched matrix product (a GPU candidate).

vmap's batching rule runs K clients' ``conv2d`` as one convolution with ``groups = K``. With the
few channels per client of small federated models (3 -> 6 -> 16 in Flower's tutorial CNN), that
is the case cuDNN's grouped kernels are known to handle poorly (pytorch/pytorch#70954, #73764):
on an H100 a training step of 1000 such clients took far longer than its few GFLOP of
arithmetic (benchmarks/README.md). Here each client's convolution is instead lowered to a
matrix product: ``F.unfold`` gathers every receptive field of the K*B images once
([K*B, C*kh*kw, L]) and
``torch.matmul`` multiplies client k's [O, C*kh*kw] weight into its own columns, so cuBLAS
runs dense batched GEMMs whatever the channel counts. This is the unfold trick per-example
gradient methods use (Goodfellow 2015, "Efficient Per-Example Gradient Computations"; Opacus,
Yousefpour et al. 2021) applied per client. It trades memory (the columns are C*kh*kw times the
input) for arithmetic intensity; on a CPU it is slower than the grouped convolution, so the
engine measures it among the other layouts on CUDA only
(:func:`simulations.batched.layouts.pick_layout`).

Activations stay client-major ([K, B, C, H, W], contiguous), so vmap's own rules for pooling,
ReLU and ``.view()`` fold K into the batch without copies. As in :mod:`.packed`, the engine runs
the forward pass under vmap and differentiates the sum of the K losses with ordinary autograd;
``unfold`` and ``matmul`` are differentiable, so no backward is written by hand. Grouped
convolutions and string padding pass through to vmap's rule. Written by hand: torch ships no
batching rule that lowers per-client convolutions to matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from simulations.batched.packed import _CONV, ClientConv2d, _batched, _ConvConfig


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def unfold_conv2d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conf: _ConvConfig
) -> torch.Tensor:
    """K clients' convolution: x [K, B, C, H, W], w [K, O, C, kh, kw], b [K, O] -> [K, B, O, h, w].

    ``conf.groups`` must be 1 (per client).
    """
    k, batch, channels, height, width = x.shape
    out_channels, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    cols = F.unfold(
        x.reshape(k * batch, channels, height, width),
        (kh, kw),
        dilation=conf.dilation,
        padding=conf.padding,
        stride=conf.stride,
    )
    out_h = _output_size(height, kh, conf.stride[0], conf.padding[0], conf.dilation[0])
    out_w = _output_size(width, kw, conf.stride[1], conf.padding[1], conf.dilation[1])
    # [K, 1, O, C*kh*kw] @ [K, B, C*kh*kw, L]: one GEMM per image, all in one batched call
    out = torch.matmul(w.reshape(k, 1, out_channels, -1), cols.view(k, batch, cols.shape[1], -1))
    if b is not None:
        out = out + b[:, None, :, None]
    return out.view(k, batch, out_channels, out_h, out_w)


class UnfoldConv2d(ClientConv2d):
    """Batched over clients as im2col + GEMM (:func:`unfold_conv2d`)."""

    @staticmethod
    def vmap(info, in_dims, x, w, b, conf):
        k = info.batch_size
        bias = None if b is None else _batched(b, in_dims[2], k)
        return unfold_conv2d(_batched(x, in_dims[0], k), _batched(w, in_dims[1], k), bias, conf), 0


class UnfoldKernels(TorchFunctionMode):
    """While active, ungrouped ``conv2d`` calls on 4-D inputs run :class:`UnfoldConv2d`.

    Anything else (grouped convolutions, string padding, 3-D inputs, other ops) passes through.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV and args and args[0].dim() == 4:
            names = ("weight", "bias", "stride", "padding", "dilation", "groups")
            given = dict(zip(names, args[1:], strict=False)) | kwargs
            padding, groups = given.get("padding", 0), given.get("groups", 1)
            if not isinstance(padding, str) and int(groups) == 1:
                conf = _ConvConfig(given.get("stride", 1), padding, given.get("dilation", 1), 1)
                return UnfoldConv2d.apply(args[0], given["weight"], given.get("bias"), conf)
        return func(*args, **kwargs)
