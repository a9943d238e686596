"""Worker processes that compute the indexed sampler's blocks on a host's cores, in order (`DatasetConfig.num_workers`).

Why processes: a block is numpy and Python code (record parsing, tokenizing, crops, mixes), mostly under the GIL, so
the in-process thread pool adds little beyond one core; an accelerator host needs thousands of examples/s. Why our own
few lines rather than a library: every block is already a pure function of (seed, task, epoch, block)
(`IndexedStream.block_examples`), so a worker needs only a copy of the stream's small description and a block number;
the order, the position and resume stay in the main process and are unchanged (Grain's multiprocessing would replace
the sampler, its position and resume with its own; see docs/architecture.md, "Input workers").

- Blocks are dealt round-robin (block k to worker k % N) and read back in order by a feeder thread into a bounded
  queue, so the batch stream is the same for any N, and the workers keep computing while the step runs (prefetch).
- Processes are started with 'spawn' (never fork: the parent holds JAX's and TensorFlow's threads), daemonic, and
  ignore SIGINT/SIGTERM: the main process owns their lifetime (a preemption signal must let it finish the step it is
  in, which may be waiting for a block). They exit on `close()`, at interpreter exit, when the stream is garbage
  collected, or when the main process dies (their pipe reads end-of-file), so none is left behind.
- An exception in a worker is re-raised in the main process (same type and message where it pickles, the worker's
  traceback as its cause); a worker that dies (killed, out of memory) is a RuntimeError naming it and its exit code.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit hook now, before `_close_all` below: atexit runs ours first
import pickle
import queue
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

_LIVE: weakref.WeakSet = weakref.WeakSet()


class RemoteTraceback(Exception):
    """The traceback of an exception raised in an input worker (the `__cause__` of the re-raised exception)."""

    def __str__(self) -> str:
        return self.args[0]


def _worker_main(conn, fn: Callable, index: int) -> None:
    """Serves requests (args tuples) from `conn` until None or end-of-file; replies ("ok", result) or ("error", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and schedulers signal the whole group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the main process closed the pipe or died
            return
        if request is None:
            return
        try:
            reply: tuple = ("ok", fn(*request))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the main process
            text = "".join(traceback.format_exception(e))
            try:
                pickle.loads(pickle.dumps(e))
                reply = ("error", e, text)
            except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its message
                reply = ("error", RuntimeError(f"{type(e).__name__}: {e}"), text)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class OrderedProcessMap:
    """`fn(*args)` for each `(key, args)` of `requests`, computed by `num_workers` processes; iterating yields
    `(key, result)` in request order. Each worker has up to `ahead` requests in flight, and up to `ahead - 1` results
    per worker wait, read, for the consumer: memory is bounded by about `(2 * ahead - 1) * num_workers` results."""

    def __init__(self, fn: Callable, requests: Iterator[tuple[Any, tuple]], num_workers: int, *, ahead: int = 2,
                 name: str = "mt3-data"):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        context = multiprocessing.get_context("spawn")
        self._conns, self._processes = [], []
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, num_workers * (ahead - 1)))
        self._stop = threading.Event()
        self._closed = False
        try:
            for index in range(num_workers):
                parent, child = context.Pipe(duplex=True)
                process = context.Process(target=_worker_main, args=(child, fn, index), name=f"{name}-{index}",
                                          daemon=True)
                process.start()
                child.close()  # only the worker holds its end: the worker's death is end-of-file here
                self._conns.append(parent)
                self._processes.append(process)
        except BaseException:
            self.close()
            raise
        # The feeder holds no reference to this map, so an unclosed map can still be garbage collected (and stopped).
        self._feeder = threading.Thread(target=_feed, args=(self._stop, self._ready, self._conns, self._processes,
                                                            requests, ahead), name=f"{name}-feeder", daemon=True)
        self._feeder.start()
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._processes, self._conns)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Any, Any]:
        if self._closed:
            raise StopIteration
        while True:
            try:
                kind, value = self._ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._feeder.is_alive() and self._ready.empty():
                    raise RuntimeError("the input feeder thread stopped without a result") from None
        if kind == "ok":
            return value
        self.close()
        if kind == "end":
            raise StopIteration
        raise value

    def close(self) -> None:
        """Stops the workers now (blocks computed ahead are dropped: a preemption must not wait for them)."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        else:
            _shutdown(self._stop, self._processes, self._conns)
        feeder = getattr(self, "_feeder", None)
        if feeder is not None and feeder is not threading.current_thread():
            feeder.join(timeout=5.0)



def _put(stop: threading.Event, ready: queue.Queue, item) -> bool:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _feed(stop: threading.Event, ready: queue.Queue, conns: list, processes: list,
          requests: Iterator[tuple[Any, tuple]], ahead: int) -> None:
    """Sends requests round-robin, `ahead` per worker in flight, and reads the replies back in request order."""
    n, sent, pending, exhausted = len(conns), 0, [], False
    try:
        while not stop.is_set():
            while len(pending) < n * ahead and not exhausted:
                try:
                    key, args = next(requests)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    conns[sent % n].send(args)
                except OSError:  # BrokenPipeError: the worker died before its reply to an earlier request was read
                    if stop.is_set():
                        return
                    raise _worker_exited(processes[sent % n], key) from None
                pending.append((sent % n, key))
                sent += 1
            if not pending:
                _put(stop, ready, ("end", None))
                return
            worker, key = pending.pop(0)
            try:
                reply = conns[worker].recv()
            except (EOFError, OSError):
                if stop.is_set():
                    return
                raise _worker_exited(processes[worker], key) from None
            if reply[0] == "error":
                _, error, text = reply
                error.add_note(f"(raised in input worker {processes[worker].name} computing {key!r})")
                error.__cause__ = RemoteTraceback(text)
                _put(stop, ready, ("error", error))
                return
            if not _put(stop, ready, ("ok", (key, reply[1]))):
                return
    except BaseException as e:  # noqa: BLE001 - the consumer re-raises it
        if not stop.is_set():
            _put(stop, ready, ("error", e))


def _worker_exited(process, key) -> RuntimeError:
    """The error a dead worker is reported as, whether its pipe broke on a send or on a read."""
    process.join(timeout=5.0)  # it is gone (its pipe closed); reap it for its exit code
    return RuntimeError(f"input worker {process.name} (pid {process.pid}) exited with code {process.exitcode} "
                        f"while computing {key!r}")


def _shutdown(stop: threading.Event, processes: list, conns: list) -> None:
    """Kills the workers and reaps them (holds no reference to the map, so a garbage-collected map can run it)."""
    stop.set()
    for process in processes:
        if process.is_alive():
            process.kill()  # SIGKILL: they ignore SIGTERM, and hold nothing that needs saving
    for process in processes:
        process.join(timeout=5.0)
    for conn in conns:
        try:
            conn.close()
        except OSError:
            pass


@atexit.register
def _close_all() -> None:
    """Registered after multiprocessing's own exit hook, so it runs first: that hook would SIGTERM the daemonic
    workers, which ignore it, and then wait for them."""
    for live in list(_LIVE):
        live.close()
