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

K, B = 4, 3

# (in, out, kernel, stride, padding, dilation, groups, bias, image size)
CONVS = {
    "rgb-stem-5x5": (3, 6, 5, 1, 0, 1, 1, True, 12),  # <= 4 input channels: per-client wgrad
    "wide-3x3-pad": (6, 8, 3, 1, 1, 1, 1, True, 9),  # grouped wgrad
    "strided-no-bias": (5, 4, 3, 2, 1, 1, 1, False, 10),
    "dilated-asymmetric": (6, 6, (3, 1), (1, 2), (2, 0), (2, 1), 1, True, 11),
    "grouped-conv": (8, 4, 3, 1, 0, 1, 2, True, 8),
}
# (kernel, stride, padding, dilation, ceil_mode)
POOLS = {
    "2x2": (2, None, 0, 1, False),
    "3x3-stride-2-pad-ceil": (3, 2, 1, 1, True),
    "dilated": (2, 1, 0, 2, False),
}


def _loss(params, x, conv, pool):
    """conv -> relu -> max_pool -> conv (input gradient through the pool) -> weighted sum."""
    _, _, k, stride, padding, dilation, groups, _, _ = conv
    h = F.conv2d(x, params["w"], params.get("b"), stride, padding, dilation, groups)
    h = F.max_pool2d(F.relu(h), pool[0], pool[1], pool[2], pool[3], pool[4])
    h = F.conv2d(h, params["w2"], params["b2"], 1, 1)
    return (h * torch.linspace(-1, 1, h.numel(), device=h.device).view_as(h)).sum()


def _setup(conv, seed=0):
    cin, cout, k, *_, groups, bias, size = conv
    kh, kw = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(K, cout, cin // groups, kh, kw, generator=g) * 0.3,
        "w2": torch.randn(K, 5, cout, 3, 3, generator=g) * 0.3,
        "b2": torch.randn(K, 5, generator=g),
    }
    if bias:
        params["b"] = torch.randn(K, cout, generator=g)
    x = torch.randn(K, B, cin, size, size, generator=g)
    return params, x


def _reference(params, x, conv, pool):
    """Gradients of each client's loss with plain autograd, client by client."""
    grads = []
    for i in range(K):
        mine = {n: p[i].clone().requires_grad_() for n, p in params.items()}
        xi = x[i].clone().requires_grad_()
        loss = _loss(mine, xi, conv, pool)
        names = list(mine)
        found = torch.autograd.grad(loss, [mine[n] for n in names] + [xi])
        grads.append({**dict(zip(names, found[:-1], strict=True)), "x": found[-1]})
    return {n: torch.stack([g[n] for g in grads]) for n in grads[0]}


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
