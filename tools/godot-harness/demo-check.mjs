// Checks what the demo instances report (tools/godot-harness/demo.sh): node demo-check.mjs run.jsonl ranges.json [shot.png]
// Prints a JSON summary on stdout; exit 0 when every check passed, 1 otherwise.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const [runFile, rangesFile, shot] = process.argv.slice(2);
const lines = readFileSync(runFile, 'utf8').split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean);
const failures = [];
const check = (ok, msg) => { if (!ok) failures.push(msg); return ok; };
const ts = (s) => { const [w, l] = String(s).split('.'); return [BigInt(w || 0), BigInt(l || 0)]; };
const cmp = (a, b) => { const [wa, la] = ts(a); const [wb, lb] = ts(b); return wa !== wb ? (wa < wb ? -1 : 1) : la === lb ? 0 : la < lb ? -1 : 1; };

const reports = Object.fromEntries(lines.filter((e) => e.event === 'mark' && e.name === 'report').map((e) => [e.instance, e.data]));
const exits = lines.filter((e) => e.event === 'exit');
const done = lines.find((e) => e.event === 'done');
const errors = lines.filter((e) => e.event === 'print' && e.stream === 'err').map((e) => `${e.instance}: ${e.text}`);
check(done && done.ok, `the harness run failed: ${JSON.stringify(exits.map((x) => ({ instance: x.instance, code: x.code, timed_out: x.timed_out, crashed: x.crashed })))}`);
check(Object.keys(reports).length === 3, `3 reports expected, got ${Object.keys(reports).join(',') || 'none'}`);

const owners = {};
for (const r of Object.values(reports)) for (const name of r.owned) owners[name] = r;
const all = Object.keys(owners).sort();
check(all.length === 6, `6 characters expected, owned: ${all.join(',')}`);

let judged = 0;
let movesTotal = 0;
for (const r of Object.values(reports)) {
  check(JSON.stringify(r.characters_seen) === JSON.stringify(all), `${r.instance} shows ${r.characters_seen.join(',')}, not ${all.join(',')}`);
  check(r.violation_count === 0, `${r.instance}: ${r.violation_count} border violations (${r.violations.join('; ')})`);
  check(r.live_violations === 0, `${r.instance}: ${r.live_violations} live border violations`);
  check(r.move_failures === 0, `${r.instance}: ${r.move_failures} tree_move calls failed`);
  // Every owner's crossing within this instance's judged window: seen exactly once, at the tree_move's timestamp.
  for (const name of all) {
    const moved = (owners[name].moves[name] ?? []).filter((t) => cmp(t, r.window.lo) > 0 && cmp(t, r.window.hi) <= 0).sort(cmp);
    const seen = (r.crossings[name] ?? []).slice().sort(cmp);
    judged += moved.length;
    // Moves whose answer was lost (timeout under load) committed or not: each may add one crossing the owner has
    // no timestamp for. Every known move must be seen exactly once, nothing else beyond those.
    const unknown = owners[name].move_unknown?.[name] ?? 0;
    const missing = moved.filter((t) => seen.filter((x) => x === t).length !== 1);
    const extra = seen.filter((t) => !moved.includes(t));
    check(missing.length === 0 && extra.length <= unknown,
      `${r.instance}: crossings of ${name} seen at [${seen}], moved at [${moved}] (+${unknown} with unknown outcome)`);
  }
  // Coins.
  check(r.audits > 0 && r.audits_not_conserved === 0, `${r.instance}: ${r.audits_not_conserved} of ${r.audits} audits not conserved`);
  // An instance that ends before a late starter created its wallets audits fewer wallets: still conserved.
  check(r.last_audit.wallets >= 1 && r.last_audit.total === 10 * r.last_audit.wallets, `${r.instance}: last audit ${r.last_audit.total} coins in ${r.last_audit.wallets} wallets`);
}
check(Object.values(reports).some((r) => r.last_audit.wallets === 6 && r.last_audit.total === 60),
  `no instance's last audit saw all 6 wallets with 60 coins: ${Object.values(reports).map((r) => `${r.instance} ${r.last_audit.total}/${r.last_audit.wallets}`).join(', ')}`);
for (const r of Object.values(reports)) for (const m of Object.values(r.moves)) movesTotal += m.length;
const trades = Object.values(reports).reduce((n, r) => n + r.trades_committed, 0);
check(movesTotal >= 6, `only ${movesTotal} crossings in the run`);
check(judged >= movesTotal, `only ${judged} crossing observations judged for ${movesTotal} crossings`);
check(trades > 0, 'no trade committed');

// Leaseholders of the regions' ranges (TreeKeys.ShardOfRegion: west -> shard 0 'a', east -> shard 5 'w').
let ranges = [];
try { ranges = JSON.parse(readFileSync(rangesFile, 'utf8')); } catch { /* none */ }
const holder = (byte) => {
  const r = ranges.find((x) => x.start_key !== '' && x.start_key <= byte && (x.end_key == null || byte < x.end_key));
  return r ? { range: r.range_id, leaseholder: r.leaseholder } : null;
};
const leaseholders = { west: holder('a'), east: holder('w') };

let screenshot = null;
if (shot) {
  const ev = lines.find((e) => e.event === 'screenshot');
  const path = resolve(repo, shot);
  check(ev && !ev.error, `screenshot failed: ${ev ? ev.error : 'no screenshot event'}`);
  if (existsSync(path)) screenshot = { path: shot, bytes: statSync(path).size };
  check(screenshot && screenshot.bytes > 10_000, `screenshot ${shot} missing or tiny`);
}

const summary = {
  ok: failures.length === 0, failures,
  crossings: movesTotal, crossing_observations_judged: judged, trades_committed: trades,
  leaseholders, leaseholders_differ: !!(leaseholders.west && leaseholders.east && leaseholders.west.leaseholder !== leaseholders.east.leaseholder),
  screenshot,
  instances: Object.values(reports).map((r) => ({ instance: r.instance, url: r.url, owned: r.owned, moves: Object.fromEntries(Object.entries(r.moves).map(([k, v]) => [k, v.length])),
    crossings_seen: Object.values(r.crossings).reduce((n, v) => n + v.length, 0), region_batches: r.region_batches, audits: r.audits,
    last_audit: { total: r.last_audit.total, wallets: r.last_audit.wallets }, trades_committed: r.trades_committed, trades_aborted: r.trades_aborted,
    tree_set_many: r.op_counts.tree_set_many ?? 0, tree_move: r.op_counts.tree_move ?? 0, fps: r.fps, move_ms: r.move_ms, trade_ms: r.trade_ms, ping_ms: r.ping_ms, move_unknown: r.move_unknown })),
  engine_errors: errors.slice(0, 20),
};
process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
process.exit(summary.ok ? 0 : 1);
