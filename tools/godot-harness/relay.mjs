// relay.mjs — the benchmark's floor: a bare WebSocket relay (RFC 6455, no dependencies). Every message a client sends
// is forwarded unchanged to every other connected client. No state, no persistence, no ordering across senders.
//
//   node relay.mjs [port]      listens on 127.0.0.1:<port> (default 8090); prints {"event":"relay","port":...}
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';

const port = Number(process.argv[2] || 8090);
const clients = new Set();

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
      : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | opcode; b[1] = 127; b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  return Buffer.concat([head, payload]);
}

const server = createServer((_, res) => res.writeHead(426).end());
server.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key'];
  if (!key) { socket.destroy(); return; }
  const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  socket.setNoDelay(true);
  const client = { socket };
  clients.add(client);
  let buf = Buffer.alloc(0);
  let parts = [];
  let partsOpcode = 0;
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const fin = (buf[0] & 0x80) !== 0;
      const opcode = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const maskOff = off;
      if (masked) off += 4;
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[maskOff + (i & 3)];
      buf = buf.subarray(off + len);
      if (opcode === 8) { socket.end(frame(8, payload.subarray(0, 2))); return; }
      if (opcode === 9) { socket.write(frame(10, payload)); continue; }
      if (opcode === 10) continue;
      if (opcode !== 0) { partsOpcode = opcode; parts = []; }
      parts.push(payload);
      if (!fin) continue;
      const out = frame(partsOpcode, Buffer.concat(parts));
      parts = [];
      for (const other of clients) if (other !== client) other.socket.write(out);
    }
  });
  const drop = () => clients.delete(client);
  socket.on('close', drop);
  socket.on('error', drop);
});
server.listen(port, '127.0.0.1', () => process.stdout.write(JSON.stringify({ event: 'relay', port }) + '\n'));
