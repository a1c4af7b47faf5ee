"""Example: a next-token Task (a tiny language model; perplexity the primary metric).

Generated text, nothing downloaded: sequences from a fixed random Markov chain over a 24-token
vocabulary (each token has a few likely successors), cut into (4-token context, next token)
pairs. The model embeds the context, flattens it and predicts the next token; it casts its
float32 input to token ids itself, as Pollen feeds every model float32 features.

    pollen simulate --task examples/next_token_task.py:task --clients 20 --rounds 10
"""

import numpy as np
from torch import nn

from client_sdk import OptimizerSpec, Task, from_arrays
from client_sdk.metrics import next_token

VOCAB, CONTEXT, WIDTH = 24, 4, 16


class ContextLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(CONTEXT * WIDTH, 64), nn.ReLU())
        self.out = nn.Linear(64, VOCAB)

    def forward(self, tokens):
        return self.out(self.head(self.embed(tokens.long())))


def data(sequences: int = 300, length: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 3))  # each token's likely followers
    x, y = [], []
    for _ in range(sequences):
        seq = [int(rng.integers(VOCAB))]
        for _ in range(length - 1):
            follow = successors[seq[-1]]
            seq.append(int(follow[rng.integers(3)] if rng.random() < 0.9 else rng.integers(VOCAB)))
        for end in range(CONTEXT, length):
            x.append(seq[end - CONTEXT : end])
            y.append(seq[end])
    return from_arrays(np.array(x, np.float32), np.array(y, np.int64), split_seed=seed)


task = Task(
    name="next-token",
    model_fn=ContextLM,
    data=data(),
    metrics_fn=next_token(top_k=(5,)),
    primary_metric="perplexity",
    higher_is_better=False,
    optimizer=OptimizerSpec(name="adamw", lr=5e-3),
    local_epochs=1,
    batch_size=32,
)
