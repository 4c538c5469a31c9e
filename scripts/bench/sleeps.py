# N concurrent sleeps with random deadlines (seeded, in [0, 1) s): checks they wake in
# deadline order and reports the wall time.  Run: python3 sleeps.py [N]
# A task's deadline is (clock read inside asyncio.sleep) + d. Tasks run one at a time, so
# that read lies between the task's own loop.time() just before and the next task's
# read: `ordered` means no task woke before one whose deadline was surely earlier.
import asyncio, random, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
random.seed(42)
d = [random.random() for _ in range(N)]
lo, hi, woke, prev = [0.0] * N, [None] * N, [], None

async def sleeper(i):
    global prev
    loop = asyncio.get_running_loop()
    now = loop.time()
    lo[i] = now
    if prev is not None:
        hi[prev] = now
    prev = i
    await asyncio.sleep(d[i])
    woke.append(i)
    if hi[i] is None:
        hi[i] = loop.time() - d[i]  # the last to start: woke at or after its deadline

async def main():
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(sleeper(i)) for i in range(N)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0

dt = asyncio.run(main())

ordered, latest = len(woke) == N, float("-inf")  # latest: largest sure-earliest deadline so far
for i in woke:
    if hi[i] + d[i] + 1e-6 < latest:
        ordered = False
        break
    latest = max(latest, lo[i] + d[i])
print(f"RESULT name=sleeps impl=asyncio n={N} seconds={dt:.3f} ordered={str(ordered).lower()}")
