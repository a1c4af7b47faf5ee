"""Plain Flower FedAvg with the Message API, as a Flower user would write it from the docs.

The same work as Pollen's ``digits`` task with ``partition="iid"``: MLP 64-128-10, five local
epochs of SGD (lr 0.1, momentum 0.9, batches of 10) on an IID share of scikit-learn's digits,
FedAvg over every node, and the server evaluates the global model on the same 360 held-out
images each round. Float32 ``ArrayRecord`` updates, no checkpointing. The ServerApp writes the
wall time of each round to ``timings-file`` (JSON) for ``benchmarks/load.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def _data():
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=42)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x_tr, _, y_tr, _ = _data()
    part = np.array_split(np.random.default_rng(0).permutation(len(y_tr)), num)[pid]
    x, y = torch.from_numpy(x_tr[part]), torch.from_numpy(y_tr[part])
    model = _model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(pid)
    for _ in range(5):
        for batch in torch.randperm(len(y), generator=gen).split(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    nodes = int(context.run_config["min-nodes"])
    _, x_te, _, y_te = _data()
    model = _model()
    marks = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            pred = model(torch.from_numpy(x_te)).argmax(1).numpy()
        marks.append(time.perf_counter())
        return MetricRecord({"accuracy": float((pred == y_te).mean())})

    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(_model().state_dict()),
        num_rounds=rounds,
        evaluate_fn=evaluate,
    )
    path = str(context.run_config["timings-file"])
    if path:
        accuracy = result.evaluate_metrics_serverapp[rounds]["accuracy"]
        walls = [b - a for a, b in zip(marks[1:], marks[2:], strict=False)]
        with open(path, "w") as handle:
            json.dump({"round_wall_s": walls, "final_accuracy": accuracy}, handle)
