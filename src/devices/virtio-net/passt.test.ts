import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { libc } from '../../host/libc.js';
import { IoVecs } from '../../memory/iovec.js';
import { findPasst, hostForwards, parseHostForward, passtForwardArgs, startPasst } from './passt.js';
import { StreamFrameBackend } from './stream-backend.js';

const node = (kv: Record<string, string>) => {
  const t = new ConfigTree();
  for (const [k, v] of Object.entries(kv)) t.set(`pci.0.3.0.${k}`, v);
  return t.node('pci.0.3.0')!;
};
const oneLine = (re: RegExp) => (e: unknown) => e instanceof UserError && re.test(e.message) && !e.message.includes('\n');

test('hostfwd rules: bhyve\'s PROTO:[HOSTADDR]:HOSTPORT-:GUESTPORT, to passt\'s -t/-u', () => {
  assert.deepEqual(parseHostForward('tcp::2222-:22'), { proto: 'tcp', hostAddr: '', hostPort: 2222, guestPort: 22 });
  assert.deepEqual(parseHostForward('udp:127.0.0.1:5353-:53'), { proto: 'udp', hostAddr: '127.0.0.1', hostPort: 5353, guestPort: 53 });
  const rules = hostForwards(node({ 'hostfwd.1': 'udp:127.0.0.1:5353-:53', 'hostfwd.0': 'tcp::2222-:22;tcp:10.0.0.1:80-:8080' }));
  assert.deepEqual(passtForwardArgs(rules), ['-t', '2222:22', '-t', '10.0.0.1/80:8080', '-u', '127.0.0.1/5353:53']);
  assert.deepEqual(hostForwards(node({ backend: 'slirp' })), []);
});

test('bad hostfwd rules: one line naming the key and the rule', () => {
  const bad: [string, RegExp][] = [
    ['sctp::1-:2', /not a forwarding rule/],
    ['tcp::2222:22', /not a forwarding rule/],
    ['tcp::0-:22', /'0' is not a port/],
    ['tcp::70000-:22', /'70000' is not a port/],
    ['tcp::22-:', /no port/],
    ['tcp:1.2.3:22-:22', /not an IPv4 address/],
    ['tcp:localhost:22-:22', /not an IPv4 address/],
    ['tcp::2222-10.0.2.15:22', /guest address cannot be chosen/],
  ];
  for (const [rule, re] of bad) {
    assert.throws(() => hostForwards(node({ 'hostfwd.0': rule })), oneLine(re), rule);
    assert.throws(() => hostForwards(node({ 'hostfwd.0': rule })), /pci\.0\.3\.0\.hostfwd\.0/);
  }
  assert.throws(() => hostForwards(node({ 'hostfwd.x': 'tcp::1-:2' })), oneLine(/index must be a number/));
});

test('passt not on PATH: one line saying so', () => {
  assert.equal(findPasst({ PATH: '/nonexistent' }), undefined);
  assert.throws(() => startPasst([], 'slirp', { PATH: '/nonexistent' }), oneLine(/needs passt, which is not on PATH/));
});

const passt = findPasst();
const noPasst = passt ? false : 'passt is not installed (apt-get install passt)';

/** A DHCPDISCOVER from 52:54:00:12:34:56, as a bare Ethernet frame. */
function dhcpDiscover(): Buffer {
  const mac = Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  const bootp = Buffer.alloc(240 + 4);
  bootp.writeUInt8(1, 0); bootp.writeUInt8(1, 1); bootp.writeUInt8(6, 2);
  bootp.writeUInt32BE(0x1234, 4); bootp.writeUInt16BE(0x8000, 10);
  mac.copy(bootp, 28);
  bootp.writeUInt32BE(0x63825363, 236);
  Buffer.from([53, 1, 1, 255]).copy(bootp, 240);
  const udp = Buffer.alloc(8); udp.writeUInt16BE(68, 0); udp.writeUInt16BE(67, 2); udp.writeUInt16BE(8 + bootp.length, 4);
  const ip = Buffer.alloc(20);
  ip.writeUInt8(0x45, 0); ip.writeUInt16BE(20 + 8 + bootp.length, 2); ip.writeUInt8(64, 8); ip.writeUInt8(17, 9);
  ip.fill(0xff, 16, 20);
  let s = 0;
  for (let i = 0; i < 20; i += 2) s += ip.readUInt16BE(i);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  ip.writeUInt16BE(~s & 0xffff, 10);
  return Buffer.concat([Buffer.alloc(6, 0xff), mac, Buffer.from([8, 0]), ip, udp, bootp]);
}

function iovOf(b: Buffer): IoVecs {
  const iov = new IoVecs(1);
  iov.fill(Float64Array.of(0, b.length, Number(libc.bufferAddress(b))), 0, 1, 0, b.length);
  return iov;
}

test('a real passt answers a DHCP request through the framing, and ends when the socket closes', { skip: noPasst }, async () => {
  // passt takes its addresses from the host's interface with the default route: this host's own namespace
  const { fd, child } = startPasst([]);
  child.ref(); // (startPasst unrefs it: tshyve does not wait for passt)
  const b = new StreamFrameBackend(fd, true, () => child.kill('SIGTERM'));
  const ended = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  try {
    const req = dhcpDiscover();
    assert.equal(b.writev(iovOf(req)), req.length);
    const rx = Buffer.alloc(2048);
    let n = -1;
    for (let i = 0; i < 300 && n < 0; i++) { n = b.readv(iovOf(rx)); if (n < 0) await new Promise((r) => setTimeout(r, 10)); }
    assert.ok(n > 282, `an answer came (${n})`);
    assert.deepEqual([...rx.subarray(0, 6)], [0x52, 0x54, 0, 0x12, 0x34, 0x56], 'to the guest\'s MAC');
    assert.equal(rx.readUInt16BE(14 + 20), 67, 'from the DHCP server port');
    assert.equal(rx.readUInt32BE(14 + 28 + 236), 0x63825363, 'a DHCP message');
    assert.ok(rx.subarray(14 + 28 + 240, n).indexOf(Buffer.from([53, 1, 2])) >= 0, 'a DHCPOFFER (option 53 = 2)');
  } finally {
    b.close();
  }
  await ended;
});

test('a forwarded port already taken: passt\'s own refusal, in one line', { skip: noPasst }, async () => {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  try {
    assert.throws(() => startPasst([{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: port, guestPort: 22 }]),
      oneLine(/passt did not start: Failed to bind/));
  } finally { srv.close(); }
});

/** A process's state letter ('' when it is gone; Z when it ended and nobody reaped it). */
function state(pid: number): string {
  try { return /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? ''; } catch { return ''; }
}

test('passt ends when the tshyve that started it is killed with SIGKILL (its socket closes with the process)', { skip: noPasst }, async () => {
  // a process that starts passt as tshyve does, says passt's pid and waits to be killed
  const code = `import { startPasst } from ${JSON.stringify(new URL('./passt.js', import.meta.url).href)};
process.stdout.write(startPasst([]).child.pid + '\\n'); setInterval(() => {}, 1000);`;
  const vmm = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = await once(vmm.stdout, 'data') as [Buffer];
  const pid = Number(String(line).trim());
  assert.ok(pid > 0, `passt's pid: ${line}`);
  assert.match(state(pid), /^[RSD]$/, 'passt runs');
  vmm.kill('SIGKILL');
  await once(vmm, 'exit');
  for (let i = 0; i < 100 && /^[RSD]$/.test(state(pid)); i++) await new Promise((r) => setTimeout(r, 50));
  assert.match(state(pid), /^Z?$/, 'passt ended within 5 s');
});
