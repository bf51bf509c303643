/**
 * Opening a disk image: the format is probed from the file's first bytes
 * (qcow2's magic) unless given; `format=raw` never looks, so a raw disk
 * whose guest wrote qcow2's magic at its start is not taken for one.
 * qcow2 images are opened with their backing chain (raw or qcow2, the
 * backing-format extension or a probe), relative backing names resolved
 * against the directory of the image that names them (as QEMU does), at
 * most MAX_CHAIN deep and never twice the same file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TshyveError, UserError } from '../../errors.js';
import type { BlockBackend } from './backend.js';
import { FileBlockBackend, type FileBackendOptions } from './file.js';
import type { ImageFormat } from './format.js';
import { QCOW2_MAGIC, V3_HEADER_BYTES, badImage, parseHeader } from './qcow2/header.js';
import { Qcow2Backend } from './qcow2/image.js';
import { repairRefcounts } from './qcow2/check.js';


/** Backing files below an image, at most. */
export const MAX_CHAIN = 16;

export interface OpenImageOptions extends FileBackendOptions {
  /** Force a format; undefined probes the header. */
  format?: ImageFormat;
  /** See Qcow2OpenOptions.passive: this instance only serves the geometry and flushes. */
  passive?: boolean;
}

/** The format of an open file from its first bytes. */
export function probeFormat(file: FileBlockBackend): ImageFormat {
  if (file.size < 4) return 'raw';
  const b = Buffer.alloc(4);
  file.read(b, 0);
  return b.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
}

/** Open an image as a BlockBackend; bad images and options are one-line UserErrors. */
export function openImage(opts: OpenImageOptions): BlockBackend {
  return openChain(opts, []);
}

function openChain(opts: OpenImageOptions, below: string[]): BlockBackend {
  const file = FileBlockBackend.open(opts);
  try {
    const format = opts.format ?? probeFormat(file);
    if (format === 'raw') return file;
    return openQcow2(file, opts, below);
  } catch (e) {
    file.close();
    if (e instanceof UserError) throw e;
    // an I/O error while opening is the image's fault, or the host's: one line either way
    const msg = e instanceof TshyveError || e instanceof Error ? e.message : String(e);
    throw new UserError(`${opts.label ?? 'disk'}: cannot open '${opts.path}': ${msg}`, 'EBLKOPEN');
  }
}

function openQcow2(file: FileBlockBackend, opts: OpenImageOptions, below: string[]): Qcow2Backend {
  const p = opts.path;
  const first = Buffer.alloc(Math.min(file.size, V3_HEADER_BYTES));
  if (first.length < 4 || (file.read(first, 0), first.readUInt32BE(0) !== QCOW2_MAGIC)) throw badImage(p, 'not a qcow2 image (no magic)');
  const bits = first.length >= 24 ? first.readUInt32BE(20) : 0;
  const head = Buffer.alloc(Math.min(file.size, bits >= 9 && bits <= 21 ? 2 ** bits : V3_HEADER_BYTES));
  file.read(head, 0);
  const h = parseHeader(head, file.size, p);
  const l1 = Buffer.alloc(h.l1Size * 8);
  file.read(l1, h.l1TableOffset);
  const reftable = Buffer.alloc(h.refcountTableClusters * 2 ** h.clusterBits);
  file.read(reftable, h.refcountTableOffset);
  let backing: BlockBackend | undefined;
  if (h.backingFile !== undefined) backing = openBacking(p, h.backingFile, h.backingFormat, opts, below);
  try {
    const img = new Qcow2Backend(file, p, h, l1, reftable, { readonly: opts.readonly ?? false, passive: opts.passive ?? false, backing });
    img.prepareWrites(() => repairRefcounts(img));
    return img;
  } catch (e) {
    backing?.close();
    throw e;
  }
}

/** QEMU's rule: a relative backing name is relative to the directory of the image that names it. */
export function resolveBacking(imagePath: string, name: string): string {
  return path.isAbsolute(name) ? name : path.join(path.dirname(imagePath), name);
}

function openBacking(p: string, name: string, fmt: string | undefined, opts: OpenImageOptions, below: string[]): BlockBackend {
  if (/^[a-z][a-z0-9+.-]*:/i.test(name) && !name.startsWith('file:')) {
    throw new UserError(`${p}: backing file '${name}' names a protocol tshyve does not support`, 'EQCOW2');
  }
  const target = resolveBacking(p, name.replace(/^file:/, ''));
  if (fmt !== undefined && fmt !== 'raw' && fmt !== 'qcow2') throw new UserError(`${p}: backing format '${fmt}' is not supported (raw and qcow2 are)`, 'EQCOW2');
  let real: string;
  try {
    real = fs.realpathSync(target);
  } catch {
    throw new UserError(`${p}: backing file '${target}' cannot be opened: not found`, 'EQCOW2');
  }
  const chain = [...below, fs.realpathSync(p)];
  if (chain.includes(real)) throw new UserError(`${p}: backing chain loops back to '${target}'`, 'EQCOW2');
  if (chain.length > MAX_CHAIN) throw new UserError(`${p}: backing chain deeper than ${MAX_CHAIN}`, 'EQCOW2');
  return openChain({ path: target, readonly: true, format: fmt as ImageFormat | undefined, label: opts.label, nocache: opts.nocache }, chain);
}
