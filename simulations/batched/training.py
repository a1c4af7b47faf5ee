"""Vectorized local training: K clients per kernel with torch.func (functional_call, vmap, grad).

Each client follows the SDK's reference loop (:func:`client_sdk.training.train_local`) exactly:
the same shuffle from its own ``torch.Generator``, the same minibatches (the last one short),
the same loss and FedProx term, the same pruning mask and int8 fake quantization in the forward
pass (the SDK's own ``KeepMask``/``FakeQuantInt8``). Clients with fewer samples are padded and
the padding carries zero weight in the loss, so nothing is truncated or repeated. Client k's
steps are laid out first to last, so at global step s the clients still training are exactly
those with more than s steps: all of them have taken s steps, and one ``torch.optim`` optimizer
over the stacked ``[K, ...]`` parameters keeps exact per-client SGD-momentum or AdamW state
(both are elementwise; AdamW's shared step count equals every active client's). A client's
parameters are saved when its last step is done.

Unequal sizes: the clients are trained in descending order of their step counts, so the ones
still training at step s are a prefix of the rows, and when a client finishes, the parameters
and the optimizer's state shrink to the clients left (:func:`_keep_first`). Compute then
follows the real client steps instead of K times the largest client's: with Dirichlet(0.3)
sizes the padded layout computed about three steps for every real one. The padded layout
(``shrink=False``: every client computed at every step, finished ones with zero weight) stays
as the reference the shrinking one is tested against. Once at most :data:`FEW_ROWS` clients
are left (a long tail), each runs its own unbatched forward pass, without vmap's per-step cost.
A chunk's data is stored back to back, unpadded (:class:`ClientBatch`). Image models run in
one of four activation layouts (:data:`LAYOUTS`); two swap in Pollen's kernels
(:mod:`.packed`, :mod:`.unfold`).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client_sdk import ClientData, Task
from client_sdk.client_round import FakeQuantInt8, RoundPlan, TrainStats, targets_tensor
from simulations.batched.packed import PackedKernels
from simulations.batched.schedule import batch_schedule
from simulations.batched.unfold import UnfoldKernels


class NotVectorizable(Exception):
    """The Task cannot run under vmap; the engine falls back to the per-client loop."""


@dataclass(frozen=True)
class ClientBatch:
    """K clients' training data on one device, back to back (no padding): client k's samples
    are rows ``starts[k] : starts[k] + sizes[k]``."""

    x: torch.Tensor  # [N, ...features], N = sizes.sum()
    y: torch.Tensor  # [N]
    sizes: np.ndarray  # [K] true sample counts

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes

    @property
    def starts(self) -> np.ndarray:
        """[K] each client's first row."""
        return np.cumsum(self.sizes) - self.sizes

    @property
    def images(self) -> bool:
        """Whether the samples are [C, H, W] images."""
        return self.x.dim() == 4

    def head(self, k: int) -> ClientBatch:
        """The first ``k`` clients (views of the same storage)."""
        end = int(self.sizes[:k].sum())
        return ClientBatch(self.x[:end], self.y[:end], self.sizes[:k])


@dataclass(frozen=True)
class TrainedChunk:
    """K clients after local training: weights as the SDK's ``finish`` leaves them, on device."""

    local: dict[str, torch.Tensor]  # trained parameters only, each [K, ...]
    stats: list[TrainStats]

    def host_models(self, global_arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Each client's full model as numpy arrays (frozen parameters from ``global_arrays``)."""
        on_host = {n: t.cpu().numpy() for n, t in self.local.items()}
        return [
            {n: on_host[n][k] if n in on_host else g for n, g in global_arrays.items()}
            for k in range(len(self.stats))
        ]


def stack_clients(
    data: list[ClientData],
    device: torch.device,
    *,
    channels_last: bool = False,
    task: Task | None = None,
) -> ClientBatch:
    """Every client's train split, back to back, moved to ``device``.

    No client is padded: with skewed sizes a chunk padded to its largest client held up to
    9x its real samples (Pareto(2), 1000 clients: the 50 largest padded to 4,568 images each).
    ``channels_last`` stores [N, C, H, W] images as [N, H, W, C] in memory (the logical shape
    is unchanged), which the packed kernels gather into their layout faster; the reordering
    is one operation on ``device``.
    """
    sizes = np.array([len(d.y_train) for d in data], dtype=np.int64)
    if sizes.min() < 1:
        raise NotVectorizable("a client has no training examples")
    first = np.asarray(data[0].x_train)
    kind = targets_tensor(data[0].y_train[:1], task).numpy().dtype  # float32 or int64
    x = np.concatenate([d.x_train for d in data], dtype=np.float32, casting="unsafe")
    y = np.concatenate([d.y_train for d in data], dtype=kind, casting="unsafe")
    x_t = torch.from_numpy(x).to(device)
    if channels_last and first.ndim == 4:
        x_t = x_t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return ClientBatch(x_t, torch.from_numpy(y).to(device), sizes)


def vectorization_blocker(task: Task) -> str | None:
    """Why ``task``'s model cannot be trained under vmap, or None when it can."""
    model = task.build_model(seed=0)
    if next(model.buffers(), None) is not None:
        return (
            "the model has buffers (e.g. BatchNorm running statistics), which vmap cannot "
            "update per client"
        )
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        return "the model uses dropout, whose per-client random draws vmap would not reproduce"
    return None


def check_sample_mean_loss(task: Task, x: np.ndarray, y: np.ndarray) -> None:
    """Padding is weighted out per sample, so the loss must be a mean of per-sample losses."""
    model = task.build_model(seed=0)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(x[:4], dtype=np.float32)))
        target = targets_tensor(y[:4], task)  # float32 regression targets, else labels
        whole = float(task.loss_fn(logits, target))
        each = [
            float(task.loss_fn(logits[i : i + 1], target[i : i + 1])) for i in range(len(y[:4]))
        ]
    if not math.isclose(whole, float(np.mean(each)), rel_tol=1e-5, abs_tol=1e-6):
        raise NotVectorizable(
            f"the Task's loss is not the mean of per-sample losses ({whole} vs {np.mean(each)})"
        )


# How K clients' image activations are laid out for the vmapped model (see :func:`pick_layout`):
# "grouped": vmap's own batching rules (one grouped convolution per layer, NCHW);
# "channels-last": the same rules on channels-last minibatches (what cuDNN often prefers);
# "packed": Pollen's packed kernels (:mod:`.packed`), channels-last from layer to layer;
# "unfold": convolutions as im2col + batched GEMM (:mod:`.unfold`), activations client-major.
LAYOUTS = ("grouped", "channels-last", "packed", "unfold")
# the layouts whose kernels differentiate with ordinary autograd (not torch.func.grad)
KERNELS = {"packed": PackedKernels, "unfold": UnfoldKernels}
# At most this many clients still training: each runs its own unbatched forward pass (one
# backward for all), which skips vmap's per-step fixed cost; a skewed chunk's long tail is
# mostly steps of one or two clients. Measured against vmap on the 2-core CPU: faster for one
# and two clients, level at three (benchmarks/README.md, unequal client sizes).
FEW_ROWS = 2


def default_layout(device: torch.device) -> str:
    """``POLLEN_LAYOUT`` if set, else "packed" on CPU and "" on CUDA (measured by pick_layout).

    On the 2-core CPU "packed" trained the tutorial CNN fastest of the three CPU layouts
    (benchmarks/README.md).
    """
    override = os.environ.get("POLLEN_LAYOUT", "")
    if override:
        if override not in LAYOUTS:
            raise ValueError(f"POLLEN_LAYOUT={override!r}: use one of {', '.join(LAYOUTS)}")
        return override
    return "packed" if device.type == "cpu" else ""


def _images_channels_last(xb: torch.Tensor) -> torch.Tensor:
    """[K, B, C, H, W] with memory order (B, H, W, K, C): channels-last once vmap folds K into C."""
    return xb.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def train_clients(
    plan: RoundPlan,
    batch: ClientBatch,
    seeds: list[int],
    device: torch.device,
    *,
    layout: str = "",
    shrink: bool = True,
) -> TrainedChunk:
    """Train K clients from ``plan.global_arrays`` at once; one result per client, in order.

    ``shrink``: compute only the clients still training at each step (the default); False
    computes all K at every step, as the engine did before (the reference for tests)."""
    task, schedule = plan.task, plan.schedule
    model = task.build_model(seed=0).to(device).train()
    names = [name for name, _ in model.named_parameters()]
    trained = [n for n in names if not (plan.frozen and n.startswith(plan.frozen))]
    # load_arrays casts to the parameters' dtype (a FedAdam server may send float64)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    start = {n: torch.from_numpy(plan.global_arrays[n]).to(device, dtypes[n]) for n in names}
    fixed = {n: start[n] for n in names if n not in trained}
    masks = {
        n: torch.from_numpy(np.asarray(m, dtype=np.float32)).to(device)
        for n, m in (plan.masks.masks.items() if plan.masks else ())
        if n in trained
    }
    quantized = {n for n in trained if plan.qat and start[n].dim() >= 2}
    fake_quant = FakeQuantInt8()
    mu = schedule.proximal_mu

    def trained_weights(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the forward pass sees: fake_quant(weight * mask), as the SDK parametrizes it."""
        out = {}
        for n in trained:
            w = params[n] * masks[n] if n in masks else params[n]
            out[n] = fake_quant(w) if n in quantized else w
        return out

    def per_sample(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return task.loss_fn(logit.unsqueeze(0), target.unsqueeze(0))

    def client_loss(params, xb, yb, wb):  # one client, one minibatch (under vmap)
        logits = functional_call(model, {**fixed, **trained_weights(params)}, (xb,))
        loss = (vmap(per_sample)(logits, yb) * wb).sum() / wb.sum().clamp(min=1.0)
        if mu:
            prox = sum(((params[n] - start[n]) ** 2).sum() for n in trained)
            loss = loss + 0.5 * mu * prox
        return loss

    layout = layout or default_layout(device) or "grouped"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    kernels = KERNELS.get(layout) if batch.images else None
    k = len(seeds)
    params = {n: start[n].expand(k, *start[n].shape).clone() for n in trained}
    if kernels is not None:
        # Pollen's kernels: the forward pass under vmap, then ordinary autograd on the sum
        # of the K losses, which gives each client the gradient of its own loss (clients share
        # nothing). Its fixed cost is lower than torch.func.grad's (benchmarks/README.md),
        # but its backward matmuls round differently from the SDK loop's, so other
        # layouts keep torch.func's per-client gradients (bit-equal to the loop's on the MLPs
        # tested here, which int8 fake quantization needs to follow the loop's trajectory).
        losses_of = vmap(client_loss)
        for p in params.values():
            p.requires_grad_()

        def step(params, xb, yb, wb):
            losses = losses_of(params, xb, yb, wb)
            grads = torch.autograd.grad(losses.sum(), list(params.values()))
            return dict(zip(params, grads, strict=True)), losses.detach()

    else:
        step = vmap(grad_and_value(client_loss))

    def one_by_one(params, xb, yb, wb):  # few rows left: each client's graph, one backward
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        losses = torch.stack(
            [
                client_loss({n: q[i] for n, q in leaves.items()}, xb[i], yb[i], wb[i])
                for i in range(len(xb))
            ]
        )
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(params, grads, strict=True)), losses.detach()

    optimizer = task.optimizer.build(iter(params.values()), lr=schedule.lr)
    index, weight, steps = batch_schedule(batch.sizes, seeds, schedule.epochs, schedule.batch_size)
    # rows in descending order of steps: the clients still training are always a prefix
    order = np.argsort(-steps, kind="stable") if shrink else np.arange(k)
    left = steps[order]  # steps of each row, in training order
    index_t = torch.from_numpy(np.ascontiguousarray(index[:, order])).to(device)
    weight_t = torch.from_numpy(np.ascontiguousarray(weight[:, order])).to(device)
    # each row's first sample in the back-to-back data, in training order
    first_row = torch.from_numpy(batch.starts[order]).to(device).unsqueeze(1)
    finals = {n: torch.empty_like(p) for n, p in params.items()}
    relayout = batch.images and layout == "channels-last"
    mode = kernels() if kernels is not None else contextlib.nullcontext()
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    rows = k  # rows computed at this step: every client (padded) or those still training
    for s in range(index.shape[0]):
        pick = first_row[:rows] + index_t[s, :rows]  # [rows, B] rows of batch.x
        xb, yb = batch.x[pick], batch.y[pick]
        if relayout:
            xb = _images_channels_last(xb)
        if shrink and rows <= FEW_ROWS:
            grads, losses = one_by_one(params, xb, yb, weight_t[s, :rows])
        else:
            with mode:
                grads, losses = step(params, xb, yb, weight_t[s, :rows])
        for n, p in params.items():
            p.grad = grads[n]
        optimizer.step()
        if shrink:
            loss_sum[:rows] += losses.double()
        else:
            loss_sum += torch.where(torch.from_numpy(left > s).to(device), losses.double(), 0.0)
        still = int(np.count_nonzero(left > s + 1))  # rows [still, training) finish here
        training = int(np.count_nonzero(left > s))
        if still < training:
            done = torch.from_numpy(np.flatnonzero(left == s + 1)).to(device)
            for n, p in params.items():
                finals[n][done] = p.detach()[done]
        if shrink and 0 < still < rows:
            params, optimizer = _keep_first(params, optimizer, still, task, schedule.lr)
            rows = still
    back = torch.from_numpy(np.argsort(order)).to(device)  # training order -> chunk order
    with torch.no_grad():
        local = vmap(trained_weights)({n: f[back] for n, f in finals.items()})
    mean_loss = (loss_sum[back].cpu().numpy() / steps).tolist()
    stats = [
        TrainStats(mean_loss=mean_loss[i], num_examples=int(batch.sizes[i]), steps=int(steps[i]))
        for i in range(k)
    ]
    return TrainedChunk(local=local, stats=stats)


def _keep_first(
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    count: int,
    task: Task,
    lr: float,
) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """The first ``count`` clients' parameters and optimizer: each parameter's rows, and every
    state tensor shaped like its parameter (momentum, AdamW's moments) cut to the same rows;
    other state (AdamW's step count, shared by the clients left) carries over as it is. SGD's
    and AdamW's updates are elementwise, so the clients left continue exactly as before."""
    kept = {
        n: p.detach()[:count].clone().requires_grad_(p.requires_grad) for n, p in params.items()
    }
    rebuilt = task.optimizer.build(iter(kept.values()), lr=lr)
    for old, new in zip(params.values(), kept.values(), strict=True):
        state = optimizer.state.get(old, {})
        rebuilt.state[new] = {
            key: value[:count].clone()
            if isinstance(value, torch.Tensor) and value.shape == old.shape
            else value
            for key, value in state.items()
        }
    return kept, rebuilt
