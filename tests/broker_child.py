"""Start a LocalBroker, print its pid and workdir, then wait to be killed: the kill -9 subject.

Usage: python broker_child.py [--watchdog]

Prints one JSON line `{"pid": ..., "workdir": ...}` once the broker answers, then blocks until
killed (or until its stdin closes). `--watchdog` ties the broker to this process with the
watchdog process used where there is no `PR_SET_PDEATHSIG`, instead of the Linux way.
"""

from __future__ import annotations

import json
import sys

import tesaiot_data.demo.tied_process as tied_process
from tesaiot_data.demo.broker import LocalBroker


def main(args: list[str]) -> None:
    if "--watchdog" in args:
        tied_process._USE_PDEATHSIG = False
    broker = LocalBroker().start()
    print(json.dumps({"pid": broker.pid, "workdir": str(broker.workdir)}), flush=True)
    sys.stdin.read()
    broker.close()


if __name__ == "__main__":
    main(sys.argv[1:])
