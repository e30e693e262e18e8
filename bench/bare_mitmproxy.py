"""A bare mitmproxy reverse proxy (no addons), started in-process the same way Valet is.

The benchmark's baseline: whatever Valet costs beyond this is Valet's own.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster


class _Announce:
    def running(self) -> None:
        print("bare mitmproxy: listening", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as confdir:
        opts = options.Options(mode=[f"reverse:{args.upstream}"], listen_host="127.0.0.1",
                               listen_port=args.port, confdir=confdir)
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        opts.update(connection_strategy="lazy")
        master.addons.add(_Announce())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        await master.run()


if __name__ == "__main__":
    asyncio.run(main())
