// bench.mjs — Godot sync benchmark driver (see bench.sh): for each N and each mode (canopy, relay) runs instances a
// and b of project/tests/bench_sync.gd in one browser with harness.mjs and prints one JSON document.
//
//   node bench.mjs --urls-a ws://..:8081/ws,... --urls-b ws://..:8082/ws,... --relay ws://127.0.0.1:8090
//                  [--n 10,50,100,200,400] [--duration-ms 10000] [--hz 20]
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, fallback) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : fallback; };
const ns = opt('--n', '10,50,100,200,400').split(',').map(Number);
const durationMs = Number(opt('--duration-ms', '10000'));
const hz = Number(opt('--hz', '20'));
const relay = opt('--relay', 'ws://127.0.0.1:8090');
const urlsA = opt('--urls-a', 'ws://127.0.0.1:8081/ws');
const urlsB = opt('--urls-b', 'ws://127.0.0.1:8082/ws');
const LAG_LIMIT_MS = 100;

function runPair(mode, n) {
  const tree = `bench-${mode}-${n}-${Date.now().toString(36)}`;
  const deadline = durationMs + 60_000;
  const common = [`--test=bench_sync`, `--mode=${mode}`, `--n=${n}`, `--hz=${hz}`, `--duration_ms=${durationMs}`, `--relay=${relay}`, `--tree=${tree}`, `--deadline_ms=${deadline - 2000}`];
  const spec = { instances: [
    { name: 'a', args: [...common, '--role=a', `--urls=${urlsA}`], deadline_ms: deadline },
    { name: 'b', args: [...common, '--role=b', `--urls=${urlsB}`], deadline_ms: deadline },
  ] };
  return new Promise((resolve) => {
    const child = spawn('node', [join(here, 'harness.mjs'), '--spec-json', JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const out = { mode, n };
    let rest = '';
    child.stdout.on('data', (d) => {
      rest += d;
      const lines = rest.split('\n');
      rest = lines.pop();
      for (const line of lines) {
        let ev;
        try { ev = JSON.parse(line); } catch { continue; }
        if (ev.event === 'mark' && ev.name === 'a_stats') out.a = ev.data;
        if (ev.event === 'mark' && ev.name === 'b_stats') out.b = ev.data;
        if (ev.event === 'exit' && (ev.code !== 0 || ev.crashed || ev.timed_out)) (out.errors ??= []).push({ instance: ev.instance, code: ev.code, timed_out: ev.timed_out, failures: ev.failures, errors: ev.errors });
      }
    });
    child.on('exit', () => resolve(out));
  });
}

const runs = [];
for (const n of ns) {
  for (const mode of ['relay', 'canopy']) {
    const r = await runPair(mode, n);
    if (r.b) {
      r.delivered = r.b.ticks_seen / r.b.ticks_sent;
      r.sustained = mode === 'canopy'
        ? r.b.lag_p99_ms >= 0 && r.b.lag_p99_ms < LAG_LIMIT_MS && r.delivered >= 0.95
        : r.delivered >= 0.95;
    } else {
      r.sustained = false;
    }
    process.stderr.write(`${mode} N=${n}: ${JSON.stringify(r.b ?? r.errors)}\n`);
    runs.push(r);
  }
}
const best = (mode) => Math.max(0, ...runs.filter((r) => r.mode === mode && r.sustained).map((r) => r.n));
process.stdout.write(JSON.stringify({ benchmark: 'godot-sync', hz, duration_ms: durationMs, lag_limit_ms: LAG_LIMIT_MS,
  max_sustained_n: { canopy: best('canopy'), relay: best('relay') }, runs }, null, 2) + '\n');
