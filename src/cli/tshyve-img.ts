#!/usr/bin/env node
/**
 * `tshyve-img`: disk images with qemu-img's verbs and flags, on tshyve's own
 * block layer (raw and qcow2), so what it makes qemu-img reads and the other
 * way round.
 *   create [-f FMT] [-b BACKING [-F FMT]] [-u] [-o OPTS] FILE [SIZE]
 *   info [-f FMT] [--output=human|json] FILE
 *   check [-f FMT] [-r leaks|all] [--output=human|json] FILE
 *   snapshot -l | -c NAME | -a NAME | -d NAME FILE
 *   convert [-f FMT] [-O FMT] [-c] [-p] [-o OPTS] SRC DST
 *   resize [-f FMT] FILE [+]SIZE
 *   map [-f FMT] [--output=human|json] FILE
 * Errors are one line on stderr, exit 1; check exits as qemu-img's: 2 for
 * corruption, 3 for leaked clusters only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import cliProgress from 'cli-progress';
import { TshyveError } from '../errors.js';
import {
  type FileBlockBackend, IMAGE_FORMATS, Qcow2Backend, openImage, resolveBacking, type BlockBackend, type ImageFormat,
} from '../devices/block/index.js';
import { checkImage } from '../devices/block/qcow2/check.js';
import { createQcow2, type Qcow2CreateOptions } from '../devices/block/qcow2/create.js';
import { mapImage } from '../devices/block/qcow2/map.js';
import { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots } from '../devices/block/qcow2/snapshot.js';

class ImgError extends Error {}
const die = (msg: string): never => { throw new ImgError(msg); };

function usage(): string {
  return [
    'Usage: tshyve-img COMMAND [OPTIONS]',
    '  create [-f raw|qcow2] [-b BACKING [-F FMT]] [-u] [-o OPTS] FILE [SIZE]',
    '  info [-f FMT] [--output=human|json] FILE',
    '  check [-f FMT] [-r leaks|all] [--output=human|json] FILE',
    '  snapshot -l | -c NAME | -a NAME | -d NAME FILE',
    '  convert [-f FMT] [-O FMT] [-c] [-p] [-o OPTS] SRC DST',
    '  resize [-f FMT] FILE [+]SIZE',
    '  map [-f FMT] [--output=human|json] FILE',
    'OPTS for qcow2: compat=0.10|1.1, cluster_size=SIZE, refcount_bits=N, lazy_refcounts=on|off,',
    '  backing_file=NAME, backing_fmt=FMT',
    '',
  ].join('\n');
}

/** qemu-img's sizes: bytes, or a number with k/M/G/T/P/E (powers of 1024). */
export function parseImageSize(s: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)([kKmMgGtTpPeE]?)[bB]?$/.exec(s.trim());
  if (!m) die(`invalid size '${s}'`);
  const shift = { '': 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 }[m![2]!.toLowerCase()]!;
  const v = Math.round(Number(m![1]) * 2 ** shift);
  if (!Number.isSafeInteger(v)) die(`size '${s}' is too large`);
  return v;
}

function format(f: string | undefined): ImageFormat | undefined {
  if (f === undefined) return undefined;
  if (!(IMAGE_FORMATS as readonly string[]).includes(f)) die(`unknown format '${f}' (raw or qcow2)`);
  return f as ImageFormat;
}

/** `-o key=value,...` as qemu-img takes it. */
function createOptions(o: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of (o ?? '').split(',').filter((x) => x !== '')) {
    const eq = kv.indexOf('=');
    if (eq < 0) die(`invalid option '${kv}' (key=value)`);
    out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function qcow2Options(o: Record<string, string>, size: number): Qcow2CreateOptions {
  const known = ['compat', 'cluster_size', 'refcount_bits', 'lazy_refcounts', 'backing_file', 'backing_fmt'];
  for (const k of Object.keys(o)) if (!known.includes(k)) die(`qcow2 does not know the option '${k}'`);
  const compat = o.compat === undefined ? '1.1' : o.compat === 'v2' ? '0.10' : o.compat === 'v3' ? '1.1' : o.compat;
  if (compat !== '0.10' && compat !== '1.1') die(`compat '${o.compat}' is not 0.10 or 1.1`);
  const lazy = o.lazy_refcounts;
  if (lazy !== undefined && !['on', 'off', 'true', 'false'].includes(lazy)) die(`lazy_refcounts '${lazy}' is not on or off`);
  return {
    size, compat: compat as '0.10' | '1.1',
    clusterSize: o.cluster_size !== undefined ? parseImageSize(o.cluster_size) : undefined,
    refcountBits: o.refcount_bits !== undefined ? Number(o.refcount_bits) : undefined,
    lazyRefcounts: lazy === 'on' || lazy === 'true',
  };
}

function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (e) {
    return die(`${(e as Error).message.split('. ')[0]!.replace(/\.$/, '')}`);
  }
}

function open(file: string, fmt: ImageFormat | undefined, readonly: boolean): BlockBackend {
  return openImage({ path: file, format: fmt, readonly, label: 'tshyve-img' });
}

function asQcow2(b: BlockBackend, file: string, what: string): Qcow2Backend {
  if (!(b instanceof Qcow2Backend)) { b.close(); die(`${file}: ${what} needs a qcow2 image`); }
  return b as Qcow2Backend;
}

function create(args: string[]): number {
  const { values: v, positionals: p } = parse(args, {
    f: { type: 'string', short: 'f' }, b: { type: 'string', short: 'b' }, F: { type: 'string', short: 'F' },
    o: { type: 'string', short: 'o' }, u: { type: 'boolean', short: 'u' }, q: { type: 'boolean', short: 'q' },
  });
  const [file, sizeArg, ...rest] = p;
  if (file === undefined || rest.length > 0) die('create: FILE [SIZE] expected');
  const fmt = format(v.f as string | undefined) ?? 'raw';
  const o = createOptions(v.o as string | undefined);
  const backing = (v.b as string | undefined) ?? o.backing_file;
  let backingFmt = (v.F as string | undefined) ?? o.backing_fmt;
  delete o.backing_file; delete o.backing_fmt;
  let size = sizeArg !== undefined ? parseImageSize(sizeArg) : undefined;
  if (backing !== undefined) {
    if (fmt !== 'qcow2') die('create: a backing file needs -f qcow2');
    if (backingFmt !== undefined) format(backingFmt);
    if (!v.u || size === undefined) {
      const target = resolveBacking(file!, backing);
      const b = open(target, backingFmt as ImageFormat | undefined, true);
      backingFmt ??= b instanceof Qcow2Backend ? 'qcow2' : 'raw';
      size ??= b.size;
      b.close();
    }
  }
  if (size === undefined) die('create: SIZE expected');
  if (fmt === 'raw') {
    if (Object.keys(o).length > 0) die(`raw images take no options (got ${Object.keys(o).join(', ')})`);
    fs.writeFileSync(file!, Buffer.alloc(0));
    fs.truncateSync(file!, size);
  } else {
    createQcow2(file!, { ...qcow2Options(o, size!), backingFile: backing, backingFormat: backingFmt });
  }
  if (!v.q) process.stdout.write(`Formatting '${file}', fmt=${fmt} size=${size}${backing ? ` backing_file=${backing} backing_fmt=${backingFmt}` : ''}\n`);
  return 0;
}

function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${Number.isInteger(v) ? v : v.toFixed(3).replace(/0+$/, '')} ${units[i]}`;
}

function info(args: string[]): number {
  const { values: v, positionals: p } = parse(args, { f: { type: 'string', short: 'f' }, output: { type: 'string' } });
  if (p.length !== 1) die('info: FILE expected');
  const file = p[0]!;
  const b = open(file, format(v.f as string | undefined), true);
  try {
    const j: Record<string, unknown> = {};
    const st = fs.statSync(file);
    j['virtual-size'] = b.size;
    j.filename = file;
    if (b instanceof Qcow2Backend) {
      const h = b.header;
      j['cluster-size'] = b.cs;
      j.format = 'qcow2';
      j['actual-size'] = st.blocks * 512;
      const snaps = listSnapshots(b);
      if (snaps.length > 0) {
        j.snapshots = snaps.map((s) => ({
          'icount': s.extra.length >= 24 ? Number(s.extra.readBigUInt64BE(16)) : 0,
          'vm-state-size': s.vmStateSize, 'date-sec': s.dateSec, 'date-nsec': s.dateNsec,
          'vm-clock-sec': Number(s.vmClockNsec / 1_000_000_000n), 'vm-clock-nsec': Number(s.vmClockNsec % 1_000_000_000n),
          'id': s.id, 'name': s.name,
        }));
      }
      j['format-specific'] = {
        type: 'qcow2',
        data: h.version === 3
          ? { 'compat': '1.1', 'compression-type': 'zlib', 'lazy-refcounts': (h.compatible & 1n) !== 0n, 'refcount-bits': 2 ** h.refcountOrder,
            'corrupt': (h.incompatible & 2n) !== 0n, 'extended-l2': false }
          : { 'compat': '0.10', 'compression-type': 'zlib', 'refcount-bits': 16 },
      };
      if (h.backingFile !== undefined) {
        j['full-backing-filename'] = resolveBacking(file, h.backingFile);
        j['backing-filename'] = h.backingFile;
        if (h.backingFormat !== undefined) j['backing-filename-format'] = h.backingFormat;
      }
      j['dirty-flag'] = (h.incompatible & 1n) !== 0n;
    } else {
      j.format = 'raw';
      j['actual-size'] = st.blocks * 512;
      j['dirty-flag'] = false;
    }
    if (v.output === 'json') {
      process.stdout.write(`${JSON.stringify(j, null, 4)}\n`);
      return 0;
    }
    if (v.output !== undefined && v.output !== 'human') die(`--output '${String(v.output)}' is not human or json`);
    const lines = [
      `image: ${file}`, `file format: ${String(j.format)}`, `virtual size: ${humanSize(b.size)} (${b.size} bytes)`,
      `disk size: ${humanSize(st.blocks * 512)}`,
    ];
    if (b instanceof Qcow2Backend) {
      lines.push(`cluster_size: ${b.cs}`);
      if (j['backing-filename'] !== undefined) lines.push(`backing file: ${String(j['backing-filename'])}`);
      if (j['backing-filename-format'] !== undefined) lines.push(`backing file format: ${String(j['backing-filename-format'])}`);
      const snaps = listSnapshots(b);
      if (snaps.length > 0) lines.push(...snapshotList(b));
      const d = (j['format-specific'] as { data: Record<string, unknown> }).data;
      lines.push('Format specific information:', ...Object.entries(d).map(([k, x]) => `    ${k.replace(/-/g, ' ')}: ${String(x)}`));
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    b.close();
  }
}

function snapshotList(b: Qcow2Backend): string[] {
  const out = ['Snapshot list:', 'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT'];
  const two = (n: number) => String(n).padStart(2, '0');
  for (const s of listSnapshots(b)) {
    const d = new Date(s.dateSec * 1000);
    const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
    const ms = Number(s.vmClockNsec / 1_000_000n);
    const clock = `${two(Math.floor(ms / 3_600_000))}:${two(Math.floor(ms / 60_000) % 60)}:${two(Math.floor(ms / 1000) % 60)}.${String(ms % 1000).padStart(3, '0')}`;
    out.push(`${s.id.padEnd(10)}${s.name.padEnd(18)}${humanSize(s.vmStateSize).padStart(7)} ${date} ${clock}          0`);
  }
  return out;
}

function check(args: string[]): number {
  const { values: v, positionals: p } = parse(args, {
    f: { type: 'string', short: 'f' }, r: { type: 'string', short: 'r' }, output: { type: 'string' }, q: { type: 'boolean', short: 'q' },
  });
  if (p.length !== 1) die('check: FILE expected');
  const repair = v.r as string | undefined;
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') die(`-r '${repair}' is not leaks or all`);
  const file = p[0]!;
  const img = asQcow2(open(file, format(v.f as string | undefined), repair === undefined), file, 'check');
  try {
    let r = checkImage(img, false);
    const fixable = repair === 'all' || (repair === 'leaks' && r.corruptions === 0);
    if (repair !== undefined && fixable && (r.leaks > 0 || r.corruptions > 0 || r.flagErrors > 0)) {
      checkImage(img, true);
      process.stdout.write(`Repairing ${r.leaks} leaks and ${r.corruptions + r.flagErrors} errors\n`);
      r = checkImage(img, false);
    }
    const errors = r.corruptions + r.flagErrors;
    if (v.output === 'json') {
      process.stdout.write(`${JSON.stringify({
        'image-end-offset': r.imageEndOffset, 'total-clusters': r.totalClusters, 'check-errors': 0,
        ...(errors ? { corruptions: errors } : {}), ...(r.leaks ? { leaks: r.leaks } : {}),
        'allocated-clusters': r.allocatedClusters, 'filename': file, 'format': 'qcow2',
      }, null, 4)}\n`);
    } else if (!v.q) {
      const lines = [...r.messages.slice(0, 100)];
      if (errors === 0 && r.leaks === 0) lines.push('No errors were found on the image.');
      if (errors > 0) lines.push(`${errors} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
      if (r.leaks > 0) lines.push(`${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
      const pct = (n: number) => (r.totalClusters ? (100 * n) / r.totalClusters : 0).toFixed(2);
      lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters)}% allocated, ` +
        `${(r.allocatedClusters ? (100 * r.fragmentedClusters) / r.allocatedClusters : 0).toFixed(2)}% fragmented, ` +
        `${(r.allocatedClusters ? (100 * r.compressedClusters) / r.allocatedClusters : 0).toFixed(2)}% compressed clusters`);
      lines.push(`Image end offset: ${r.imageEndOffset}`);
      process.stdout.write(`${lines.join('\n')}\n`);
    }
    return errors > 0 ? 2 : r.leaks > 0 ? 3 : 0;
  } finally {
    img.close();
  }
}

function snapshot(args: string[]): number {
  const { values: v, positionals: p } = parse(args, {
    l: { type: 'boolean', short: 'l' }, c: { type: 'string', short: 'c' }, a: { type: 'string', short: 'a' },
    d: { type: 'string', short: 'd' }, q: { type: 'boolean', short: 'q' }, f: { type: 'string', short: 'f' },
  });
  const ops = (['l', 'c', 'a', 'd'] as const).filter((k) => v[k] !== undefined && v[k] !== false);
  if (ops.length !== 1) die('snapshot: one of -l, -c NAME, -a NAME, -d NAME');
  if (p.length !== 1) die('snapshot: FILE expected');
  const file = p[0]!, op = ops[0]!;
  const img = asQcow2(open(file, format(v.f as string | undefined), op === 'l'), file, 'snapshot');
  try {
    const name = v[op] as string;
    if (op !== 'l' && name === '') die('snapshot: empty name');
    switch (op) {
      case 'l': if (listSnapshots(img).length > 0) process.stdout.write(`${snapshotList(img).join('\n')}\n`); break;
      case 'c': createSnapshot(img, name); break;
      case 'a': applySnapshot(img, name); break;
      case 'd': deleteSnapshot(img, name); break;
    }
    return 0;
  } finally {
    img.close();
  }
}

function convert(args: string[]): number {
  const { values: v, positionals: p } = parse(args, {
    f: { type: 'string', short: 'f' }, O: { type: 'string', short: 'O' }, c: { type: 'boolean', short: 'c' },
    p: { type: 'boolean', short: 'p' }, o: { type: 'string', short: 'o' }, q: { type: 'boolean', short: 'q' },
  });
  if (p.length !== 2) die('convert: SRC DST expected');
  const [srcFile, dstFile] = p as [string, string];
  const outFmt = format(v.O as string | undefined) ?? 'raw';
  if (v.c && outFmt !== 'qcow2') die('convert: -c needs -O qcow2');
  if (path.resolve(srcFile) === path.resolve(dstFile)) die('convert: SRC and DST are the same file');
  const src = open(srcFile, format(v.f as string | undefined), true);
  let dst: BlockBackend | undefined;
  const bar = v.p && process.stdout.isTTY
    ? new cliProgress.SingleBar({ format: '    ({percentage}/100%) [{bar}] {value}/{total} MiB', hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  try {
    const o = createOptions(v.o as string | undefined);
    if (outFmt === 'qcow2') createQcow2(dstFile, qcow2Options(o, src.size));
    else {
      if (Object.keys(o).length > 0) die('raw images take no options');
      fs.writeFileSync(dstFile, Buffer.alloc(0));
      fs.truncateSync(dstFile, src.size);
    }
    dst = open(dstFile, outFmt, false);
    const step = dst instanceof Qcow2Backend ? dst.cs : 1 << 20;
    const buf = Buffer.alloc(step);
    const mib = Math.ceil(src.size / 2 ** 20);
    bar?.start(mib, 0);
    for (let off = 0; off < src.size; off += step) {
      const n = Math.min(step, src.size - off);
      const piece = n === step ? buf : buf.subarray(0, n);
      src.read(piece, off);
      if (!piece.every((x) => x === 0)) {
        if (v.c && dst instanceof Qcow2Backend) {
          if (n < step) buf.fill(0, n);
          dst.writeCompressed(off / step, buf);
        } else {
          dst.write(piece, off);
        }
      }
      bar?.update(Math.floor((off + n) / 2 ** 20));
    }
    dst.flush();
    return 0;
  } finally {
    bar?.stop();
    src.close();
    dst?.close();
  }
}

function resize(args: string[]): number {
  const { values: v, positionals: p } = parse(args, {
    f: { type: 'string', short: 'f' }, shrink: { type: 'boolean' }, q: { type: 'boolean', short: 'q' },
  });
  if (p.length !== 2) die('resize: FILE SIZE expected');
  const [file, sizeArg] = p as [string, string];
  const b = open(file, format(v.f as string | undefined), false);
  try {
    const rel = /^[+-]/.test(sizeArg);
    const delta = parseImageSize(sizeArg.replace(/^[+-]/, ''));
    const size = !rel ? delta : sizeArg.startsWith('+') ? b.size + delta : b.size - delta;
    if (size < 0) die('resize: the size would be negative');
    if (size < b.size && !v.shrink) die('resize: use --shrink to make an image smaller');
    if (b instanceof Qcow2Backend) b.growTo(size);
    else (b as FileBlockBackend).truncate(size);
    if (!v.q) process.stdout.write('Image resized.\n');
    return 0;
  } finally {
    b.close();
  }
}

function map(args: string[]): number {
  const { values: v, positionals: p } = parse(args, { f: { type: 'string', short: 'f' }, output: { type: 'string' } });
  if (p.length !== 1) die('map: FILE expected');
  const file = p[0]!;
  const b = open(file, format(v.f as string | undefined), true);
  try {
    const runs = mapImage(b);
    if (v.output === 'json') {
      const rows = runs.map((r) => {
        const { file: _f, ...row } = r;
        return JSON.stringify(row).replace(/,"/g, ', "').replace(/^\{/, '{ ').replace(/":/g, '": ').replace(/\}$/, '}');
      });
      process.stdout.write(`[${rows.join(',\n')}]\n`);
      return 0;
    }
    if (v.output !== undefined && v.output !== 'human') die(`--output '${String(v.output)}' is not human or json`);
    const hex = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`);
    const lines = ['Offset          Length          Mapped to       File'];
    for (const r of runs) if (r.data && r.offset !== undefined) lines.push(`${hex(r.start).padEnd(16)}${hex(r.length).padEnd(16)}${hex(r.offset).padEnd(16)}${r.file}`);
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    b.close();
  }
}

const VERBS: Record<string, (args: string[]) => number> = { create, info, check, snapshot, convert, resize, map };

function main(argv: string[]): number {
  const [verb, ...rest] = argv;
  if (verb === undefined || verb === '-h' || verb === '--help') { process.stdout.write(usage()); return verb === undefined ? 1 : 0; }
  const f = VERBS[verb];
  if (!f) die(`unknown command '${verb}' (see tshyve-img --help)`);
  return f!(rest);
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  if (e instanceof ImgError || e instanceof TshyveError) {
    process.stderr.write(`tshyve-img: ${e.message.split('\n')[0]}\n`);
  } else {
    if (process.env.TSHYVE_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
    process.stderr.write(`tshyve-img: internal error: ${(e as Error)?.message ?? String(e)}\n`);
  }
  process.exitCode = 1;
}
