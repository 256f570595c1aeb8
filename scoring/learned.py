"""Serving the learned user encoder (:mod:`encoders.sasrec`) in the batch step.  No Kafka.

:class:`LearnedUserEncoder` holds a loaded checkpoint and what the engine needs from it:

* :meth:`LearnedModel.sequence`: a profile's history as the model's input
  (:func:`encoders.sasrec.sequence_from_history`: consecutive events on one item are one
  interaction, positive when one of them is, :func:`scoring.cooccurrence.is_positive`);
* :meth:`LearnedModel.topk`: the user vectors of a whole micro-batch of snapshots in ONE
  forward pass, then the unchanged exact top-k (:func:`scoring.topk.score_topk`) against
  an :class:`~scoring.topk.ItemMatrix` of the items' output vectors ``r_i = P e_i + v_i``,
  whose rows are also the history items' inputs (the model's input for an item is its
  ``r_i``: no text is projected per batch).
  That matrix is built from the worker's catalog matrix (its text vectors) and rebuilt when
  the catalog gains or loses items (``ItemMatrix.generation``; an item whose text vector
  is overwritten in place keeps its old output vector until the next such change).

The checkpoint file is watched by a background thread (:meth:`LearnedUserEncoder.start`):
its modification time and size are checked every ``check_every_s`` seconds; a changed
file is loaded on that thread and swapped in with one reference assignment, so a batch
uses one model from start to end (:meth:`LearnedUserEncoder.current`).  A file that fails
to load is logged and the previous model kept.  Records name the model
``"sasrec/<file stem>@<first 12 hex digits of the file's SHA-256>"``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch

from recstream.encoders.profile import UserProfile
from recstream.encoders.sasrec import MODEL_NAME, SASRec, checkpoint_hash, gather_rows, load_checkpoint, sequence_from_history, sequence_inputs
from recstream.scoring.cooccurrence import is_positive
from recstream.scoring.topk import ItemMatrix, TopK, score_topk

__all__ = ["LearnedModel", "LearnedUserEncoder", "profile_sequence"]

log = logging.getLogger("recstream.learned")


def profile_sequence(profile: UserProfile, max_len: int, positive_threshold: float = 4.0, known: Callable[[str], bool] | None = None) -> list[tuple[str, bool]]:
    """The model's input from a profile's history (oldest first): a purchase, or a review
    rated at least ``positive_threshold``, makes its interaction positive.  Only the items
    for which ``known`` is true are read (default: all)."""
    return sequence_from_history(
        ((h.item_id, h.kind != "click" and is_positive(h.kind, h.rating, positive_threshold)) for h in profile.history if known is None or known(h.item_id)),
        max_len,
    )


class LearnedModel:
    """One loaded checkpoint and its item-vector matrix (used by one compute thread)."""

    def __init__(self, model: SASRec, name: str, device: torch.device | str = "cpu", positive_threshold: float = 4.0) -> None:
        self.model = model.to(device).eval()
        self.name = name
        self.device = torch.device(device)
        self.positive_threshold = positive_threshold
        self._items: ItemMatrix | None = None
        self._items_key: tuple[int, int, int] | None = None

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    def sequence(self, profile: UserProfile, catalog: ItemMatrix) -> list[tuple[str, bool]]:
        """The profile's history as the model reads it: the items in the catalog or in the
        model's vocabulary (an item it knows nothing about is left out, as in training)."""
        index_of = self.model.index_of
        return profile_sequence(profile, self.max_len, self.positive_threshold, lambda item_id: item_id in catalog or item_id in index_of)

    def item_matrix(self, catalog: ItemMatrix) -> ItemMatrix:
        """The items' output vectors, rebuilt when the catalog's set of items changed."""
        key = (id(catalog), catalog.generation, catalog.rows_used)
        if self._items is None or key != self._items_key:
            ids = catalog.ids()
            m = ItemMatrix(self.model.config.dim, catalog.device, torch.float32, capacity=max(1, len(ids)), normalize=False)
            if ids:
                with torch.inference_mode():
                    text = catalog.get(ids).to(self.device, torch.float32)
                    vecs = self.model.item_vectors(text, self.model.indices(ids).to(self.device))
                m.upsert(ids, vecs)
            self._items, self._items_key = m, key
        return self._items

    def user_vectors(self, catalog: ItemMatrix, sequences: Sequence[Sequence[tuple[str, bool]]]) -> torch.Tensor:
        """``(B, dim)`` user vectors in one forward pass.  A history item's input is its row
        of :meth:`item_matrix` (``r_i``, computed once per catalog change, not per batch);
        an item missing from the catalog is its ID embedding alone (no text)."""
        items = self.item_matrix(catalog)
        seqs, index, feedback, valid = sequence_inputs(self.model, sequences)
        vecs, known = gather_rows(items.data, seqs, index.shape[1], items.row)
        index, feedback, valid = index.to(self.device), feedback.to(self.device), valid.to(self.device)
        with torch.inference_mode():
            x = torch.where(known.unsqueeze(-1), vecs, self.model.id_emb(index))
            return self.model.encode_items(x, feedback, valid)[:, -1]

    def topk(
        self,
        catalog: ItemMatrix,
        sequences: Sequence[Sequence[tuple[str, bool]]],
        k: int,
        exclude: Sequence[Collection[str]],
        history: Sequence[Sequence[str]] | None = None,
    ) -> list[TopK]:
        if not sequences:
            return []
        items = self.item_matrix(catalog)
        return score_topk(items, self.user_vectors(catalog, sequences), k, exclude=exclude, history=history)


class LearnedUserEncoder:
    """A checkpoint file, loaded, and reloaded when it changes (see the module doc).

    Raises :class:`encoders.sasrec.CheckpointError` when the file cannot be loaded at
    construction."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", *, check_every_s: float = 5.0, positive_threshold: float = 4.0) -> None:
        if not check_every_s > 0:
            raise ValueError(f"check_every_s must be positive, got {check_every_s}")
        self.path = Path(path)
        self.device = torch.device(device)
        self.check_every_s = check_every_s
        self.positive_threshold = positive_threshold
        self._stat = self._file_stat()
        self._current = self._load()
        self._failed_stat: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.reload_failures = 0

    def _file_stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> LearnedModel:
        model = load_checkpoint(self.path, "cpu")
        name = f"{MODEL_NAME}/{self.path.stem}@{checkpoint_hash(self.path)}"
        return LearnedModel(model, name, self.device, self.positive_threshold)

    def current(self) -> LearnedModel:
        """The model to use for one whole batch."""
        return self._current

    def check(self) -> bool:
        """Reload the file if it changed since the last load; True when a new model is in.
        A broken file is logged (once per version of the file) and the old model kept."""
        stat = self._file_stat()
        if stat is None or stat == self._stat or stat == self._failed_stat:
            return False
        old = self._current.name
        try:
            new = self._load()
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
            self._failed_stat = stat
            self.reload_failures += 1
            log.error("user model %s changed but cannot be loaded, keeping %s: %s", self.path, old, exc)
            return False
        self._current = new  # one reference assignment: batches see the old or the new model
        self._stat = stat
        self._failed_stat = None
        self.reloads += 1
        log.info("user model reloaded: %s -> %s", old, new.name)
        return True

    def start(self) -> None:
        """Watch the file on a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="recstream-model-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must not die
                log.exception("user model watcher")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.check_every_s + 5)
            self._thread = None
