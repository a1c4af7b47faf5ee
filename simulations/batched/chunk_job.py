"""One chunk of K trained clients and the messages they answer: what every reply path takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Context, Message

from client_sdk.client_round import RoundPlan, TrainStats
from simulations.batched.training import TrainedChunk


@dataclass(frozen=True)
class ChunkJob:
    """The round's plan and the chunk's rows: row k is ``messages[k]`` to the node whose
    context is ``contexts[k]``, trained into ``trained``'s row k on ``device``."""

    plan: RoundPlan
    messages: list[Message]
    contexts: list[Context]
    trained: TrainedChunk
    device: torch.device

    def __post_init__(self) -> None:
        if not len(self.messages) == len(self.contexts) == len(self.trained.stats):
            raise ValueError(
                f"a chunk needs one message, context and trained client per row; got "
                f"{len(self.messages)}, {len(self.contexts)}, {len(self.trained.stats)}"
            )

    @property
    def stats(self) -> list[TrainStats]:
        return self.trained.stats

    def __len__(self) -> int:
        return len(self.messages)

    def rows(self, picked: slice | list[int]) -> ChunkJob:
        """The job of the rows ``picked`` (a slice, or row numbers in the order wanted)."""
        if isinstance(picked, slice):
            local = {name: tensor[picked] for name, tensor in self.trained.local.items()}
            return ChunkJob(
                self.plan,
                self.messages[picked],
                self.contexts[picked],
                TrainedChunk(local, self.trained.stats[picked]),
                self.device,
            )
        index = torch.tensor(picked, device=self.device)
        local = {name: tensor[index] for name, tensor in self.trained.local.items()}
        return ChunkJob(
            self.plan,
            [self.messages[r] for r in picked],
            [self.contexts[r] for r in picked],
            TrainedChunk(local, [self.trained.stats[r] for r in picked]),
            self.device,
        )
