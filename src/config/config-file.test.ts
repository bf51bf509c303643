import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { applyConfigFile, applyConfigOption, applyConfigText, quote, splitConfigOption } from './config-file.js';
import { ConfigTree } from './tree.js';

function throwsUser(fn: () => unknown, ...tokens: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    for (const t of tokens) assert.ok(e.message.includes(t), `mentions '${t}': ${e.message}`);
    return true;
  });
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-cfg-'));
  try { fn(dir); } finally { rmSync(dir, { recursive: true, force: true }); }
}

test('splitConfigOption: first = splits, empty value is invalid', () => {
  assert.deepEqual(splitConfigOption('a.b=c'), { key: 'a.b', value: 'c' });
  assert.deepEqual(splitConfigOption('k=v=w,x'), { key: 'k', value: 'v=w,x' });
  assert.equal(splitConfigOption('k='), undefined);
  assert.equal(splitConfigOption('k'), undefined);
});

test('applyConfigOption sets and rejects', () => {
  const c = new ConfigTree();
  applyConfigOption(c, 'pci.0.3.0.path=/tmp/a=b,c');
  assert.equal(c.get('pci.0.3.0.path'), '/tmp/a=b,c');
  throwsUser(() => applyConfigOption(c, 'novalue'), "'novalue'");
  throwsUser(() => applyConfigOption(c, 'empty='), "'empty='");
  throwsUser(() => applyConfigOption(c, '=x'), "'=x'");
  throwsUser(() => applyConfigOption(c, 'a\nb=1'), "'a\\x0ab'");
  throwsUser(() => applyConfigOption(c, 'bad key=1'), 'bad key');
});

test('applyConfigText: comments, blanks, trimming, CRLF, later wins', () => {
  const c = new ConfigTree();
  applyConfigText(c, [
    '# a comment',
    '',
    '   ',
    '  # indented comment',
    'name=vm1',
    '  memory.size =  1G  ',
    'cpus=2\r',
    'lpc.com1.path=stdio # not a comment: part of the value',
    'cpus=4',
  ].join('\n'), 'test.conf');
  assert.equal(c.get('name'), 'vm1');
  assert.equal(c.get('memory.size'), '1G');
  assert.equal(c.get('cpus'), '4');
  assert.equal(c.get('lpc.com1.path'), 'stdio # not a comment: part of the value');
});

test('applyConfigText: bad line reports file:line', () => {
  const c = new ConfigTree();
  throwsUser(() => applyConfigText(c, 'a=1\n\njunk line\n', 'my.conf'), 'my.conf:3', "'junk line'");
  throwsUser(() => applyConfigText(c, 'a=1\nb=\n', 'my.conf'), 'my.conf:2', "'b='");
  throwsUser(() => applyConfigText(c, '=v\n', 'my.conf'), 'my.conf:1');
  // tree errors get the location too
  throwsUser(() => applyConfigText(c, 'x=1\nx.y=2\n', 'my.conf'), 'my.conf:2', 'x.y');
});

test('applyConfigFile reads a file; missing file names the path', () => {
  withDir((dir) => {
    const p = join(dir, 'vm.conf');
    writeFileSync(p, 'name=fromfile\nmemory.size=512M\n');
    const c = new ConfigTree();
    applyConfigFile(c, p);
    assert.equal(c.get('name'), 'fromfile');
    assert.equal(c.get('memory.size'), '512M');
    const missing = join(dir, 'nope.conf');
    throwsUser(() => applyConfigFile(c, missing), missing, 'no such file');
    mkdirSync(join(dir, 'sub'));
    throwsUser(() => applyConfigFile(c, join(dir, 'sub')), join(dir, 'sub'));
  });
});

test('quote escapes control characters', () => {
  assert.equal(quote('a\tb\n'), "'a\\x09b\\x0a'");
  assert.equal(quote('plain'), "'plain'");
});
