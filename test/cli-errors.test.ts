/**
 * Bad user input: one line on stderr, exit 4, no stack trace, and nothing
 * started. None of these needs KVM: input is checked before the host.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, existsSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli, ROOT } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tshyve-cli-'));
const notKernel = join(dir, 'notes.txt');
writeFileSync(notKernel, 'this is not a kernel\n'.repeat(100));
const std = ['-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio'];
const rom = (name: string, size: number): string => { const p = join(dir, name); writeFileSync(p, Buffer.alloc(size)); return p; };
const goodRom = rom('fw.fd', 56 * 1024); // with an 8 KiB variable store: 64 KiB, the flash's size rule
const vars = rom('vars.fd', 8192);
// A regular file not even root can open for writing (sysfs, read-only attribute), where there is one.
const readOnlyFile = ['/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', '/sys/kernel/profiling'].find((p) => {
  try { closeSync(openSync(p, 'r+')); return false; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EACCES'; }
});

const cases: [string, string[], RegExp][] = [
  ['missing kernel file', [...std, '-o', `boot.kernel=${join(dir, 'nope')}`, 'vm'], /kernel .*nope.*no such file/],
  ['a file that is not a kernel', [...std, '-o', `boot.kernel=${notKernel}`, 'vm'], /not a Linux kernel/],
  ['bad -m', ['-m', '12Q', ...std, 'vm'], /memory size/],
  ['zero memory', ['-m', '0', ...std, 'vm'], /memory size/],
  ['unknown device in -s', ['-s', '3,frobnicator', 'vm'], /unknown PCI device 'frobnicator'/],
  ['duplicate slot', ['-s', '0,hostbridge', '-s', '0,lpc', 'vm'], /already occupied/],
  ['malformed -o', ['-o', 'novalue', 'vm'], /novalue/],
  ['memory larger than the host', ['-m', '64T', ...std, '-o', `boot.kernel=${notKernel}`, 'vm'], /more than this host has|memory size/],
  ['an unknown option', ['-Z', 'vm'], /unknown option/],
  ['an option tshyve lacks yet', ['-G', '1234', 'vm'], /not supported/],
  ['a missing -k file', ['-k', join(dir, 'missing.conf'), 'vm'], /missing\.conf/],
  ['no VM name', [...std], /name/i],
  ['a snapshot.dir that is not there', [...std, '-o', `snapshot.dir=${join(dir, 'nodir')}`, 'vm'], /snapshot\.dir .*nodir cannot be used: ENOENT/],
  ['a snapshot.dir that is a file', [...std, '-o', `snapshot.dir=${notKernel}`, 'vm'], /snapshot\.dir .* is not a directory/],
  ['a missing snapshot.key', [...std, '-o', `snapshot.key=${join(dir, 'nokey')}`, 'vm'], /snapshot\.key .*nokey cannot be read: ENOENT/],
  ['a snapshot.key readable by others', [...std, '-o', `snapshot.key=${notKernel}`, 'vm'], /snapshot\.key .* is open to group or others/],
  ['a missing bootrom', [...std, '-l', `bootrom,${join(dir, 'nofw.fd')}`, 'vm'], /cannot read bootrom .*nofw\.fd: no such file/],
  ['a bootrom that is not whole pages', [...std, '-l', `bootrom,${notKernel}`, 'vm'], /bootrom .*notes\.txt is 2100 bytes, not a whole number of 4 KiB pages/],
  ['an empty bootrom', [...std, '-l', `bootrom,${rom('empty.fd', 0)}`, 'vm'], /bootrom .* is 0 bytes/],
  ['a bootrom that is a directory', [...std, '-l', `bootrom,${dir}`, 'vm'], /bootrom .* is not a regular file/],
  ['a bootrom larger than the window', [...std, '-l', `bootrom,${rom('big.fd', 17 * 1024 * 1024)}`, 'vm'], /more than the 16 MiB firmware window/],
  ['variables of another size than the bootrom needs', [...std, '-l', `bootrom,${rom('15m.fd', 15 * 1024 * 1024)},${rom('2m.fd', 2 * 1024 * 1024)}`, 'vm'], /VARFILE .*2m\.fd is 2097152 bytes, bootrom .*15m\.fd needs a 1048576-byte variable store/],
  ['a missing variable file', [...std, '-l', `bootrom,${goodRom},${join(dir, 'novars.fd')}`, 'vm'], /cannot read bootrom variable file .*novars\.fd: no such file/],
  ...(readOnlyFile ? [['a variable file that is not writable', [...std, '-l', `bootrom,${goodRom},${readOnlyFile}`, 'vm'], /bootrom variable file .* is not writable/] as [string, string[], RegExp]] : []),
  ['a bootrom without a host bridge at slot 0', ['-s', '31,lpc', '-l', `bootrom,${goodRom}`, 'vm'], /-l bootrom needs the host bridge at slot 0/],
  ['boot.raw with a bootrom', [...std, '-l', `bootrom,${goodRom},${vars}`, '-o', `boot.raw=${goodRom}`, 'vm'], /boot\.raw and -l bootrom/],
  ['a fw_cfg item without a bootrom', [...std, '-o', `boot.raw=${goodRom}`, '-o', 'control.enable=false', '-f', 'opt/a,string=1', 'vm'], /fw_cfg items \(-f\) are for firmware: give one with -l bootrom/],
  ['a missing fw_cfg item file', [...std, '-l', `bootrom,${goodRom},${vars}`, '-f', `opt/a,file=${join(dir, 'noitem')}`, '-o', 'control.enable=false', 'vm'], /cannot read fw_cfg item opt\/a file .*noitem: no such file/],
  ['a malformed -f', [...std, '-f', 'opt/a', 'vm'], /invalid fw_cfg item 'opt\/a'/],
  ['a bootindex on a device that cannot boot', [...std, '-s', '3,virtio-rnd,bootindex=0', '-l', `bootrom,${goodRom},${vars}`, '-o', 'control.enable=false', 'vm'], /pci\.0\.3\.0\.bootindex: virtio-rnd cannot boot/],
  ['a bad x86.irqchip', [...std, '-l', `bootrom,${goodRom}`, '-o', 'x86.irqchip=split', 'vm'], /invalid value for x86\.irqchip: 'split' \(expected kernel, user or auto\)/],
  ['a bad host bridge id', ['-s', '0,hostbridge,devid=0x12345', '-s', '31,lpc', '-l', `bootrom,${goodRom}`, '-o', 'control.enable=false', 'vm'], /pci\.0\.0\.0\.devid: '0x12345' is not a 16-bit PCI id/],
];

for (const [what, args, re] of cases) {
  test(`bad input: ${what} -> one line, exit 4`, async () => {
    const r = await runCli(args, { timeoutMs: 20_000 });
    assert.equal(r.code, 4, `exit code (stderr: ${r.stderr})`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
    assert.match(lines[0]!, /^tshyve: /);
    assert.match(lines[0]!, re);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.equal(r.stdout, '');
  });
}

test('-o config.dump=1 prints the config tree and exits 0', async () => {
  const r = await runCli(['-c', '2', '-m', '512M', ...std, '-o', 'config.dump=1', '-o', 'boot.cmdline=console=ttyS0 quiet', 'dumpvm']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  for (const l of ['cpus=2', 'memory.size=512M', 'name=dumpvm', 'pci.0.0.0.device=hostbridge', 'pci.0.31.0.device=lpc', 'lpc.com1.path=stdio', 'boot.cmdline=console=ttyS0 quiet']) {
    assert.ok(lines.includes(l), `${l} in dump:\n${r.stdout}`);
  }
});

test('-k reads a config file of key=value lines', async () => {
  const f = join(dir, 'vm.conf');
  writeFileSync(f, '# a comment\ncpus=3\nmemory.size=1G\nname=fromfile\n');
  const r = await runCli(['-k', f, '-o', 'config.dump=1']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^cpus=3$/m);
  assert.match(r.stdout, /^memory\.size=1G$/m);
});

test('no KVM device: one line naming it, exit 4', async () => {
  const bin = join(dir, 'x.bin');
  writeFileSync(bin, Buffer.from([0xf4]));
  const r = await runCli(['-o', `boot.raw=${bin}`, '-o', `kvm.device=${join(dir, 'kvm')}`, 'vm']);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr.trim(), /^tshyve: .*kvm does not exist: KVM is not available/);
  assert.equal(r.stderr.trim().split('\n').length, 1);
});

const referenceKernel = join(ROOT, 'lab', 'out', 'guest', 'vmlinuz');
const emulatedHost = existsSync('/sys/module/kvm_pvm') && existsSync('/dev/kvm');
test('a Linux guest on a software-emulated KVM: says why and points to the lab, exit 4, no hang',
  { skip: !existsSync('/dev/kvm') ? 'no /dev/kvm on this host' : !emulatedHost ? 'this host has hardware KVM' : !existsSync(referenceKernel) ? 'reference kernel not built (scripts/setup-lab.sh)' : false },
  async () => {
    const r = await runCli([...std, '-o', `boot.kernel=${referenceKernel}`, 'vm'], { timeoutMs: 20_000 });
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /cannot boot a Linux kernel: its KVM is kvm_pvm.*lab\/run/);
    assert.ok(r.ms < 15_000, `answered in ${r.ms} ms`);
  });

test('-s help and -l help list the device models', async () => {
  const pci = await runCli(['-s', 'help']);
  assert.equal(pci.code, 0);
  assert.deepEqual(pci.stdout.trim().split('\n').filter((l) => ['hostbridge', 'lpc'].includes(l)), ['hostbridge', 'lpc']);
  const lpc = await runCli(['-l', 'help']);
  assert.match(lpc.stdout, /^com1$/m);
});
