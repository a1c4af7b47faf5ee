"""Per-round checkpoints for exact resume after a ServerApp crash.

After every round the server writes one ``checkpoint.npz`` atomically (write to a temporary
file, then rename): the global model, the wrapped Flower strategy's optimizer state (FedAdam /
FedYogi / FedAdagrad moments ``m_t``, ``v_t``), the round number, the run settings and, under
differential privacy, the privacy ledger (the RDP curve spent so far, the epsilon history and
the clip), so that a resumed run keeps counting the privacy it has spent. Nothing else is
needed: client sampling, pruning masks and client seeds are functions of (seed, round),
so a resumed run continues exactly where the crashed one stopped. Client-side state (error
feedback residuals) lives on the clients; in simulation it is lost with the crashed process.

A checkpoint is read as hostile input: no pickle, nothing allocated beyond the file's own size,
every entry's type, shape and finiteness checked, and on resume its round and arrays checked
against the run and the task's model; any fault is a :class:`ResumeError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from strategies.server_step import LISTED_ATTRS, OPTIMIZER_ATTRS

CHECKPOINT_FILE = "checkpoint.npz"
# Settings that may differ between the crashed run and its resumption.
RESUMABLE_CHANGES = ("resume", "out_dir", "num_server_rounds")
MAX_ENTRIES = 100_000  # a model's arrays plus two optimizer moments each, with room to spare
MAX_META_BYTES = 1 << 20


class ResumeError(ValueError):
    """The checkpoint cannot continue this run; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    arrays: dict[str, np.ndarray]
    optimizer: dict[str, dict[str, np.ndarray]]
    settings: dict[str, Any]
    source: Path | None = None  # the file it was read from, named in every refusal
    privacy: dict[str, Any] = field(default_factory=dict)  # the DP ledger (strategies.privacy)


def optimizer_state(strategy: object, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """The server optimizer's state by attribute and array name (``names``: the model's arrays
    in order, which a listed state such as FedAvgM's momentum follows)."""
    state: dict[str, dict[str, np.ndarray]] = {}
    for attr in OPTIMIZER_ATTRS:
        value = getattr(strategy, attr, None)
        if isinstance(value, dict) and value:
            state[attr] = dict(value)
        elif attr in LISTED_ATTRS and isinstance(value, list) and value:
            state[attr] = dict(zip(names, value, strict=True))
    return state


def restore_optimizer_state(
    strategy: object, state: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str]
) -> None:
    """Put :func:`optimizer_state` back (``names``: the model's arrays in order)."""
    for attr, value in state.items():
        if attr not in OPTIMIZER_ATTRS or not hasattr(strategy, attr):
            raise ResumeError(f"checkpoint holds {attr!r}, which {type(strategy).__name__} lacks")
        if set(value) != set(names):  # Flower's strategies index it by every array
            raise ResumeError(f"checkpoint's {attr!r} does not cover the model's arrays")
        if attr in LISTED_ATTRS:
            setattr(strategy, attr, [np.array(value[name]) for name in names])
        else:
            setattr(strategy, attr, {k: np.array(v) for k, v in value.items()})


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> Path:
    entries: dict[str, np.ndarray] = {f"arrays/{k}": v for k, v in checkpoint.arrays.items()}
    for attr, values in checkpoint.optimizer.items():
        entries.update({f"opt/{attr}/{k}": v for k, v in values.items()})
    meta = {
        "server_round": checkpoint.server_round,
        "settings": checkpoint.settings,
        "privacy": checkpoint.privacy,
    }
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = out_dir / CHECKPOINT_FILE
    tmp = out_dir / (CHECKPOINT_FILE + ".tmp.npz")
    np.savez(tmp, **entries)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` (None when there is none), checked entry by entry.

    The file is hostile until checked: every entry must be a stored (uncompressed) ``.npy`` of a
    numeric dtype whose header agrees with its byte count (so nothing is allocated beyond the
    file's own size), the zip CRCs must match, the metadata must have the expected types and
    every float array must be finite. Any other content raises :class:`ResumeError` naming the
    file, never a traceback.
    """
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        return _parse(_read_entries(path), source=path)
    except ResumeError as err:
        raise ResumeError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 -- any parse failure of a hostile file is a refusal
        raise ResumeError(f"{path}: not a readable checkpoint ({_describe(err)})") from None


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no detail"
    return f"{type(err).__name__}: {text[:200]}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_entries(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ResumeError("is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ResumeError("is empty (0 bytes): it was cut or overwritten (writes are atomic)")
    entries: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ResumeError(f"holds {len(infos)} entries (at most {MAX_ENTRIES})")
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise ResumeError(f"unexpected entry {_short(name)} (not an .npy array)")
            key = name[: -len(".npy")]
            if key in entries:
                raise ResumeError(f"entry {_short(key)} appears twice")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ResumeError(f"entry {_short(key)} is compressed; checkpoints store arrays")
            if info.file_size > size:
                raise ResumeError(f"entry {_short(key)} claims more bytes than the file holds")
            with archive.open(info) as handle:
                entries[key] = _read_npy(handle, info.file_size, key)
    return entries


def _read_npy(handle: IO[bytes], size: int, key: str) -> np.ndarray:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ResumeError(f"entry {_short(key)} has .npy format version {version}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise ResumeError(
            f"entry {_short(key)} has dtype {dtype}; only numeric arrays are read (no pickle)"
        )
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ResumeError(f"entry {_short(key)} has shape {_short(shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - handle.tell():
        raise ResumeError(
            f"entry {_short(key)}: its header says {_short(shape)} {dtype} ({nbytes} bytes) but "
            f"it holds {size - handle.tell()} bytes"
        )
    data = bytearray(handle.read(nbytes))
    if len(data) != nbytes or handle.read(1):  # reading to the end also checks the CRC
        raise ResumeError(f"entry {_short(key)} is cut short")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _parse(entries: dict[str, np.ndarray], *, source: Path) -> Checkpoint:
    meta_array = entries.pop("meta", None)
    if meta_array is None:
        raise ResumeError("has no 'meta' entry (round and settings)")
    if meta_array.dtype != np.uint8 or meta_array.ndim != 1 or meta_array.size > MAX_META_BYTES:
        raise ResumeError("its 'meta' entry is not a JSON byte string")
    try:
        meta = json.loads(meta_array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ResumeError("its 'meta' entry is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ResumeError("its 'meta' entry is not a JSON object")
    server_round = meta.get("server_round")
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise ResumeError(f"meta server_round must be an int >= 1, got {_short(server_round)}")
    settings = meta.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ResumeError("meta settings must be a JSON object of run-config keys")
    privacy = meta.get("privacy", {})  # its values are checked where they are restored
    if not isinstance(privacy, dict) or not all(isinstance(k, str) for k in privacy):
        raise ResumeError("meta privacy must be a JSON object (the DP ledger)")
    arrays: dict[str, np.ndarray] = {}
    optimizer: dict[str, dict[str, np.ndarray]] = {}
    for key, value in entries.items():
        kind, _, name = key.partition("/")
        if kind == "arrays" and name:
            arrays[name] = value
        elif kind == "opt" and (parts := name.split("/", 1))[0] in OPTIMIZER_ATTRS:
            if len(parts) != 2 or not parts[1]:
                raise ResumeError(f"entry {_short(key)} names no parameter")
            optimizer.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ResumeError(f"unexpected entry {_short(key)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ResumeError(
                f"entry {_short(key)} holds NaN or Inf values: the run diverged or the file was "
                "altered; a non-finite model is never resumed"
            )
    if not arrays:
        raise ResumeError("holds no model arrays")
    for attr, values in optimizer.items():
        for name, value in values.items():
            if name not in arrays or value.shape != arrays[name].shape:
                raise ResumeError(
                    f"optimizer state {_short(f'opt/{attr}/{name}')} does not match a model array"
                )
    return Checkpoint(server_round, arrays, optimizer, settings, source=source, privacy=privacy)


def check_resumable(
    checkpoint: Checkpoint,
    settings: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Refuse to continue a run under different settings (other than rounds and paths), past
    its planned rounds, or with arrays that do not fit the task's model. A setting the
    checkpoint does not name (one added to Pollen after it was written) counts as its declared
    default from ``defaults``, so an upgrade alone does not make a checkpoint unresumable."""
    where = f"{checkpoint.source}: " if checkpoint.source is not None else ""
    saved = {**(defaults or {}), **checkpoint.settings}
    differ = sorted(
        key
        for key in set(saved) | set(settings)
        if key not in RESUMABLE_CHANGES and saved.get(key) != settings.get(key)
    )
    if differ:
        raise ResumeError(
            f"{where}the checkpoint was made with other settings for "
            + ", ".join(
                f"{k} ({_short(saved.get(k))} != {_short(settings.get(k))})" for k in differ
            )
        )
    done = checkpoint.server_round
    planned = checkpoint.settings.get("num_server_rounds")
    if isinstance(planned, int) and not isinstance(planned, bool) and done > planned:
        raise ResumeError(
            f"{where}the checkpoint says round {done} of a {planned}-round run: it is corrupt"
        )
    wanted = settings.get("num_server_rounds")
    if isinstance(wanted, int) and done > wanted:
        raise ResumeError(
            f"{where}the checkpoint is after round {done}, beyond the {wanted} rounds this run "
            f"plans; ask for at least {done} rounds to continue it"
        )
    if isinstance(task := settings.get("task"), str):
        _check_model(checkpoint, task, settings.get("seed", 0), where)


def _check_model(checkpoint: Checkpoint, task: str, seed: Any, where: str) -> None:
    """The checkpoint's arrays must be the task model's: the same names, shapes and kinds."""
    from client_sdk import model_arrays
    from client_sdk.tasks import get_task

    expected = model_arrays(get_task(task).build_model(seed=seed))
    got = checkpoint.arrays
    if missing := sorted(set(expected) - set(got)):
        raise ResumeError(f"{where}the checkpoint lacks model array(s) {_short(missing)}")
    if extra := sorted(set(got) - set(expected)):
        raise ResumeError(f"{where}the checkpoint has array(s) {_short(extra)} the model lacks")
    for name, want in expected.items():
        have = got[name]
        # the same kind only: a server optimizer (FedAdam) legitimately keeps a float64 model
        if have.shape != want.shape or have.dtype.kind != want.dtype.kind:
            raise ResumeError(
                f"{where}array {_short(name)} is {have.dtype}{list(have.shape)}, the model's "
                f"is {want.dtype}{list(want.shape)}"
            )
