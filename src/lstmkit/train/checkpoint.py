"""Checkpoints that survive a kill at any moment and never unpickle.

A checkpoint is a directory ``ckpt-00000012/`` holding

* ``model.safetensors`` -- the model's ``state_dict``: loadable by anyone, with any tool;
* ``state.safetensors`` -- every other tensor of the run (optimizer moments, averaged weights);
* ``rank-<r>.safetensors`` -- each process's own state: random-number generators and the carried
  TBPTT state, with their structure as JSON in the file's metadata;
* ``checkpoint.json`` -- everything else as JSON (position in the data, scheduler, NT-ASGD,
  early stopping, config) with the sha256 of each file above and a digest of itself.

Tensors inside nested Python state (an optimizer's ``state_dict``) are replaced by references
``{"$tensor": name}`` into a safetensors file (:func:`pack` / :func:`unpack`), so that loading
needs only ``json.loads`` and ``safetensors``: nothing is ever unpickled.

Writing is atomic: the files go to a hidden temporary directory, are flushed to disk, and the
directory is renamed into place, so a kill leaves either the old set of checkpoints or the new
one, never a half-written ``ckpt-*``. The last ``keep`` checkpoints are kept; loading verifies
every checksum and :func:`latest_checkpoint` falls back to the previous checkpoint when the newest
is corrupt or truncated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

FORMAT = "lstmkit-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})$")
_TMP_PREFIX = ".tmp-ckpt-"
_JSON = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint (or a file in one) is missing, corrupt, truncated or of another format."""


# ---------------------------------------------------------------------- nested state <-> JSON
def pack(obj: Any, tensors: dict[str, Tensor], prefix: str = "") -> Any:
    """``obj`` as JSON-able data, its tensors moved into ``tensors`` (CPU copies) and replaced by
    ``{"$tensor": name}``. Handles dicts (any hashable JSON-able keys, e.g. an optimizer's int
    parameter ids), lists, tuples, tensors, str, int, float (inf and nan too), bool and None."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        name = prefix or "tensor"
        while name in tensors:
            name += "'"
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": name}
    if isinstance(obj, tuple):
        return {"$tuple": [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: pack(v, tensors, f"{prefix}/{k}") for k, v in obj.items()}
        return {
            "$items": [
                [pack(k, tensors, f"{prefix}/key"), pack(v, tensors, f"{prefix}/{k}")]
                for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"cannot store {type(obj).__name__} at {prefix or 'the top level'} in a checkpoint: "
        "only tensors, dicts, lists, tuples, str, int, float, bool and None are stored"
    )


def unpack(data: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(data, list):
        return [unpack(v, tensors) for v in data]
    if isinstance(data, dict):
        if set(data) == {"$tensor"}:
            name = data["$tensor"]
            if name not in tensors:
                raise CheckpointError(f"tensor {name!r} is referenced but not stored")
            return tensors[name]
        if set(data) == {"$tuple"}:
            return tuple(unpack(v, tensors) for v in data["$tuple"])
        if set(data) == {"$items"}:
            return {_hashable(unpack(k, tensors)): unpack(v, tensors) for k, v in data["$items"]}
        return {k: unpack(v, tensors) for k, v in data.items()}
    return data


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ---------------------------------------------------------------------- files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part:
    a temporary file beside it, flushed, then ``os.replace``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        _write(tmp, data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_safetensors_atomic(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Tensors as a safetensors file, written atomically (CPU, contiguous copies)."""
    write_bytes_atomic(path, _safetensors_bytes(tensors, metadata))


def _safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None) -> bytes:
    plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return safetensors.torch.save(plain, metadata=dict(metadata) if metadata else None)


def parse_safetensors(data: bytes, name: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata from the bytes of a safetensors file; ``name`` is the file for error
    messages."""
    if len(data) < 8:
        raise CheckpointError(
            f"{name} is not a safetensors file: {len(data)} bytes, shorter than its 8-byte header "
            "length (the file is empty or truncated)"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise CheckpointError(
            f"{name} is truncated or not a safetensors file: its header claims {size} bytes but "
            f"only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + size])
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{name} is not a valid safetensors file: {exc}") from exc
    metadata = header.get("__metadata__") or {}
    return tensors, metadata


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file with errors that name it (missing, truncated, not safetensors)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_safetensors(data, str(path))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return sha256(canonical.encode())


# ---------------------------------------------------------------------- random-number generators
def capture_rng() -> dict[str, Any]:
    """The state of every global random-number generator a training run draws from: torch (CPU
    and, if initialised, CUDA), NumPy and Python's ``random``; tensors and plain values only."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the generators saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    index: int
    model: dict[str, Tensor]
    state: dict[str, Any]
    ranks: list[dict[str, Any]]

    @property
    def world_size(self) -> int:
        return len(self.ranks)


def checkpoint_name(index: int) -> str:
    return f"ckpt-{index:08d}"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint directories in ``directory``, oldest first (temporary ones excluded)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def temporary_path(directory: str | os.PathLike[str], index: int) -> Path:
    """The hidden directory checkpoint ``index`` is written into before it is renamed."""
    return Path(directory) / f"{_TMP_PREFIX}{index:08d}"


def prepare_checkpoint(directory: str | os.PathLike[str], index: int) -> Path:
    """Create (empty) the temporary directory that checkpoint ``index`` is written into. In a
    multi-process run rank 0 calls this, then every rank writes its own file into it."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(directory, index)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_rank_state(tmp: Path, rank: int, state: Mapping[str, Any]) -> None:
    """One process's own state (RNG, carried TBPTT state) into the temporary directory."""
    tensors: dict[str, Tensor] = {}
    skeleton = pack(dict(state), tensors)
    data = _safetensors_bytes(tensors, {"state": _dumps(skeleton)})
    _write(tmp / f"rank-{rank}.safetensors", data)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def commit_checkpoint(
    tmp: Path,
    *,
    index: int,
    model: Mapping[str, Tensor],
    state: Mapping[str, Any],
    world_size: int,
    keep: int = 2,
) -> Path:
    """Finish the checkpoint in ``tmp`` (rank 0, after every rank wrote its file): write the model,
    the shared state and ``checkpoint.json`` with the checksums, rename the directory into place
    and delete all but the newest ``keep`` checkpoints."""
    files: dict[str, str] = {}
    model_bytes = _safetensors_bytes(model, {"format": "pt"})
    _write(tmp / "model.safetensors", model_bytes)
    files["model.safetensors"] = sha256(model_bytes)
    tensors: dict[str, Tensor] = {}
    skeleton = pack(dict(state), tensors)
    state_bytes = _safetensors_bytes(tensors, None)
    _write(tmp / "state.safetensors", state_bytes)
    files["state.safetensors"] = sha256(state_bytes)
    for rank in range(world_size):
        name = f"rank-{rank}.safetensors"
        try:
            files[name] = sha256((tmp / name).read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"process {rank} did not write {tmp / name}") from None
    body = {
        "format": FORMAT,
        "version": VERSION,
        "index": index,
        "world_size": world_size,
        "files": files,
        "state": skeleton,
    }
    document = {**body, "digest": _digest(body)}
    _write(tmp / _JSON, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())
    _fsync_dir(tmp)

    final = tmp.parent / checkpoint_name(index)
    if final.exists():  # only after falling back from a corrupt checkpoint with this index
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(tmp.parent)
    _prune(tmp.parent, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


def save_checkpoint(
    directory: str | os.PathLike[str],
    index: int,
    *,
    model: Mapping[str, Tensor],
    state: Mapping[str, Any],
    rank_state: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``index`` of a single-process run into ``directory`` atomically.

    ``model`` is a ``state_dict``; ``state`` and ``rank_state`` are nested dicts/lists/tuples of
    tensors and JSON values (optimizer and scheduler ``state_dict()``s, counters, RNG states).
    """
    tmp = prepare_checkpoint(directory, index)
    write_rank_state(tmp, 0, rank_state or {})
    return commit_checkpoint(tmp, index=index, model=model, state=state, world_size=1, keep=keep)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint file {path} is missing (the checkpoint is incomplete)"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file {path}: {exc.strerror}") from exc


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and verify one checkpoint directory. Raises :class:`CheckpointError` naming the file
    when anything is missing, corrupt or truncated."""
    root = Path(path)
    json_path = root / _JSON
    raw = _read(json_path)
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint file {json_path} is not valid JSON ({exc}): it is corrupt or truncated"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not an lstmkit checkpoint (no format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{json_path} has checkpoint format version {document.get('version')!r}; this "
            f"lstmkit reads version {VERSION}"
        )
    body = {k: v for k, v in document.items() if k != "digest"}
    if document.get("digest") != _digest(body):
        raise CheckpointError(
            f"checkpoint file {json_path} fails its digest check: it was modified or is corrupt"
        )
    contents: dict[str, bytes] = {}
    for name, expected in document["files"].items():
        file = root / name
        data = _read(file)
        actual = sha256(data)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt or truncated: sha256 {actual[:16]}... "
                f"does not match the {expected[:16]}... recorded in {json_path}"
            )
        contents[name] = data
    model, _ = parse_safetensors(contents["model.safetensors"], str(root / "model.safetensors"))
    tensors, _ = parse_safetensors(contents["state.safetensors"], str(root / "state.safetensors"))
    ranks = []
    for rank in range(int(document["world_size"])):
        name = f"rank-{rank}.safetensors"
        rank_tensors, meta = parse_safetensors(contents[name], str(root / name))
        ranks.append(unpack(json.loads(meta.get("state", "{}")), rank_tensors))
    return Checkpoint(
        path=root,
        index=int(document["index"]),
        model=model,
        state=unpack(document["state"], tensors),
        ranks=ranks,
    )


def latest_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that loads and verifies, or None if there is none.

    A newer checkpoint that fails verification is reported with a warning (naming its file and
    the problem) and skipped. If checkpoints exist but none loads, raises :class:`CheckpointError`
    listing why each failed.
    """
    failures: list[str] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:
            warnings.warn(
                f"skipping a damaged checkpoint: {failure}; resuming from {path} instead",
                RuntimeWarning,
                stacklevel=2,
            )
        return checkpoint
    if failures:
        raise CheckpointError(f"no loadable checkpoint in {directory}: " + "; ".join(failures))
    return None
