"""The im2col + GEMM conv2d kernel against plain autograd, one client at a time (CPU).

As in the engine, the K clients' forward pass runs under vmap with the kernel and ordinary
autograd differentiates the sum of their losses.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from simulations.batched import unfold
from simulations.batched.unfold import UnfoldKernels
from tests.helpers.packed import CONVS, POOLS
from tests.helpers.packed import conv_pool_inputs as _setup
from tests.helpers.packed import conv_pool_loss as _loss
from tests.helpers.packed import per_client_grads as _reference

_lowered = unfold.unfold_conv2d
# on a GPU (benchmarks/gpu_check.sh) the kernel also runs on CUDA against the CPU reference
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _unfolded_grads(loss, params, x, device=DEVICES[0]):
    leaves = {n: p.to(device, copy=True).requires_grad_() for n, p in params.items()}
    xs = x.to(device, copy=True).requires_grad_()
    with UnfoldKernels():
        losses = vmap(loss)(leaves, xs)
    found = torch.autograd.grad(losses.sum(), [*leaves.values(), xs])
    return {n: g.cpu() for n, g in zip([*leaves, "x"], found, strict=True)}


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("conv", CONVS)
def test_vmapped_gradients_equal_each_clients_autograd(conv, pool, device, monkeypatch):
    calls = []
    monkeypatch.setattr(
        unfold, "unfold_conv2d", lambda *a: calls.append(a[1].shape) or _lowered(*a)
    )
    spec, pool_spec = CONVS[conv], POOLS[pool]
    params, x = _setup(spec)
    expected = _reference(params, x, spec, pool_spec)
    got = _unfolded_grads(lambda p, xb: _loss(p, xb, spec, pool_spec), params, x, device)
    for name, value in got.items():
        assert torch.allclose(value, expected[name], atol=1e-4, rtol=1e-4), name
    # the second convolution always ran as im2col + GEMM; the first unless it is grouped
    assert len(calls) == (1 if spec[6] > 1 else 2)


def test_a_weight_shared_by_all_clients_and_keyword_arguments():
    """Unbatched (frozen) weights are expanded; stride/padding given by keyword are honoured."""
    weight, bias = torch.randn(4, 3, 3, 3), torch.randn(4)
    x = torch.randn(3, 2, 3, 9, 9)

    def forward(x):
        return F.conv2d(x, weight, bias=bias, stride=2, padding=1)

    with UnfoldKernels():
        out = vmap(forward)(x)
    for i in range(3):
        assert torch.allclose(out[i], forward(x[i]), atol=1e-5)


def test_string_padding_passes_through_to_vmaps_rule(monkeypatch):
    monkeypatch.setattr(unfold, "unfold_conv2d", lambda *a: pytest.fail("lowered 'same' padding"))
    weight, x = torch.randn(2, 3, 3, 3), torch.randn(2, 2, 3, 6, 6)
    with UnfoldKernels():
        out = vmap(lambda xb: F.conv2d(xb, weight, padding="same"))(x)
    assert out.shape == (2, 2, 2, 6, 6)
