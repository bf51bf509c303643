/**
 * Opening the files of a snapshot as untrusted paths.
 *
 * Writing (SnapshotDir): the target's directory is opened once and every
 * name is then resolved in that open directory (openat/renameat), so the
 * directory cannot be swapped between the checks and the writes. New files
 * are created O_EXCL|O_NOFOLLOW under random names, and a target is replaced
 * only when it is a regular file of the caller's own, never through a symlink.
 * With `within`, the directory's real path must lie inside that directory.
 *
 * Reading (openInput): O_NOFOLLOW|O_NONBLOCK, then fstat: only a regular
 * file is read (a FIFO cannot hang the open, /dev/zero or a directory is
 * refused), and never more than its cap, whatever st_size says.
 * (Files Node opens are O_CLOEXEC already; openat() here asks for it.)
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants as C, fstatSync, fsyncSync, openSync, readlinkSync, readSync, realpathSync, statSync, type Stats } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { basename, dirname } from 'node:path';
import { UserError } from '../errors.js';
import { libc, errno, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_PATH, O_CLOEXEC, ENOENT, EEXIST } from '../host/libc.js';
import { SnapshotError } from './state.js';

const errName = (e: number): string => Object.entries(osConstants.errno).find(([, v]) => v === e)?.[0] ?? `errno ${e}`;

/** The directory a snapshot is written into, held open. */
export class SnapshotDir {
  private constructor(readonly fd: number, readonly path: string) {}

  /**
   * Open the directory of `file` (which must exist and be a directory); with
   * `within`, refuse it unless its real path is `within` or below it.
   */
  static open(file: string, within?: string): SnapshotDir {
    const name = basename(file);
    if (name === '' || name === '.' || name === '..' || file.endsWith('/')) throw new UserError(`snapshot file ${file} must name a file`);
    const dir = dirname(file);
    const outside = () => new UserError(`cannot save to ${file}: it is outside snapshot.dir ${within}`);
    // Said before opening: in the sandbox, a directory outside cannot even be opened (the check on the fd below is the one that counts).
    if (within !== undefined) {
      const real = realPathOf(dir);
      if (real !== undefined && !isInside(real, realDir(within))) throw outside();
    }
    let fd: number;
    try {
      fd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UserError(`cannot save to ${file}: its directory ${dir} ${code === 'ENOENT' ? 'does not exist' : code === 'ENOTDIR' ? 'is not a directory' : `cannot be opened (${code})`}`);
    }
    const d = new SnapshotDir(fd, readlinkSync(`/proc/self/fd/${fd}`));
    if (within !== undefined && !isInside(d.path, realDir(within))) {
      d.close();
      throw outside();
    }
    return d;
  }

  /** Throws unless `name` is absent or a regular file of this user's (not a symlink, a device, a directory, another user's file). */
  checkReplaceable(name: string): void {
    const st = this.lstat(name);
    if (!st) return;
    const where = `${this.path}/${name}`;
    if (st.isSymbolicLink()) throw new UserError(`will not save over ${where}: it is a symbolic link`);
    if (!st.isFile()) throw new UserError(`will not save over ${where}: it is not a regular file`);
    const me = process.geteuid?.() ?? 0;
    if (st.uid !== me) throw new UserError(`will not save over ${where}: it belongs to uid ${st.uid}, not to this user (uid ${me})`);
  }

  /** A new file (mode 0600) under an unpredictable name next to `name`; returns its fd and name. */
  createTemp(name: string): { fd: number; name: string } {
    for (;;) {
      const tmp = `.${name}.${randomBytes(8).toString('hex')}.tmp`;
      const fd = libc.openat(this.fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
      if (fd >= 0) return { fd, name: tmp };
      const e = errno();
      if (e !== EEXIST) throw new UserError(`cannot create a file in ${this.path}: ${errName(e)}`);
    }
  }

  /** Rename `tmp` over `name` (checked again just before). */
  replace(tmp: string, name: string): void {
    this.checkReplaceable(name);
    if (libc.renameat(this.fd, tmp, this.fd, name) < 0) throw new UserError(`cannot rename into ${this.path}/${name}: ${errName(errno())}`);
  }

  /** Make the renames durable. */
  sync(): void { fsyncSync(this.fd); }

  remove(name: string): void { libc.unlinkat(this.fd, name, 0); }

  close(): void { closeSync(this.fd); }

  private lstat(name: string): Stats | undefined {
    const fd = libc.openat(this.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) {
      const e = errno();
      if (e === ENOENT) return undefined;
      throw new UserError(`cannot check ${this.path}/${name}: ${errName(e)}`);
    }
    try { return fstatSync(fd); } finally { closeSync(fd); }
  }
}

function realDir(dir: string): string {
  try { return realpathSync(dir); } catch (e) {
    throw new UserError(`snapshot.dir ${dir} cannot be used: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The real path of `dir`; undefined when it has none (missing: the open says so). */
function realPathOf(dir: string): string | undefined {
  try { return realpathSync(dir); } catch { return undefined; }
}

function isInside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir === '/' ? '/' : `${dir}/`);
}

/** Check a snapshot.dir setting: an existing directory. Throws UserError. */
export function checkSnapshotDir(dir: string): void {
  if (!statSync(realDir(dir)).isDirectory()) throw new UserError(`snapshot.dir ${dir} is not a directory`);
}

/**
 * An input file: opened without following a final symlink or blocking, and
 * only if it is a regular file; else SnapshotError(message(why)), `why` an
 * errno name or a few words.
 */
export function openInput(path: string, message: (why: string) => string): { fd: number; st: Stats } {
  let fd: number;
  try {
    fd = openSync(path, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new SnapshotError(message(code === 'ELOOP' ? 'a symbolic link' : code), code === 'ENOENT' ? 'ENOENT' : 'ESNAPSHOT');
  }
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw new SnapshotError(message('not a regular file'));
  }
  return { fd, st };
}

/** Read at most `cap` bytes of an open file; more is an error, whatever its size claims. */
export function readCapped(fd: number, cap: number, tooLarge: () => Error): Buffer {
  const buf = Buffer.alloc(Math.min(cap + 1, 1 << 20));
  const parts: Buffer[] = [];
  let total = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, cap + 1 - total), null);
    if (n <= 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    if (total > cap) throw tooLarge();
  }
  return Buffer.concat(parts, total);
}

/**
 * The secret of snapshot.key: a regular file no one but its owner can read,
 * at least 32 bytes (at most 4 KiB are used).
 */
export function readKeyFile(path: string): Buffer {
  let fd: number;
  try { fd = openSync(path, C.O_RDONLY | C.O_NONBLOCK); } catch (e) {
    throw new UserError(`snapshot.key ${path} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UserError(`snapshot.key ${path} is not a regular file`);
    if (st.mode & 0o077) throw new UserError(`snapshot.key ${path} is open to group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`);
    const key = readCapped(fd, 4096, () => new UserError(`snapshot.key ${path} is larger than 4 KiB`));
    if (key.length < 32) throw new UserError(`snapshot.key ${path} holds ${key.length} bytes; a key needs at least 32`);
    return key;
  } finally {
    closeSync(fd);
  }
}
