"""Frozen-feature cache: each frozen tower's outputs computed once per distinct input image.

Why: every method of the lineage keeps its backbones frozen, so each epoch recomputes the same
tower outputs; on a CPU (and often a GPU) that is most of a training step. The cache sits *inside*
the tower's call, keyed by content, so no method changes and nothing can go stale:

- **key** = (tower fingerprint, blake2b of the exact input tensor). The fingerprint hashes the
  tower's class, name, requested blocks, input statistics, whether tokens are computed, and every
  parameter and buffer (so new weights, another input size or another view is another key);
- **storage** = append-only chunks of float16 ``.npy`` files read memory-mapped, plus an index
  (``index.jsonl``), under ``<cache_dir>/<fingerprint>/``. A chunk is complete before its index line
  is written, so a killed run leaves at most an unindexed chunk, never a torn entry;
- **values**: what a call returns is always the stored float16 value (a miss is stored first, then
  read back), so a run that fills the cache and a run that reads it see identical features, and
  resume stays exact.

Augmentation must produce repeated inputs for a content cache to hit: with ``data.feature_cache``
the training set draws each image's crop and flip from ``data.cache_views`` fixed views per image
(:class:`afford.data.agd20k.AffordanceTrainSet` ``views``) instead of a fresh draw per epoch.
Several processes may share a cache directory (the demo's parallel jobs, distributed ranks): a
writer takes an advisory lock on ``<fingerprint>/lock`` to name its chunk and append its index line,
and a reader that misses first picks up the lines other writers appended since it last looked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from afford.backbones.features import Features
from afford.backbones.vit import VisionBackbone
from afford.device import compute_context
from afford.errors import AffordError

FORMAT = 2  # 2: DINO position embeddings interpolated by DINO's rule at non-native sizes (stored features differ)


def default_feature_dir() -> Path:
    from afford.data.gt_cache import default_cache_dir

    return default_cache_dir() / "features"


def tower_fingerprint(tower: VisionBackbone, want_tokens: bool, context: str = "cpu|no-autocast") -> str:
    """What determines the tower's output for a given input tensor, hashed."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([FORMAT, type(tower).__name__, tower.name, list(tower.layers), tower.input_stats,
                         list(tower.mean), list(tower.std), bool(want_tokens), str(tower.autocast_dtype),
                         context]).encode())
    for name, t in [*tower.state_dict().items()]:
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def image_keys(images: Tensor) -> list[str]:
    """One content hash per image of a ``(B, 3, H, W)`` batch (shape and dtype included)."""
    cpu = images.detach().cpu().contiguous()
    return [hashlib.blake2b(f"{tuple(x.shape)}|{x.dtype}|".encode() + x.numpy().tobytes(), digest_size=16).hexdigest()
            for x in cpu]


def _fields(f: Features) -> dict[str, Tensor]:
    out = {f"tokens_{i}": t for i, t in enumerate(f.tokens)}
    out.update({f"keys_{i}": k for i, k in enumerate(f.keys)})
    out.update(cls_attn=f.cls_attn, saliency=f.saliency)
    if f.cls_token is not None:
        out["cls_token"] = f.cls_token
    return out


_HOST = socket.gethostname().replace(".", "_") or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FeatureStore:
    """Append-only per-image float16 arrays of one tower fingerprint, memory-mapped on read.

    Safe for concurrent writers on one machine: chunk numbers are taken and index lines appended
    under an exclusive ``flock``; :meth:`refresh` reads the index lines appended since the last look.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[int, int]] = {}
        self._chunks: dict[int, dict[str, np.ndarray]] = {}
        self._next = 0
        self._offset = 0  # bytes of index.jsonl already read
        self._indexed: set[int] = set()
        self._remove_stale_staging()

    def _remove_stale_staging(self) -> None:
        """Delete this machine's ``.chunk.<host>.<pid>`` folders whose writer is gone (killed
        mid-write): they are never indexed. Another machine's (a cache on a shared filesystem)
        cannot be told dead from here and is left alone."""
        for tmp in self.root.glob(f".chunk.{_HOST}.*"):
            try:
                pid = int(tmp.name.rsplit(".", 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)
        with self._locked():  # a chunk renamed into place whose index line a kill cut: never read
            self.refresh()
            for d in self.root.glob("chunk_*"):
                if d.is_dir() and d.name[6:].isdigit() and int(d.name[6:]) not in self._indexed:
                    shutil.rmtree(d, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self):
        with (self.root / "lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def refresh(self) -> None:
        """Index the entries appended (by this or another process) since the last read."""
        idx = self.root / "index.jsonl"
        if not idx.is_file():
            return
        with idx.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            try:
                rec = json.loads(line)
                chunk, keys = int(rec["chunk"]), list(rec["keys"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill: its chunk is simply recomputed
            self._indexed.add(chunk)
            if (self.root / f"chunk_{chunk:06d}").is_dir():
                self.index.update({k: (chunk, r) for r, k in enumerate(keys)})
            self._next = max(self._next, chunk + 1)

    def _chunk(self, n: int) -> dict[str, np.ndarray]:
        if n not in self._chunks:
            d = self.root / f"chunk_{n:06d}"
            self._chunks[n] = {p.stem: np.load(p, mmap_mode="r") for p in d.glob("*.npy")}
        return self._chunks[n]

    def get(self, key: str) -> dict[str, np.ndarray]:
        chunk, row = self.index[key]
        return {name: arr[row] for name, arr in self._chunk(chunk).items()}

    def put(self, keys: list[str], fields: dict[str, Tensor]) -> None:
        tmp = self.root / f".chunk.{_HOST}.{os.getpid()}"
        if tmp.exists():  # left by a killed process that had this pid: none of it is ours
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, t in fields.items():
            np.save(tmp / f"{name}.npy", t.detach().float().cpu().numpy().astype(np.float16))
        with self._locked():
            self.refresh()  # other writers' chunks: take the next free number
            n = self._next
            while (self.root / f"chunk_{n:06d}").exists():  # a chunk whose index line a kill cut
                n += 1
            tmp.rename(self.root / f"chunk_{n:06d}")
            with (self.root / "index.jsonl").open("a+b") as f:
                f.seek(0, os.SEEK_END)
                if f.tell():  # a line a killed writer left unfinished must not swallow this one
                    f.seek(-1, os.SEEK_END)
                    lead = b"" if f.read(1) == b"\n" else b"\n"
                else:
                    lead = b""
                f.write(lead + (json.dumps({"chunk": n, "keys": keys}) + "\n").encode())
            self._indexed.add(n)
        self.index.update({k: (n, r) for r, k in enumerate(keys)})
        self._next = n + 1


class _CachedForward:
    """The tower's ``forward`` through the store (bound per instance, so state_dict is unchanged)."""

    def __init__(self, tower: VisionBackbone, root: Path) -> None:
        self.tower, self.root = tower, root
        self.original = type(tower).forward
        self.stores: dict[tuple[bool, str], tuple[str, FeatureStore, tuple[int, ...]]] = {}
        self.hits = self.misses = 0

    def store(self, want_tokens: bool, context: str = "cpu|no-autocast") -> tuple[str, FeatureStore]:
        """The store of the tower's current weights: re-fingerprinted whenever a parameter or buffer
        changed in place (a checkpoint load), told by their version counters (cheap per call)."""
        versions = tuple(t._version for t in (*self.tower.parameters(), *self.tower.buffers()))
        key = (want_tokens, context)
        if self.stores.get(key, (None, None, None))[2] != versions:
            fp = tower_fingerprint(self.tower, want_tokens, context)
            self.stores[key] = (fp, FeatureStore(self.root / fp), versions)
        fp, store, _ = self.stores[key]
        return fp, store

    def __call__(self, images: Tensor, return_tokens: bool | None = None) -> Features:
        tower = self.tower
        want = tower.return_tokens if return_tokens is None else return_tokens
        if images.ndim != 4 or images.shape[1] != 3:
            return self.original(tower, images, return_tokens)  # its own error message
        _, store = self.store(want, compute_context(images.device))
        keys = image_keys(images)
        if any(k not in store.index for k in keys):
            store.refresh()  # another process may have computed them meanwhile
        todo = [i for i, k in enumerate(keys) if k not in store.index]
        todo_keys = list(dict.fromkeys(keys[i] for i in todo))
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo_keys:
            first = [keys.index(k) for k in todo_keys]
            with torch.no_grad():
                feats = self.original(tower, images[first], want)
            store.put(todo_keys, _fields(feats))
        rows = [store.get(k) for k in keys]
        dev = images.device

        def stack(name: str) -> Tensor:
            return torch.from_numpy(np.stack([r[name] for r in rows])).to(device=dev, dtype=torch.float32)

        names = rows[0].keys()
        n_tok = sum(1 for n in names if n.startswith("tokens_"))
        n_key = sum(1 for n in names if n.startswith("keys_"))
        return Features(tokens=[stack(f"tokens_{i}") for i in range(n_tok)],
                        keys=[stack(f"keys_{i}") for i in range(n_key)],
                        cls_attn=stack("cls_attn"), saliency=stack("saliency"),
                        cls_token=stack("cls_token") if "cls_token" in names else None, layers=tower.layers)


def frozen_towers(model: nn.Module) -> dict[str, VisionBackbone]:
    """The model's frozen vision towers (direct children), the ones worth caching."""
    return {n: c for n, c in model.named_children() if isinstance(c, VisionBackbone) and not c.trainable}


def attach_feature_cache(model: nn.Module, root: str | Path | None = None) -> dict[str, Any]:
    """Route every frozen tower of ``model`` through the cache; returns what to record in run.json."""
    where = Path(root).expanduser() if root else default_feature_dir()
    towers = frozen_towers(model)
    if not towers:
        raise AffordError(f"data.feature_cache: {type(model).__name__} has no frozen vision tower to cache "
                          "(a trainable backbone changes every step); set data.feature_cache=false")
    for tower in towers.values():
        if not isinstance(tower.__dict__.get("forward"), _CachedForward):
            tower.forward = _CachedForward(tower, where)  # an instance attribute: state_dict unchanged
    return {"dir": str(where), "towers": sorted(towers), "dtype": "float16"}


@contextlib.contextmanager
def cache_paused(model: nn.Module):
    """The model's towers computed directly for the duration (scoring epochs on the test set):
    the scores are then those ``afford eval`` gives the saved weights (float32 features, not the
    cache's float16), and test images do not fill the training cache."""
    paused = {}
    for tower in frozen_towers(model).values():
        c = tower.__dict__.get("forward")
        if isinstance(c, _CachedForward):
            paused[tower] = c
            del tower.forward
    try:
        yield
    finally:
        for tower, c in paused.items():
            tower.forward = c


def cache_stats(model: nn.Module) -> dict[str, dict[str, int]]:
    """Hits and misses per cached tower since it was attached."""
    out = {}
    for name, tower in frozen_towers(model).items():
        c = tower.__dict__.get("forward")
        if isinstance(c, _CachedForward):
            out[name] = {"hits": c.hits, "misses": c.misses}
    return out
