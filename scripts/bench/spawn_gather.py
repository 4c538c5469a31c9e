# spawn N no-op tasks and gather them.  Run: python3 spawn_gather.py [N] [asyncio|uvloop]
import asyncio, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
IMPL = sys.argv[2] if len(sys.argv) > 2 else "asyncio"

async def noop():
    pass

async def main():
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(noop()) for _ in range(N)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0

if IMPL == "uvloop":
    import uvloop
    uvloop.install()
dt = asyncio.run(main())
print(f"RESULT name=spawn_gather impl={IMPL} n={N} seconds={dt:.3f}")
