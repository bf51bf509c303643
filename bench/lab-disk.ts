/**
 * virtio-blk throughput driver. Runs INSIDE the nested lab (started by
 * bench/run.ts through `lab/run`). For tshyve and for QEMU (Debian's
 * virtio-blk, default writeback cache, like tshyve's buffered file I/O) on
 * the same raw image in L1's tmpfs, the guest runs sequential direct-I/O dd
 * writes then reads of the whole disk, twice in one boot, and reports the
 * seconds each took. The first pass is the cold one (just after boot: for
 * tshyve, V8 may still be compiling the request path, which its I/O thread
 * warmed up before the guest's first request); the second is the steady
 * state, what a disk does after its first seconds. Both are reported.
 *
 *   node dist/bench/lab-disk.js OUT.json [--runs R] [--mib N] [--only tshyve|qemu] [--disk-opts ,worker=false]
 *     [--node-args '--cpu-prof --cpu-prof-dir=DIR']   (node flags for tshyve, e.g. to profile it)
 */
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, GUEST_DIR, stripTerminal, timedRun, type Vmm } from './common.js';

export interface DiskRun {
  vmm: Vmm; run: number; ok: boolean;
  /** the second pass: steady state */
  writeMBs?: number; readMBs?: number;
  /** the first pass, just after boot */
  coldWriteMBs?: number; coldReadMBs?: number;
  error?: string; tail?: string;
}

const kernel = join(GUEST_DIR, 'vmlinuz');
const initrd = join(GUEST_DIR, 'initrd.img');

/** The guest's part: time dd with the kernel's uptime (busybox dd prints no rate with status=none). */
function guestScript(mib: number): string {
  const pass = (n: number) => [
    `t${n}0=$(cut -d" " -f1 /proc/uptime)`,
    `dd if=/dev/zero of=/dev/vda bs=1M count=${mib} oflag=direct 2>/dev/null`,
    `t${n}1=$(cut -d" " -f1 /proc/uptime)`,
    `dd if=/dev/vda of=/dev/null bs=1M count=${mib} iflag=direct 2>/dev/null`,
    `t${n}2=$(cut -d" " -f1 /proc/uptime)`,
  ];
  return [...pass(1), ...pass(2), 'echo DISK_T="$t10 $t11 $t12 $t20 $t21 $t22"', 'poweroff -f'].join('\n');
}

function command(vmm: Vmm, img: string, mib: number, diskOpts = '', nodeArgs: string[] = []): [string, string[]] {
  const cmdline = `console=ttyS0 quiet tshyve.cmd=${Buffer.from(guestScript(mib)).toString('base64')}`;
  if (vmm === 'tshyve') {
    return [process.execPath, [...nodeArgs, CLI, '-c', '1', '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
      '-s', `4,virtio-blk,${img}${diskOpts}`, '-o', `boot.kernel=${kernel}`, '-o', `boot.initrd=${initrd}`, '-o', `boot.cmdline=${cmdline}`, 'benchdisk']];
  }
  return ['qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', '1', '-nographic', '-no-reboot',
    '-drive', `file=${img},format=raw,if=virtio`, '-kernel', kernel, '-initrd', initrd, '-append', cmdline]];
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) throw new Error('usage: lab-disk OUT.json [--runs R] [--mib N]');
  const runs = Number(args[args.indexOf('--runs') + 1] ?? 0) || 3;
  const mib = Number(args[args.indexOf('--mib') + 1] ?? 0) || 128;
  const only = args.includes('--only') ? args[args.indexOf('--only') + 1] as Vmm : undefined;
  const diskOpts = args.includes('--disk-opts') ? args[args.indexOf('--disk-opts') + 1] ?? '' : '';
  const nodeArgs = args.includes('--node-args') ? (args[args.indexOf('--node-args') + 1] ?? '').split(' ').filter(Boolean) : [];
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-benchdisk-'));
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(0));
  const results: DiskRun[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const vmm of (i % 2 ? ['qemu', 'tshyve'] : ['tshyve', 'qemu']) as Vmm[]) {
        if (only && vmm !== only) continue;
        writeFileSync(img, Buffer.alloc(mib << 20)); // same fresh image for each
        const [cmd, argv] = command(vmm, img, mib, diskOpts, nodeArgs);
        const t = await timedRun(cmd, argv, 180_000);
        const o = stripTerminal(t.output);
        const m = /DISK_T="?([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)/.exec(o);
        const r: DiskRun = { vmm, run: i, ok: false };
        if (m) {
          const t = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
          const rate = (a: number, b: number) => mib / Math.max(b - a, 0.01);
          r.coldWriteMBs = rate(t[0], t[1]);
          r.coldReadMBs = rate(t[1], t[2]);
          r.writeMBs = rate(t[3], t[4]);
          r.readMBs = rate(t[4], t[5]);
          r.ok = true;
        } else {
          r.error = t.timedOut ? 'timeout' : 'no DISK_T line';
          r.tail = o.slice(-1200);
        }
        results.push(r);
        writeFileSync(out, JSON.stringify({ mib, runs: results }, null, 1));
        process.stdout.write(`[bench] disk ${vmm.padEnd(6)} #${i + 1}: ${r.ok ? `write ${r.writeMBs!.toFixed(1)} MB/s, read ${r.readMBs!.toFixed(1)} MB/s (first pass ${r.coldWriteMBs!.toFixed(1)} / ${r.coldReadMBs!.toFixed(1)})` : `FAILED (${r.error})`}\n`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => { console.error(`[bench] disk driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
