# The delay server for the HTTP latency benchmarks: aiohttp.web on 127.0.0.1, where
# GET /delay sleeps 0.1 s (or ?ms=N milliseconds) and then answers "ok".  Listens on a
# free port and writes it to PORTFILE; exits when its stdin reaches EOF (so the runner
# keeps a pipe open to it and closing the pipe stops it).  No access log, listen
# backlog 4096 (the default 128 would drop SYNs when 1,000 clients connect at once).
# Run: python3 http_delay_server.py PORTFILE
import asyncio, os, sys, threading
from aiohttp import web

PORTFILE = sys.argv[1]

async def delay(request):
    ms = request.query.get("ms")
    await asyncio.sleep(float(ms) / 1000 if ms else 0.1)
    return web.Response(text="ok")

async def main():
    app = web.Application()
    app.router.add_get("/delay", delay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    tmp = PORTFILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, PORTFILE)  # the runner waits for the file: it appears complete
    loop = asyncio.get_running_loop()
    eof = loop.create_future()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(eof.set_result, None)),
                     daemon=True).start()
    await eof
    await runner.cleanup()

asyncio.run(main())
