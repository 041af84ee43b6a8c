"""Reproducer of a crash in smpp34 1.5.0 (not used by the tests; kept as evidence for the
upstream report): the process dies with SIGSEGV (exit 139) or "Fatal Python error:
PyGILState_Release: thread state ... must be current when releasing / Python runtime state:
finalizing" (exit 134) at interpreter exit after a task awaiting Server.next() was cancelled.
Racy: between 1 in 2 and 1 in 8 runs here.

    for i in 1 2 3 4 5 6; do python3 tests/py/smsc_smpp34_exit_crash.py; echo "rc=$?"; done
"""

import asyncio
import socket

import smpp34


async def main():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = smpp34.Server("127.0.0.1", port)
    await srv.start()

    async def serve():
        while True:
            await srv.next()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.call_later(0.1, stop.set)
    serving = loop.create_task(serve())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    serving.cancel()
    await srv.stop()


asyncio.run(main())
