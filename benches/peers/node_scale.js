// Node `ws` peer for the scale scenario: N heartbeating clients in one process.
// node node_scale.js URL N INTERVAL_MS  -> one JSON line (same fields as the `scale` binary).
const WebSocket = require('ws');
const fs = require('fs');
const [url, n, interval] = [process.argv[2], +process.argv[3], +process.argv[4]];
const rss = () => +fs.readFileSync('/proc/self/status', 'utf8').match(/VmRSS:\s+(\d+)/)[1];
const st = { open: 0, pongs: 0, misses: 0, lost: 0 }; const rtts = [];
const now = () => Number(process.hrtime.bigint() / 1000n);
function client() {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 20 });
  let sent = null, timer = null;
  ws.on('open', () => {
    st.open++;
    timer = setInterval(() => { if (sent !== null) st.misses++; ws.send('ping'); sent = now(); }, interval);
  });
  ws.on('message', (d) => {
    const m = d.toString();
    if (m === 'pong' && sent !== null) { rtts.push(now() - sent); st.pongs++; sent = null; }
    else if (m === 'ping') ws.send('pong');
  });
  ws.on('close', () => { st.lost++; clearInterval(timer); });
  ws.on('error', () => {});
}
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const rss0 = rss(); const t0 = Date.now();
  for (let i = 0; i < n; i++) { client(); while (st.open + 512 < i + 1) await sleep(1); }
  while (st.open < n) await sleep(10);
  const connect_s = (Date.now() - t0) / 1000;
  const p0 = st.pongs, c0 = process.cpuUsage(), w0 = Date.now();
  while (st.pongs < p0 + 2 * n || Date.now() - w0 < 2 * interval) await sleep(20);
  const c1 = process.cpuUsage(c0), w1 = Date.now(), rss1 = rss();
  rtts.sort((a, b) => a - b);
  const pct = (p) => rtts.length ? rtts[Math.min(rtts.length - 1, Math.round((rtts.length - 1) * p))] : 0;
  console.log(JSON.stringify({ client: 'node-ws ' + require('ws/package.json').version, conns: n, interval_ms: interval,
    kib_per_conn: +((rss1 - rss0) / n).toFixed(3), rss0_kib: rss0, rss1_kib: rss1, threads: fs.readdirSync('/proc/self/task').length,
    cpu_pct: +(((c1.user + c1.system) / 1000) / (w1 - w0) * 100).toFixed(2), rtt_p50_us: pct(0.5), rtt_p99_us: pct(0.99),
    pongs: st.pongs, false_misses: st.misses, lost: st.lost, connect_s }));
  process.exit(0);
})();
