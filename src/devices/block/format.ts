/**
 * The image formats a disk option may name (`format=raw|qcow2`), apart from
 * the code that opens them (open.ts), so that option parsing loaded at
 * start-up for every VM does not load the qcow2 backend.
 */
import { UserError } from '../../errors.js';

export type ImageFormat = 'raw' | 'qcow2';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2'];

/** A `format=` option's value (undefined: probe the header); UserError naming `key` for anything else. */
export function parseImageFormat(value: string | undefined, key: string): ImageFormat | undefined {
  if (value === undefined) return undefined;
  if (!(IMAGE_FORMATS as readonly string[]).includes(value)) throw new UserError(`${key}: '${value}' is not ${IMAGE_FORMATS.join(' or ')}`);
  return value as ImageFormat;
}
