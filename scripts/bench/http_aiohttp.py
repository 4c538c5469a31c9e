# N keep-alive GETs of URL with C concurrent requests: aiohttp's ClientSession over a
# TCPConnector(limit=C), C worker coroutines taking requests from a shared counter,
# each reading the whole body.  Run: python3 http_aiohttp.py URL [N] [C]
import asyncio, sys, time
import aiohttp

URL = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
C = int(sys.argv[3]) if len(sys.argv) > 3 else 100

async def main():
    left = N
    bad = 0
    nbytes = 0

    async def worker(session):
        nonlocal left, bad, nbytes
        while left > 0:
            left -= 1
            async with session.get(URL) as res:
                body = await res.read()
                nbytes += len(body)
                if res.status != 200:
                    bad += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=C)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(C)))
        dt = time.perf_counter() - t0
    if bad:
        sys.exit(f"{bad} of {N} responses were not 200")
    print(f"RESULT name=http_get impl=aiohttp n={N} c={C} seconds={dt:.3f} rps={N / dt:.0f} bytes={nbytes}")

asyncio.run(main())
