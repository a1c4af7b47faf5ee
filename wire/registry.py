"""The registry of codec stages, and the chain a payload runs: built from a CodecSpec on encode,
read from the header on decode.

Every stage is an encode/decode pair with one interface (:mod:`wire.stage_api`), registered
here by name (the habit of Opacus' ``register_grad_sampler``). The chain is ``select`` ->
[sparsify: ``topk``] -> [transform: ``rotate``] -> [``subsample``] -> one values stage
(``quantize`` | ``float32`` | ``eden`` | ``sign``): each stage's ``slot`` says where it may
stand. A new stage is one file with its class (the :class:`~wire.stage_api.Stage` methods) and
one entry in the registration below; the batched engine's vectorized twin, if any, is one class
and one entry in ``simulations/batched/stage_twins.py``, which ``test_stage_twins.py`` checks.
"""

from __future__ import annotations

from typing import Any

from wire.codec import CodecSpec
from wire.eden import EDEN, SIGN
from wire.errors import RejectReason, UpdateRejected
from wire.rotation import ROTATE
from wire.stage_api import OPTIONAL_SLOTS, SELECT, VALUES, Stage
from wire.stages import FLOAT32, QUANTIZE, SELECT_STAGE, TOPK
from wire.subsample import SUBSAMPLE_STAGE

STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Make ``stage`` known to encoders (chosen by ``stage.wanted(codec)``) and decoders (by
    name). Registration order breaks no ties: at most one stage per slot is wanted."""
    if stage.name in STAGES:
        raise ValueError(f"a codec stage named {stage.name!r} is already registered")
    STAGES[stage.name] = stage
    return stage


for _stage in (SELECT_STAGE, TOPK, ROTATE, SUBSAMPLE_STAGE, QUANTIZE, FLOAT32, EDEN, SIGN):
    register_stage(_stage)


def encode_chain(codec: CodecSpec) -> list[Stage]:
    """The stages ``codec`` runs, in chain order."""
    chain = sorted((s for s in STAGES.values() if s.wanted(codec)), key=lambda s: s.slot)
    check_order([s.name for s in chain])
    return chain


def _order_text() -> str:
    by_slot = [
        "|".join(s.name for s in STAGES.values() if s.slot == slot)
        for slot in (SELECT, *OPTIONAL_SLOTS, VALUES)
    ]
    optional = "".join(f"[{text}] → " for text in by_slot[1:-1])
    return f"{by_slot[0]} → {optional}{by_slot[-1]}"


def check_order(names: list[str]) -> None:
    """select → [topk] → [one transform] → [subsample] → one values stage, or a STAGE_ORDER
    rejection."""
    slots = [STAGES[n].slot for n in names]
    if (
        slots[:1] != [SELECT]
        or slots[-1:] != [VALUES]
        or any(a >= b for a, b in zip(slots, slots[1:], strict=False))
    ):
        raise UpdateRejected(RejectReason.STAGE_ORDER, f"stages {names} are not {_order_text()}")


def parse_chain(raw: list[Any]) -> list[tuple[Stage, dict[str, Any]]]:
    """The header's stages as (stage, params), checked to be known and in chain order."""
    chain: list[tuple[str, dict[str, Any]]] = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("params", {}), dict)
        ):
            raise UpdateRejected(
                RejectReason.BAD_HEADER, "a stage needs a string 'name' and an object 'params'"
            )
        chain.append((item["name"], item.get("params", {})))
    names = [name for name, _ in chain]
    if unknown := [n for n in names if n not in STAGES]:
        raise UpdateRejected(
            RejectReason.UNKNOWN_STAGE,
            f"codec stage(s) {[str(n)[:50] for n in unknown]} are not known "
            f"(known: {sorted(STAGES)})",
        )
    check_order(names)
    return [(STAGES[name], params) for name, params in chain]
