"""The model store: ``<root>/<name>/<version>/{model.onnx, card.json, meta.json, derived/}``.

Writes are atomic: a version is assembled in ``<root>/.tmp/`` and renamed into place in one
step, so a crash or a refused upload never leaves a partial model behind. ``.tmp`` is emptied
whenever a store is opened.

Element types are checked at registration (``models_store.dtypes``): quantized models and
float8/int4/complex tensors are refused with the reason; a float16/bfloat16 model is also
probed through its float32 copy, the graph the CPU provider and every explanation runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import onnx

from models_store.dtypes import check_element_types, needs_upcast, upcast
from models_store.errors import InvalidCard, InvalidModel, ModelConflict, ModelNotFound
from models_store.probe import probe_forward
from models_store.validate import (
    check_model,
    check_output_width,
    image_input,
    parse_model,
    score_output,
)
from schemas.card import NAME_PATTERN, ModelCard
from schemas.monitoring import out_of_range

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
META_FILE = "meta.json"
DERIVED_DIR = "derived"
_TMP = ".tmp"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class ModelRecord:
    """One stored model version."""

    name: str
    version: str
    path: Path
    card: ModelCard
    sha256: str
    created: float

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def derived_dir(self) -> Path:
        return self.path / DERIVED_DIR

    @cached_property
    def model(self) -> onnx.ModelProto:
        return onnx.load_model(str(self.model_path))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: "2" < "10", "1.2" < "1.10"; numbers sort before words."""
    parts = re.split(r"[._-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    name, _, version = ref.partition("@")
    return name, (version or None)


class ModelStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / _TMP
        shutil.rmtree(self._tmp, ignore_errors=True)  # leftovers of an interrupted write
        self._tmp.mkdir(exist_ok=True)
        # derived graphs are written as .<name>.<random>.tmp then renamed: a process killed
        # mid-write leaves only such a file, never a partial graph under its final name
        for stale in self.root.glob(f"*/*/{DERIVED_DIR}/.*.tmp"):
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if _NAME.match(p.name) and self._versions(p.name)
        )

    def versions(self, name: str) -> list[str]:
        versions = self._versions(name)
        if not versions:
            raise ModelNotFound(f"no model named {name!r}")
        return versions

    def get(self, name: str, version: str | None = None) -> ModelRecord:
        if not _NAME.match(name):
            raise ModelNotFound(f"no model named {name!r}")
        versions = self.versions(name)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} (versions: {', '.join(versions)})"
            )
        return self._read(name, version)

    def resolve(self, ref: str, version: str | None = None) -> ModelRecord:
        name, ref_version = parse_ref(ref)
        if ref_version and version and ref_version != version:
            raise ModelNotFound(f"{ref!r} and ?version={version!r} disagree")
        return self.get(name, ref_version or version)

    def records(self) -> list[ModelRecord]:
        return [self.get(name) for name in self.names()]

    # ---- writing -------------------------------------------------------------------------

    def add(self, data: bytes, card: ModelCard) -> ModelRecord:
        """Validate, then store atomically. Raises InvalidModel/InvalidCard/ModelConflict."""
        model = parse_model(data)
        check_model(model)
        image = image_input(model, card)
        score = score_output(model, card)
        check_element_types(model, image.name)
        if needs_upcast(model):
            # the float32 copy is what the CPU provider runs (service/runtime/sessions.py)
            width = _probe_float32_copy(model, card, image.name, score.name)
        else:
            width = probe_forward(data, card, image, score.name)
        check_output_width(width, card)
        if errors := out_of_range(card.monitoring, width):  # a card without labels
            raise InvalidCard(
                f"monitoring: {errors[0]['msg']} at {'.'.join(errors[0]['loc'])}", errors=errors
            )
        card = card.model_copy(
            update={
                "input": card.input.model_copy(update={"name": image.name}),
                "output": card.output.model_copy(update={"name": score.name}),
            }
        )
        sha256 = hashlib.sha256(data).hexdigest()

        staging = self._tmp / uuid.uuid4().hex
        (staging / DERIVED_DIR).mkdir(parents=True)
        try:
            _write(staging / MODEL_FILE, data)
            meta = {"sha256": sha256, "created": time.time(), "bytes": len(data)}
            _write(staging / META_FILE, json.dumps(meta).encode())
            with self._lock:
                version = self._place(staging, card)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._read(card.name, version)

    def remove(self, name: str, version: str | None = None) -> list[str]:
        """Delete one version, or every version of ``name``; returns what was removed."""
        versions = self.versions(name)
        if version is not None and version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        doomed = [version] if version else versions
        with self._lock:
            for v in doomed:
                trash = self._tmp / f"rm-{uuid.uuid4().hex}"
                os.rename(self.root / name / v, trash)  # disappears atomically ...
                shutil.rmtree(trash, ignore_errors=True)  # ... then is deleted at leisure
            folder = self.root / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return doomed

    # ---- internals -----------------------------------------------------------------------

    def _versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / META_FILE).is_file()]
        return sorted(found, key=version_key)

    def _place(self, staging: Path, card: ModelCard) -> str:
        """Rename the staged folder into place under the card's (or the next free) version.

        The rename is the commit point, and it is atomic even across processes: two writers
        racing for the same unversioned name both succeed, with different versions."""
        (self.root / card.name).mkdir(exist_ok=True)
        for _ in range(100):
            version = card.version or self._next_version(card.name)
            stored = card.model_copy(update={"version": version})
            _write(staging / CARD_FILE, stored.model_dump_json(indent=2).encode())
            try:
                os.rename(staging, self.root / card.name / version)
            except OSError:
                if card.version is not None:
                    raise ModelConflict(
                        f"model {card.name!r} already has version {version!r}; post another"
                        " version or delete it first"
                    ) from None
                continue  # another process took this number; try the next one
            _fsync_dir(self.root / card.name)
            return version
        raise ModelConflict(f"could not allocate a version for {card.name!r}; retry")

    def _next_version(self, name: str) -> str:
        numbers = [int(v) for v in self._versions(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def _read(self, name: str, version: str) -> ModelRecord:
        path = self.root / name / version
        try:
            card = ModelCard.model_validate_json((path / CARD_FILE).read_bytes())
            meta = json.loads((path / META_FILE).read_bytes())
        except FileNotFoundError:
            raise ModelNotFound(f"model {name!r} has no version {version!r}") from None
        except ValueError as exc:
            raise InvalidCard(f"stored card of {name}@{version} is unreadable: {exc}") from None
        return ModelRecord(name, version, path, card, meta["sha256"], meta["created"])


def _probe_float32_copy(model: onnx.ModelProto, card: ModelCard, image: str, score: str) -> int:
    """Probe the float32 copy of a float16/bfloat16 model (what the CPU provider runs)."""
    copy = upcast(model)
    try:
        onnx.checker.check_model(copy)
    except Exception as exc:
        raise InvalidModel(f"the float32 copy of this float16 model is invalid: {exc}") from None
    tensor = image_input(copy, card)
    return probe_forward(copy.SerializeToString(), card, tensor, score)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["InvalidModel", "ModelRecord", "ModelStore", "parse_ref", "version_key"]
