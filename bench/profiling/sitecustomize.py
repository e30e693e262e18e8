"""Bench only: profile the whole Valet process (every thread, CPU clock) when ``VALET_BENCH_PROFILE`` names a file.

Used by ``bench/profile_valet.py`` through ``PYTHONPATH``; the stats are written
at exit (Valet exits cleanly on SIGTERM). Needs ``pip install yappi`` (not a
dependency of Valet).
"""

import atexit
import os

_OUT = os.environ.get("VALET_BENCH_PROFILE")
if _OUT:
    import yappi

    yappi.set_clock_type("cpu")
    yappi.start(builtins=True)

    def _dump() -> None:
        yappi.stop()
        yappi.get_func_stats().save(_OUT, type="pstat")

    atexit.register(_dump)

_STAGES = os.environ.get("VALET_BENCH_STAGES")
if _STAGES:
    # CPU time (this thread's, so time spent waiting is not counted) of every stage hook, the dispatcher's
    # write-ahead step and the audit writer thread: what each of Valet's parts costs per call.
    import functools
    import inspect
    import json
    import threading
    import time

    _totals: dict[str, list[int]] = {}

    def _timed(name, hook):  # type: ignore[no-untyped-def]
        slot = _totals.setdefault(name, [0, 0])
        if inspect.iscoroutinefunction(hook):
            @functools.wraps(hook)
            async def async_timed(*args, **kwargs):  # type: ignore[no-untyped-def]
                start = time.thread_time_ns()
                try:
                    return await hook(*args, **kwargs)
                finally:
                    slot[0] += 1
                    slot[1] += time.thread_time_ns() - start
            return async_timed

        @functools.wraps(hook)
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.thread_time_ns()
            try:
                return hook(*args, **kwargs)
            finally:
                slot[0] += 1
                slot[1] += time.thread_time_ns() - start
        return timed

    class _Finder:
        """Wrap the hooks once addon.hooks and addon.audit.log are imported."""

        def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
            if fullname not in ("addon.hooks", "addon.audit.log"):
                return None
            import importlib.machinery
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            loader = spec.loader
            exec_module = loader.exec_module

            def patched(module):  # type: ignore[no-untyped-def]
                exec_module(module)
                _patch(fullname, module)
            loader.exec_module = patched
            return spec

    def _patch(fullname, module):  # type: ignore[no-untyped-def]
        if fullname == "addon.audit.log":
            run = module.AuditWriter._run

            def timed_run(self):  # type: ignore[no-untyped-def]
                try:
                    run(self)
                finally:
                    _totals["audit writer thread"] = [self.commits, time.thread_time_ns()]
            module.AuditWriter._run = timed_run
            # the part of the writer thread's time spent in its transactions (the rest: waking, queue, futures)
            module.AuditWriter._commit = _timed("audit writer: transactions", module.AuditWriter._commit)
            module.AuditWriter.begin_values = _timed("WriteAhead: queueing", module.AuditWriter.begin_values)
            return
        recorder = sys.modules["addon.hooks.recorder"]  # imported by addon.hooks, before this runs
        recorder._settled = _timed("WriteAhead: awaiting the commit", recorder._settled)
        init = module.Valet.__init__

        def timed_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            for attr in ("_requestheaders", "_request", "_responseheaders", "_response", "_error"):
                hooks = getattr(self, attr)
                setattr(self, attr, [_timed(f"{type(h.__self__).__name__}.{h.__name__}", h) for h in hooks])
            self.write_ahead.commit = _timed("WriteAhead.commit", self.write_ahead.commit)
        module.Valet.__init__ = timed_init

    import importlib.util
    import sys
    sys.meta_path.insert(0, _Finder())

    def _dump_stages() -> None:
        with open(_STAGES, "w") as out:
            json.dump(_totals, out)

    atexit.register(_dump_stages)
