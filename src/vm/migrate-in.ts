/**
 * The destination side of a migration (`tshyve ... -R HOST,PORT`): wait for
 * one source, compare machines, take RAM into a fresh mapping and build the
 * VM meanwhile (its disks opened only once the source has flushed and
 * stopped using them), then apply the state. The source's END commits: once
 * everything has checked and been applied, DONE tells the source that the
 * guest is ours, and only then does it run. Everything from the source is
 * untrusted and checked before use (wire.ts, ram-pages.ts, the snapshot
 * format's readers); on any failure before DONE the source is told why (it
 * resumes its guest) and nothing here ever ran.
 */
import type { ConfigTree } from '../config/tree.js';
import { resolveCpus, resolveMemBytes } from '../config/options.js';
import { Kvm } from '../kvm/kvm.js';
import { createGuestRam, type RamMapping } from '../memory/ram.js';
import { StateReader, StateWriter, SnapshotError } from '../snapshot/state.js';
import { parseDocument, type VmState } from '../snapshot/file.js';
import { Channel, F, MigrationError, TAKEOVER_MS, jsonFrame } from '../migration/wire.js';
import { acceptOne, type MigrationAddress } from '../migration/transport.js';
import { decodeHello, helloMismatch } from '../migration/hello.js';
import { applyPages } from '../migration/ram-pages.js';
import { StepTimer, formatSteps } from '../migration/steps.js';
import { decodeState, encodeState } from '../migration/state-parts.js';
import { log } from '../log.js';
import { inspectHost } from './host-check.js';
import { vcpuCpuid } from './vcpus.js';
import { buildsBeforeStorage, configKeyRules } from './snapshot.js';
import { Machine } from './machine.js';
import { ExitCode } from './exit-codes.js';

/** How long the source may say nothing while it should be sending. */
const IDLE_MS = 60_000;

export interface IncomingOptions {
  /** told once the listener is up (tests, scripts waiting for it) */
  onListening?(): void;
  /**
   * Last preparations once the VM is built (its vCPU threads parked; it runs
   * only after DONE): what fails here (a control socket that cannot be
   * made) is refused, and the source keeps its guest.
   */
  beforeReady?(m: Machine): Promise<void>;
  /**
   * Once the state is applied, just before DONE (the sandbox's lock-down,
   * which needs the disks open): what fails here is refused too.
   */
  beforeTakeover?(m: Machine): Promise<void>;
}

/** Wait for a migration into a VM of `config`; resolves with the VM, built and ready to run(). */
export async function receiveMigration(config: ConfigTree, from: MigrationAddress, opts: IncomingOptions = {}): Promise<Machine> {
  const topo = resolveCpus(config), memBytes = resolveMemBytes(config);
  const kvm = Kvm.open(config.get('kvm.device') ?? '/dev/kvm');
  let cpuid;
  // kernel: Machine.create refuses a migration into user-space interrupt controllers
  try { cpuid = vcpuCpuid(kvm, 0, topo, inspectHost(kvm), 'kernel'); } finally { kvm.close(); }
  const here = { vcpus: topo.cpus, ramBytes: memBytes, config: new Map(config.entries()), cpuid };
  const sock = await acceptOne(from, opts.onListening);
  const ch = new Channel(sock, `the source (${sock.remoteAddress ?? 'unix socket'})`);
  const t0 = performance.now();
  /** the RAM mapping while this function still owns it (Machine.create does once called) */
  let ram: RamMapping | undefined, m: Machine | undefined;
  // The VM, its devices and parked vCPU threads are built while RAM comes in
  // (thread start-up is seconds where user space is slow), its disks opened
  // only once the source has flushed and let go of them (SWITCHOVER); a VM
  // whose devices cannot wait so is built from the switchover on.
  let building: Promise<Machine> | undefined;
  let letGoOfStorage = (): void => {}, failBuild = (_: Error): void => {};
  /** rejects when the build fails: the source is told at once, whatever it is sending (or waiting for) */
  const buildFails = new Promise<never>((_, reject) => { failBuild = reject; });
  buildFails.catch(() => undefined); // (also thrown by `await building`)
  const early = buildsBeforeStorage(config);
  try {
    const hello = decodeHello((await ch.recv([F.HELLO], IDLE_MS)).payload);
    const why = helloMismatch(hello.facts, here, configKeyRules([...hello.facts.config, ...config.entries()]));
    if (why) throw new SnapshotError(why, 'EMISMATCH');
    // `builds`: the VM is built while RAM comes in, and BUILT says when (the source pauses its guest only then)
    await ch.send(jsonFrame(F.WELCOME, new StateWriter().bool('builds', early).obj));
    const mapping = createGuestRam(memBytes, { hugePages: config.getBool('memory.hugepages', true) });
    ram = mapping;
    const build = (storageGate?: Promise<void>): void => {
      ram = undefined;
      building = Machine.create(config, { incoming: { ram: mapping, sourceConfig: hello.facts.config, ...(storageGate && { storageGate }) } })
        .then(async (vm) => {
          try {
            await vm.startParked();
            // built early: the restore's code compiled, the control socket made, all before the guest pauses
            if (storageGate) vm.rehearseRestore((parts) => decodeState(encodeState(parts)));
            await opts.beforeReady?.(vm);
            if (storageGate) await ch.send(jsonFrame(F.BUILT, {}));
          } catch (e) {
            await vm.finish(ExitCode.ERROR);
            throw e;
          }
          return vm;
        });
      building.catch(failBuild);
    };
    if (early) build(new Promise((resolve) => { letGoOfStorage = resolve; }));
    let pages = 0, dataPages = 0, rounds = 0, tSwitch = 0;
    let steps: StepTimer | undefined;
    let state: VmState | undefined;
    while (!state) {
      const f = await Promise.race([ch.recv(tSwitch ? [F.PAGES, F.STATE] : [F.PAGES, F.SWITCHOVER], IDLE_MS), buildFails]);
      if (f.type === F.PAGES) {
        const n = applyPages(f.payload, mapping.bytes);
        pages += n.pages; dataPages += n.dataPages;
      } else if (f.type === F.SWITCHOVER) {
        tSwitch = performance.now();
        steps = new StepTimer();
        rounds = new StateReader(parseDocument(f.payload.toString('utf8'), 'the SWITCHOVER frame', 'a migration frame'), 'switchover').u32('rounds', 1000);
        if (early) letGoOfStorage(); else build();
      } else {
        steps!.mark('pages_and_state');
        state = decodeState(f.payload);
        steps!.mark('parse_state');
      }
    }
    const end = new StateReader((await ch.recvJson([F.END], IDLE_MS)).value, 'end');
    const tEnd = performance.now();
    if (end.int('pages', 0) !== pages || end.int('dataPages', 0) !== dataPages) {
      throw new MigrationError(`the source says it sent ${end.int('pages', 0)} pages, ${pages} arrived (stream damaged)`, 'EPROTO');
    }
    m = await building!;
    steps!.mark('build_wait');
    m.restoreIncoming(state);
    steps!.mark('restore');
    await opts.beforeTakeover?.(m);
    steps!.mark('lock_down');
    if (m.isEnding) throw new MigrationError('the VM here was ended before it took the guest over');
    if (performance.now() - tEnd > TAKEOVER_MS) throw new MigrationError(`could not take the guest over within ${TAKEOVER_MS / 1000} s of the source's end`);
    // Taking over: DONE is written (the source then ends) before the vCPUs run (run(), by the caller).
    await ch.send(jsonFrame(F.DONE, {}));
    steps!.mark('take_over');
    const vm = m, timer = steps!;
    vm.once('running', () => {
      const tRun = performance.now();
      timer.mark('start_vcpus');
      const stepMs = timer.steps;
      vm.migrationStats = { total_ms: Math.round(tRun - t0), downtime_ms: Math.round(tRun - tSwitch), bytes: ch.received, rounds, pages };
      for (const [k, v] of Object.entries(stepMs)) vm.migrationStats[`step_${k}_ms`] = v;
      if (config.getBool('debug.timing', false)) log('info', `migration switchover on the destination (ms): ${formatSteps(stepMs)}${early ? '' : ' (built at the switchover)'}`);
      void ch.end();
    });
    return m;
  } catch (e) {
    // Tell a source that is still there why (it resumes its guest); nothing here ran.
    const msg = (e as Error).message.split('\n')[0] ?? 'failed';
    if (!ch.failed) { await ch.send(jsonFrame(F.REFUSE, { error: msg })).catch(() => undefined); await ch.end(); }
    m ??= await building?.catch(() => undefined);
    if (m) await m.finish(ExitCode.ERROR);
    else if (ram) ram.close();
    throw e instanceof MigrationError || e instanceof SnapshotError ? e : new MigrationError(msg);
  }
}
