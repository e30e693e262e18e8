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
