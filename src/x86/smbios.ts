/**
 * SMBIOS 3.0 tables for firmware to install (QEMU's etc/smbios/smbios-tables
 * and etc/smbios/smbios-anchor): BIOS (0), system (1), enclosure (3), one
 * processor per socket (4), the memory array (16), one memory device (17),
 * one mapped range per RAM region (19), boot status (32) and the end (127).
 * Identity strings are tshyve's; the system UUID is the VM's (-U), or
 * bhyve's version-3 one from the VM's name and the host's.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { guestRamLayout } from './layout.js';
import { checksum } from './acpi/tables.js';

export interface SmbiosOptions {
  memBytes: number;
  sockets: number;
  cores: number;
  threads: number;
  vmName: string;
  /** the VM's UUID string (-U), if given */
  uuid?: string;
}

export const SMBIOS3_ANCHOR_SIZE = 24;
export const SMBIOS_TYPES = [0, 1, 3, 4, 16, 17, 19, 32, 127] as const;

const KiB = 1024;
const MiB = 1024 * KiB;
const NO_HANDLE = 0xffff;
const NOT_PROVIDED = 0xfffe;

class Structure {
  readonly body: Buffer;
  private readonly strings: string[] = [];
  constructor(type: number, length: number, readonly handle: number) {
    this.body = Buffer.alloc(length);
    this.body[0] = type; this.body[1] = length; this.body.writeUInt16LE(handle, 2);
  }
  /** Put string `s` in the string set and its number at byte `at`. */
  str(at: number, s: string): this {
    this.strings.push(s.replace(/[^\x20-\x7e]/g, '?'));
    this.body[at] = this.strings.length;
    return this;
  }
  bytes(): Buffer {
    const tail = this.strings.length ? Buffer.from(`${this.strings.join('\0')}\0\0`, 'latin1') : Buffer.alloc(2);
    return Buffer.concat([this.body, tail]);
  }
}

/** SMBIOS's UUID byte order: the first three fields little-endian. */
export function smbiosUuid(o: Pick<SmbiosOptions, 'vmName' | 'uuid'>): Buffer {
  if (o.uuid !== undefined) {
    const b = Buffer.from(o.uuid.replace(/-/g, ''), 'hex');
    if (b.length !== 16) throw new Error(`bad UUID ${o.uuid}`);
    b.subarray(0, 4).reverse(); b.subarray(4, 6).reverse(); b.subarray(6, 8).reverse();
    return b;
  }
  // bhyve's smbiostbl.c: MD5 of the VM name and the host name (its 256-byte buffer), made a version-3 UUID.
  const host = Buffer.alloc(256);
  host.write(hostname().slice(0, 255), 'latin1');
  const d = createHash('md5').update(o.vmName).update(host).digest();
  d[6] = (d[6]! & 0x0f) | 0x30;
  d[8] = (d[8]! & 0x3f) | 0x80;
  return d;
}

/** The structure table. */
export function buildSmbiosTables(o: SmbiosOptions): Buffer {
  let handle = 0;
  const s = (type: number, length: number): Structure => new Structure(type, length, handle++);
  const out: Structure[] = [];

  const bios = s(0, 0x18).str(4, 'tshyve').str(5, '1.0').str(8, '01/01/2026');
  bios.body.writeUInt16LE(0xe800, 6);
  bios.body.writeBigUInt64LE(1n << 3n, 0x0a); // characteristics not supported
  bios.body[0x13] = 0x18; // UEFI supported, a virtual machine
  bios.body[0x14] = 1; bios.body[0x15] = 0; bios.body[0x16] = 0xff; bios.body[0x17] = 0xff;
  out.push(bios);

  const sys = s(1, 0x1b).str(4, 'tshyve').str(5, 'TSHYVE').str(6, '1.0').str(7, 'None').str(0x19, 'None').str(0x1a, 'Virtual Machine');
  smbiosUuid(o).copy(sys.body, 8);
  sys.body[0x18] = 6; // woken by the power switch
  out.push(sys);

  const encl = s(3, 0x15).str(4, 'tshyve').str(6, '1.0').str(7, 'None').str(8, 'None');
  encl.body[5] = 0x01; encl.body[9] = 3; encl.body[0x0a] = 3; encl.body[0x0b] = 3; encl.body[0x0c] = 2;
  out.push(encl);

  for (let i = 0; i < o.sockets; i++) {
    const cpu = s(4, 0x2a).str(4, `CPU #${i}`).str(7, 'tshyve').str(0x10, 'tshyve vCPU');
    cpu.body[5] = 3; // central processor
    cpu.body[6] = 0xfe; // family: see family 2
    cpu.body[0x18] = 0x41; // socket populated, enabled
    cpu.body[0x19] = 0x01;
    cpu.body.writeUInt16LE(NO_HANDLE, 0x1a); cpu.body.writeUInt16LE(NO_HANDLE, 0x1c); cpu.body.writeUInt16LE(NO_HANDLE, 0x1e);
    cpu.body[0x23] = Math.min(o.cores, 0xff); cpu.body[0x24] = Math.min(o.cores, 0xff); cpu.body[0x25] = Math.min(o.cores * o.threads, 0xff);
    cpu.body.writeUInt16LE(0x04, 0x26); // 64-bit capable
    cpu.body.writeUInt16LE(0x01, 0x28); // family 2: other
    out.push(cpu);
  }

  const array = s(16, 0x17);
  array.body[4] = 3; array.body[5] = 3; array.body[6] = 3; // system board, system memory, no ECC
  array.body.writeUInt32LE(0x80000000, 7); // see the extended capacity
  array.body.writeUInt16LE(NOT_PROVIDED, 0x0b);
  array.body.writeUInt16LE(1, 0x0d);
  array.body.writeBigUInt64LE(BigInt(o.memBytes), 0x0f);
  out.push(array);

  const mb = Math.floor(o.memBytes / MiB);
  const dimm = s(17, 0x28).str(0x10, 'DIMM 0').str(0x11, 'Bank 0').str(0x17, 'tshyve').str(0x18, 'None').str(0x19, 'None').str(0x1a, 'None');
  dimm.body.writeUInt16LE(array.handle, 4);
  dimm.body.writeUInt16LE(NOT_PROVIDED, 6);
  dimm.body.writeUInt16LE(64, 8); dimm.body.writeUInt16LE(64, 0x0a);
  dimm.body.writeUInt16LE(mb >= 0x7fff ? 0x7fff : mb, 0x0c);
  dimm.body[0x0e] = 0x09; // DIMM
  dimm.body[0x12] = 0x07; // RAM
  dimm.body.writeUInt16LE(0x02, 0x13); // type detail: unknown
  dimm.body.writeUInt32LE(mb >= 0x7fff ? mb : 0, 0x1c);
  out.push(dimm);

  for (const r of guestRamLayout(o.memBytes)) {
    const map = s(19, 0x1f);
    const startK = r.gpa / KiB, endK = (r.gpa + r.size) / KiB - 1;
    if (endK < 0xffffffff) {
      map.body.writeUInt32LE(startK, 4); map.body.writeUInt32LE(endK, 8);
    } else {
      map.body.writeUInt32LE(0xffffffff, 4); map.body.writeUInt32LE(0xffffffff, 8);
      map.body.writeBigUInt64LE(BigInt(r.gpa), 0x0f); map.body.writeBigUInt64LE(BigInt(r.gpa + r.size - 1), 0x17);
    }
    map.body.writeUInt16LE(array.handle, 0x0c);
    map.body[0x0e] = 1;
    out.push(map);
  }

  out.push(s(32, 0x0b)); // no errors detected
  out.push(s(127, 4));
  return Buffer.concat(out.map((x) => x.bytes()));
}

/** The SMBIOS 3.0 entry point for a structure table of `tableSize` bytes; the firmware fills in its address. */
export function buildSmbiosAnchor(tableSize: number): Buffer {
  const a = Buffer.alloc(SMBIOS3_ANCHOR_SIZE);
  a.write('_SM3_', 0, 'latin1');
  a[6] = SMBIOS3_ANCHOR_SIZE; a[7] = 3; a[8] = 0; a[9] = 0; a[10] = 1;
  a.writeUInt32LE(tableSize, 0x0c);
  checksum(a, 5);
  return a;
}
