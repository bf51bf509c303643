/**
 * What fw_cfg tells the firmware about the VM, as QEMU's pc machine does for
 * OVMF: the signature and features, RAM size and its e820 map, the vCPU
 * counts, the kernel, initrd and command line of boot.kernel (OVMF then
 * boots them as QEMU's -kernel), tshyve's ACPI tables through the table
 * loader, SMBIOS tables, the sleep states (no S3/S4), no 64-bit PCI
 * aperture (every BAR inside the DSDT's 32-bit window), the boot order
 * (bootindex) and the user's own items (-f).
 */
import { E820_RAM, E820_RESERVED, HIGH_RAM_START, lowRamEnd, type E820Entry } from '../../x86/layout.js';
import { buildAcpiBlobs, type AcpiOptions } from '../../x86/acpi/index.js';
import { buildSmbiosAnchor, buildSmbiosTables, type SmbiosOptions } from '../../x86/smbios.js';
import { bzImageSetupSize, isBzImage } from '../../x86/boot/kernel-image.js';
import { UserError } from '../../errors.js';
import { ACPI_FILES, TABLE_LOADER_FILE, tableLoader } from './table-loader.js';
import { BOOTORDER_FILE, bootOrderFile } from './bootorder.js';
import { ID_DMA, ID_TRADITIONAL, KEY, type FwCfgFile, type FwCfgItems } from './device.js';

/** KVM's identity map and TSS pages (Machine.create), which QEMU reports reserved too. */
const KVM_PRIVATE_BASE = 0xfeffc000;
const KVM_PRIVATE_SIZE = 0x4000;
export const E820_ENTRY_SIZE = 20;

export interface FwCfgMachine {
  memBytes: number;
  cpus: number;
  acpi: AcpiOptions;
  smbios: SmbiosOptions;
  /** boot.kernel, booted by the firmware */
  linux?: { kernel: Uint8Array; initrd?: Uint8Array; cmdline: string };
  /** the boot devices' OpenFirmware paths in boot order (bootorder.ts); none: no bootorder file */
  bootOrder?: readonly string[];
  /** the user's items (-f, user-items.ts) */
  userFiles?: readonly FwCfgFile[];
}

/** QEMU's etc/e820: RAM below and above the PCI hole, and KVM's private pages. */
export function e820Table(memBytes: number): Buffer {
  const low = lowRamEnd(memBytes);
  const entries: E820Entry[] = [{ addr: 0, size: low, type: E820_RAM }];
  if (memBytes > low) entries.push({ addr: HIGH_RAM_START, size: memBytes - low, type: E820_RAM });
  entries.push({ addr: KVM_PRIVATE_BASE, size: KVM_PRIVATE_SIZE, type: E820_RESERVED });
  const b = Buffer.alloc(E820_ENTRY_SIZE * entries.length);
  entries.forEach((e, i) => {
    b.writeBigUInt64LE(BigInt(e.addr), i * E820_ENTRY_SIZE);
    b.writeBigUInt64LE(BigInt(e.size), i * E820_ENTRY_SIZE + 8);
    b.writeUInt32LE(e.type, i * E820_ENTRY_SIZE + 16);
  });
  return b;
}

function le(bytes: number, v: number | bigint): Buffer {
  const b = Buffer.alloc(bytes);
  if (bytes === 8) b.writeBigUInt64LE(BigInt(v)); else b.writeUIntLE(Number(v), 0, bytes);
  return b;
}

/** Every item, files sorted by name (as QEMU lists them). */
export function fwCfgItems(m: FwCfgMachine): FwCfgItems {
  const keyed = new Map<number, Uint8Array>([
    [KEY.SIGNATURE, Buffer.from('QEMU', 'latin1')],
    [KEY.ID, le(4, ID_TRADITIONAL | ID_DMA)],
    [KEY.UUID, uuidBytes(m.smbios.uuid)],
    [KEY.RAM_SIZE, le(8, m.memBytes)],
    [KEY.NB_CPUS, le(2, m.cpus)],
    [KEY.MAX_CPUS, le(2, m.cpus)],
    [KEY.BOOT_MENU, le(2, 0)],
  ]);
  if (m.linux) {
    const k = m.linux.kernel;
    // A bzImage's setup and protected-mode parts apart, as QEMU's -kernel; anything else whole.
    const setup = isBzImage(k) ? k.subarray(0, Math.min(bzImageSetupSize(k), k.length)) : k.subarray(0, 0);
    const initrd = m.linux.initrd ?? new Uint8Array(0);
    const cmdline = Buffer.from(`${m.linux.cmdline}\0`, 'latin1');
    keyed.set(KEY.SETUP_SIZE, le(4, setup.length)).set(KEY.SETUP_DATA, setup);
    keyed.set(KEY.KERNEL_SIZE, le(4, k.length - setup.length)).set(KEY.KERNEL_DATA, k.subarray(setup.length));
    keyed.set(KEY.INITRD_SIZE, le(4, initrd.length)).set(KEY.INITRD_DATA, initrd);
    keyed.set(KEY.CMDLINE_SIZE, le(4, cmdline.length)).set(KEY.CMDLINE_DATA, cmdline);
  }
  const acpi = buildAcpiBlobs(m.acpi);
  const smbios = buildSmbiosTables(m.smbios);
  const files: FwCfgFile[] = [
    { name: ACPI_FILES.rsdp, data: acpi.rsdp },
    { name: ACPI_FILES.tables, data: acpi.tables },
    { name: TABLE_LOADER_FILE, data: tableLoader(acpi) },
    { name: 'etc/boot-fail-wait', data: le(4, 0xffffffff) }, // SeaBIOS: never reboot after a failed boot
    { name: 'etc/e820', data: e820Table(m.memBytes) },
    { name: 'etc/smbios/smbios-tables', data: smbios },
    { name: 'etc/smbios/smbios-anchor', data: buildSmbiosAnchor(smbios.length) },
    // S0..S5: S3 and S4 not offered (bit 7 clear); 1 and 2 are their SLP_TYP values, as QEMU's.
    { name: 'etc/system-states', data: Uint8Array.from([0, 0, 0, 1, 2, 0]) },
    { name: 'opt/ovmf/X-PciMmio64Mb', data: Buffer.from('0', 'latin1') },
  ];
  if (m.bootOrder?.length) files.push({ name: BOOTORDER_FILE, data: bootOrderFile(m.bootOrder) });
  for (const u of m.userFiles ?? []) {
    if (files.some((f) => f.name === u.name)) throw new UserError(`fw_cfg item ${u.name} is tshyve's own`);
    files.push(u);
  }
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { keyed, files };
}

/** FW_CFG_UUID: the VM's UUID in RFC 4122 byte order, zero without one (as QEMU). */
function uuidBytes(uuid: string | undefined): Buffer {
  return uuid === undefined ? Buffer.alloc(16) : Buffer.from(uuid.replace(/-/g, ''), 'hex');
}
