/**
 * Memory sizes as bhyve reads them (`-m`, `memory.size`).
 *
 * bhyve's vm_parse_memsize() (lib/libvmmapi):
 *   - if the whole string is a number (strtoul base 0: decimal, 0x hex,
 *     leading-0 octal), it is bytes, except that a value below 1 MiB is taken
 *     as MiB ("for the sake of backward compatibility"): `-m 512` is 512 MiB,
 *     `-m 2097152` is 2 MiB;
 *   - otherwise expand_number(3): number + one binary unit k/m/g/t/p/e (either
 *     case, powers of 1024), optionally followed by `b`/`B`; a bare `b`/`B`
 *     suffix means bytes. Nothing may follow.
 * On top of that tshyve rejects 0, signs, whitespace, and anything above
 * Number.MAX_SAFE_INTEGER (sizes are plain numbers here).
 */
import { UserError } from '../errors.js';
import { quote } from './config-file.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

const SHIFT: Record<string, bigint> = { k: 10n, m: 20n, g: 30n, t: 40n, p: 50n, e: 60n };

/**
 * Scan an unsigned integer like strtoul(s, &end, 0). Returns the value and the
 * index just past the digits, or undefined when there are no digits.
 */
export function scanCInteger(s: string, start = 0): { value: bigint; end: number } | undefined {
  let i = start;
  if (s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && /[0-9a-fA-F]/.test(s[i + 2] ?? '')) {
    i += 2;
    const b = i;
    while (i < s.length && /[0-9a-fA-F]/.test(s[i]!)) i++;
    return { value: BigInt('0x' + s.slice(b, i)), end: i };
  }
  if (s[i] === '0') {
    // Octal (a lone "0" is zero).
    const b = i;
    while (i < s.length && /[0-7]/.test(s[i]!)) i++;
    return { value: BigInt('0o' + (s.slice(b, i) || '0')), end: i };
  }
  const b = i;
  while (i < s.length && s[i]! >= '0' && s[i]! <= '9') i++;
  if (i === b) return undefined;
  return { value: BigInt(s.slice(b, i)), end: i };
}

/** bhyve's memory size string -> bytes. Throws UserError on anything else. */
export function parseMemSize(s: string): number {
  const bad = (): never => { throw new UserError(`invalid memory size ${quote(s)}`); };
  const num = scanCInteger(s);
  if (!num) return bad();
  let bytes: bigint;
  if (num.end === s.length) {
    bytes = num.value < BigInt(MiB) ? num.value * BigInt(MiB) : num.value;
  } else {
    let i = num.end;
    const unit = s[i]!.toLowerCase();
    let shift = 0n;
    if (unit in SHIFT) { shift = SHIFT[unit]!; i++; }
    if (s[i] === 'b' || s[i] === 'B') i++;
    if (i !== s.length) return bad();
    bytes = num.value << shift;
  }
  if (bytes === 0n || bytes > BigInt(Number.MAX_SAFE_INTEGER)) return bad();
  return Number(bytes);
}

/**
 * Bytes -> the shortest exact bhyve size string (`256M`, `1G`, `1536M`, `4K`).
 * The result parses back to the same value with parseMemSize(): sizes that are
 * not a multiple of 1 KiB come out as `<n>B`, since a bare number below 1 MiB
 * would be read as MiB.
 */
export function formatSize(bytes: number): string {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`formatSize: bad byte count ${bytes}`);
  if (bytes === 0) return '0';
  for (const [suffix, unit] of [['T', TiB], ['G', GiB], ['M', MiB], ['K', KiB]] as const) {
    if (bytes % unit === 0) return `${bytes / unit}${suffix}`;
  }
  return `${bytes}B`;
}
