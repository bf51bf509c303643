/**
 * Level 2: tshyve's own small guest programs on this host's /dev/kvm.
 * Each runs the real CLI and checks what the guest printed and the exit code.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli, kvmUnavailable, guestBin } from './helpers.js';

const base = (bin: string, extra: string[] = []) =>
  ['-c', '1', '-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio', '-o', `boot.raw=${bin}`, ...extra, 'testvm'];

function skipReason(name: string): string | undefined {
  return kvmUnavailable() ?? (guestBin(name) ? undefined : `guest program ${name}.bin not built (nasm missing: run scripts/setup.sh)`);
}

test('real mode: serial output, PIC+PIT interrupts through HLT, serial input, ACPI power-off', { skip: skipReason('real') }, async () => {
  const r = await runCli(base(guestBin('real')!), { input: 'x' });
  assert.match(r.stdout, /REAL OK\n/);
  assert.match(r.stdout, /HLT OK\n/);
  assert.match(r.stdout, /ECHO:x\n/);
  assert.equal(r.code, 1, `power-off exits 1 (stderr: ${r.stderr})`);
});

test('protected and long mode, MMIO exits, power-off', { skip: skipReason('long') }, async () => {
  const r = await runCli(base(guestBin('long')!));
  assert.equal(r.stdout, 'RPROTECTED OK\nLONG OK\nMMIO OK\n');
  assert.equal(r.code, 1, r.stderr);
});

test('x86.irqchip=user (the sandbox on): two vCPUs, the AP waiting for SIPI, port and MMIO exits, power-off; SIGINT ends a spinning guest', { skip: skipReason('long') ?? skipReason('spin') }, async () => {
  const r = await runCli(base(guestBin('long')!, ['-c', '2', '-o', 'x86.irqchip=user']));
  assert.equal(r.stdout, 'RPROTECTED OK\nLONG OK\nMMIO OK\n');
  assert.equal(r.code, 1, r.stderr);
  let sent = false;
  const s = await runCli(base(guestBin('spin')!, ['-o', 'x86.irqchip=user']), {
    onStdout: (out, child) => { if (!sent && out.includes('S\n')) { sent = true; child.kill('SIGINT'); } },
    timeoutMs: 30_000,
  });
  assert.ok(sent);
  assert.equal(s.code, 1, s.stderr);
});

test('a triple fault ends tshyve with exit 3', { skip: skipReason('triple') }, async () => {
  const r = await runCli(base(guestBin('triple')!));
  assert.equal(r.code, 3, r.stderr);
  // The message says where the vCPU stood: in protected mode, with the empty IDT the program loaded.
  assert.match(r.stderr, /vCPU 0 triple fault \(rip 0x10[0-9a-f]{2} .* cr0 0x6000001[01] .* idt 0x0\/0x0 /);
});

test('a guest that never exits is stopped by SIGINT (vCPU kick) with exit 1', { skip: skipReason('spin') }, async () => {
  let sent = false;
  const r = await runCli(base(guestBin('spin')!), {
    onStdout: (out, child) => { if (!sent && out.includes('S\n')) { sent = true; child.kill('SIGINT'); } },
    timeoutMs: 30_000,
  });
  assert.ok(sent, 'guest printed before the signal');
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.signal, null);
});

test('first SIGTERM presses the power button, the second ends the VM', { skip: skipReason('spin') }, async () => {
  let sent = 0;
  const r = await runCli(base(guestBin('spin')!), {
    onStdout: (out, child) => {
      if (sent === 0 && out.includes('S\n')) {
        sent = 1; child.kill('SIGTERM');
        setTimeout(() => { sent = 2; child.kill('SIGTERM'); }, 500);
      }
    },
    timeoutMs: 30_000,
  });
  assert.equal(sent, 2);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /power button/);
});

test('a VM with virtio disks (I/O threads, irqfd vectors) and transitional devices starts and ends cleanly', { skip: skipReason('long') }, async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const img = join(mkdtempSync(join(tmpdir(), 'tshyve-l2-')), 'd.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const r = await runCli(base(guestBin('long')!, [
    '-s', `4,virtio-blk,${img}`, '-s', `5,virtio-blk,${img},ro,legacy`, '-s', '6,virtio-rnd,legacy', '-o', 'debug.stats=1',
  ]), { timeoutMs: 30_000 });
  assert.equal(r.stdout, 'RPROTECTED OK\nLONG OK\nMMIO OK\n');
  assert.equal(r.code, 1, r.stderr);
  assert.ok(r.ms < 20_000, `ended in ${r.ms} ms: the disks' I/O threads stopped`);
});

test('firmware boot: a ROM given with -l bootrom starts at the reset vector, reads fw_cfg (ports and DMA), sees the i440FX host bridge and powers off through the PIIX4 PM function', { skip: skipReason('fwcfg-rom') }, async () => {
  const r = await runCli(['-c', '1', '-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio', '-l', `bootrom,${guestBin('fwcfg-rom')!}`, 'fwvm'], { timeoutMs: 30_000 });
  // the signature, the file directory's entry count (9 files), 8086:1237
  assert.equal(r.stdout, 'QEMU\nC00000009\nC12378086\n');
  assert.equal(r.code, 1, r.stderr);
});
