# N items ping-pong between two tasks through two queues.
# Run: python3 queue_pingpong.py [N] [asyncio|uvloop]
import asyncio, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
IMPL = sys.argv[2] if len(sys.argv) > 2 else "asyncio"

async def ping(q1, q2):
    for i in range(N):
        await q1.put(i)
        assert await q2.get() == i

async def pong(q1, q2):
    for _ in range(N):
        await q2.put(await q1.get())

async def main():
    q1, q2 = asyncio.Queue(), asyncio.Queue()
    t0 = time.perf_counter()
    await asyncio.gather(ping(q1, q2), pong(q1, q2))
    return time.perf_counter() - t0

if IMPL == "uvloop":
    import uvloop
    uvloop.install()
dt = asyncio.run(main())
print(f"RESULT name=queue_pingpong impl={IMPL} n={N} seconds={dt:.3f}")
