"""Check (in .venv-pfl): pfl trains the same FedAvg round as a hand-written one.

benchmarks/pfl_bench.py's setup (pfl's FederatedDataset, PyTorchModel, FederatedAveraging with
example weighting and central SGD lr 1) runs one round over 4 clients of unequal sizes; the
same round written by hand (each client: the global model, SGD with momentum over its batches
in order, as pfl's ``Dataset.iter`` gives them; then the example-weighted mean of the updates
added to the global model) must give the same model.

    .venv-pfl/bin/python benchmarks/pfl_check.py        # exits 1 if they differ by > 1e-5
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl_bench import build, client_images

COUNTS, BATCH, LR, MOMENTUM = [23, 7, 40, 12], 10, 0.01, 0.9


def by_hand(start: torch.nn.Module) -> dict[str, torch.Tensor]:
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in start.named_parameters()}
    for user, count in enumerate(COUNTS):
        local = copy.deepcopy(start)
        opt = torch.optim.SGD(local.parameters(), lr=LR, momentum=MOMENTUM)
        x, y = client_images(user, count)
        for i in range(0, count, BATCH):
            opt.zero_grad()
            F.cross_entropy(local(x[i : i + BATCH]), y[i : i + BATCH]).backward()
            opt.step()
        for (n, p), q in zip(start.named_parameters(), local.parameters(), strict=True):
            total[n] += count * (q.detach() - p.detach()).double()
    return {
        n: (p.detach().double() + total[n] / sum(COUNTS)).float()
        for n, p in start.named_parameters()
    }


def with_pfl() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    dataset, model, module = build(len(COUNTS), COUNTS, LR, MOMENTUM)
    start = copy.deepcopy(module)
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=1,
            evaluation_frequency=2,
            train_cohort_size=len(COUNTS),
            val_cohort_size=None,
        ),
        backend=SimulatedBackend(
            training_data=dataset, val_data=None, postprocessors=[WeightByDatapoints()]
        ),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=LR, local_num_epochs=1, local_batch_size=BATCH
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=BATCH),
        callbacks=[],
    )
    return {n: p.detach().clone() for n, p in module.named_parameters()}, start


def main() -> int:
    after, start = with_pfl()
    expected = by_hand(start)
    moved = max(float((after[n] - p.detach()).abs().max()) for n, p in start.named_parameters())
    worst = max(float((after[n] - expected[n]).abs().max()) for n in expected)
    ok = worst <= 1e-5 and moved > 1e-4
    print(
        f"pfl FedAvg round vs hand-written: max |difference| {worst:.2e} "
        f"(the round moved the model by up to {moved:.2e}): {'same' if ok else 'DIFFERENT'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
