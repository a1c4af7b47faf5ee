"""Baseline: plain Flower (Message API + Ray simulation engine) FedAvg, for side-by-side comparison.

A verbatim copy of the team's shared/bench/flower_baseline.py (the shared folder does not travel
to the lent GPU machine); benchmarks/simulation.py runs it as the plain-Flower row.

Usage: SAMPLES=50 BATCH=10 python flower_baseline.py NUM_CLIENTS ROUNDS [cpu|cuda] [clients_per_gpu]
Each virtual client trains the Flower tutorial CNN (CIFAR-shaped 3x32x32 input) for one local
epoch on SAMPLES synthetic examples (seeded by partition id). Prints steady-state seconds per
round (rounds after the first) and clients/s. Needs flwr[simulation] and torch.
"""
import os, sys, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict, ConfigRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

N = int(sys.argv[1]); ROUNDS = int(sys.argv[2])
DEV = sys.argv[3] if len(sys.argv) > 3 else "cpu"
PER_GPU = float(sys.argv[4]) if len(sys.argv) > 4 else 8
SAMPLES = int(os.environ.get("SAMPLES", "64"))
BATCH = int(os.environ.get("BATCH", "32"))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5); self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5); self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84); self.fc3 = nn.Linear(84, 10)
    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x))); x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1); x = F.relu(self.fc1(x)); x = F.relu(self.fc2(x))
        return self.fc3(x)

client = ClientApp()

@client.train()
def train(msg: Message, context: Context):
    torch.set_num_threads(1)
    pid = context.node_config["partition-id"]
    g = torch.Generator().manual_seed(int(pid))
    x = torch.randn(SAMPLES, 3, 32, 32, generator=g); y = torch.randint(0, 10, (SAMPLES,), generator=g)
    model = Net(); model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.to(DEV); x, y = x.to(DEV), y.to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(0, SAMPLES, BATCH):
        opt.zero_grad(); loss = F.cross_entropy(model(x[i:i+BATCH]), y[i:i+BATCH]); loss.backward(); opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": float(loss.detach()), "num-examples": SAMPLES})})
    return Message(content=content, reply_to=msg)

server = ServerApp()
T = {}

@server.main()
def main(grid: Grid, context: Context):
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N)
    stamps = []
    def stamp(rnd, arrays):
        stamps.append(time.time()); return None
    t0 = time.time()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=ROUNDS,
                   train_config=ConfigRecord({"lr": 0.01}), evaluate_fn=stamp)
    T["total"] = time.time() - t0
    d = [b - a for a, b in zip(stamps, stamps[1:])]
    T["first"] = d[0]; T["rest"] = sorted(d[1:])[len(d[1:]) // 2] if len(d) > 1 else float("nan")

if __name__ == "__main__":
    res = {"num_cpus": 1, "num_gpus": (1.0 / PER_GPU) if DEV == "cuda" else 0.0}
    t0 = time.time()
    run_simulation(server_app=server, client_app=client, num_supernodes=N,
                   backend_config={"client_resources": res, "init_args": {"include_dashboard": False}})
    wall = time.time() - t0
    print(f"RESULT flower clients={N} rounds={ROUNDS} dev={DEV} samples={SAMPLES} batch={BATCH} "
          f"strategy_s={T.get('total', float('nan')):.2f} wall_s={wall:.2f} first_round_s={T.get('first', float('nan')):.3f} "
          f"median_later_round_s={T.get('rest', float('nan')):.3f} clients_per_s={N / T.get('rest', float('nan')):.0f}")
