/**
 * fw_cfg as a VM built with -l bootrom serves it: the bootorder file from
 * the devices' bootindex (their real config spaces) and the user's -f items,
 * read through the selector and data ports as a firmware reads them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, ExitCode, parseBhyveArgs } from '../src/index.js';
import { FILE_ENTRY_SIZE, FW_CFG_PORT, KEY } from '../src/devices/fw-cfg/device.js';
import { kvmUnavailable, guestBin } from './helpers.js';

const skip = kvmUnavailable() ?? (guestBin('fwcfg-rom') ? undefined : 'guest programs not built (nasm missing)');

test('a bootrom VM serves bootorder (virtio-blk, NVMe) and -f items in its fw_cfg file directory', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-fwcfg-vm-'));
  try {
    writeFileSync(join(dir, 'disk.img'), Buffer.alloc(1 << 20));
    writeFileSync(join(dir, 'item.bin'), Uint8Array.of(1, 2, 3));
    const config = parseBhyveArgs(['-m', '16M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', `bootrom,${guestBin('fwcfg-rom')!}`,
      '-s', `4,virtio-blk,${join(dir, 'disk.img')},bootindex=1`, '-s', '5:2,nvme,ram=1,bootindex=0',
      '-f', 'opt/org.tshyve/s,string=hello', '-f', `opt/org.tshyve/f,file=${join(dir, 'item.bin')}`,
      '-o', 'control.enable=false', 'fwcfgvm']).config;
    const m = await Machine.create(config);
    try {
      const read = (key: number, n: number) => {
        m.pio.write(FW_CFG_PORT, 2, key);
        return Buffer.from(Array.from({ length: n }, () => m.pio.read(FW_CFG_PORT + 1, 1)));
      };
      const count = read(KEY.FILE_DIR, 4).readUInt32BE(0);
      const entries = read(KEY.FILE_DIR, 4 + count * FILE_ENTRY_SIZE).subarray(4);
      const file = (name: string): Buffer => {
        for (let i = 0; i < count; i++) {
          const e = entries.subarray(i * FILE_ENTRY_SIZE, (i + 1) * FILE_ENTRY_SIZE);
          if (e.subarray(8).toString('latin1').replace(/\0+$/, '') === name) return read(e.readUInt16BE(4), e.readUInt32BE(0));
        }
        assert.fail(`no fw_cfg file ${name}`);
      };
      assert.equal(file('bootorder').toString('latin1'), '/pci@i0cf8/pcifb5d,0a0a@5,2/namespace@1,0\n/pci@i0cf8/pci1af4,1042@4/disk@0,0\0');
      assert.equal(file('opt/org.tshyve/s').toString('latin1'), 'hello\0');
      assert.deepEqual([...file('opt/org.tshyve/f')], [1, 2, 3]);
    } finally { await m.finish(ExitCode.POWEROFF); }
  } finally { rmSync(dir, { recursive: true }); }
});
