import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UserError } from '../errors.js';
import { formatSize, GiB, KiB, MiB, parseMemSize, scanCInteger, TiB } from './size.js';

function throwsUser(fn: () => unknown, token: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `message is one line: ${e.message}`);
    assert.ok(e.message.includes(token), `message mentions '${token}': ${e.message}`);
    assert.match(e.message, /^invalid memory size /);
    return true;
  });
}

test('suffixes are binary and case-insensitive', () => {
  assert.equal(parseMemSize('4k'), 4 * KiB);
  assert.equal(parseMemSize('4K'), 4 * KiB);
  assert.equal(parseMemSize('256m'), 256 * MiB);
  assert.equal(parseMemSize('256M'), 256 * MiB);
  assert.equal(parseMemSize('2g'), 2 * GiB);
  assert.equal(parseMemSize('2G'), 2 * GiB);
  assert.equal(parseMemSize('1t'), TiB);
  assert.equal(parseMemSize('1T'), TiB);
  assert.equal(parseMemSize('1p'), 1024 * TiB);
});

test('expand_number: optional trailing B, bare B means bytes', () => {
  assert.equal(parseMemSize('512MB'), 512 * MiB);
  assert.equal(parseMemSize('1gb'), GiB);
  assert.equal(parseMemSize('4096B'), 4096);
  assert.equal(parseMemSize('4096b'), 4096);
});

test('a plain number below 1 MiB is MiB, otherwise bytes (vm_parse_memsize)', () => {
  assert.equal(parseMemSize('512'), 512 * MiB);
  assert.equal(parseMemSize('1'), MiB);
  assert.equal(parseMemSize('1048575'), 1048575 * MiB);
  assert.equal(parseMemSize('1048576'), MiB);
  assert.equal(parseMemSize('2147483648'), 2 * GiB);
});

test('strtoul base 0: hex and octal', () => {
  assert.equal(parseMemSize('0x100'), 256 * MiB);
  assert.equal(parseMemSize('0x10000000'), 256 * MiB);
  assert.equal(parseMemSize('0x1G'), GiB);
  assert.equal(parseMemSize('010'), 8 * MiB);
  // hex digits swallow b/e, as strtoul does
  assert.equal(parseMemSize('0x1b'), 27 * MiB);
});

test('rejects zero, signs, whitespace, garbage, fractions, overflow', () => {
  for (const bad of ['0', '0M', '0x0', '-1', '-512M', '+512M', ' 512M', '512M ', '', 'M', 'abc', '512X', '512MM',
    '512Mx', '1.5G', '0x', '08', '1e', '8192p', '99999999999999999999', '0xffffffffffffffffff', '512 M']) {
    throwsUser(() => parseMemSize(bad), `'${bad}'`);
  }
});

test('error message escapes control characters', () => {
  throwsUser(() => parseMemSize('1\n2'), "'1\\x0a2'");
});

test('formatSize picks the largest exact unit and round-trips', () => {
  assert.equal(formatSize(256 * MiB), '256M');
  assert.equal(formatSize(GiB), '1G');
  assert.equal(formatSize(1536 * MiB), '1536M');
  assert.equal(formatSize(4 * KiB), '4K');
  assert.equal(formatSize(2 * TiB), '2T');
  assert.equal(formatSize(1000), '1000B');
  assert.equal(formatSize(0), '0');
  for (const n of [4096, 1000, MiB + 512, 3 * GiB, 5 * TiB, 123456789]) {
    assert.equal(parseMemSize(formatSize(n)), n, `round trip ${n}`);
  }
  assert.throws(() => formatSize(-1), RangeError);
  assert.throws(() => formatSize(1.5), RangeError);
});

test('scanCInteger follows strtoul base 0', () => {
  assert.deepEqual(scanCInteger('12ab'), { value: 12n, end: 2 });
  assert.deepEqual(scanCInteger('0x1fz'), { value: 31n, end: 4 });
  assert.deepEqual(scanCInteger('0779'), { value: 63n, end: 3 });
  assert.deepEqual(scanCInteger('0'), { value: 0n, end: 1 });
  assert.deepEqual(scanCInteger('0x'), { value: 0n, end: 1 });
  assert.equal(scanCInteger('x1'), undefined);
  assert.equal(scanCInteger(''), undefined);
});
