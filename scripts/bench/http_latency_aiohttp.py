# Latency overhead, aiohttp client reference for http_latency.lua: N GETs of URL (the
# delay server's /delay, 100 ms each), at most C in flight through asyncio.Semaphore(C);
# one ClientSession whose connector allows C connections.  Ideal: ceil(N / C) * 0.1 s.
# Run: python3 http_latency_aiohttp.py URL N C
import asyncio, sys, time
import aiohttp

URL, N, C = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    sem = asyncio.Semaphore(C)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=C)) as session:
        async def one():
            async with sem:
                async with session.get(URL) as res:
                    await res.read()
                    return res.status
        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one() for _ in range(N)))
        dt = time.perf_counter() - t0
    bad = sum(s != 200 for s in statuses)
    if bad:
        sys.exit(f"{bad} of {N} responses were not 200")
    print(f"RESULT name=http_latency impl=aiohttp n={N} c={C} seconds={dt:.3f}")

asyncio.run(main())
