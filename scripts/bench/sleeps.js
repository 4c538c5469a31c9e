// N concurrent sleeps with random deadlines (seeded, in [0, 1) s): checks they wake in
// deadline order and reports the wall time.  Run: node sleeps.js [N]
// Node keeps each timer's deadline as _idleStart + _idleTimeout (whole ms of its loop
// clock): that is the deadline checked, exactly.
const N = Number(process.argv[2] || 1000000);

let seed = 42; // mulberry32: Math.random cannot be seeded
function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const d = Array.from({ length: N }, random);
const woke = [];

async function sleeper(i) {
  let deadline;
  await new Promise((resolve) => {
    const t = setTimeout(resolve, d[i] * 1000);
    deadline = t._idleStart + t._idleTimeout;
  });
  woke.push(deadline);
}

async function main() {
  const t0 = performance.now();
  const ps = new Array(N);
  for (let i = 0; i < N; i++) ps[i] = sleeper(i);
  await Promise.all(ps);
  const dt = (performance.now() - t0) / 1000;
  let ordered = woke.length === N;
  for (let i = 1; ordered && i < woke.length; i++) if (woke[i] < woke[i - 1]) ordered = false;
  console.log(`RESULT name=sleeps impl=node n=${N} seconds=${dt.toFixed(3)} ordered=${ordered}`);
}
main();
