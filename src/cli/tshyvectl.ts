#!/usr/bin/env node
/**
 * `tshyvectl`: bhyvectl's operations on a running tshyve, over its control
 * socket (DIR/NAME.sock; DIR is /run/tshyve for root, see control/paths.ts).
 *   tshyvectl --vm=NAME --get-stats | --pause | --resume | --checkpoint=FILE | --ext-checkpoint=FILE
 *             | --suspend=FILE | --migrate=HOST,PORT | --migrate-live=HOST,PORT
 *             | --force-reset | --force-poweroff | --destroy
 *   tshyvectl --list
 * Exit status: 0 done, 1 the operation failed or the VM cannot be reached, 2 bad usage.
 */
import { parseArgs } from 'node:util';
import { connectVm, listVms, ControlError, type ControlClient } from '../control/client.js';
import { defaultControlDir } from '../control/paths.js';
import { validateVmName } from '../config/options.js';
import { TshyveError } from '../errors.js';
import { resolve as resolvePath } from 'node:path';
import type { MigrationResult, SnapshotResult } from '../vm/control.js';
import { parseMigrationAddress } from '../migration/transport.js';
import { ProgressBar, formatMiB } from './progress.js';
import { MigrationBar, migrationLine } from './migrate-progress.js';

const OPTIONS = {
  vm: { type: 'string' },
  socket: { type: 'string' },
  dir: { type: 'string' },
  list: { type: 'boolean' },
  'get-stats': { type: 'boolean' },
  pause: { type: 'boolean' },
  resume: { type: 'boolean' },
  checkpoint: { type: 'string' },
  'ext-checkpoint': { type: 'string' },
  suspend: { type: 'string' },
  migrate: { type: 'string' },
  'migrate-live': { type: 'string' },
  'force-reset': { type: 'boolean' },
  'force-poweroff': { type: 'boolean' },
  destroy: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const ACTIONS = ['list', 'get-stats', 'pause', 'resume', 'checkpoint', 'ext-checkpoint', 'suspend', 'migrate', 'migrate-live', 'force-reset', 'force-poweroff', 'destroy'] as const;
type Action = (typeof ACTIONS)[number];

export function usage(): string {
  return [
    'Usage: tshyvectl --vm=NAME [--socket=PATH | --dir=DIR] OPERATION',
    '       tshyvectl --list [--dir=DIR]',
    'Operations:',
    '       --get-stats          print the VM\'s counters, one "key value" a line',
    '       --pause / --resume   stop / restart every vCPU',
    '       --checkpoint=FILE    save the VM to FILE (and FILE.ram); it keeps running;',
    '                            each qcow2 disk gets the snapshot BASENAME(FILE)',
    '       --ext-checkpoint=FILE  the same, each disk going on in a new qcow2 overlay',
    '                            FILE.pci.B.S.F.qcow2 whose backing file is the disk as it was',
    '       --suspend=FILE       save the VM to FILE, then end it (tshyve exits 0)',
    '       --migrate=HOST,PORT  pause the VM, send it to a tshyve started with -R HOST,PORT',
    '                            (or unix:PATH); it runs there, tshyve here exits 0',
    '       --migrate-live=HOST,PORT  the same, copying RAM while the guest runs',
    '       --force-reset        end the VM as a reset would (tshyve exits 0)',
    '       --force-poweroff     end the VM as a power-off would (tshyve exits 1)',
    '       --destroy            tear the VM down (tshyve exits 4)',
    '       --list               the VMs whose control sockets answer',
    `       --socket=PATH        the VM's control socket (default DIR/NAME.sock)`,
    `       --dir=DIR            where control sockets are (default ${defaultControlDir()})`,
    '',
  ].join('\n');
}

class UsageError extends Error {}

function fail(msg: string, code: number): never {
  process.stderr.write(`tshyvectl: ${msg}\n`);
  process.exit(code);
}

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    // node's messages are long and mention internals; keep the first sentence.
    throw new UsageError(`${(e as Error).message.split('. ')[0]!.replace(/\.$/, '')} (see tshyvectl -h)`);
  }
  if (values.help) { process.stdout.write(usage()); return 0; }
  const actions = ACTIONS.filter((a) => values[a] !== undefined && values[a] !== false);
  if (actions.length === 0) throw new UsageError('no operation given (see tshyvectl -h)');
  if (actions.length > 1) throw new UsageError(`one operation at a time (got ${actions.map((a) => '--' + a).join(', ')})`);
  const action: Action = actions[0]!;
  const dir = values.dir ?? defaultControlDir();

  if (action === 'list') {
    for (const vm of await listVms(dir)) process.stdout.write(`${vm.name}\n`);
    return 0;
  }

  if (values.vm === undefined && values.socket === undefined) throw new UsageError(`--${action} needs --vm=NAME (or --socket=PATH)`);
  if (values.vm !== undefined) {
    try { validateVmName(values.vm); } catch (e) { throw new UsageError((e as Error).message); }
  }
  for (const f of ['checkpoint', 'ext-checkpoint', 'suspend'] as const) {
    if (values[f] === '') throw new UsageError(`--${f} needs a file name`);
  }
  for (const f of ['migrate', 'migrate-live'] as const) {
    const v = values[f];
    if (v === undefined) continue;
    try { parseMigrationAddress(v.startsWith('unix:') ? `unix:${resolvePath(v.slice(5))}` : v); } catch (e) { throw new UsageError((e as Error).message); }
  }
  const vm = values.socket !== undefined
    ? await connectVm(values.socket.includes('/') ? values.socket : `./${values.socket}`)
    : await connectVm(values.vm!, { dir });
  try {
    return await perform(vm, action, values);
  } catch (e) {
    if (e instanceof ControlError && e.remote) throw new ControlError(`VM ${vm.name}: ${e.message}`, true);
    throw e;
  } finally {
    vm.close();
  }
}

async function perform(vm: ControlClient, action: Action, values: { checkpoint?: string; 'ext-checkpoint'?: string; suspend?: string; migrate?: string; 'migrate-live'?: string }): Promise<number> {
  switch (action) {
    case 'get-stats': {
      const stats = await vm.stats();
      const w = Math.max(...Object.keys(stats).map((k) => k.length));
      for (const [k, v] of Object.entries(stats)) process.stdout.write(`${k.padEnd(w)} ${v}\n`);
      return 0;
    }
    case 'pause': await vm.pause(); return 0;
    case 'resume': await vm.resume(); return 0;
    case 'force-reset': await vm.forceReset(); return 0;
    case 'force-poweroff': await vm.forcePoweroff(); return 0;
    case 'destroy': await vm.destroy(); return 0;
    case 'checkpoint': case 'ext-checkpoint': case 'suspend': {
      const file = values[action]!;
      const bar = new ProgressBar(process.stderr, action === 'suspend' ? 'suspend' : 'checkpoint');
      const onProgress = (p: { done: number; total: number }) => bar.update(p.done, p.total);
      let r: SnapshotResult;
      try {
        r = action === 'suspend' ? await vm.suspend(file, { onProgress }) : await vm.checkpoint(file, { onProgress, external: action === 'ext-checkpoint' });
      } finally {
        bar.clear();
      }
      const paused = r.pausedMs !== r.totalMs ? ` (vCPUs paused ${(r.pausedMs / 1000).toFixed(2)} s)` : '';
      process.stdout.write(`${action === 'suspend' ? 'suspended' : 'checkpointed'} VM ${vm.name}: ${formatMiB(r.ramBytes)} of RAM to ${r.file} in ${(r.totalMs / 1000).toFixed(2)} s${paused}\n`);
      for (const d of r.disks ?? []) {
        if (d.snapshot !== undefined) process.stdout.write(`  disk ${d.id}: qcow2 snapshot '${d.snapshot}' in ${d.path}\n`);
        if (d.overlay !== undefined) process.stdout.write(`  disk ${d.id}: now writes to ${d.overlay} (backing file ${d.path})\n`);
      }
      if (r.warning) process.stderr.write(`tshyvectl: warning: ${r.warning}\n`);
      return 0;
    }
    case 'migrate': case 'migrate-live': {
      const bar = new MigrationBar(process.stderr);
      let r: MigrationResult;
      try {
        r = await vm.migrate(values[action]!, { live: action === 'migrate-live', onProgress: (p) => bar.update(p) });
      } finally {
        bar.stop();
      }
      process.stdout.write(`${migrationLine(vm.name, r)}\n`);
      return 0;
    }
    case 'list': return 0;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) fail(e.message, 2);
    if (e instanceof ControlError || e instanceof TshyveError) fail(e.message, 1);
    if (process.env.TSHYVE_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
    fail(`internal error: ${(e as Error)?.message ?? String(e)}`, 1);
  },
);
