/**
 * The source side of a migration (`tshyvectl --migrate[-live]`): handshake
 * while the guest runs; live, pre-copy rounds over KVM's and the devices'
 * dirty logs until what is left fits migration.downtime_ms (or a round or
 * time limit ends them); then pause, flush, send the rest and the KVM and
 * device state, and hand the guest over: END commits, and the
 * destination's DONE says that it took the guest. Until DONE, any failure
 * (a REFUSE, the connection closed, no word in time) puts everything back:
 * logging off, devices and vCPUs going on as they were.
 */
import type { ConfigTree } from '../config/tree.js';
import { HostError, UserError } from '../errors.js';
import type { RamMapping } from '../memory/ram.js';
import { StateReader, StateWriter } from '../snapshot/state.js';
import { Channel, F, MigrationError, TAKEOVER_MS, encodeFrame, jsonFrame } from '../migration/wire.js';
import { connectTo, formatAddress, type MigrationAddress } from '../migration/transport.js';
import { encodeHello, type MachineFacts } from '../migration/hello.js';
import { PAGE, PageSender } from '../migration/ram-pages.js';
import { DirtyLog, type RamSlot } from '../migration/dirty-log.js';
import { StepTimer, formatSteps } from '../migration/steps.js';
import { encodeState } from '../migration/state-parts.js';
import { log } from '../log.js';
import type { SocketReserve } from '../host/sandbox/reserve.js';
import type { Vm } from '../kvm/kvm.js';
import type { VmSnapshots } from './snapshot.js';
import type { MigrationOptions, MigrationProgress, MigrationResult } from './control.js';

/** How long a destination that builds its VM while RAM comes in may take to build it. */
const BUILD_WAIT_MS = 120_000;

/** What the source side needs of the machine. */
export interface SourceVm {
  readonly vm: Vm;
  readonly ram: RamMapping;
  readonly slots: readonly RamSlot[];
  /** pages tshyve's threads wrote (GuestMemory's dirty map) */
  readonly dirtyMap: Uint8Array;
  readonly config: ConfigTree;
  readonly snapshots: VmSnapshots;
  /** the sandbox's TCP sockets (undefined with the sandbox off: node connects) */
  readonly reserve?: SocketReserve;
  facts(): MachineFacts;
  /** park / release every vCPU */
  hold(): Promise<boolean>;
  release(): void;
  ending(): boolean;
  /** the guest is the destination's now: end this VM (exit 0) */
  handedOver(message: string): void;
}

/** Pre-copy limits: migration.downtime_ms (default 300, as QEMU), .max_rounds, .max_seconds. */
function limits(config: ConfigTree): { downtimeMs: number; maxRounds: number; maxMs: number } {
  const num = (key: string, dflt: number, min: number, max: number): number => {
    const v = config.get(key);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!/^[0-9]+$/.test(v) || n < min || n > max) throw new UserError(`${key}=${v}: expected a whole number in [${min}, ${max}]`);
    return n;
  };
  return { downtimeMs: num('migration.downtime_ms', 300, 1, 3_600_000), maxRounds: num('migration.max_rounds', 30, 1, 1000),
    maxMs: num('migration.max_seconds', 300, 1, 86_400) * 1000 };
}

export async function migrateOut(s: SourceVm, target: MigrationAddress, opts: MigrationOptions = {}): Promise<MigrationResult> {
  const live = opts.live === true;
  const lim = limits(s.config);
  const t0 = performance.now();
  const where = formatAddress(target);
  const ramBytes = s.ram.size;
  const progress = (p: Omit<MigrationProgress, 'total'>) => opts.onProgress?.({ ...p, total: ramBytes });
  progress({ phase: 'handshake', done: 0, round: 0, dirtyRate: 0, expectedDowntimeMs: 0 });
  const ch = new Channel(await connectTo(target, s.reserve), `the destination ${where}`);
  const dirtyLog = new DirtyLog(s.vm, s.slots, s.dirtyMap);
  let paused = false, quiesced = false, committed = false;
  try {
    await ch.send(encodeFrame(F.HELLO, encodeHello(s.facts(), live)));
    const builds = new StateReader((await ch.recvJson([F.WELCOME], 30_000)).value, 'welcome').bool('builds');
    const sender = new PageSender(s.ram.bytes, (f) => ch.send(f));
    /** Every page that may hold data; progress every 32 MiB. */
    const sendDataRanges = async (phase: MigrationProgress['phase'], round: number) => {
      let next = 0;
      for (const [a, b] of s.ram.dataRanges()) {
        for (let p = Math.floor(a / PAGE); p < Math.ceil(b / PAGE); p++) {
          const sent = sender.add(p);
          if (sent) await sent;
          if (p * PAGE >= next) { next = p * PAGE + (32 << 20); progress({ phase, done: ch.sent, round, dirtyRate: 0, expectedDowntimeMs: 0 }); }
        }
      }
      await sender.flush();
    };
    let rounds = 0, converged = true, note: string | undefined;
    if (live) {
      dirtyLog.start();
      let tRound = performance.now(), sentBefore = ch.sent;
      await sendDataRanges('copy', 1);
      rounds = 1;
      for (;;) {
        if (s.ending()) throw new MigrationError('the VM ended during the migration');
        const now = performance.now(), roundMs = Math.max(1, now - tRound);
        const bandwidth = Math.max(1, (ch.sent - sentBefore) / roundMs); // bytes per ms
        const dirty = dirtyLog.harvest();
        const left = PageSender.frameBytes(dirty.length);
        const expectedDowntimeMs = left / bandwidth;
        progress({ phase: 'copy', done: ch.sent, round: rounds, dirtyRate: Math.round(dirty.length * PAGE / roundMs * 1000), expectedDowntimeMs });
        if (expectedDowntimeMs <= lim.downtimeMs) { await sender.addAll(dirty); break; }
        if (rounds >= lim.maxRounds || now - t0 >= lim.maxMs) {
          converged = false;
          note = `pre-copy did not converge (${rounds >= lim.maxRounds ? `${lim.maxRounds} rounds` : `${lim.maxMs / 1000} s`}; `
            + `${Math.round(expectedDowntimeMs)} ms left to copy, migration.downtime_ms=${lim.downtimeMs})`;
          await sender.addAll(dirty);
          break;
        }
        tRound = now; sentBefore = ch.sent;
        await sender.addAll(dirty);
        await sender.flush();
        rounds++;
      }
    }
    if (builds) {
      // The destination's build (seconds where user space is slow) is not part of the downtime: wait for it
      // while the guest runs, then send (live) what the guest dirtied meanwhile.
      const t = performance.now();
      await ch.recv([F.BUILT], BUILD_WAIT_MS);
      if (live && performance.now() - t > 1) { // (not when BUILT was there already)
        await sender.addAll(dirtyLog.harvest());
        await sender.flush();
      }
    }
    await s.snapshots.rehearseCapture(encodeState);
    // Switch over: the guest stops here until the destination runs it.
    const tPause = performance.now();
    const steps = new StepTimer();
    if (!(await s.hold())) { paused = true; throw new HostError('a vCPU did not pause in time'); }
    paused = true;
    steps.mark('pause');
    if (s.ending()) throw new MigrationError('the VM ended during the migration');
    await s.snapshots.quiesce(); // in-flight requests done, disks flushed
    quiesced = true;
    steps.mark('quiesce');
    progress({ phase: 'switchover', done: ch.sent, round: rounds, dirtyRate: 0, expectedDowntimeMs: 0 });
    await ch.send(jsonFrame(F.SWITCHOVER, new StateWriter().u32('rounds', rounds).obj));
    steps.mark('switchover');
    // The vCPUs' state is read on their threads while the last pages go out.
    const capturing = s.snapshots.captureParked();
    capturing.catch(() => undefined); // awaited below: not unhandled if the pages fail first
    steps.mark('capture_here');
    if (live) {
      const dirty = dirtyLog.harvest();
      steps.mark('dirty_log');
      await sender.addAll(dirty);
      await sender.flush();
    } else {
      await sendDataRanges('switchover', 0);
    }
    steps.mark('pages');
    const parts = await capturing;
    steps.mark('capture');
    const stateFrame = encodeFrame(F.STATE, encodeState(parts));
    steps.mark('encode');
    await ch.send(stateFrame);
    await ch.send(jsonFrame(F.END, new StateWriter().int('pages', sender.pages).int('dataPages', sender.dataPages).obj));
    steps.mark('send_state');
    progress({ phase: 'commit', done: ch.sent, round: rounds, dirtyRate: 0, expectedDowntimeMs: 0 });
    // The destination takes the guest over if everything checks, and says
    // DONE before its vCPUs run. Without DONE it never runs the guest: a
    // REFUSE says so; a destination that died wrote nothing after its last
    // frame (a DONE it wrote comes before its connection's end); one that
    // cannot take over within TAKEOVER_MS of END refuses, and we wait twice that.
    await ch.recv([F.DONE], 2 * TAKEOVER_MS);
    committed = true;
    steps.mark('wait_done');
    const tEnd = performance.now();
    if (s.config.getBool('debug.timing', false)) log('info', `migration switchover on the source (ms): ${formatSteps(steps.steps)}`);
    void ch.end();
    s.handedOver(`migrated to ${where}`);
    return {
      target: where, live, rounds, bytes: ch.sent, pages: sender.pages, zeroPages: sender.zeroPages,
      totalMs: tEnd - t0, downtimeMs: tEnd - tPause, converged, steps: steps.steps, ...(note ? { note } : {}),
    };
  } catch (e) {
    if (committed) throw e;
    // Nothing was handed over: the guest goes on here, as it was.
    dirtyLog.stop();
    if (quiesced) s.snapshots.unquiesce();
    if (paused) s.release();
    const why = e instanceof MigrationError ? e : new MigrationError((e as Error).message);
    ch.fail(why);
    throw new MigrationError(`migration to ${where} failed, the VM runs on here: ${why.message}`, why.code);
  }
}
