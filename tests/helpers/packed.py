"""Conv/pool cases and their per-client autograd reference, for the batched conv kernels."""

import torch
import torch.nn.functional as F

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


def conv_pool_loss(params, x, conv, pool):
    """conv -> relu -> max_pool -> conv (input gradient through the pool) -> weighted sum."""
    _, _, k, stride, padding, dilation, groups, _, _ = conv
    h = F.conv2d(x, params["w"], params.get("b"), stride, padding, dilation, groups)
    h = F.max_pool2d(F.relu(h), pool[0], pool[1], pool[2], pool[3], pool[4])
    h = F.conv2d(h, params["w2"], params["b2"], 1, 1)
    return (h * torch.linspace(-1, 1, h.numel(), device=h.device).view_as(h)).sum()


def conv_pool_inputs(conv, seed=0):
    """K clients' parameters and K batches of B images for ``conv``."""
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


def per_client_grads(params, x, conv, pool):
    """Gradients of each client's loss with plain autograd, client by client."""
    grads = []
    for i in range(K):
        mine = {n: p[i].clone().requires_grad_() for n, p in params.items()}
        xi = x[i].clone().requires_grad_()
        loss = conv_pool_loss(mine, xi, conv, pool)
        names = list(mine)
        found = torch.autograd.grad(loss, [mine[n] for n in names] + [xi])
        grads.append({**dict(zip(names, found[:-1], strict=True)), "x": found[-1]})
    return {n: torch.stack([g[n] for g in grads]) for n in grads[0]}
