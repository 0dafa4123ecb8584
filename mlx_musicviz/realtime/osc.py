"""OSC control of live mode (python-osc): /prompt s, /motion f, /seed i, /mode s over UDP.

A message of the wrong type or an unknown address is reported on stderr in one line and ignored: a
VJ rig sending junk never stops the server.
"""

from __future__ import annotations

import sys
import threading

ADDRESSES = {"/prompt": "prompt", "/motion": "motion", "/seed": "seed", "/mode": "mode"}


def start_osc(host: str, port: int, control):
    """Listen for OSC on host:port on a thread of its own; `control(name, value)` applies a change and
    returns a one-line error or None. Returns the server (`.shutdown()` stops it)."""
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    from ..errors import MusicvizError

    def handle(address, *args):
        name = ADDRESSES.get(address)
        if name is None:
            error = f"unknown OSC address {address[:40]!r}: use one of {', '.join(ADDRESSES)}"
        elif len(args) != 1:
            error = f"{address} takes one argument, got {len(args)}"
        else:
            error = control(name, args[0])
        if error:
            print(f"osc: {error}", file=sys.stderr, flush=True)

    dispatcher = Dispatcher()
    dispatcher.set_default_handler(handle)
    try:
        server = ThreadingOSCUDPServer((host, port), dispatcher)
    except OSError as e:
        raise MusicvizError(f"cannot listen for OSC on {host}:{port}: {e.strerror or e}") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="musicviz-osc").start()
    return server
