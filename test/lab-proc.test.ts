/**
 * Level 1: the lab driver's bounded processes (test/lab/proc.ts) and the
 * stall report's symbol lookup (test/lab/l1-monitor.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bounded } from './lab/proc.js';
import { loadSymbols, symbolize } from './lab/l1-monitor.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

test('a bounded process past its timeout is killed and reported', async () => {
  const r = await bounded(['sleep', '30'], 200).done;
  assert.equal(r.code, null);
  assert.equal(r.signal, 'SIGKILL');
  assert.match(r.stderr, /\[driver: timeout, killed\]/);
  assert.ok(r.ms < 10_000, `${r.ms} ms`);
});

test('a process that exited while a descendant holds its pipes has ended', async () => {
  const r = await bounded(['sh', '-c', 'echo hi; sleep 30 & exit 7'], 60_000).done;
  assert.equal(r.code, 7);
  assert.equal(r.stdout, 'hi\n');
  assert.ok(r.ms < 15_000, `${r.ms} ms: waited for the pipes`);
});

test('a process that outlives the kill is given up on, with what the kernel says of it', async () => {
  // A shell that ignores SIGTERM stands in for a process stuck in the kernel.
  const p = bounded(['sh', '-c', "trap '' TERM; echo ready; while :; do sleep 1; done"], 500, { graceMs: 500, signal: 'SIGTERM' });
  const r = await p.done;
  p.child.kill('SIGKILL');
  assert.equal(r.code, null);
  assert.match(r.stderr, /still there 0.5 s after SIGTERM; given up on/);
  assert.match(r.stderr, new RegExp(`tid ${p.child.pid} sh state [A-Z] wchan \\S+`));
});

test('a stalled L1 CPU address is named from kallsyms', () => {
  const f = join(mkdtempSync(join(tmpdir(), 'tshyve-ksyms-')), 'kallsyms.txt');
  writeFileSync(f, 'ffffffffc0a01000 t svm_vcpu_run\t[kvm_amd]\nffffffff81001000 T native_safe_halt\nffffffff81000000 T _stext\n');
  const loaded = loadSymbols(f);
  assert.equal(symbolize(loaded, 0xffffffffc0a01234n), 'kvm_amd:svm_vcpu_run+0x234');
  assert.equal(symbolize(loaded, 0xffffffff81000004n), '_stext+0x4');
  const syms = [{ addr: 0xffffffff81000000n, name: '_stext' }, { addr: 0xffffffff81001000n, name: 'native_safe_halt' }];
  assert.equal(symbolize(syms, 0xffffffff81001010n), 'native_safe_halt+0x10');
  assert.equal(symbolize(syms, 0x7f0000001000n), 'user');
  assert.equal(symbolize(syms, 0xffffffffc0100000n), '?');
});
