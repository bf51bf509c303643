/**
 * Files the user names in options (a kernel, an initrd, a firmware image):
 * read or checked with one-line errors.
 */
import { readFileSync, statSync, type Stats } from 'node:fs';
import { UserError } from '../errors.js';

function why(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code ?? String(e);
}

/** The file's stat, which must be a regular file. */
export function statUserFile(path: string, what: string): Stats {
  let st: Stats;
  try { st = statSync(path); } catch (e) { throw new UserError(`cannot read ${what} ${path}: ${why(e)}`); }
  if (!st.isFile()) throw new UserError(`${what} ${path} is not a regular file`);
  return st;
}

/** The whole regular file. */
export function readUserFile(path: string, what: string): Buffer {
  statUserFile(path, what);
  try { return readFileSync(path); } catch (e) { throw new UserError(`cannot read ${what} ${path}: ${why(e)}`); }
}
