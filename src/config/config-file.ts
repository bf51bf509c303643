/**
 * bhyve's flat `key=value` configuration (`-o var=value`, `-k config_file`).
 *
 * bhyve (bhyverun.c parse_config_option / parse_simple_config_file):
 *   - the key is everything before the first '=', the value everything after
 *     it (the value may contain '=' and ',');
 *   - a missing '=' or an empty value is an error;
 *   - in a file, lines starting with '#' and empty lines are skipped, every
 *     other line must be an option; errors name the file and line.
 * tshyve is slightly more lenient in files: whitespace around the key, the '='
 * and the value is trimmed, lines that are only whitespace are blank, and a
 * '#' after leading whitespace still starts a comment. A CR before the LF is
 * dropped.
 */
import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import type { ConfigTree } from './tree.js';

/**
 * A user token quoted for a one-line error message: control characters are
 * escaped so a stray newline cannot split the message.
 */
export function quote(s: string): string {
  return `'${s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)}'`;
}

/** Split `var=value`; undefined when there is no '=' or the value is empty (bhyve's rule). */
export function splitConfigOption(opt: string): { key: string; value: string } | undefined {
  const eq = opt.indexOf('=');
  if (eq < 0 || eq === opt.length - 1) return undefined;
  return { key: opt.slice(0, eq), value: opt.slice(eq + 1) };
}

/** Apply one `-o var=value`. */
export function applyConfigOption(config: ConfigTree, opt: string): void {
  const kv = splitConfigOption(opt);
  if (!kv || kv.key === '') throw new UserError(`invalid configuration option ${quote(opt)} (expected var=value)`);
  if (/[\x00-\x1f\x7f]/.test(kv.key)) throw new UserError(`invalid config key ${quote(kv.key)}`);
  config.set(kv.key, kv.value);
}

/** Apply the text of a config file; `source` names it in errors. */
export function applyConfigText(config: ConfigTree, text: string, source: string): void {
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    const t = line.trim();
    if (t === '' || t.startsWith('#')) continue;
    const eq = t.indexOf('=');
    const key = eq < 0 ? '' : t.slice(0, eq).trim();
    const value = eq < 0 ? '' : t.slice(eq + 1).trim();
    if (key === '' || value === '') {
      throw new UserError(`${source}:${i + 1}: invalid config option ${quote(t)} (expected var=value)`);
    }
    try {
      config.set(key, value);
    } catch (e) {
      if (e instanceof UserError) throw new UserError(`${source}:${i + 1}: ${e.message}`, e.code);
      throw e;
    }
  }
}

/** `-k FILE`: read and apply a flat config file. */
export function applyConfigFile(config: ConfigTree, path: string): void {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file'
      : err.code === 'EACCES' ? 'permission denied'
      : err.code === 'EISDIR' ? 'is a directory'
      : (err.code ?? err.message);
    throw new UserError(`cannot read configuration file ${quote(path)}: ${why}`);
  }
  applyConfigText(config, text, path);
}
