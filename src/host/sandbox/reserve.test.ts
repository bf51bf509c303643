/**
 * The sandbox's reserved TCP sockets: they connect (data both ways, through
 * node), a failed attempt uses one up, a used-up reserve or a name is one
 * line; a reserved socket made to listen takes no connection, and its
 * filter cannot be taken off.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, Socket, type AddressInfo } from 'node:net';
import { UserError } from '../../errors.js';
import { errno, libc } from '../libc.js';
import { RESERVED_PER_FAMILY, SocketReserve, reservedSocket } from './reserve.js';
import { syscallNr } from './syscalls.js';

const SOL_SOCKET = 1, SO_DETACH_FILTER = 27, EPERM = 1;

const listening = (host = '127.0.0.1'): Promise<ReturnType<typeof createServer>> => new Promise((resolve, reject) => {
  const srv = createServer((s) => s.on('data', (d) => s.end(`got ${String(d)}`))).listen(0, host, () => resolve(srv));
  srv.once('error', reject);
});

/** Send `what` through a connected fd; what the echo server answers. */
function exchange(fd: number, what: string): Promise<string> {
  const s = new Socket({ fd, readable: true, writable: true });
  return new Promise<string>((resolve) => {
    let got = '';
    s.on('data', (d) => { got += String(d); });
    s.on('end', () => { s.destroy(); resolve(got); });
    s.write(what);
  });
}

test('a reserved socket connects and carries data both ways; failures use the reserve up; a name uses none', async () => {
  const r = SocketReserve.make();
  const srv = await listening();
  const closed = await listening();
  const closedPort = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  await assert.rejects(r.connect('localhost', closedPort, 1000), (e: Error) => e instanceof UserError && /localhost is a name/.test(e.message));
  const fd = await r.connect('127.0.0.1', (srv.address() as AddressInfo).port, 3000);
  assert.equal(await exchange(fd, 'ping'), 'got ping');
  srv.close();
  for (let i = 1; i < RESERVED_PER_FAMILY; i++) await assert.rejects(r.connect('127.0.0.1', closedPort, 1000), /^Error: ECONNREFUSED$/);
  await assert.rejects(r.connect('127.0.0.1', closedPort, 1000), (e: Error) => e instanceof UserError && /reserve of IPv4 sockets .* is used up/.test(e.message));
});

test('IPv6 has its own reserved sockets (sockaddr_in6)', async (t) => {
  const srv = await listening('::1').catch(() => undefined);
  if (!srv) { t.skip('no ::1 on this host'); return; }
  const fd = await SocketReserve.make().connect('::1', (srv.address() as AddressInfo).port, 3000);
  assert.equal(await exchange(fd, 'v6'), 'got v6');
  srv.close();
});

test('a reserved socket made to listen takes an ephemeral port but no connection; its filter is locked on', async () => {
  const fd = reservedSocket(4)!;
  try {
    assert.equal(libc.syscall(syscallNr('listen'), fd, 5), 0);
    const addr = Buffer.alloc(16), len = Buffer.alloc(4);
    len.writeUInt32LE(16);
    assert.equal(libc.syscall(syscallNr('getsockname'), fd, libc.bufferAddress(addr), libc.bufferAddress(len)), 0);
    const port = addr.readUInt16BE(2);
    assert.equal(libc.setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, Buffer.alloc(4), 4), -1);
    assert.equal(errno(), EPERM);
    const c = connect(port, '127.0.0.1');
    const outcome = await new Promise<string>((resolve) => {
      c.on('connect', () => resolve('connected'));
      c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      setTimeout(() => resolve('no answer'), 1500);
    });
    c.destroy();
    assert.equal(outcome, 'no answer', 'a connection to the listening reserved socket got through');
  } finally {
    libc.close(fd);
  }
});
