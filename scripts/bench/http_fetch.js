// N keep-alive GETs of URL with C concurrent requests: Node's global fetch (undici),
// C async workers taking requests from a shared counter, each reading the body with
// res.text().  Run: node http_fetch.js URL [N] [C]
// Node 20 bundles undici inside fetch but not as a requireable module; when an
// `undici` package is resolvable, its Agent (connections = C) becomes the dispatcher,
// otherwise fetch keeps its default global agent (keep-alive, no connection limit,
// so at most C connections since at most C requests are in flight).
'use strict';
const URL_ = process.argv[2];
const N = Number(process.argv[3] || 50000);
const C = Number(process.argv[4] || 100);

let dispatcher = 'default';
try {
  const undici = require('undici');
  undici.setGlobalDispatcher(new undici.Agent({ connections: C }));
  dispatcher = 'undici.Agent';
} catch (e) { /* bundled undici only */ }

async function main() {
  let left = N, bad = 0, bytes = 0;
  async function worker() {
    while (left > 0) {
      left--;
      const res = await fetch(URL_);
      const body = await res.text();
      bytes += body.length;
      if (res.status !== 200) bad++;
    }
  }
  const t0 = performance.now();
  const ws = [];
  for (let i = 0; i < C; i++) ws.push(worker());
  await Promise.all(ws);
  const dt = (performance.now() - t0) / 1000;
  if (bad) { console.error(`${bad} of ${N} responses were not 200`); process.exit(1); }
  console.log(`RESULT name=http_get impl=node n=${N} c=${C} seconds=${dt.toFixed(3)} rps=${(N / dt).toFixed(0)} bytes=${bytes} dispatcher=${dispatcher}`);
}
main().catch((e) => { console.error(e); process.exit(1); });
