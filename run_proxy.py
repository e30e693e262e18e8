#!/usr/bin/env python3
"""Start Valet: mitmproxy in-process with the Valet addons. Same flags as ``valet run``.

    python run_proxy.py [--config PATH] [--data-dir DIR] [--listen HOST:PORT] [--mode reverse|forward]
"""

from addon.cli.main import run_command

if __name__ == "__main__":
    run_command()
