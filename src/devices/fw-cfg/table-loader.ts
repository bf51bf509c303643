/**
 * QEMU's "etc/table-loader" (hw/acpi/bios-linker-loader.c; OVMF's
 * QemuLoader.h): 128-byte commands that have the firmware allocate the ACPI
 * blobs, add their addresses to the pointers inside them, then compute the
 * checksums. OVMF installs every table a pointer leads to.
 */
import type { AcpiBlobName, AcpiBlobs } from '../../x86/acpi/index.js';

export const LOADER_ENTRY_SIZE = 128;
export const LOADER_FILE_SIZE = 56;
export const LOADER_CMD = { ALLOCATE: 1, ADD_POINTER: 2, ADD_CHECKSUM: 3 } as const;
export const LOADER_ZONE = { HIGH: 1, FSEG: 2 } as const;

/** The fw_cfg files the ACPI blobs are served as. */
export const ACPI_FILES: Record<AcpiBlobName, string> = { tables: 'etc/acpi/tables', rsdp: 'etc/acpi/rsdp' };
export const TABLE_LOADER_FILE = 'etc/table-loader';

/** The loader commands for `blobs`: allocations first, then pointers, then checksums. */
export function tableLoader(blobs: AcpiBlobs): Buffer {
  const cmds: Buffer[] = [];
  const cmd = (type: number): Buffer => {
    const b = Buffer.alloc(LOADER_ENTRY_SIZE);
    b.writeUInt32LE(type, 0);
    cmds.push(b);
    return b;
  };
  const file = (b: Buffer, at: number, name: string): void => { b.write(name, at, LOADER_FILE_SIZE - 1, 'latin1'); };
  // The RSDP where a legacy scan finds it; the tables anywhere, 64-byte aligned for the FACS.
  for (const [blob, align, zone] of [['rsdp', 16, LOADER_ZONE.FSEG], ['tables', 64, LOADER_ZONE.HIGH]] as const) {
    const b = cmd(LOADER_CMD.ALLOCATE);
    file(b, 4, ACPI_FILES[blob]);
    b.writeUInt32LE(align, 4 + LOADER_FILE_SIZE);
    b[8 + LOADER_FILE_SIZE] = zone;
  }
  for (const p of blobs.pointers) {
    const b = cmd(LOADER_CMD.ADD_POINTER);
    file(b, 4, ACPI_FILES[p.in]);
    file(b, 4 + LOADER_FILE_SIZE, ACPI_FILES.tables);
    b.writeUInt32LE(p.offset, 4 + 2 * LOADER_FILE_SIZE);
    b[8 + 2 * LOADER_FILE_SIZE] = p.size;
  }
  for (const c of blobs.checksums) {
    const b = cmd(LOADER_CMD.ADD_CHECKSUM);
    file(b, 4, ACPI_FILES[c.in]);
    b.writeUInt32LE(c.at, 4 + LOADER_FILE_SIZE);
    b.writeUInt32LE(c.start, 8 + LOADER_FILE_SIZE);
    b.writeUInt32LE(c.length, 12 + LOADER_FILE_SIZE);
  }
  return Buffer.concat(cmds);
}
