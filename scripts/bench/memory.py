# RSS per parked task: N asyncio tasks all inside asyncio.sleep(1000).
# Run: python3 memory.py [N] [asyncio|uvloop]
import asyncio, gc, re, sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
IMPL = sys.argv[2] if len(sys.argv) > 2 else "asyncio"

def rss():  # bytes, from VmRSS in /proc/self/status
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s*(\d+)", f.read()).group(1)) * 1024

async def parked():
    await asyncio.sleep(1000)

async def main():
    gc.collect()
    before = rss()
    tasks = [asyncio.create_task(parked()) for _ in range(N)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # every task has started and is parked in its sleep
    gc.collect()
    after = rss()
    print(f"RESULT name=memory impl={IMPL} n={N} bytes_per_task={(after - before) / N:.0f}")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

if IMPL == "uvloop":
    import uvloop
    uvloop.install()
asyncio.run(main())
