// spawn N no-op async functions and Promise.all them.  Run: node spawn_gather.js [N]
const N = Number(process.argv[2] || 1000000);

async function noop() {}

async function main() {
  const t0 = performance.now();
  const ps = new Array(N);
  for (let i = 0; i < N; i++) ps[i] = noop();
  await Promise.all(ps);
  const dt = (performance.now() - t0) / 1000;
  console.log(`RESULT name=spawn_gather impl=node n=${N} seconds=${dt.toFixed(3)}`);
}
main();
