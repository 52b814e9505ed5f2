"""Swap the model under a running inference loop without failing or dropping an inference.

::

    live = HotSwapPerception.load(agent.current_path, backends=["onnxruntime"])
    agent = Agent(..., on_commit=live.on_commit)    # a committed update is swapped in at once
    while True:
        r = live.infer(video=frames, audio=samples, sample_rate=16000)
        r.model                                      # name@version of the model that produced it

:meth:`HotSwapPerception.swap_to` loads and self-tests the new bundle in a background thread while
the old model keeps serving; only then, between two inferences, a lock-protected reference switch
makes the new model the active one. Inferences already running on the old model finish on it; the
old model is closed when the last of them returns. If the new bundle fails to load or fails its
self-test, the old model stays active and the error is reported on the returned future.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fusionedge.sdk.errors import UpdateError
from fusionedge.sdk.perception import Perception, Result
from fusionedge.sdk.spec import InputGeometry

__all__ = ["HotSwapPerception"]

log = logging.getLogger(__name__)


class HotSwapPerception:
    """A :class:`~fusionedge.sdk.perception.Perception` whose model can be replaced while it serves.

    Args:
        perception: the loaded model to serve first (this object takes ownership and closes it).
        backends: backends for the bundles swapped in later (default: the first model's backend).
        backend_options: per-backend options for later bundles.
        score_threshold: lowest detection score kept for every class, for later bundles (default: what
            the first model was loaded with: a threshold given then, or else each bundle's own per-class
            thresholds from its calibration).
        top_k: most boxes per result, for later bundles (default: the first model's).
    """

    def __init__(
        self,
        perception: Perception,
        *,
        backends: Sequence[str] | None = None,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        score_threshold: float | None = None,
        top_k: int | None = None,
    ) -> None:
        self._active = perception
        self._backends = list(backends) if backends is not None else [perception.backend_name]
        self._backend_options = {k: dict(v) for k, v in (backend_options or {}).items()}
        self._score_threshold = perception.score_threshold_override if score_threshold is None else score_threshold
        self._top_k = perception.top_k if top_k is None else top_k
        self._cond = threading.Condition()
        self._inflight: dict[int, int] = {}  # id(perception) -> inferences running on it
        self._retired: dict[int, Perception] = {}  # swapped out, closed when their last inference returns
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotswap")
        self._closed = False
        self.swaps = 0  # completed swaps

    @classmethod
    def load(
        cls,
        bundle_path: str | os.PathLike,
        backends: Sequence[str] = ("onnxruntime",),
        *,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        score_threshold: float | None = None,
        top_k: int = 50,
    ) -> "HotSwapPerception":
        """Load a bundle (see :meth:`Perception.load`) and serve it, ready for later swaps.

        Raises:
            BundleError: the bundle is invalid.
            BackendError: no backend could load it.
        """
        p = Perception.load(bundle_path, backends, backend_options=backend_options,
                            score_threshold=score_threshold, top_k=top_k)
        return cls(p, backends=backends, backend_options=backend_options)

    # -------------------------------------------------------------------------------- serving

    @property
    def active(self) -> Perception:
        """The model that new inferences run on."""
        with self._cond:
            return self._active

    @property
    def model(self) -> str:
        """``name@version`` of the active model."""
        return self.active.model

    @property
    def backend_name(self) -> str:
        """The backend of the active model."""
        return self.active.backend_name

    @property
    def geometry(self) -> InputGeometry:
        """The active model's input geometry."""
        return self.active.geometry

    def infer(self, **inputs: Any) -> Result:
        """Run one clip on the active model (arguments as :meth:`Perception.infer`).

        Returns:
            The :class:`Result`; ``Result.model`` names the model that produced it.

        Raises:
            InputError, MediaError, BackendError: as :meth:`Perception.infer`.
        """
        p = self._acquire()
        try:
            return p.infer(**inputs)
        finally:
            self._release(p)

    def infer_batch(self, video: np.ndarray, audio: np.ndarray,
                    presence: np.ndarray) -> dict[str, np.ndarray]:
        """Run preprocessed inputs on the active model (see :meth:`Perception.infer_batch`)."""
        p = self._acquire()
        try:
            return p.infer_batch(video, audio, presence)
        finally:
            self._release(p)

    def run_batch(self, video: np.ndarray, audio: np.ndarray,
                  presence: np.ndarray) -> tuple[dict[str, np.ndarray], Perception]:
        """Run preprocessed inputs on the active model and return it too (see :meth:`Perception.run_batch`).

        The returned model may be retired by a swap right after; decoding with it stays valid (decoding
        needs its labels and geometry, not its backend).
        """
        p = self._acquire()
        try:
            return p.infer_batch(video, audio, presence), p
        finally:
            self._release(p)

    # ---------------------------------------------------------------------------------- swaps

    def swap_to(self, bundle_dir: str | os.PathLike) -> "Future[str]":
        """Load and self-test a bundle in the background, then make it the active model.

        Args:
            bundle_dir: the new bundle folder.

        Returns:
            A future resolving to the new model's ``name@version`` once it serves; it holds the
            :class:`BundleError` / :class:`BackendError` if the bundle failed to load or self-test
            (the old model then keeps serving).

        Raises:
            BackendError: the object is closed.
        """
        from fusionedge.sdk.errors import BackendError

        if self._closed:
            raise BackendError("HotSwapPerception is closed")
        return self._executor.submit(self._swap, Path(bundle_dir))

    def on_commit(self, bundle_dir: Path) -> None:
        """Swap to ``bundle_dir`` and wait; pass as ``Agent(on_commit=...)`` (raising rolls the update back).

        Raises:
            BundleError, BackendError: the new bundle failed to load or self-test (the old model serves on).
        """
        self.swap_to(bundle_dir).result()

    def close(self) -> None:
        """Stop swapping; close the models once in-flight inferences return. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._cond:
            while any(self._inflight.values()):
                self._cond.wait()
            to_close = [self._active, *self._retired.values()]
            self._retired.clear()
        for p in to_close:
            p.close()

    def __enter__(self) -> "HotSwapPerception":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ internals

    def _acquire(self) -> Perception:
        with self._cond:
            p = self._active
            self._inflight[id(p)] = self._inflight.get(id(p), 0) + 1
            return p

    def _release(self, p: Perception) -> None:
        close = None
        with self._cond:
            n = self._inflight[id(p)] - 1
            self._inflight[id(p)] = n
            if n == 0 and id(p) in self._retired:
                close = self._retired.pop(id(p))
                del self._inflight[id(p)]
            self._cond.notify_all()
        if close is not None:
            close.close()

    def _swap(self, bundle_dir: Path) -> str:
        new = Perception.load(bundle_dir, self._backends, backend_options=self._backend_options,
                              score_threshold=self._score_threshold, top_k=self._top_k)
        try:
            new.self_test()  # golden outputs within the manifest tolerance, on this backend
            current = self.active
            # A running stream has sized its buffers and clock for the current geometry and labels.
            if new.geometry != current.geometry or new.labels != current.labels:
                raise UpdateError(
                    f"{bundle_dir}: cannot hot-swap {current.model} -> {new.model}: the input geometry or "
                    "labels differ; restart the runtime with the new bundle instead")
        except BaseException:
            new.close()
            raise
        close = None
        with self._cond:
            old, self._active = self._active, new
            if self._inflight.get(id(old), 0) == 0:
                self._inflight.pop(id(old), None)
                close = old
            else:
                self._retired[id(old)] = old
            self.swaps += 1
        if close is not None:
            close.close()
        log.info("hot-swapped %s -> %s", old.model, new.model)
        return new.model
