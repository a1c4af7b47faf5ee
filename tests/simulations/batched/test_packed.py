"""The packed conv2d/max_pool2d kernels against plain autograd, one client at a time (CPU).

As in the engine, the K clients' forward pass runs under vmap with the kernels and ordinary
autograd differentiates the sum of their losses.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from simulations.batched import packed
from simulations.batched.packed import PackedKernels, _unpack
from tests.helpers.packed import CONVS, POOLS, B, K
from tests.helpers.packed import conv_pool_inputs as _setup
from tests.helpers.packed import conv_pool_loss as _loss
from tests.helpers.packed import per_client_grads as _reference


def _vmapped_grads(loss, params, *inputs):
    """Each client's gradient of ``loss`` (params and inputs), taken as the engine takes it."""
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    xs = [x.clone().requires_grad_() for x in inputs]
    with PackedKernels():
        losses = vmap(loss)(leaves, *xs)
    found = torch.autograd.grad(losses.sum(), [*leaves.values(), *xs])
    return dict(zip(leaves, found, strict=False)), found[len(leaves) :]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("conv", CONVS)
def test_vmapped_gradients_equal_each_clients_autograd(conv, pool, monkeypatch):
    unpacked = []
    monkeypatch.setattr(packed, "_unpack", lambda t, k: unpacked.append(t) or _unpack(t, k))
    spec, pool_spec = CONVS[conv], POOLS[pool]
    params, x = _setup(spec)
    expected = _reference(params, x, spec, pool_spec)
    got, (got_x,) = _vmapped_grads(lambda p, xb: _loss(p, xb, spec, pool_spec), params, x)
    for name, value in {**got, "x": got_x}.items():
        assert torch.allclose(value, expected[name], atol=1e-4, rtol=1e-4), name
    # 2 convolutions and 1 pool: the kernels ran, not vmap's own rules
    assert len(unpacked) >= 3


def test_both_weight_gradient_paths_agree(monkeypatch):
    spec, pool = CONVS["rgb-stem-5x5"], POOLS["2x2"]
    params, x = _setup(spec, seed=1)

    def run():
        return _vmapped_grads(lambda p, xb: _loss(p, xb, spec, pool), params, x)[0]

    looped = run()
    monkeypatch.setattr(packed, "LOOP_WEIGHT_GRAD_MAX_CHANNELS", 0)
    grouped = run()
    assert torch.allclose(looped["w"], grouped["w"], atol=1e-5)


def test_a_weight_shared_by_all_clients_and_pooling_indices():
    """Unbatched (frozen) weights are expanded; return_indices gives each client's indices."""
    weight = torch.randn(4, 3, 3, 3)
    x = torch.randn(K, B, 3, 8, 8)

    def forward(x):
        return F.max_pool2d(F.conv2d(x, weight, padding=1), 2, return_indices=True)

    with PackedKernels():
        out, indices = vmap(forward)(x)
    for i in range(K):
        ref_out, ref_indices = forward(x[i])
        assert torch.allclose(out[i], ref_out, atol=1e-5)
        assert torch.equal(indices[i], ref_indices)


def test_modules_with_padding_modes_and_string_padding_run_under_the_kernels():
    """nn.Conv2d pads first for 'reflect'; string padding passes through to vmap's own rule."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 2, 3, padding="same"),
        nn.Flatten(),
    )
    params = {n: p.detach().expand(K, *p.shape).clone() for n, p in model.named_parameters()}
    x = torch.randn(K, B, 3, 8, 8)

    def loss(p, xb):
        return torch.func.functional_call(model, p, (xb,)).square().sum()

    got, _ = _vmapped_grads(loss, params, x)
    for i in range(K):
        ref = torch.func.grad(loss)({n: p[i] for n, p in params.items()}, x[i])
        for name in params:
            assert torch.allclose(got[name][i], ref[name], atol=1e-4), name


def test_torch_func_grad_over_the_kernels_is_refused_with_the_way_to_differentiate():
    w = torch.randn(K, 2, 3, 3, 3)
    x = torch.randn(K, B, 3, 6, 6)

    def loss(w, x):
        return F.conv2d(x, w).square().sum()

    with PackedKernels(), pytest.raises(RuntimeError, match="ordinary autograd"):
        vmap(grad(loss))(w, x)
