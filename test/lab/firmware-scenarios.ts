/**
 * Lab scenarios for UEFI firmware (issue 17): Debian's OVMF boots the lab's
 * EFI disk (lab/build-efi-disk.sh: a GPT disk whose EFI system partition
 * holds a standalone GRUB, the reference guest's kernel and initrd) to the
 * guest's init, which prints, creates an EFI variable and powers off; a
 * second boot with the same variable store must find that variable.
 *
 * firmware-qemu is the reference: QEMU (KVM in L1) with the same firmware,
 * disk and variable-store template that tshyve's run uses (`-l bootrom`).
 * Each VMM's scenario is `firmwareBoots(name, argv)` with its own command.
 *
 * Opt-in (TSHYVE_LAB_FIRMWARE=1) until OVMF boots reliably in the nested lab:
 * see lab/firmware-notes.md. A boot that never gets anywhere costs minutes.
 */
import { copyFileSync, existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, ROOT } from '../helpers.js';
import { bounded } from './proc.js';
import type { BootResult } from './linux-driver.js';
import type { Phase } from './snapshot-scenarios.js';

/** Debian's OVMF (package ovmf): the code and the variable-store template, 4 MiB builds. */
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
export const EFI_DISK = join(ROOT, 'lab', 'out', 'efi', 'disk.img');

export const FIRMWARE_ENABLED = process.env.TSHYVE_LAB_FIRMWARE === '1';

/**
 * One firmware boot: OVMF, GRUB and the guest's kernel, under nested KVM
 * whose firmware phase is slow (see lab/firmware-notes.md).
 */
const BOOT_MS = 300_000;

/**
 * QEMU with OVMF and the EFI disk, the variable store in `vars`.
 * kernel_irqchip=off: with KVM's in-kernel local APIC, L1's KVM lets the
 * guest write CR8 without an exit, and L0's QEMU (TCG, emulating SVM) then
 * aborts (`tcg_handle_interrupt: assertion failed`); lab/firmware-notes.md.
 */
export function qemuFirmwareArgv(vars: string): string[] {
  return ['qemu-system-x86_64', '-enable-kvm', '-machine', 'pc,kernel_irqchip=off', '-cpu', 'host,kvm-asyncpf-int=off,kvm-poll-control=off', '-m', '512M', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio', '-no-reboot',
    '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`,
    '-drive', `if=pflash,format=raw,unit=1,file=${vars}`,
    '-drive', `if=virtio,format=raw,readonly=on,file=${EFI_DISK}`];
}

/**
 * tshyve with the same firmware, disk and machine size. x86.irqchip=user,
 * always: with KVM's in-kernel local APIC the firmware's CR8 writes abort
 * the lab's L0 (the reason for kernel_irqchip=off above).
 */
export function tshyveFirmwareArgv(vars: string, extra = ['-s', `4,virtio-blk,${EFI_DISK},ro`]): string[] {
  return [process.execPath, CLI, '-c', '1', '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc',
    '-l', 'com1,stdio', '-l', `bootrom,${OVMF_CODE},${vars}`, ...extra, '-o', 'x86.irqchip=user', 'fwlab'];
}

/**
 * Two boots of `argv(vars)` with one fresh copy of OVMF's variable store:
 * the result is the first boot's, with both as its phases.
 */
export async function firmwareBoots(name: string, argv: (vars: string) => string[]): Promise<BootResult> {
  const missing = [OVMF_CODE, OVMF_VARS, EFI_DISK].filter((f) => !existsSync(f));
  if (missing.length) {
    return { name, code: null, stdout: '', stderr: `missing ${missing.join(', ')} (scripts/setup-lab.sh)`, ms: 0 };
  }
  const vars = join(mkdtempSync(join(tmpdir(), 'tshyve-fw-')), 'vars.fd');
  copyFileSync(OVMF_VARS, vars);
  const phases: Phase[] = [];
  for (const what of ['first boot', 'second boot, same variable store']) {
    const { code, signal, stdout, stderr, ms } = await bounded(argv(vars), BOOT_MS).done;
    phases.push({ what, code, signal, stdout, stderr, ms });
    if (!stdout.includes('TSHYVE-EFIVAR=')) break;   // the guest never got there: a second boot tells nothing more
  }
  const first = phases[0]!;
  return { name, code: first.code, stdout: first.stdout, stderr: first.stderr, ms: first.ms, phases };
}

/**
 * OVMF alone (no disk) under tshyve to its UEFI shell, as QEMU's runs 9 and
 * 10 of lab/firmware-notes.md: the firmware phase without GRUB or a kernel.
 * Ended with SIGTERM twice once `Shell>` appears (or at BOOT_MS), so that
 * tshyve prints its exit counts (debug.stats); `ms`: when `Shell>` came.
 */
async function firmwareShell(): Promise<BootResult> {
  const name = 'firmware-tshyve-shell';
  const vars = join(mkdtempSync(join(tmpdir(), 'tshyve-fw-')), 'vars.fd');
  copyFileSync(OVMF_VARS, vars);
  const b = bounded(tshyveFirmwareArgv(vars, ['-o', 'debug.stats=1']), BOOT_MS + 30_000);
  const t0 = Date.now();
  let seen: number | undefined;
  const end = () => { b.child.kill('SIGTERM'); setTimeout(() => b.child.kill('SIGTERM'), 2000); };
  b.child.stdout!.on('data', (d: Buffer) => { if (seen === undefined && d.toString().includes('Shell>')) { seen = Date.now() - t0; end(); } });
  const stop = setTimeout(end, BOOT_MS);
  const r = await b.done;
  clearTimeout(stop);
  return { name, code: r.code, stdout: r.stdout, stderr: r.stderr, ms: seen ?? -1 };
}

export const firmwareScenarios: Record<string, () => Promise<BootResult>> = FIRMWARE_ENABLED ? {
  'firmware-tshyve-shell': firmwareShell,
  'firmware-qemu': () => firmwareBoots('firmware-qemu', qemuFirmwareArgv),
  'firmware-tshyve': () => firmwareBoots('firmware-tshyve', tshyveFirmwareArgv),
} : {};
