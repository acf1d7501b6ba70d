// godot-harness: runs several real Godot 4.6 instances at once (the official web export template in headless
// Chromium, one page each) on a project made of the Canopy addon (clients/godot/addons/canopy) and the GDScript
// tests in project/, and reports what they do as JSON lines on stdout. See README.md.
//
//   node harness.mjs --setup-only                      fetch + verify the engine, check Chromium, exit
//   node harness.mjs --spec spec.json                  run the instances of spec.json (or --spec-json '<json>')
//
// spec: { "instances": [ { "name": "a", "args": ["--test=tree_basic", "--role=a", ...], "deadline_ms": 60000,
//                          "start_delay_ms": 0, "screenshot": "out.png", "render": false } ], "keep": false,
//         "project": "clients/godot/demo", "render": false, "viewport": {"width": 960, "height": 540} }
// project: the Godot project to pack (default tools/godot-harness/project; relative to the repository root); the
// addon (clients/godot/addons/canopy) is always copied into its addons/canopy. render: run the engine without
// --headless, so it draws into the page's canvas (WebGL2 through Chromium's software GL, SwiftShader; an instance's
// own "render" overrides it: software rendering is costly, render only the instances you look at). screenshot:
// when the instance prints the mark `screenshot` (CANOPY_MARK screenshot ...), the page is saved to that PNG.
// stdout, one JSON object per line ("event" says which):
//   ready {engine_url}   started {instance}   print {instance, stream: "out"|"err", text}
//   mark {instance, name, data}        from a GDScript line   CANOPY_MARK <name> <json>
//   assert {instance, ok, message}     from                   CANOPY_ASSERT PASS|FAIL <message>
//   exit {instance, code, timed_out, crashed, elapsed_ms, banner, asserts_passed, asserts_failed, failures}
//   done {ok}
// stdin, one JSON object per line: {"cmd": "send", "instance": "a", "text": "..."} queues a message that the
// instance's CanopyTest.wait_message() receives (through JavaScriptBridge); {"cmd": "stop"} ends every instance.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { EXPECTED_ENGINE, buildPck, getTemplate, serve } from './godot-web.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const ADDON_DIR = join(repo, 'clients', 'godot', 'addons', 'canopy');
const DEFAULT_PROJECT_DIR = join(here, 'project');

// Lines the engine prints without any cause in the scenario (shared/notes/godot-web-runtime.md): not failures.
const ENGINE_NOISE = [/Condition "slot >= slot_max" is true/, /Pages in use exist at exit in PagedAllocator/, /WorkerThreadPool/];

const args = process.argv.slice(2);
const argValue = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const chromiumPath = argValue('--chromium', process.env.CHROMIUM || '/usr/bin/chromium');
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// ---------------------------------------------------------------------------------------------- the engine

// ---------------------------------------------------------------------------------------------- the project

function walk(dir, base, out) {
  for (const name of readdirSync(dir).sort()) {
    if (name.startsWith('.')) continue;
    const full = join(dir, name);
    if (statSync(full).isDirectory()) walk(full, base, out);
    else out.push({ full, path: relative(base, full).split(sep).join('/') });
  }
  return out;
}

// The global class cache the editor would write: without it `class_name` does not resolve in an exported pack.
function classCache(files) {
  const entries = [];
  for (const [path, content] of Object.entries(files)) {
    if (!path.endsWith('.gd')) continue;
    const text = content.toString('utf8');
    const cls = /^class_name\s+([A-Za-z_][A-Za-z0-9_]*)/m.exec(text);
    if (!cls) continue;
    const ext = /^extends\s+([A-Za-z_][A-Za-z0-9_]*)/m.exec(text);
    entries.push(`{
"base": &"${ext ? ext[1] : 'RefCounted'}",
"class": &"${cls[1]}",
"icon": "",
"is_abstract": false,
"is_tool": ${/^@tool/m.test(text)},
"language": &"GDScript",
"path": "res://${path}"
}`);
  }
  return `list=[${entries.join(', ')}]\n`;
}

export function projectFiles(projectDir = DEFAULT_PROJECT_DIR) {
  const files = {};
  for (const f of walk(projectDir, projectDir, [])) {
    if (f.path.startsWith('addons/canopy/')) continue;  // a local copy of the addon: the repository's wins
    files[f.path] = readFileSync(f.full);
  }
  for (const f of walk(ADDON_DIR, ADDON_DIR, [])) files[`addons/canopy/${f.path}`] = readFileSync(f.full);
  // The editor plugin script needs the editor: leave it out of the runtime pack.
  delete files['addons/canopy/plugin.gd'];
  files['.godot/global_script_class_cache.cfg'] = Buffer.from(classCache(files));
  return files;
}

// ---------------------------------------------------------------------------------------------- the page

// One instance per page. The user args come from the page's query string (?i=<index>, looked up in window.spec).
const INDEX_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>canopy godot harness</title>
<style>html, body { margin: 0; padding: 0; background: #000; overflow: hidden; } canvas { display: block; }</style></head>
<body>
<canvas id="canvas"></canvas>
<script>window.canopyInbox = [];</script>
<script src="godot/index.js"></script>
<script>
(async () => {
  try {
    const startArgs = await window.harnessArgs();
    const pck = await (await fetch('game.pck')).arrayBuffer();
    const engine = new Engine({
      executable: 'godot/index',
      unloadAfterInit: false,
      canvas: document.getElementById('canvas'),
      onPrint: (...a) => window.godotPrint(a.join(' ')),
      onPrintError: (...a) => window.godotPrintError(a.join(' ')),
      onExit: (code) => window.godotExit(code),
    });
    await engine.init('godot/index');
    await engine.preloadFile(pck, '/game.pck');
    await engine.start({ args: startArgs });
  } catch (e) {
    window.godotPrintError('PAGE: ' + (e && e.stack || e));
    window.godotExit(-1);
  }
})();
</script>
</body></html>
`;

function isNoise(text) {
  return ENGINE_NOISE.some((re) => re.test(text));
}

async function runInstance(browser, baseUrl, spec, control) {
  const name = spec.name;
  const deadline = spec.deadline_ms ?? 60_000;
  const result = { instance: name, code: null, timed_out: false, crashed: false, elapsed_ms: 0, banner: null,
    asserts_passed: 0, asserts_failed: 0, failures: [], errors: [] };
  if (spec.start_delay_ms) await new Promise((r) => setTimeout(r, spec.start_delay_ms));
  const context = await browser.newContext(control.viewport ? { viewport: control.viewport } : {});
  const page = await context.newPage();
  control.pages.set(name, page);
  const started = Date.now();
  let finish;
  const finished = new Promise((r) => { finish = r; });
  const onLine = (stream, text) => {
    for (const line of String(text).split('\n')) {
      if (line.length === 0) continue;
      if (line.startsWith('Godot Engine v')) result.banner = line.trim();
      const m = /^CANOPY_(MARK|ASSERT) (\S+) ?(.*)$/.exec(line);
      if (m && m[1] === 'MARK') {
        let data = null;
        try { data = m[3] ? JSON.parse(m[3]) : null; } catch { data = m[3]; }
        emit({ event: 'mark', instance: name, name: m[2], data, t_ms: Date.now() - started });
        if (m[2] === 'screenshot' && spec.screenshot) {
          const path = resolve(repo, spec.screenshot);
          page.screenshot({ path })
            .then(() => emit({ event: 'screenshot', instance: name, path }))
            .catch((e) => emit({ event: 'screenshot', instance: name, path, error: String(e && e.message || e) }));
        }
        continue;
      }
      if (m && m[1] === 'ASSERT') {
        const ok = m[2] === 'PASS';
        if (ok) result.asserts_passed++;
        else { result.asserts_failed++; result.failures.push(m[3]); }
        emit({ event: 'assert', instance: name, ok, message: m[3] });
        continue;
      }
      if (stream === 'err' && !isNoise(line) && /ERROR|SCRIPT ERROR|PAGE/.test(line)) result.errors.push(line.trim());
      emit({ event: 'print', instance: name, stream, text: line });
    }
  };
  // Rendering instances run without --headless; the dummy audio driver spares the audio worklets (not served).
  const render = spec.render ?? control.render;
  const startArgs = ['--main-pack', '/game.pck', ...(render ? ['--audio-driver', 'Dummy'] : ['--headless']), '++', ...(spec.args ?? [])];
  await page.exposeFunction('harnessArgs', () => startArgs);
  await page.exposeFunction('godotPrint', (s) => onLine('out', s));
  await page.exposeFunction('godotPrintError', (s) => onLine('err', s));
  await page.exposeFunction('godotExit', (code) => { result.code = code; finish(); });
  page.on('pageerror', (e) => {
    // RuntimeError: unreachable / RangeError: the wasm died (OS.crash, runaway recursion, a bad null call).
    result.crashed = true;
    onLine('err', `PAGEERROR: ${e.message}`);
    finish();
  });
  page.on('crash', () => { result.crashed = true; onLine('err', 'PAGE CRASHED'); finish(); });
  emit({ event: 'started', instance: name });
  await page.goto(baseUrl);
  let timer;
  const timedOut = new Promise((r) => { timer = setTimeout(() => { result.timed_out = true; r(); }, deadline); });
  const stopped = control.stopped.then(() => { if (result.code === null) result.timed_out = true; });
  await Promise.race([finished, timedOut, stopped]);
  clearTimeout(timer);
  result.elapsed_ms = Date.now() - started;
  control.pages.delete(name);
  await context.close().catch(() => {});
  emit({ event: 'exit', ...result });
  return result;
}

async function run(spec) {
  const template = getTemplate(join(here, '.cache'));
  const files = projectFiles(spec.project ? resolve(repo, spec.project) : DEFAULT_PROJECT_DIR);
  const pck = buildPck(files);
  if (spec.keep) {
    const dir = join(here, '.cache', 'project');
    rmSync(dir, { recursive: true, force: true });
    for (const [path, content] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), content);
    }
    writeFileSync(join(dir, 'game.pck'), pck);
  }
  const server = await serve({
    '/': { type: 'text/html', body: Buffer.from(INDEX_HTML) },
    '/godot/index.js': { type: 'text/javascript', body: template['index.js'] },
    '/godot/index.wasm': { type: 'application/wasm', body: template['index.wasm'] },
    '/game.pck': { type: 'application/octet-stream', body: pck },
  });
  const baseUrl = `http://127.0.0.1:${server.address().port}/`;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
      // Rendering instances need WebGL2 without a GPU: ANGLE on SwiftShader (software GL).
      ...(spec.render || (spec.instances ?? []).some((i) => i.render) ? ['--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'] : [])],
  });
  let stop;
  const control = { pages: new Map(), stopped: new Promise((r) => { stop = r; }), render: !!spec.render,
    viewport: spec.viewport ?? { width: 960, height: 540 } };
  const rl = createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    let cmd;
    try { cmd = JSON.parse(line); } catch { return; }
    if (cmd.cmd === 'stop') stop();
    else if (cmd.cmd === 'send') {
      const page = control.pages.get(cmd.instance);
      if (page) await page.evaluate((t) => window.canopyInbox.push(t), String(cmd.text)).catch(() => {});
    }
  });
  rl.on('close', () => {});
  emit({ event: 'ready', engine_url: baseUrl, files: Object.keys(files).length });
  try {
    const results = await Promise.all((spec.instances ?? []).map((s) => runInstance(browser, baseUrl, s, control)));
    const ok = results.every((r) => r.code === 0 && !r.timed_out && !r.crashed && r.asserts_failed === 0
      && r.banner && r.banner.startsWith(EXPECTED_ENGINE));
    emit({ event: 'done', ok });
    return ok;
  } finally {
    rl.close();
    await browser.close().catch(() => {});
    server.close();
  }
}

async function main() {
  if (args.includes('--setup-only')) {
    getTemplate(join(here, '.cache'));
    if (!existsSync(chromiumPath)) throw new Error(`no Chromium at ${chromiumPath} (run setup.sh)`);
    console.error(`godot-harness: ready (engine ${EXPECTED_ENGINE}, ${chromiumPath})`);
    return 0;
  }
  const specFile = argValue('--spec', null);
  const specJson = argValue('--spec-json', null);
  if (!specFile && !specJson) throw new Error('usage: node harness.mjs --spec <file.json> | --spec-json <json> | --setup-only');
  const spec = JSON.parse(specJson ?? readFileSync(specFile, 'utf8'));
  if (args.includes('--keep')) spec.keep = true;
  return (await run(spec)) ? 0 : 1;
}

main().then((code) => process.exit(code), (e) => {
  emit({ event: 'fatal', message: String(e && e.message || e) });
  console.error(`godot-harness: ${e && e.stack || e}`);
  process.exit(2);
});
