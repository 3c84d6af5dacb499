"""Run a Python module under a sampling profiler of every thread (a small py-spy for benchmarks).

    python bench/stack_sampler.py OUT.json -m flare_operator.cli run --config ... --kubeconfig ...

Every `STACK_SAMPLE_MS` (default 20) ms a background thread reads every other thread's stack
(`sys._current_frames`) and counts, per role (the event loop's thread; the worker threads of
`asyncio.to_thread`; others):
- idle samples (the loop in `select`, a worker waiting for work), samples waiting on a socket (an
  API request in flight), and busy ones;
- for busy samples, the innermost frame ("self"), every distinct function on the stack
  ("inclusive"), and the innermost frame in the operator's own package with its line.
It also measures the event loop's lag (a callback scheduled from this thread every 0.5 s: how late
it runs) and the backlog of asyncio's default executor (queued calls, busy workers). With
STACK_TRACEMALLOC=1 it traces allocations too (slower) and reports the biggest allocation sites at
exit and their growth since the moment the caller marks by creating OUT.json.mark;
STACK_TRACEMALLOC_FRAMES=n (default 1) keeps n frames per allocation and groups the growth by the
operator's and Kopf's frames that asked for it (much slower: on a loaded 2-core machine the
operator barely runs with 12). The module runs unchanged: nothing in it is patched except that event loops and thread pools are remembered.
On exit (the operator stops on SIGTERM) the counts are written to OUT.json; `summarise` reads them.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import collections
import concurrent.futures
import json
import os
import runpy
import sys
import threading
import time
import weakref

OWN_PACKAGE = "flare_operator"
LIBRARIES = ("kopf", "kubernetes", "urllib3", "aiohttp", "nvflare", "cryptography", "pydantic", "yaml", "json",
             "prometheus_client", "dp_accounting", "ssl", "asyncio")


def _label(code) -> str:
    path = code.co_filename
    for marker in ("/site-packages/", "/operator/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


def _idle(role: str, leaf) -> bool:
    name, path = leaf.f_code.co_name, leaf.f_code.co_filename
    if role == "loop":
        return name in ("select", "poll") and path.endswith("selectors.py")
    if role == "worker":
        return name == "_worker" and path.endswith(os.path.join("concurrent", "futures", "thread.py"))
    if name == "_worker" and path.endswith(os.path.join("concurrent", "futures", "thread.py")):
        return True
    return name in ("wait", "select", "accept", "serve_forever", "_wait_for_tstate_lock", "sleep") or (
        path.endswith("selectors.py"))


def _io_wait(frames: list) -> bool:
    """An API request in flight: the leaf reads or connects a socket (urllib3/http.client/ssl)."""
    leaf = frames[0].f_code
    return leaf.co_filename.endswith(("ssl.py", "socket.py")) or leaf.co_name in ("recv_into", "read", "connect",
                                                                                   "do_handshake", "getaddrinfo")


class Sampler(threading.Thread):
    def __init__(self, out: str, interval: float):
        super().__init__(daemon=True, name="stack-sampler")
        self.out, self.interval = out, interval
        self.main_ident = threading.main_thread().ident
        self.loops: weakref.WeakSet = weakref.WeakSet()
        self.pools: weakref.WeakSet = weakref.WeakSet()
        self.counts = {role: collections.Counter() for role in ("loop", "worker", "other")}
        self.self_time = {role: collections.Counter() for role in ("loop", "worker", "other")}
        self.inclusive = {role: collections.Counter() for role in ("loop", "worker", "other")}
        self.own_line = {role: collections.Counter() for role in ("loop", "worker", "other")}
        self.lag: list[tuple[float, float]] = []
        self.backlog: list[tuple[float, int, int]] = []  # (t, queued calls, busy workers)
        self.threads: collections.Counter = collections.Counter()  # most threads seen at once, by role
        self.stopping = False
        self.dump_lock = threading.Lock()
        self.t0 = time.monotonic()
        self.tracing = os.environ.get("STACK_TRACEMALLOC") == "1"
        self.first_snapshot = self.last_snapshot = None
        self.first_snapshot_at: int | None = None

    def _role(self, ident: int, names: dict[int, str]) -> str:
        if ident == self.main_ident:
            return "loop"
        name = names.get(ident, "")
        return "worker" if name.startswith("asyncio_") else "other"

    def run(self) -> None:
        me = threading.get_ident()
        next_lag = next_snapshot = 0.0
        next_dump = time.monotonic() + 30
        while not self.stopping:
            time.sleep(self.interval)
            names = {t.ident: t.name for t in threading.enumerate()}
            busy_workers = 0
            threads = collections.Counter()
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                role = self._role(ident, names)
                threads[role] += 1
                c = self.counts[role]
                c["samples"] += 1
                if _idle(role, frame):  # the leaf alone says it: no stack walk for idle threads
                    c["idle"] += 1
                    continue
                frames = []
                f = frame
                while f is not None and len(frames) < 80:
                    frames.append(f)
                    f = f.f_back
                if role == "worker":
                    busy_workers += 1
                if _io_wait(frames):
                    c["io"] += 1
                    continue
                c["busy"] += 1
                self.self_time[role][_label(frames[0].f_code)] += 1
                seen = set()
                for fr in frames:
                    label = _label(fr.f_code)
                    if label not in seen:
                        seen.add(label)
                        self.inclusive[role][label] += 1
                own = next((fr for fr in frames if f"/{OWN_PACKAGE}/" in fr.f_code.co_filename), None)
                if own is not None:
                    self.own_line[role][f"{_label(own.f_code)}:{own.f_lineno}"] += 1
            for role, count in threads.items():
                self.threads[role] = max(self.threads[role], count)
            now = time.monotonic()
            queued = sum(p._work_queue.qsize() for p in list(self.pools) if p._thread_name_prefix.startswith("asyncio"))
            self.backlog.append((round(now - self.t0, 2), queued, busy_workers))
            if now >= next_lag:
                next_lag = now + 0.5
                for loop in list(self.loops):
                    if loop.is_running():
                        sent = time.monotonic()
                        try:
                            loop.call_soon_threadsafe(lambda s=sent: self.lag.append(
                                (round(s - self.t0, 2), time.monotonic() - s)))
                        except RuntimeError:
                            pass
            if now >= next_dump:  # a process killed instead of stopped still leaves its last 30 s behind
                next_dump = now + 30
                self.dump()
            if self.tracing and self.first_snapshot is None and os.path.exists(f"{self.out}.mark"):
                self.first_snapshot = self._snapshot()  # the caller marks its moment (e.g. a batch starts)
                self.first_snapshot_at = round(now - self.t0)
            if self.tracing and now >= next_snapshot:
                next_snapshot = now + 60
                self.last_snapshot = self._snapshot()

    def _snapshot(self):
        import tracemalloc

        return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])

    def dump(self) -> None:
        with self.dump_lock:
            self._dump()

    def _dump(self) -> None:
        def top(counter: collections.Counter, n: int = 40) -> list:
            return [[k, v] for k, v in counter.most_common(n)]

        data = {"interval_s": self.interval, "seconds": time.monotonic() - self.t0,
                "counts": {r: dict(c) for r, c in self.counts.items()},
                "self": {r: top(c) for r, c in self.self_time.items()},
                "inclusive": {r: top(c, 80) for r, c in self.inclusive.items()},
                "own_line": {r: top(c) for r, c in self.own_line.items()},
                "threads": dict(self.threads), "loop_lag": self.lag, "executor_backlog": self.backlog[::5]}
        if self.tracing and self.first_snapshot is not None:
            end = self.last_snapshot = self._snapshot()
            data["tracemalloc"] = {
                "growth since s": self.first_snapshot_at,
                "end total MiB": round(sum(s.size for s in end.statistics("filename")) / 2**20, 1),
                "top at end": [f"{s.traceback[0].filename.split('/site-packages/')[-1]}:{s.traceback[0].lineno} "
                               f"{s.size / 2**20:.1f} MiB {s.count}" for s in end.statistics("lineno")[:25]],
                "growth": [f"{d.traceback[0].filename.split('/site-packages/')[-1]}:{d.traceback[0].lineno} "
                           f"+{d.size_diff / 2**20:.1f} MiB +{d.count_diff}"
                           for d in end.compare_to(self.first_snapshot, "lineno")[:25]],
                # with STACK_TRACEMALLOC_FRAMES > 1: the growth by whole allocation traceback, shown by
                # the innermost frames of the operator's package and of Kopf (who asked for the memory)
                "growth by caller": [f"{_callers(d.traceback)} +{d.size_diff / 2**20:.1f} MiB +{d.count_diff}"
                                     for d in end.compare_to(self.first_snapshot, "traceback")[:15]]}
        tmp = f"{self.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.out)


def _callers(traceback) -> str:
    """The allocation's own line and the innermost frames of the operator and of Kopf that led to it."""
    frames = list(traceback)  # most recent call last
    picked = [frames[-1]] + [f for f in reversed(frames[:-1]) if f"/{OWN_PACKAGE}/" in f.filename or "/kopf/" in f.filename][:3]
    return " <- ".join(f"{f.filename.split('/site-packages/')[-1].split('/operator/')[-1]}:{f.lineno}" for f in picked)


def _remember(sampler: Sampler) -> None:
    run_forever = asyncio.base_events.BaseEventLoop.run_forever

    def remembering_run_forever(self, *a, **kw):
        sampler.loops.add(self)
        return run_forever(self, *a, **kw)

    asyncio.base_events.BaseEventLoop.run_forever = remembering_run_forever
    init = concurrent.futures.ThreadPoolExecutor.__init__

    def remembering_init(self, *a, **kw):
        init(self, *a, **kw)
        sampler.pools.add(self)

    concurrent.futures.ThreadPoolExecutor.__init__ = remembering_init


def summarise(path: str, top_n: int = 12) -> dict:
    """The figures a report needs from OUT.json: per role the busy/io/idle shares, the hottest
    frames, the loop's lag percentiles and the executor's backlog."""
    data = json.load(open(path))
    out: dict = {"sampled s": round(data["seconds"], 1)}
    for role in ("loop", "worker"):
        c = data["counts"].get(role) or {}
        n = c.get("samples", 0) or 1
        out[f"{role} threads"] = {
            "busy share": round(c.get("busy", 0) / n, 3), "waiting on socket share": round(c.get("io", 0) / n, 3),
            "idle share": round(c.get("idle", 0) / n, 3),
            "top self": [f"{k} {v}" for k, v in data["self"][role][:top_n]],
            "top operator lines": [f"{k} {v}" for k, v in data["own_line"][role][:top_n]],
            "top inclusive": [f"{k} {v}" for k, v in data["inclusive"][role][:top_n * 2]]}
    lags = sorted(v for _, v in data["loop_lag"])
    if lags:
        out["event loop lag s"] = {"p50": round(lags[len(lags) // 2], 3),
                                   "p95": round(lags[int(0.95 * (len(lags) - 1))], 3), "max": round(lags[-1], 3)}
    backlog = data["executor_backlog"]
    if backlog:
        queued = sorted(q for _, q, _ in backlog)
        out["to_thread pool: threads"] = data.get("threads", {}).get("worker")
        out["to_thread pool: queued calls p50, p95, max"] = [queued[len(queued) // 2],
                                                              queued[int(0.95 * (len(queued) - 1))], queued[-1]]
        out["to_thread pool: share of samples with calls queued"] = round(sum(1 for q in queued if q) / len(queued), 3)
        out["to_thread pool: share of samples with every worker busy"] = round(
            sum(1 for _, _, b in backlog if b >= (data.get("threads", {}).get("worker") or 1)) / len(backlog), 3)
        step = max(1, len(backlog) // 20)
        out["to_thread pool: queued calls over time (s:queued)"] = " ".join(
            f"{t:.0f}:{q}" for t, q, _ in backlog[::step])
    out["other threads (Kopf executors, watchers...)"] = data.get("threads", {}).get("other")
    if "tracemalloc" in data:
        out["tracemalloc"] = data["tracemalloc"]
    return out


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: stack_sampler.py OUT.json -m MODULE [ARGS...]")
    out, module = sys.argv[1], sys.argv[3]
    sampler = Sampler(out, float(os.environ.get("STACK_SAMPLE_MS", "20")) / 1000)
    if sampler.tracing:
        import tracemalloc

        tracemalloc.start(int(os.environ.get("STACK_TRACEMALLOC_FRAMES", "1")))
    _remember(sampler)
    sys.argv = [module, *sys.argv[4:]]
    sampler.start()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sampler.stopping = True
        sampler.join(5)
        sampler.dump()


if __name__ == "__main__":
    main()
