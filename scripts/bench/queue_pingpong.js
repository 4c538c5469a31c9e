// N items ping-pong between two async functions through two minimal promise queues.
// Run: node queue_pingpong.js [N]
const N = Number(process.argv[2] || 1000000);

class Queue {
  constructor() { this.items = []; this.getters = []; }
  put(v) {
    const g = this.getters.shift();
    if (g) g(v); else this.items.push(v);
  }
  get() {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve) => this.getters.push(resolve));
  }
}

async function ping(q1, q2) {
  for (let i = 0; i < N; i++) {
    q1.put(i);
    if ((await q2.get()) !== i) throw new Error("out of order");
  }
}

async function pong(q1, q2) {
  for (let i = 0; i < N; i++) q2.put(await q1.get());
}

async function main() {
  const q1 = new Queue(), q2 = new Queue();
  const t0 = performance.now();
  await Promise.all([ping(q1, q2), pong(q1, q2)]);
  const dt = (performance.now() - t0) / 1000;
  console.log(`RESULT name=queue_pingpong impl=node n=${N} seconds=${dt.toFixed(3)}`);
}
main();
