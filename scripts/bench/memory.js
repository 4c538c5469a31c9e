// RSS per parked task: N async functions all awaiting a 1000 s setTimeout promise.
// Run: node --expose-gc memory.js [N]
const fs = require("fs");
const N = Number(process.argv[2] || 100000);

function rss() { // bytes, from VmRSS in /proc/self/status
  const m = /VmRSS:\s*(\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"));
  return Number(m[1]) * 1024;
}

async function parked() {
  await new Promise((resolve) => setTimeout(resolve, 1000e3));
}

async function main() {
  global.gc();
  const before = rss();
  const ps = new Array(N);
  for (let i = 0; i < N; i++) ps[i] = parked(); // each runs up to its await
  await new Promise((resolve) => setImmediate(resolve));
  global.gc();
  const after = rss();
  console.log(`RESULT name=memory impl=node n=${N} bytes_per_task=${((after - before) / N).toFixed(0)}`);
  process.exit(0); // the timers would keep the process alive for 1000 s
}
main();
