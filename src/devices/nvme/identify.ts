/**
 * The Identify data structures (NVMe 1.4, 5.15.2): the controller, the
 * one namespace, the active namespace list and the namespace
 * identification descriptors (EUI-64 and NGUID, stable per disk), and the
 * log pages Linux reads (error information, SMART/health, firmware slot).
 */
import { createHash } from 'node:crypto';
import { AER_LIMIT, MDTS, NVME_VERSION } from './constants.js';
import { Stat } from './io.js';

export const PCI_VENDOR = 0xfb5d, PCI_DEVICE = 0x0a0a; // bhyve's
const MODEL = 'bhyve-NVMe';
const FIRMWARE = '1.0';

export interface ControllerIdentity {
  serial: string;
  maxEntries: number;
  readonly: boolean;
  dsm: boolean;
  eui64: bigint;
  sectorSize: number;
  lbas: number;
}

function ascii(b: Buffer, off: number, len: number, s: string): void {
  b.fill(0x20, off, off + len);
  b.write(s.slice(0, len), off, 'latin1');
}

export function identifyController(id: ControllerIdentity): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt16LE(PCI_VENDOR, 0);
  b.writeUInt16LE(PCI_VENDOR, 2);
  ascii(b, 4, 20, id.serial);
  ascii(b, 24, 40, MODEL);
  ascii(b, 64, 8, FIRMWARE);
  b[72] = 4; // RAB
  b[73] = 0xfc; b[74] = 0x9c; b[75] = 0x58; // IEEE OUI, least significant byte first
  b[77] = MDTS;
  b.writeUInt32LE(NVME_VERSION, 80);
  b[111] = 1; // CNTRLTYPE: I/O controller
  b.writeUInt16LE(1 << 8, 256); // OACS: Doorbell Buffer Config
  b[258] = 3; // ACL (0's based)
  b[259] = AER_LIMIT - 1; // AERL (0's based)
  b[260] = (1 << 1) | 1; // FRMW: one slot, slot 1 read-only
  b[261] = 0; // LPA: no extra log pages
  b.writeUInt16LE(0x157, 266); // WCTEMP: 70 C
  b.writeUInt16LE(0x175, 268); // CCTEMP: 100 C
  b[512] = 0x66; // SQES: 64 bytes
  b[513] = 0x44; // CQES: 16 bytes
  b.writeUInt16LE(Math.min(id.maxEntries, 0xffff), 514); // MAXCMD
  b.writeUInt32LE(1, 516); // NN
  b.writeUInt16LE((id.dsm ? 1 << 2 : 0) | (1 << 3), 520); // ONCS: DSM, Write Zeroes
  b[524] = 1 | (3 << 1); // VWC present; Flush takes NSID FFFFFFFFh
  b.write(`nqn.2014-08.org.nvmexpress:${PCI_VENDOR.toString(16)}${PCI_VENDOR.toString(16)}${id.serial.padEnd(20)}${MODEL.padEnd(40)}`, 768, 'latin1');
  b.writeUInt16LE(2500, 2048); // power state 0: 25 W
  return b;
}

/** The namespace's NGUID: derived from its EUI-64, so as stable as that. */
function nguid(eui64: bigint): Buffer {
  return createHash('sha256').update(`tshyve-nvme-ns:${eui64.toString(16)}`).digest().subarray(0, 16);
}

function eui64Bytes(eui64: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(eui64);
  return b;
}

export function identifyNamespace(id: ControllerIdentity): Buffer {
  const b = Buffer.alloc(4096);
  const n = BigInt(id.lbas);
  b.writeBigUInt64LE(n, 0); // NSZE
  b.writeBigUInt64LE(n, 8); // NCAP
  b.writeBigUInt64LE(n, 16); // NUSE
  b[24] = id.dsm ? 1 : 0; // NSFEAT: thin provisioning (deallocation) when it deallocates
  b[25] = 0; // NLBAF: one format
  b[26] = 0; // FLBAS: format 0
  b[33] = id.dsm ? 0x09 : 0; // DLFEAT: deallocated blocks read as zeros; Write Zeroes may deallocate
  b[99] = id.readonly ? 1 : 0; // NSATTR: write protected
  nguid(id.eui64).copy(b, 104);
  eui64Bytes(id.eui64).copy(b, 120);
  b.writeUInt32LE(Math.log2(id.sectorSize) << 16, 128); // LBAF0: LBADS
  return b;
}

export function activeNamespaces(after: number): Buffer {
  const b = Buffer.alloc(4096);
  if (after < 1) b.writeUInt32LE(1, 0);
  return b;
}

export function namespaceDescriptors(id: ControllerIdentity): Buffer {
  const b = Buffer.alloc(4096);
  b[0] = 1; b[1] = 8; eui64Bytes(id.eui64).copy(b, 4); // EUI-64
  b[12] = 2; b[13] = 16; nguid(id.eui64).copy(b, 16); // NGUID
  return b;
}

/** 128-bit little-endian counter field from a number. */
function u128(b: Buffer, off: number, v: number): void {
  b.writeBigUInt64LE(BigInt(Math.floor(v)) & 0xffffffffffffffffn, off);
}

export function smartLog(stats: Float64Array): Buffer {
  const b = Buffer.alloc(512);
  b.writeUInt16LE(0x143, 1); // composite temperature: 50 C
  b[3] = 100; // available spare
  b[4] = 10; // spare threshold
  u128(b, 32, Math.ceil(stats[Stat.READ_UNITS]! / 1000)); // data units: 1000 x 512 bytes
  u128(b, 48, Math.ceil(stats[Stat.WRITE_UNITS]! / 1000));
  u128(b, 64, stats[Stat.READS]!);
  u128(b, 80, stats[Stat.WRITES]!);
  return b;
}

export function firmwareLog(): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 1; // active slot 1
  ascii(b, 8, 8, FIRMWARE);
  return b;
}
