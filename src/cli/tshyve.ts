#!/usr/bin/env node
/**
 * `tshyve`: bhyve's command line over Linux KVM.
 *   tshyve -c 2 -m 512M -s 0,hostbridge -s 31,lpc -l com1,stdio \
 *     -o boot.kernel=vmlinuz -o boot.initrd=initrd.img -o boot.cmdline=console=ttyS0 NAME
 *   tshyve ...same options... -R HOST,PORT NAME     (or -R unix:PATH): receive a migration, then run
 * Exit status as bhyve: 0 reboot, 1 power-off, 2 halt, 3 triple fault, 4 error.
 */
import { parseBhyveArgs, usage, supportedLpcDevices } from './args.js';
import { pciDeviceNames } from '../pci/device.js';
import '../devices/all.js';
import { TshyveError, UserError } from '../errors.js';
import { Machine } from '../vm/machine.js';
import { ExitCode } from '../vm/exit-codes.js';
import { restoreTerminals } from '../devices/backends/index.js';
import { log } from '../log.js';
import { loadOptionsFrom, readSnapshot, saveOptionsFrom, type LoadedSnapshot } from '../snapshot/file.js';
import { ControlServer } from '../control/server.js';
import { controlSocketPath } from '../control/config.js';
import type { ConfigTree } from '../config/tree.js';
import { lockDown, prepareLockDown, sandboxOptions, type SandboxDirs } from '../host/sandbox/index.js';
import { dirname } from 'node:path';

performance.mark('modules');

function fail(msg: string): never {
  restoreTerminals();
  process.stderr.write(`tshyve: ${msg}\n`);
  process.exit(ExitCode.ERROR);
}

async function main(argv: string[]): Promise<number> {
  const args = parseBhyveArgs(argv);
  if (args.help) { process.stdout.write(usage()); return 0; }
  if (args.list === 'pci') { process.stdout.write(pciDeviceNames().join('\n') + '\n'); return 0; }
  if (args.list === 'lpc') { process.stdout.write(supportedLpcDevices().join('\n') + '\n'); return 0; }
  const config = args.config;
  if (config.getBool('config.dump', false)) {
    process.stdout.write(config.dump().join('\n') + '\n');
    return 0;
  }
  saveOptionsFrom(config); // a bad snapshot.dir or snapshot.key is refused now, not at the first checkpoint
  const sandbox = sandboxOptions(config);
  if (args.restoreFile !== undefined && args.migrateFrom) throw new UserError('-r and -R cannot be used together');
  let restore: LoadedSnapshot | undefined;
  if (args.restoreFile) restore = readSnapshot(args.restoreFile, loadOptionsFrom(config));
  const from = args.migrateFrom;
  let control: ControlServer | undefined;
  // Whatever way the process ends (fail(), an uncaught error), the socket goes with it.
  process.on('exit', () => control?.unlinkSync());
  let m: Machine;
  /** Everything is open and every thread started (the vCPUs' parked): lock down before the guest's first instruction. */
  const lock = async (vm: Machine): Promise<void> => {
    await vm.startParked();
    if (sandbox) {
      vm.sandbox = lockDown(sandbox, sandboxDirs(config, control));
      performance.mark('sandbox');
    }
  };
  if (from) {
    // The control socket is made before the source lets go of its guest: if it cannot be, the source keeps it.
    // loaded only here: start-up of a VM that is not migrating does not pay for it
    const [{ receiveMigration }, { formatAddress }] = await Promise.all([import('../vm/migrate-in.js'), import('../migration/transport.js')]);
    m = await receiveMigration(config, from, {
      onListening: () => log('info', `waiting for a migration on ${formatAddress(from)}`),
      beforeReady: async (vm) => {
        control = await startControl(vm, config);
        if (sandbox) prepareLockDown(sandbox); // what can be done before the disks are open
      },
      // before the source lets go of its guest: a lock-down that fails is a refusal
      beforeTakeover: lock,
    });
  } else {
    m = await Machine.create(config, { restore });
    try {
      control = await startControl(m, config);
      await lock(m);
    } catch (e) {
      await m.finish(ExitCode.ERROR);
      throw e;
    }
  }
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (sig === 'SIGTERM' && signals === 1) {
      log('info', 'SIGTERM: pressing the ACPI power button (send again to force power-off)');
      m.pressPowerButton();
      return;
    }
    void m.finish(ExitCode.POWEROFF, `${sig}: powering off`);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (config.getBool('debug.timing', false)) {
    m.once('running', () => process.stderr.write(`tshyve: vCPUs running ${m.firstRunMs?.toFixed(1)} ms after process start (${startupTimeline()})\n`));
  }
  const code = await m.run();
  // Answer what is in flight (a --suspend's reply) before exiting.
  await control?.close();
  if (code === ExitCode.ERROR && m.errorMessage) process.stderr.write(`tshyve: ${m.errorMessage}\n`);
  if (config.getBool('debug.stats', false)) process.stderr.write(`tshyve: exits ${JSON.stringify(m.exitStats)}\n`);
  return code;
}

/**
 * Where start-up went, for debug.timing: Node's own bootstrap, then each
 * performance mark (modules loaded, KVM set up, devices built, boot payload
 * loaded, each vCPU thread spawned, its first line run (its modules loaded)
 * and its word received, all parked, the sandbox locked), in ms from the step before.
 */
function startupTimeline(): string {
  const node = performance.nodeTiming.bootstrapComplete;
  let at = node;
  const steps = [`node ${node.toFixed(1)}`];
  for (const e of performance.getEntriesByType('mark').sort((a, b) => a.startTime - b.startTime)) {
    steps.push(`${e.name} +${(e.startTime - at).toFixed(1)}`);
    at = e.startTime;
  }
  return steps.join(', ');
}

/**
 * Where the sandboxed VM may write: snapshot.dir, or else the control
 * socket's directory, which then becomes snapshot.dir (a save elsewhere is
 * refused in one line, before anything is written).
 */
function sandboxDirs(config: ConfigTree, control: ControlServer | undefined): SandboxDirs {
  const controlDir = control?.path === undefined ? undefined : dirname(control.path);
  const snapshotDir = config.get('snapshot.dir') ?? controlDir;
  if (snapshotDir !== undefined) config.set('snapshot.dir', snapshotDir);
  return { snapshotDir, controlDir };
}

/**
 * The VM's control socket (tshyvectl). A path the user chose must work; the
 * default one is best effort, except that a live VM of the same name is an error.
 */
async function startControl(m: Machine, config: ConfigTree): Promise<ControlServer | undefined> {
  const path = controlSocketPath(config);
  if (path === undefined) return undefined;
  const server = new ControlServer(m);
  try {
    await server.listen(path);
  } catch (e) {
    if (config.get('control.path') !== undefined || (e as TshyveError).code === 'EINUSE') throw e;
    log('warn', `no control socket: ${(e as Error).message}`);
    return undefined;
  }
  return server;
}

main(process.argv.slice(2)).then(
  (code) => { restoreTerminals(); process.exit(code); },
  (e: unknown) => {
    if (e instanceof TshyveError) fail(e.message);
    // One line even for our own bugs; the stack only when asked for.
    if (process.env.TSHYVE_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
    fail(`internal error: ${(e as Error)?.message ?? String(e)}`);
  },
);
