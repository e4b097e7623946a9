"""Load a saved run's detector in the background, once, before it is needed.

Loading a detector builds its network and reads its weights (about 4 s for MobileNetV2 on 2 busy cores). A page that
may need it soon (one with a detail view, whose heatmap needs the network) calls :meth:`DetectorPreloader.start` when
it opens; whoever needs the detector then calls :meth:`DetectorPreloader.take`, which waits for that load (or loads
it there and then when none was started) instead of starting a second one. Each key is loaded at most once per
preloader, whatever the number of sessions and threads asking; no UI code runs in the worker thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

from ..model.detector import DOCDetector


class _Load:
    def __init__(self, load: Callable[[], DOCDetector]):
        self.done = threading.Event()
        self.detector: DOCDetector | None = None
        self.error: BaseException | None = None
        self._load = load

    def run(self) -> None:
        try:
            self.detector = self._load()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes it, in its own thread
            self.error = exc
        finally:
            self._load = None
            self.done.set()


class DetectorPreloader:
    """Background loads of detectors, one per key, handed over once.

    Parameters
    ----------
    keep : int
        At most this many loads are kept that nobody has taken yet (the oldest are dropped; a dropped one is loaded
        again by :meth:`take` when asked for).
    """

    def __init__(self, keep: int = 2):
        self.keep = int(keep)
        self._lock = threading.Lock()
        self._loads: OrderedDict[Hashable, _Load] = OrderedDict()
        self._handed: set[Hashable] = set()

    def start(self, key: Hashable, load: Callable[[], DOCDetector]) -> bool:
        """Start ``load()`` in a daemon thread unless ``key`` was started or handed over already; True if started.

        ``key`` should change whenever the detector's files do (e.g. include their sizes and times), so a rewritten
        detector is loaded again.
        """
        with self._lock:
            if key in self._loads or key in self._handed:
                return False
            job = _Load(load)
            self._loads[key] = job
            while len(self._loads) > self.keep:
                self._loads.popitem(last=False)
        threading.Thread(target=job.run, name=f"detector-preload-{key!r}"[:60], daemon=True).start()
        return True

    def take(self, key: Hashable, load: Callable[[], DOCDetector]) -> DOCDetector:
        """The detector of ``key``: the background load's, waited for when it is still running, else ``load()``
        here. Raises what the load raised. After this, :meth:`start` does not load ``key`` again (the caller keeps
        the detector; call :meth:`forget` when it no longer does)."""
        with self._lock:
            job = self._loads.pop(key, None)
            self._handed.add(key)
        if job is None:
            return load()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.detector

    def forget(self, key: Hashable | None = None) -> None:
        """Let :meth:`start` load ``key`` (every key when None) again, e.g. after the caller's cache dropped it."""
        with self._lock:
            if key is None:
                self._handed.clear()
            else:
                self._handed.discard(key)
