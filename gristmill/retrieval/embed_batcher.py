"""Share query-embedding calls between concurrent requests.

One model embeds one batch at a time, so under many clients each request used to wait for
every request ahead of it, each embedded alone. The batcher gathers the texts of requests
that arrive within a short window (or until a size cap), embeds them in one call on its own
thread, and gives each request back its own rows. A failed shared call is tried again
request by request, so one client's text that breaks the model fails only that client's
request. A rerank's many passages go through in batch-sized turns, so a heavy request
cannot hold the model while light ones wait. The thread carries on after a failed batch
(and should it ever stop, queued and later requests fail at once rather than wait).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class _Job:
    texts: list[str]
    future: Future[np.ndarray] = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


class EmbedBatcher:
    """Embeds texts from many threads or coroutines through one `embed` call per batch.

    `wait_s` is how long after a request arrives the batcher waits for others to join it;
    requests that queued while the model was busy are joined without further wait.
    `max_texts` caps a batch, except that one request's texts are never split.
    """

    def __init__(self, embed: EmbedFn, *, max_texts: int = 64, wait_s: float = 0.002) -> None:
        if max_texts < 1 or wait_s < 0:
            raise ValueError(f"need max_texts >= 1 and wait_s >= 0, got {max_texts}, {wait_s}")
        self.embed = embed
        self.max_texts = max_texts
        self.wait_s = wait_s
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """A future of the (len(texts), dim) vectors; it holds the error if embedding fails."""
        job = _Job(list(texts))
        with self._lock:
            if self._closed:
                raise RuntimeError("the embed batcher is closed")
            self._jobs.put(job)
        return job.future

    def embed_in_turns(self, texts: Sequence[str], turn: int) -> np.ndarray:
        """Embed many texts (a rerank's passages) `turn` at a time, each turn sent after the
        last came back: requests arriving meanwhile share a turn's call or go between turns,
        so a deep rerank delays them by one turn rather than by all of it."""
        if not texts or turn < 1:
            raise ValueError(f"need texts and turn >= 1, got {len(texts)} texts, turn {turn}")
        return np.concatenate([self.submit(texts[start:start + turn]).result()
                               for start in range(0, len(texts), turn)])

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking texts, embed what is already queued, and join the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> EmbedBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                jobs, stop = self._collect()
                self._embed([job for job in jobs if job.future.set_running_or_notify_cancel()])
        finally:
            self._fail_waiting(RuntimeError("the embed batcher stopped"))

    def _fail_waiting(self, err: BaseException) -> None:
        """However the thread ends, refuse new texts and fail every queued request, so no
        request waits on a thread that is gone."""
        with self._lock:
            self._closed = True
        pending = [self._held] if self._held is not None else []
        self._held = None
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(err)

    def _collect(self) -> tuple[list[_Job], bool]:
        """The jobs for the next call, and whether close() was asked (nothing comes after)."""
        first = self._held or self._jobs.get()
        self._held = None
        if first is None:
            return [], True
        jobs, count = [first], len(first.texts)
        deadline = first.submitted + self.wait_s
        while count < self.max_texts:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if count + len(job.texts) > self.max_texts:
                self._held = job
                break
            jobs.append(job)
            count += len(job.texts)
        return jobs, False

    def _embed(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        try:
            vectors = self._call(texts)
        except BaseException as err:  # every waiting request must hear of it, not hang
            if isinstance(err, Exception) and len(jobs) > 1:
                for job in jobs:
                    self._embed([job])
                return
            for job in jobs:
                job.future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start:start + len(job.texts)])
            start += len(job.texts)

    def _call(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.embed(texts))
        if len(vectors) != len(texts):
            raise ValueError(f"embedder returned {len(vectors)} rows for {len(texts)} texts")
        return vectors
