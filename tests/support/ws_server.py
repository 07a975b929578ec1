"""A mainstream RFC 6455 server for the tests: python `websockets` (asyncio), which speaks no
text heartbeat. Echoes every message; pings the client with protocol Pings every
--ping-interval seconds; prints one line per happening to stdout, flushed:

    port N                       listening on 127.0.0.1:N
    open                         a client connected
    message text|binary LEN      a message arrived (echoed back)
    closed CODE REASON           the connection ended; CODE as the server saw it (1006: no Close)

Usage: python3 ws_server.py [--ping-interval S]
"""
import argparse
import asyncio
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def say(*words):
    print(*words, flush=True)


async def handler(ws):
    say("open")
    try:
        async for message in ws:
            kind = "binary" if isinstance(message, bytes) else "text"
            say("message", kind, len(message))
            await ws.send(message)
    except ConnectionClosed:
        pass
    # The code of the client's Close frame (1006: none came).
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        say("closed", 1006, "-")
    else:
        say("closed", rcvd.code, rcvd.reason or "-")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ping-interval", type=float, default=None)
    a = p.parse_args()
    async with serve(handler, "127.0.0.1", 0, ping_interval=a.ping_interval) as server:
        say("port", server.sockets[0].getsockname()[1])
        # Ends when the test closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
