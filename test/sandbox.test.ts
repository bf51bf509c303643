/**
 * Level 2: tshyve locks itself down before the guest runs (src/host/sandbox).
 * A sandboxed tshyve on this host's /dev/kvm runs the ticker guest with a
 * disk, and its test-only probe (`-o sandbox.probe=1`) tries what the sandbox
 * must refuse: each attempt is refused and reported, and with
 * sandbox.violation=error the guest runs on, checkpoints into the snapshot
 * directory work and one outside it is refused in one line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, CTL, kvmUnavailable, guestBin, type RunResult } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('ticker') ? undefined : 'guest program ticker.bin not built (nasm missing: run scripts/setup.sh)');
const root = mkdtempSync(join(tmpdir(), 'tshyve-sandbox-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));
const disks = join(root, 'disks'), ctlDir = join(root, 'ctl');
mkdirSync(disks);
mkdirSync(ctlDir, { mode: 0o700 });
writeFileSync(join(disks, 'disk.img'), Buffer.alloc(1 << 20));
writeFileSync(join(disks, 'beside.txt'), 'not the VM\'s\n');
const env = { ...process.env, TSHYVE_CONTROL_DIR: ctlDir };

interface Vm { pid: number; out(): string; err(): string; exited: Promise<RunResult> }

function start(name: string, extra: string[]): Vm {
  const args = ['-c', '1', '-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-s', `2,virtio-blk,${join(disks, 'disk.img')}`,
    '-l', 'com1,stdio', '-o', `boot.raw=${guestBin('ticker')}`, ...extra, name];
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const t0 = Date.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const exited = new Promise<RunResult>((resolve) => child.on('close', (code, signal) => {
    clearTimeout(timer);
    resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
  }));
  return { pid: child.pid!, out: () => stdout, err: () => stderr, exited };
}

const ctl = (args: string[]) => spawnSync(process.execPath, [CTL, ...args], { env, encoding: 'utf8', timeout: 20_000 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
}

const PROBES = ['execve /bin/sh', 'open /etc/shadow:', 'open /etc/shadow from libuv\'s thread pool', `open ${join(disks, 'beside.txt')} (beside the disk)`, 'outside the snapshot directory',
  'ptrace attach', 'mount tmpfs', 'socket AF_INET (to the outside)', 'bpf BPF_PROG_LOAD'];
const REPORTED = ['execve', 'ptrace', 'mount', 'socket', 'bpf'];

test('sandbox.violation=error: every probe is refused and each refused call reported once; the guest runs on; stats say so; checkpoints go only into the snapshot directory',
  { skip }, async () => {
    const vm = start('sbx-error', ['-o', 'sandbox.violation=error', '-o', 'sandbox.probe=1']);
    try {
      await until(() => vm.err().includes('thread pool') && vm.out().includes('T\n'), 15_000);
      const lines = vm.err().split('\n');
      for (const p of PROBES) {
        const l = lines.find((x) => x.startsWith('tshyve: sandbox probe: ') && x.includes(p));
        assert.ok(l, `probe ${p} ran: ${vm.err()}`);
        assert.match(l, /: refused \((EPERM|EACCES)\)$/, l);
      }
      for (const call of REPORTED) {
        const reports = lines.filter((x) => x.startsWith(`tshyve: sandbox: refused system call ${call} (`));
        assert.equal(reports.length, 1, `${call} reported once: ${vm.err()}`);
        assert.match(reports[0]!, /it fails with EPERM$/);
      }
      // Every thread of tshyve's (node's, the vCPUs', the I/O threads') is locked down, not just the main one;
      // kernel threads that live in the process (KVM's kvm-nx-lpage-recovery) run no user code.
      const threads = readdirSync(`/proc/${vm.pid}/task`).map((t) => readFileSync(`/proc/${vm.pid}/task/${t}/status`, 'utf8'))
        .filter((s) => !/^Name:\s*kvm-/m.test(s));
      assert.ok(threads.length >= 5, `${threads.length} threads`);
      for (const s of threads) {
        const name = /^Name:\s*(.*)$/m.exec(s)![1];
        assert.match(s, /^CapEff:\s*0+$/m, `${name}: no effective capability`);
        assert.match(s, /^CapPrm:\s*0+$/m, `${name}: no permitted capability`);
        assert.match(s, /^CapBnd:\s*0+$/m, `${name}: an empty bounding set`);
        assert.match(s, /^NoNewPrivs:\s*1$/m, `${name}: no_new_privs`);
        assert.match(s, /^Seccomp:\s*2$/m, `${name}: the seccomp filter`);
      }
      const printed = vm.out().length;
      await until(() => vm.out().length > printed + 4, 5000);
      assert.ok(vm.out().length > printed + 4, 'the guest runs on after the probe');

      const stats = Object.fromEntries(ctl(['--vm=sbx-error', '--get-stats']).stdout.trim().split('\n').map((l) => l.split(/\s+/, 2) as [string, string]));
      assert.equal(stats.sandbox, 'on');
      assert.match(stats.sandbox_layers!, /^no_new_privs,landlock\(abi=\d+\),capabilities,seccomp\(error\)$|^no_new_privs,capabilities,seccomp\(error\)$/);

      const inside = join(ctlDir, 'sbx.ckp');
      const ok = ctl(['--vm=sbx-error', `--checkpoint=${inside}`]);
      assert.equal(ok.status, 0, ok.stderr);
      assert.ok(existsSync(inside) && existsSync(`${inside}.ram`));
      const outside = ctl(['--vm=sbx-error', `--checkpoint=${join(disks, 'sbx.ckp')}`]);
      assert.equal(outside.status, 1);
      assert.match(outside.stderr, /outside snapshot\.dir/);
      assert.equal(outside.stderr.trim().split('\n').length, 1, outside.stderr);
      assert.ok(!existsSync(join(disks, 'sbx.ckp')));
      const unreported = vm.err().split('\n').filter((l) => l.startsWith('tshyve: sandbox: refused') && !REPORTED.some((c) => l.includes(`call ${c} (`)));
      assert.deepEqual(unreported, [], 'nothing else was refused');

      assert.equal(ctl(['--vm=sbx-error', '--force-poweroff']).status, 0);
      const end = await vm.exited;
      assert.equal(end.code, 1, end.stderr);
      assert.ok(!existsSync(join(ctlDir, 'sbx-error.sock')), 'the control socket is removed at exit');
    } finally {
      ctl(['--vm=sbx-error', '--destroy']);
    }
  });

test('sandbox.violation=kill (the default): the first refused call is reported in one line and ends tshyve', { skip }, async () => {
  const vm = start('sbx-kill', ['-o', 'sandbox.probe=1']);
  const end = await vm.exited;
  assert.equal(end.code, 4, end.stderr);
  const refusals = end.stderr.split('\n').filter((l) => l.startsWith('tshyve: sandbox: refused system call'));
  assert.deepEqual(refusals, ['tshyve: sandbox: refused system call execve (59): ending tshyve (-o sandbox.violation=error makes it fail with EPERM instead)']);
  assert.ok(!end.stderr.includes('sandbox probe: execve'), 'nothing ran after the refused call');
});

test('-o sandbox=off: one warning line, and the stats say the sandbox is off', { skip }, async () => {
  const vm = start('sbx-off', ['-o', 'sandbox=off']);
  try {
    await until(() => vm.out().includes('T\n'), 10_000);
    assert.match(vm.err(), /^tshyve: warn: the sandbox is off/m);
    const out = ctl(['--vm=sbx-off', '--get-stats']).stdout;
    assert.match(out, /^sandbox +off$/m);
    assert.match(out, /^sandbox_layers +none$/m);
  } finally {
    ctl(['--vm=sbx-off', '--force-poweroff']);
    await vm.exited;
  }
});
