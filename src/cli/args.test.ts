import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { findPciDevice, registerPciDevice, type ConfigTreeWriter, type PciDeviceEmulation } from '../pci/device.js';
import { parseBhyveArgs, parsePciSlot, supportedLpcDevices, usage } from './args.js';
import { parsePciLegacyConfig, resolveCpus, resolveMemBytes, MAX_VCPUS } from '../config/options.js';
import { ConfigTree } from '../config/tree.js';

// Fake emulations with names no real device uses.
const notBuilt = (): never => { throw new Error('not built in option tests'); };
function fake(name: string, legacyConfig?: PciDeviceEmulation['legacyConfig']): void {
  if (findPciDevice(name)) return;
  registerPciDevice(legacyConfig ? { name, legacyConfig, create: notBuilt } : { name, create: notBuilt });
}
fake('optest-plain');
fake('optest-bridge');
// A blk-like parser: first field is the path, the rest are generic options.
fake('optest-blk', (node: ConfigTreeWriter, opts: string) => {
  const comma = opts.indexOf(',');
  const path = comma < 0 ? opts : opts.slice(0, comma);
  if (path === '') throw new UserError(`missing path in '${opts}'`);
  node.set('path', path);
  if (comma >= 0) parsePciLegacyConfig(node, opts.slice(comma + 1));
});

const parse = (...argv: string[]) => parseBhyveArgs(argv);
const cfg = (...argv: string[]) => parse(...argv).config;

function throwsUser(fn: () => unknown, ...tokens: (string | RegExp)[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    for (const t of tokens) {
      if (typeof t === 'string') assert.ok(e.message.includes(t), `mentions '${t}': ${e.message}`);
      else assert.match(e.message, t);
    }
    return true;
  });
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-opt-'));
  try { fn(dir); } finally { rmSync(dir, { recursive: true, force: true }); }
}

// ------------------------------------------------------------ basics

test('minimal command line: name and defaults', () => {
  const r = parse('vm0');
  assert.equal(r.restoreFile, undefined);
  assert.equal(r.help, undefined);
  assert.deepEqual(r.config.dump(), [
    'acpi_tables=true',
    'cpus=1',
    'memory.size=256M',
    'name=vm0',
    'x86.strictmsr=true',
  ]);
});

test('dump() of a full command line is sorted by key path', () => {
  const c = cfg('-AHPuwxeWYCSD', '-c', '2', '-m', '1G', '-s', '0,optest-bridge', '-s', '3,optest-blk,/img,ro',
    '-s', '31,optest-plain', '-l', 'com1,stdio', '-U', '01234567-89ab-cdef-0123-456789abcdef', 'guest');
  assert.deepEqual(c.dump(), [
    'acpi_tables=true',
    'cpus=2',
    'destroy_on_poweroff=true',
    'lpc.com1.path=stdio',
    'memory.guest_in_core=true',
    'memory.size=1G',
    'memory.wired=true',
    'name=guest',
    'pci.0.0.0.device=optest-bridge',
    'pci.0.3.0.device=optest-blk',
    'pci.0.3.0.path=/img',
    'pci.0.3.0.ro=true',
    'pci.0.31.0.device=optest-plain',
    'rtc.use_localtime=false',
    'uuid=01234567-89ab-cdef-0123-456789abcdef',
    'virtio_msix=false',
    'x86.mptable=false',
    'x86.strictio=true',
    'x86.strictmsr=false',
    'x86.vmexit_on_hlt=true',
    'x86.vmexit_on_pause=true',
    'x86.x2apic=true',
  ]);
});

// ------------------------------------------------------------ getopt

test('getopt: combined flags, attached and separate values', () => {
  const c = cfg('-AHP', '-c2', '-m512M', '-s3,optest-plain', '-lcom2,/dev/nmdm0A', '-oa.b=c', 'vm');
  assert.equal(c.get('x86.vmexit_on_hlt'), 'true');
  assert.equal(c.get('x86.vmexit_on_pause'), 'true');
  assert.equal(c.get('cpus'), '2');
  assert.equal(c.get('memory.size'), '512M');
  assert.equal(c.get('pci.0.3.0.device'), 'optest-plain');
  assert.equal(c.get('lpc.com2.path'), '/dev/nmdm0A');
  assert.equal(c.get('a.b'), 'c');
  // a flag cluster ending in an option that takes the next word
  const c2 = cfg('-Hm', '2G', 'vm');
  assert.equal(c2.get('x86.vmexit_on_hlt'), 'true');
  assert.equal(c2.get('memory.size'), '2G');
  // the rest of the word is the argument, even if it looks like flags
  throwsUser(() => parse('-mH', 'vm'), "invalid memory size 'H'");
});

test('getopt: option argument may start with -', () => {
  throwsUser(() => parse('-m', '-5', 'vm'), "'-5'");
  assert.equal(cfg('-o', 'x=-1', 'vm').get('x'), '-1');
});

test('getopt: -- ends options; parsing stops at the first non-option (no permutation)', () => {
  assert.equal(cfg('-H', '--', 'vm').get('name'), 'vm');
  throwsUser(() => parse('vm', '-H'), "unexpected argument '-H'", "'vm'");
  throwsUser(() => parse('vm', 'other'), "'other'");
});

test('getopt: missing argument', () => {
  throwsUser(() => parse('vm', '-m'), "'-m'");
  throwsUser(() => parse('-m'), /option -m requires an argument/);
  throwsUser(() => parse('-H', '-s'), /option -s requires an argument/);
});

test('unknown options', () => {
  throwsUser(() => parse('-Z', 'vm'), /^unknown option -Z\b/);
  throwsUser(() => parse('-AZ', 'vm'), /^unknown option -Z\b/);
  throwsUser(() => parse('-b', 'vm'), /^unknown option -b\b/);
  throwsUser(() => parse('--long', 'vm'), /^unknown option --/);
});

test('bhyve options tshyve does not support yet', () => {
  for (const o of ['-p', '-G', '-K', '-n']) {
    throwsUser(() => parse(o, 'x', 'vm'), new RegExp(`^option ${o} is not supported by tshyve yet`));
  }
  throwsUser(() => parse('-p0:1', 'vm'), /^option -p is not supported by tshyve yet/);
});

test('-f: a fw_cfg item, bhyve\'s [name=]NAME,(string|file)=VALUE', () => {
  assert.equal(cfg('-f', 'name=opt/a,string=x', 'vm').get('lpc.fwcfg_item.0.string'), 'x');
  assert.equal(cfg('-f', 'opt/a,file=/f', '-f', 'opt/b,string=', 'vm').get('lpc.fwcfg_item.1.name'), 'opt/b');
  throwsUser(() => parse('-f', 'x', 'vm'), /^invalid fw_cfg item 'x'/);
  throwsUser(() => parse('-f'), /option -f requires an argument/);
});

test('accepted no-op / compatibility flags: -A, -a, -I', () => {
  const c = cfg('-A', '-I', 'vm');
  assert.equal(c.get('acpi_tables'), 'true');
  assert.equal(cfg('-x', '-a', 'vm').get('x86.x2apic'), 'false');
  assert.equal(cfg('-a', '-x', 'vm').get('x86.x2apic'), 'true');
});

test('-h returns help immediately; usage() lists the options', () => {
  const r = parse('-H', '-h', '-Z');
  assert.equal(r.help, true);
  assert.equal(parse('-Ah').help, true);
  const u = usage();
  assert.match(u, /^Usage: tshyve /);
  for (const o of ['-c', '-m', '-s', '-l', '-o', '-k', '-U', '-r', '-S', '-W', '-Y', '-x', '-w']) {
    assert.ok(u.includes(`${o}:`), `usage mentions ${o}`);
  }
  assert.match(usage('bhyve'), /^Usage: bhyve /);
});

test('-s help / -l help ask for device lists', () => {
  assert.equal(parse('-s', 'help').list, 'pci');
  assert.equal(parse('-l', 'help').list, 'lpc');
  assert.deepEqual(supportedLpcDevices(), ['com1', 'com2', 'com3', 'com4', 'bootrom', 'fwcfg']);
});

// ------------------------------------------------------------ flags

test('each flag sets its bhyve config key', () => {
  const cases: [string, string, string][] = [
    ['-A', 'acpi_tables', 'true'],
    ['-H', 'x86.vmexit_on_hlt', 'true'],
    ['-P', 'x86.vmexit_on_pause', 'true'],
    ['-u', 'rtc.use_localtime', 'false'],
    ['-D', 'destroy_on_poweroff', 'true'],
    ['-w', 'x86.strictmsr', 'false'],
    ['-x', 'x86.x2apic', 'true'],
    ['-e', 'x86.strictio', 'true'],
    ['-W', 'virtio_msix', 'false'],
    ['-Y', 'x86.mptable', 'false'],
    ['-C', 'memory.guest_in_core', 'true'],
    ['-S', 'memory.wired', 'true'],
  ];
  for (const [flag, key, value] of cases) assert.equal(cfg(flag, 'vm').get(key), value, flag);
  const c = cfg('vm');
  for (const [, key] of cases) {
    if (key !== 'acpi_tables' && key !== 'x86.strictmsr') assert.equal(c.get(key), undefined, key);
  }
});

// ------------------------------------------------------------ -c

test('-c forms', () => {
  assert.equal(cfg('-c', '4', 'vm').get('cpus'), '4');
  assert.equal(cfg('-c', 'cpus=4', 'vm').get('cpus'), '4');
  let c = cfg('-c', '4,sockets=2,cores=2,threads=1', 'vm');
  assert.deepEqual(resolveCpus(c), { cpus: 4, sockets: 2, cores: 2, threads: 1 });
  c = cfg('-c', 'sockets=2,cores=2,threads=2', 'vm');
  assert.equal(c.get('cpus'), '8', 'cpus computed from the topology');
  assert.deepEqual(resolveCpus(c), { cpus: 8, sockets: 2, cores: 2, threads: 2 });
  c = cfg('-c', '', 'vm');
  assert.deepEqual(resolveCpus(c), { cpus: 1, sockets: 1, cores: 1, threads: 1 });
  assert.equal(c.get('sockets'), '1');
  // sockets defaults to cpus (bhyve's calc_topology)
  assert.deepEqual(resolveCpus(cfg('-c', '6', 'vm')), { cpus: 6, sockets: 6, cores: 1, threads: 1 });
  // strtol base 0
  assert.equal(resolveCpus(cfg('-c', '0x10', 'vm')).cpus, 16);
  // later wins, per setting
  c = cfg('-c', '2', '-c', 'cpus=4,sockets=4', 'vm');
  assert.deepEqual(resolveCpus(c), { cpus: 4, sockets: 4, cores: 1, threads: 1 });
});

test('-c errors', () => {
  throwsUser(() => parse('-c', 'foo=2', 'vm'), /invalid cpu topology 'foo=2'/, "'foo'");
  throwsUser(() => parse('-c', '2,,', 'vm'), "'2,,'");
  throwsUser(() => parse('-c', '0', 'vm'), "invalid value for cpus: '0'");
  throwsUser(() => parse('-c', 'two', 'vm'), "'two'");
  throwsUser(() => parse('-c', '256', 'vm'), "'256'", String(MAX_VCPUS));
  throwsUser(() => parse('-c', '-1', 'vm'), "'-1'");
  throwsUser(() => parse('-c', 'cpus=', 'vm'), "invalid value for cpus: ''");
  throwsUser(() => parse('-c', '4,cores=0', 'vm'), "invalid value for cores: '0'");
  throwsUser(() => parse('-c', '4,sockets=2,cores=1', 'vm'), /topology \(2 sockets, 1 cores, 1 threads\) does not match 4 vCPUs/);
  // bhyve quirk: sockets defaults to cpus, so cores=2 with cpus=4 gives 8
  throwsUser(() => parse('-c', '4,cores=2', 'vm'), /4 sockets, 2 cores, 1 threads\) does not match 4 vCPUs/);
  throwsUser(() => parse('-c', 'sockets=16,cores=16,threads=2', 'vm'), /512 vCPUs/, '255');
  // -o values are validated too
  throwsUser(() => parse('-o', 'cpus=abc', 'vm'), "'abc'");
});

// ------------------------------------------------------------ -m

test('-m stores the string, validated', () => {
  assert.equal(cfg('-m', '2G', 'vm').get('memory.size'), '2G');
  assert.equal(cfg('-m', '512', 'vm').get('memory.size'), '512');
  assert.equal(resolveMemBytes(cfg('-m', '512', 'vm')), 512 * 1024 * 1024);
  assert.equal(resolveMemBytes(cfg('vm')), 256 * 1024 * 1024);
  assert.equal(resolveMemBytes(cfg('-m', '1G', '-m', '2G', 'vm')), 2 * 1024 ** 3);
  throwsUser(() => parse('-m', '0', 'vm'), "invalid memory size '0'");
  throwsUser(() => parse('-m', 'lots', 'vm'), "invalid memory size 'lots'");
  throwsUser(() => parse('-m', '1.5G', 'vm'), "'1.5G'");
  throwsUser(() => parse('-o', 'memory.size=12Q', 'vm'), "'12Q'");
  throwsUser(() => parse('-m', '4097B', 'vm'), "'4097B'", 'multiple of 4K');
  const empty = new ConfigTree();
  assert.equal(resolveMemBytes(empty), 256 * 1024 * 1024);
});

// ------------------------------------------------------------ -s

test('parsePciSlot forms and ranges', () => {
  assert.deepEqual(parsePciSlot('3'), { bus: 0, slot: 3, func: 0 });
  assert.deepEqual(parsePciSlot('3:1'), { bus: 0, slot: 3, func: 1 });
  assert.deepEqual(parsePciSlot('1:3:7'), { bus: 1, slot: 3, func: 7 });
  assert.deepEqual(parsePciSlot('255:31:7'), { bus: 255, slot: 31, func: 7 });
  assert.deepEqual(parsePciSlot('03'), { bus: 0, slot: 3, func: 0 });
  for (const bad of ['32', '3:8', '256:0:0', '-1', '', 'a', '1:2:3:4', '3:', ':3', '0x3', ' 3']) {
    assert.equal(parsePciSlot(bad), undefined, bad);
  }
});

test('-s slot forms map to pci.B.S.F', () => {
  const c = cfg('-s', '3,optest-plain', '-s', '4:2,optest-plain', '-s', '1:5:7,optest-plain', '-s', '07,optest-plain', 'vm');
  assert.equal(c.get('pci.0.3.0.device'), 'optest-plain');
  assert.equal(c.get('pci.0.4.2.device'), 'optest-plain');
  assert.equal(c.get('pci.1.5.7.device'), 'optest-plain');
  assert.equal(c.get('pci.0.7.0.device'), 'optest-plain', 'no leading zeros in node names');
});

test('-s conf: generic key=value parser, bare word = true (bhyve pci_parse_legacy_config)', () => {
  const c = cfg('-s', '5,optest-plain,a=1,b=x=y,flag,,c=', 'vm');
  assert.equal(c.get('pci.0.5.0.a'), '1');
  assert.equal(c.get('pci.0.5.0.b'), 'x=y');
  assert.equal(c.get('pci.0.5.0.flag'), 'true');
  assert.equal(c.get('pci.0.5.0.c'), '');
  throwsUser(() => parse('-s', '5,optest-plain,=v', 'vm'), "''", "'=v'");
  throwsUser(() => parse('-s', '5,optest-plain,a.b=v', 'vm'), "'a.b'");
});

test('-s conf: the device legacy parser gets everything after emulation,', () => {
  const c = cfg('-s', '4,optest-blk,/dev/zvol/x,ro,sectorsize=512', 'vm');
  assert.equal(c.get('pci.0.4.0.device'), 'optest-blk');
  assert.equal(c.get('pci.0.4.0.path'), '/dev/zvol/x');
  assert.equal(c.get('pci.0.4.0.ro'), 'true');
  assert.equal(c.get('pci.0.4.0.sectorsize'), '512');
  // no conf: the legacy parser is not called
  assert.equal(cfg('-s', '4,optest-blk', 'vm').get('pci.0.4.0.path'), undefined);
  // its UserErrors get the slot and device prepended
  throwsUser(() => parse('-s', '4,optest-blk,,ro', 'vm'), /^pci 0:4:0 optest-blk: missing path/);
});

test('-s errors', () => {
  throwsUser(() => parse('-s', '3', 'vm'), "invalid PCI slot info field '3'");
  throwsUser(() => parse('-s', '32,optest-plain', 'vm'), "invalid PCI slot '32'");
  throwsUser(() => parse('-s', '3:8,optest-plain', 'vm'), "'3:8'");
  throwsUser(() => parse('-s', '256:0:0,optest-plain', 'vm'), "'256:0:0'");
  throwsUser(() => parse('-s', 'x,optest-plain', 'vm'), "'x'");
  throwsUser(() => parse('-s', '3,no-such-dev', 'vm'), /^unknown PCI device 'no-such-dev' \(known: .*optest-blk, optest-bridge, optest-plain/);
  throwsUser(() => parse('-s', '3,', 'vm'), "unknown PCI device ''");
  throwsUser(() => parse('-s', '3,optest-plain', '-s', '3:0,optest-blk', 'vm'), 'pci slot 0:3:0 already occupied');
  throwsUser(() => parse('-s', '1:3:0,optest-plain', '-s', '1:3:0,optest-plain', 'vm'), 'pci slot 1:3:0 already occupied');
  // a node created by -o occupies the slot, like bhyve's find_config_node check
  throwsUser(() => parse('-o', 'pci.0.6.0.device=optest-plain', '-s', '6,optest-plain', 'vm'), 'pci slot 0:6:0 already occupied');
  // different functions of one slot are fine
  const c = cfg('-s', '3:0,optest-plain', '-s', '3:1,optest-plain', 'vm');
  assert.equal(c.get('pci.0.3.1.device'), 'optest-plain');
});

// ------------------------------------------------------------ -l

test('-l comN sets lpc.comN.path (whole remainder, case-insensitive name)', () => {
  const c = cfg('-l', 'com1,stdio', '-l', 'COM2,/dev/nmdm0A', '-l', 'com4,tcp=127.0.0.1:1234,x', 'vm');
  assert.equal(c.get('lpc.com1.path'), 'stdio');
  assert.equal(c.get('lpc.com2.path'), '/dev/nmdm0A');
  assert.equal(c.get('lpc.com4.path'), 'tcp=127.0.0.1:1234,x');
  assert.equal(cfg('-l', 'com1,stdio', '-l', 'com1,/dev/null', 'vm').get('lpc.com1.path'), '/dev/null');
});

test('-l bootrom,ROMFILE[,VARFILE] sets lpc.bootrom and lpc.bootvars; -l fwcfg,qemu sets lpc.fwcfg', () => {
  const c = cfg('-l', 'bootrom,/usr/share/OVMF/OVMF_CODE_4M.fd,/var/vm/vars.fd', '-l', 'fwcfg,qemu', 'vm');
  assert.equal(c.get('lpc.bootrom'), '/usr/share/OVMF/OVMF_CODE_4M.fd');
  assert.equal(c.get('lpc.bootvars'), '/var/vm/vars.fd');
  assert.equal(c.get('lpc.fwcfg'), 'qemu');
  const d = cfg('-l', 'BOOTROM,/fw.fd', 'vm');
  assert.equal(d.get('lpc.bootrom'), '/fw.fd');
  assert.equal(d.get('lpc.bootvars'), undefined);
});

test('-l errors', () => {
  throwsUser(() => parse('-l', 'bootrom', 'vm'), "'bootrom'", 'ROMFILE');
  throwsUser(() => parse('-l', 'bootrom,', 'vm'), "'bootrom'", 'ROMFILE');
  throwsUser(() => parse('-l', 'bootrom,/a.fd,', 'vm'), "'bootrom'", 'ROMFILE[,VARFILE] only');
  throwsUser(() => parse('-l', 'bootrom,/a.fd,/b.fd,/c.fd', 'vm'), "'bootrom'", 'ROMFILE[,VARFILE] only');
  throwsUser(() => parse('-l', 'fwcfg,bhyve', 'vm'), "'fwcfg'", 'fwctl');
  throwsUser(() => parse('-l', 'fwcfg', 'vm'), "'fwcfg'", 'qemu');
  throwsUser(() => parse('-l', 'tpm,swtpm,/tmp/s', 'vm'), "'tpm'", 'not supported');
  throwsUser(() => parse('-l', 'com5,stdio', 'vm'), /^unknown LPC device 'com5' \(known: com1, com2, com3, com4, bootrom, fwcfg\)/);
  throwsUser(() => parse('-l', 'com1', 'vm'), "'com1'", 'backend');
  throwsUser(() => parse('-l', 'com1,', 'vm'), "'com1'");
});

// ------------------------------------------------------------ -o / -k

test('-o sets any key; value may contain = and ,', () => {
  const c = cfg('-o', 'pci.0.9.0.device=optest-plain', '-o', 'foo.bar=a=b,c=d', 'vm');
  assert.equal(c.get('pci.0.9.0.device'), 'optest-plain');
  assert.equal(c.get('foo.bar'), 'a=b,c=d');
  throwsUser(() => parse('-o', 'novalue', 'vm'), "invalid configuration option 'novalue'");
  throwsUser(() => parse('-o', 'k=', 'vm'), "'k='");
  throwsUser(() => parse('-o', 'bad key=1', 'vm'), "'bad key'");
});

test('-k reads a config file; relative paths use opts.cwd', () => {
  withDir((dir) => {
    writeFileSync(join(dir, 'vm.conf'), '# vm\nname=filevm\ncpus=2\nmemory.size = 1G\nlpc.com1.path=stdio\n');
    const r = parseBhyveArgs(['-k', 'vm.conf'], { cwd: dir });
    assert.equal(r.config.get('name'), 'filevm');
    assert.equal(r.config.get('cpus'), '2');
    assert.equal(r.config.get('memory.size'), '1G');
    assert.equal(r.config.get('lpc.com1.path'), 'stdio');
    const abs = cfg('-k', join(dir, 'vm.conf'));
    assert.equal(abs.get('name'), 'filevm');
  });
});

test('-k errors: missing file names the path, bad line names file:line', () => {
  withDir((dir) => {
    const missing = join(dir, 'missing.conf');
    throwsUser(() => parse('-k', missing, 'vm'), missing);
    const bad = join(dir, 'bad.conf');
    writeFileSync(bad, 'name=a\n\nthis is not an option\n');
    throwsUser(() => parse('-k', bad, 'vm'), `${bad}:3`, "'this is not an option'");
  });
});

test('precedence: options apply in order, later wins; positional name wins', () => {
  withDir((dir) => {
    const f = join(dir, 'a.conf');
    writeFileSync(f, 'cpus=2\nmemory.size=1G\nname=fromfile\nx86.x2apic=false\n');
    let c = cfg('-c', '8', '-k', f, '-x');
    assert.equal(c.get('cpus'), '2', '-k after -c wins');
    assert.equal(c.get('x86.x2apic'), 'true', '-x after -k wins');
    assert.equal(c.get('name'), 'fromfile');
    c = cfg('-k', f, '-c', '8', '-m', '4G', 'cli');
    assert.equal(c.get('cpus'), '8');
    assert.equal(c.get('memory.size'), '4G');
    assert.equal(c.get('name'), 'cli', 'positional name overrides name= from the file');
    c = cfg('-m', '1G', '-o', 'memory.size=3G', 'vm');
    assert.equal(c.get('memory.size'), '3G');
    c = cfg('-o', 'memory.size=3G', '-m', '1G', 'vm');
    assert.equal(c.get('memory.size'), '1G');
    // defaults never override what was set
    c = cfg('-o', 'acpi_tables=false', '-w', 'vm');
    assert.equal(c.get('acpi_tables'), 'false');
    assert.equal(c.get('x86.strictmsr'), 'false');
  });
});

// ------------------------------------------------------------ name, uuid, -r

test('VM name: required unless set by -o/-k or -r; validated', () => {
  assert.equal(cfg('-o', 'name=byopt').get('name'), 'byopt');
  throwsUser(() => parse('-H'), /missing VM name/);
  throwsUser(() => parse(), /missing VM name/);
  assert.equal(cfg('a.b_c-1').get('name'), 'a.b_c-1');
  assert.equal(cfg('x'.repeat(32)).get('name'), 'x'.repeat(32));
  throwsUser(() => parse('x'.repeat(33)), `'${'x'.repeat(33)}'`);
  throwsUser(() => parse('bad/name'), "invalid VM name 'bad/name'");
  throwsUser(() => parse('.hidden'), "'.hidden'");
  throwsUser(() => parse('--', '-dash'), "'-dash'");
  throwsUser(() => parse('sp ace'), "'sp ace'");
  throwsUser(() => parse('new\nline'), "'new\\x0aline'");
  throwsUser(() => parse('-o', 'name=a/b'), "'a/b'");
});

test('-U validates the UUID', () => {
  assert.equal(cfg('-U', 'DEADBEEF-0000-1111-2222-333344445555', 'vm').get('uuid'), 'DEADBEEF-0000-1111-2222-333344445555');
  throwsUser(() => parse('-U', 'not-a-uuid', 'vm'), "invalid UUID 'not-a-uuid'");
  throwsUser(() => parse('-U', '01234567-89ab-cdef-0123-456789abcdeg', 'vm'), "'01234567-89ab-cdef-0123-456789abcdeg'");
  throwsUser(() => parse('-o', 'uuid=xyz', 'vm'), "'xyz'");
});

test('-r returns the restore file and sets no config key; name becomes optional', () => {
  const r = parse('-r', '/snap/vm.ckp');
  assert.equal(r.restoreFile, '/snap/vm.ckp');
  assert.equal(r.config.get('name'), undefined);
  assert.deepEqual(r.config.dump(), ['acpi_tables=true', 'cpus=1', 'memory.size=256M', 'x86.strictmsr=true']);
  const r2 = parse('-r', 'a', '-r', 'b', '-s', '3,optest-plain', 'vm');
  assert.equal(r2.restoreFile, 'b');
  assert.equal(r2.config.get('name'), 'vm');
});

test('config.dump is just a config key for the parser', () => {
  const r = parse('-o', 'config.dump=1', 'vm');
  assert.equal(r.config.get('config.dump'), '1');
  assert.equal(r.help, undefined);
});

test('errors are UserErrors with one line (spot check every path)', () => {
  const bad: string[][] = [
    ['-Q', 'vm'], ['-p', '0:1', 'vm'], ['-c', 'x=1', 'vm'], ['-m', '0', 'vm'], ['-s', '99,optest-plain', 'vm'],
    ['-s', '1,nope', 'vm'], ['-l', 'lpt1,x', 'vm'], ['-o', 'x', 'vm'], ['-k', '/nonexistent/tshyve.conf', 'vm'],
    ['-U', 'u', 'vm'], ['a', 'b'], [],
  ];
  for (const argv of bad) throwsUser(() => parseBhyveArgs(argv));
});

test('-R HOST,PORT or -R unix:/abs/path: where to wait for a migration; anything else is one line', () => {
  assert.deepEqual(parse('-R', '10.0.0.2,7700', 'vm').migrateFrom, { kind: 'tcp', host: '10.0.0.2', port: 7700 });
  assert.deepEqual(parse('-Runix:/run/m.sock', 'vm').migrateFrom, { kind: 'unix', path: '/run/m.sock' });
  assert.throws(() => parse('-R', '10.0.0.2:7700', 'vm'), /migration address '10\.0\.0\.2:7700' is not HOST,PORT \(port 1-65535\) or unix:PATH/);
  assert.throws(() => parse('-R', 'unix:m.sock', 'vm'), /unix:PATH needs an absolute path/);
});
