/**
 * The eventfd poller: a signalled eventfd calls its handler on this thread,
 * and a stopped poller leaves no fd open (its epoll fd is closed once its
 * thread is gone).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { signalEventfd } from './eventfd.js';
import { EventfdPoller } from './eventfd-poller.js';

const openFds = (): number => readdirSync('/proc/self/fd').length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a signal reaches its handler; once stopped, the poller\'s fds are all closed', async () => {
  const before = openFds();
  const p = new EventfdPoller();
  let calls = 0;
  const e = p.add(() => { calls++; });
  signalEventfd(e.fd);
  for (const end = Date.now() + 5000; calls === 0 && Date.now() < end;) await sleep(10);
  assert.equal(calls, 1);
  e.close();
  p.stop();
  let n = openFds();
  for (const end = Date.now() + 5000; n !== before && Date.now() < end; n = openFds()) await sleep(50);
  assert.equal(n, before, 'no fd left open');
});

test('a poller stopped before it polled anything closes its epoll fd at once', () => {
  const before = openFds();
  new EventfdPoller().stop();
  assert.equal(openFds(), before);
});
