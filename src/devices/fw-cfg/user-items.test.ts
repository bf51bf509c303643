import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseBhyveArgs } from '../../cli/args.js';
import { UserError } from '../../errors.js';
import { platformAcpiOptions } from '../../pci/acpi-options.js';
import { fwCfgItems } from './items.js';
import { MAX_USER_ITEM_BYTES, userFwCfgFiles } from './user-items.js';

const config = (...f: string[]) => parseBhyveArgs([...f.flatMap((x) => ['-f', x]), 'vm']).config;
const files = (...f: string[]) => userFwCfgFiles(config(...f)).map((x) => [x.name, Buffer.from(x.data).toString('latin1')]);
const refused = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof UserError && re.test(e.message) && !e.message.includes('\n'), re.source);

test('-f: bhyve\'s [name=]NAME,string=S and NAME,file=PATH, in the config tree, in order', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-fwitem-'));
  try {
    writeFileSync(join(dir, 'ign.json'), '{"ignition":{}}');
    const c = config('opt/com.example/a,string=x,y=z', `name=opt/org.tshyve/b,file=${join(dir, 'ign.json')}`);
    assert.deepEqual(c.entries().filter(([k]) => k.startsWith('lpc.')), [
      ['lpc.fwcfg_item.0.name', 'opt/com.example/a'], ['lpc.fwcfg_item.0.string', 'x,y=z'],
      ['lpc.fwcfg_item.1.file', join(dir, 'ign.json')], ['lpc.fwcfg_item.1.name', 'opt/org.tshyve/b'],
    ]);
    // a string keeps its NUL (bhyve's size is strlen + 1), a file is served as it is
    assert.deepEqual(userFwCfgFiles(c).map((x) => [x.name, Buffer.from(x.data).toString('latin1')]),
      [['opt/com.example/a', 'x,y=z\0'], ['opt/org.tshyve/b', '{"ignition":{}}']]);
    assert.deepEqual(files('opt/e,string='), [['opt/e', '\0']]);
  } finally { rmSync(dir, { recursive: true }); }
});

test('-f: malformed options and bad items are one line each', () => {
  refused(() => config('opt/x'), /invalid fw_cfg item 'opt\/x' \(-f \[name=\]NAME,string=STRING or -f \[name=\]NAME,file=PATH\)/);
  refused(() => config('opt/x,data=1'), /invalid fw_cfg item/);
  refused(() => files('etc/x,string=1'), /lpc\.fwcfg_item\.0\.name: fw_cfg item 'etc\/x' must be named opt\/SOMETHING/);
  refused(() => files('opt/,string=1'), /must be named opt\/SOMETHING/);
  refused(() => files(`opt/${'n'.repeat(52)},string=1`), /is not 5-55 printable ASCII characters/);
  refused(() => files('opt/\u00e9,string=1'), /printable ASCII/);
  refused(() => files('opt/a,string=1', 'opt/a,string=2'), /lpc\.fwcfg_item\.1\.name: fw_cfg item 'opt\/a' is given twice/);
  refused(() => files('opt/a,file=/nonexistent/ign.json'), /^cannot read fw_cfg item opt\/a file \/nonexistent\/ign\.json: no such file$/);
  refused(() => files('opt/a,file=/'), /fw_cfg item opt\/a file \/ is not a regular file/);
  const c = parseBhyveArgs(['-o', 'lpc.fwcfg_item.0.name=opt/a', '-o', 'lpc.fwcfg_item.0.string=1', '-o', 'lpc.fwcfg_item.0.file=/x', 'vm']).config;
  refused(() => userFwCfgFiles(c), /lpc\.fwcfg_item\.0: fw_cfg item 'opt\/a' needs either string= or file=/);
  assert.deepEqual(files(`opt/${'n'.repeat(51)},string=1`).length, 1, '55 characters fit');
});

test('-f: a file larger than the limit is refused before it is read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-fwitem-'));
  try {
    const big = join(dir, 'big');
    writeFileSync(big, '');
    truncateSync(big, MAX_USER_ITEM_BYTES + 1); // sparse
    refused(() => files(`opt/big,file=${big}`), /fw_cfg item opt\/big file .*big is 16777217 bytes, more than 16 MiB/);
  } finally { rmSync(dir, { recursive: true }); }
});

test('user items join the file directory; one that is tshyve\'s own is refused', () => {
  const m = { memBytes: 64 << 20, cpus: 1, acpi: platformAcpiOptions(1, true),
    smbios: { memBytes: 64 << 20, sockets: 1, cores: 1, threads: 1, vmName: 'vm' } };
  const items = fwCfgItems({ ...m, userFiles: [{ name: 'opt/a', data: Uint8Array.of(1) }] });
  assert.ok(items.files.some((f) => f.name === 'opt/a'));
  const names = items.files.map((f) => f.name);
  assert.deepEqual(names, [...names].sort());
  refused(() => fwCfgItems({ ...m, userFiles: [{ name: 'opt/ovmf/X-PciMmio64Mb', data: Uint8Array.of(1) }] }), /fw_cfg item opt\/ovmf\/X-PciMmio64Mb is tshyve's own/);
});
