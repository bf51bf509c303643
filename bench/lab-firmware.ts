/**
 * Firmware boot benchmark driver (issue 17). Runs INSIDE the nested lab (L1,
 * real KVM), started by bench/run.ts (`--only firmware`) through `lab/run`.
 * Debian's OVMF boots the lab's EFI disk (lab/build-efi-disk.sh: GRUB, the
 * reference guest's kernel and initrd; the guest prints, writes an EFI
 * variable and powers off), with QEMU (the lab's firmware-qemu command,
 * test/lab/firmware-scenarios.ts) and with tshyve (`-l bootrom`), each boot
 * on a fresh copy of OVMF's variable store; for each boot: spawn to exit
 * (power-off) and spawn to TSHYVE-GUEST-OK.
 *
 *   node dist/bench/lab-firmware.js OUT.json [--runs R] [--timeout S] [--budget S]
 *        [--tshyve] [--tshyve-arg ARG]...
 *
 * tshyve boots only with --tshyve: its firmware boot does not run in this lab
 * yet (lab/firmware-notes.md: with KVM's in-kernel local APIC, OVMF's CR8
 * writes make L0's QEMU abort). --tshyve-arg adds an argument to its command
 * line (the user-space interrupt controller's option, say). Without
 * --tshyve the results say why tshyve was skipped.
 */
import { copyFileSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CLI, bootFailure, stripTerminal, timedRun, type Vmm } from './common.js';
import { EFI_DISK, OVMF_CODE, OVMF_VARS, qemuFirmwareArgv } from '../test/lab/firmware-scenarios.js';

/** One firmware boot. */
export interface FirmwareRun {
  vmm: Vmm;
  run: number;
  ok: boolean;
  error?: string;
  /** spawn to exit (the guest powered off) */
  wallMs: number;
  /** spawn to TSHYVE-GUEST-OK (the guest's init ran) */
  markerMs?: number;
  code: number | null;
  tail?: string;
}

export interface FirmwareBench {
  startedAt: string;
  finishedAt?: string;
  /** why tshyve's boots were not run, when they were not */
  tshyveSkipped?: string;
  tshyveArgv?: string[];
  qemuArgv: string[];
  note?: string;
  loadavgStart: number[];
  runs: FirmwareRun[];
}

/** tshyve with the same firmware, variable store and disk as qemuFirmwareArgv. */
export function tshyveFirmwareArgv(vars: string, extra: readonly string[]): string[] {
  return [process.execPath, CLI, '-c', '1', '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
    '-l', `bootrom,${OVMF_CODE},${vars}`, '-s', `4,virtio-blk,${EFI_DISK},ro`, ...extra, 'fwbench'];
}

interface Opts { out: string; runs: number; timeoutS: number; budgetS: number; tshyve: boolean; tshyveArgs: string[] }

function parseArgs(argv: string[]): Opts {
  const o: Opts = { out: '', runs: 1, timeoutS: 300, budgetS: 780, tshyve: false, tshyveArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => { const x = argv[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--runs') o.runs = Number(v());
    else if (a === '--timeout') o.timeoutS = Number(v());
    else if (a === '--budget') o.budgetS = Number(v());
    else if (a === '--tshyve') o.tshyve = true;
    else if (a === '--tshyve-arg') o.tshyveArgs.push(v());
    else if (!o.out && a !== undefined) o.out = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!o.out || !(o.runs >= 1)) throw new Error('usage: lab-firmware OUT.json [--runs R] [--timeout S] [--budget S] [--tshyve] [--tshyve-arg ARG]...');
  return o;
}

async function boot(vmm: Vmm, argv: (vars: string) => string[], run: number, timeoutMs: number): Promise<FirmwareRun> {
  const vars = join(mkdtempSync(join(tmpdir(), 'tshyve-fwbench-')), 'vars.fd');
  copyFileSync(OVMF_VARS, vars);
  const [cmd, ...args] = argv(vars);
  const t = await timedRun(cmd!, args, timeoutMs, /TSHYVE-GUEST-OK/);
  const out = stripTerminal(t.output);
  const r: FirmwareRun = { vmm, run, ok: false, wallMs: Math.round(t.wallMs), code: t.code };
  if (t.markerMs !== undefined) r.markerMs = Math.round(t.markerMs);
  const failed = bootFailure(t, out, vmm, timeoutMs);
  if (failed) r.error = failed; else r.ok = true;
  if (!r.ok) r.tail = out.slice(-1500);
  return r;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  const res: FirmwareBench = { startedAt: new Date().toISOString(), qemuArgv: qemuFirmwareArgv('VARS'), loadavgStart: loadavg(), runs: [] };
  if (o.tshyve) res.tshyveArgv = tshyveFirmwareArgv('VARS', o.tshyveArgs);
  else res.tshyveSkipped = "tshyve's firmware boot is not enabled in this lab (see lab/firmware-notes.md; TSHYVE_FIRMWARE_ARGS enables it)";
  const save = () => writeFileSync(o.out, JSON.stringify(res, null, 1));
  const missing = [OVMF_CODE, OVMF_VARS, EFI_DISK, CLI].filter((f) => !existsSync(f));
  if (missing.length) { res.note = `missing ${missing.join(', ')} (scripts/setup-lab.sh, npm run build)`; save(); return; }
  save();
  const vmms: Vmm[] = o.tshyve ? ['qemu', 'tshyve'] : ['qemu'];
  for (let i = 0; i < o.runs; i++) {
    for (const vmm of i % 2 === 0 ? vmms : [...vmms].reverse()) {
      const leftS = o.budgetS - (performance.now() - t0) / 1000;
      if (leftS < 30) { res.note = `time budget of ${o.budgetS} s used up; later boots not run`; break; }
      const argv = vmm === 'qemu' ? qemuFirmwareArgv : (vars: string) => tshyveFirmwareArgv(vars, o.tshyveArgs);
      const r = await boot(vmm, argv, i, Math.min(o.timeoutS, leftS) * 1000);
      res.runs.push(r);
      save();
      process.stdout.write(`[bench] ${vmm.padEnd(6)} #${i + 1}/${o.runs}: ${r.ok
        ? `power-off after ${(r.wallMs / 1000).toFixed(1)} s, TSHYVE-GUEST-OK at ${(r.markerMs! / 1000).toFixed(1)} s`
        : `FAILED (${r.error}) after ${(r.wallMs / 1000).toFixed(1)} s`}\n`);
    }
    if (res.note) break;
  }
  res.finishedAt = new Date().toISOString();
  save();
}

main().catch((e: unknown) => { console.error(`[bench] driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
