/**
 * `-s N,nvme,PATH|ram=MiB[,opts]`: the NVMe controller as a PCI function
 * (class 01h/08h/02h, bhyve's IDs). BAR 0 holds the registers and
 * doorbells, BAR 4 MSI-X with one vector for the admin queue and one per
 * I/O queue pair (no INTx: Linux's driver takes MSI-X). In a VM the I/O queues run on an I/O thread of their own
 * (offload.ts); with `-o virtio.workers=false`, or in tests, on this thread.
 *
 * Until the driver configures shadow doorbells, every doorbell write is an
 * MMIO exit that carries its value. After, the I/O queues' doorbells are
 * KVM ioeventfds: the write wakes the I/O thread, which reads the value
 * from the shadow buffer, and never reaches user space on a vCPU.
 */
import { registerPciDevice, type DeviceContext, type PciFunction } from '../../pci/device.js';
import { PciConfig } from '../../pci/config-space.js';
import { PciBars } from '../../pci/bars.js';
import { Msix } from '../../pci/msix.js';
import { UserError } from '../../errors.js';
import { SnapshotError, type StateReader, type StateWriter } from '../../snapshot/state.js';
import { checkpointImage, diskCheckpointHook, followOverlay } from '../block/index.js';
import type { DiskCheckpoint } from '../../snapshot/disks.js';
import { DOORBELLS } from './constants.js';
import { NvmeController, type IoQueueDriver } from './controller.js';
import { imageOptions, ioQueuesOver, namespaceOver, openBackend, type DiskInit } from './disk.js';
import { PCI_DEVICE, PCI_VENDOR } from './identify.js';
import { Stat, type Namespace } from './io.js';
import { FATAL_DOORBELL, type IoQueues } from './io-queues.js';
import { IoThreadQueues } from './offload.js';
import { nvmeInfo, parseNvmeOptions, type NvmeOptions } from './options.js';

const MSIX_BAR = 4, MSIX_BAR_SIZE = 0x4000, MSIX_PBA = 0x2000;

type Notifier = { remove(): void };

export class NvmePci implements PciFunction {
  readonly config: PciConfig;
  readonly controller: NvmeController;
  private readonly msix: Msix;
  /** this thread's instance of the disk (passive with an I/O thread); a checkpoint may move it to an overlay */
  private readonly ns: Namespace;
  private readonly queues: IoQueueDriver;
  readonly disk?: DiskCheckpoint;
  private readonly thread: IoThreadQueues | undefined;
  private readonly maxq: number;
  readonly counters = new Float64Array(new SharedArrayBuffer(8 * Stat.COUNT));
  private barAddr: number | undefined;
  private dbbuf = false;
  private notifiers: Notifier[] = [];
  private readonly statsPrefix: string;
  private readonly ramDisk: boolean;
  private readonly label: string;

  constructor(private readonly ctx: DeviceContext, opts: NvmeOptions, bdf: { bus: number; slot: number; func: number }, name: string, useThread: boolean) {
    this.statsPrefix = `pci.${bdf.bus}.${bdf.slot}.${bdf.func}.`;
    this.maxq = opts.maxq;
    const vectors = opts.maxq + 1;
    this.config = new PciConfig({
      vendor: PCI_VENDOR, device: PCI_DEVICE, classCode: 0x01, subclass: 0x08, progIf: 0x02, subsysVendor: PCI_VENDOR, subsys: PCI_DEVICE,
    });
    this.msix = new Msix(this.config, ctx, { vectors, bar: MSIX_BAR, table: 0, pba: MSIX_PBA }, () => this.updateDirect());
    const label = this.label = name;
    this.ramDisk = opts.ramMiB !== undefined;
    const disk: DiskInit = {
      readonly: opts.readonly, nocache: opts.nocache, direct: opts.direct, sectorSize: opts.sectorSize, dsm: false,
      limits: { maxq: opts.maxq, maxEntries: opts.qsz, vectors }, stats: this.counters.buffer as SharedArrayBuffer,
    };
    if (opts.ramMiB !== undefined) disk.ram = new SharedArrayBuffer(opts.ramMiB * 1024 * 1024);
    else { disk.path = opts.path; disk.format = opts.format; }
    const backend = openBackend(disk, label, useThread);
    // dsm=auto: deallocate when the storage can (a RAM disk, a writable file or block device)
    disk.dsm = opts.dsm === 'enable' || (opts.dsm === 'auto' && !opts.readonly);
    const ns = this.ns = namespaceOver(backend, disk);
    const signal = (v: number): void => { this.msix.signal(v); };
    if (useThread) {
      this.thread = new IoThreadQueues(disk, ctx.guestRam!, `nvme-io@${bdf.slot}`, signal, (m) => ctx.guestError(label, m));
      this.queues = this.thread;
    } else {
      this.queues = ioQueuesOver(ctx.mem, ns, disk, signal, () => ctx.guestError(label, FATAL_DOORBELL));
    }
    // a checkpoint's work on the disk is done by the instance that does the I/O (snapshot/disks.ts)
    if (disk.path !== undefined) {
      const img = imageOptions(disk, label, useThread);
      this.disk = diskCheckpointHook({
        checkpointDisk: (op) => checkpointImage(ns, img, op),
        followOverlay: (overlay) => followOverlay(ns, img, overlay),
      }, this.thread);
    }
    this.controller = new NvmeController({
      mem: ctx.mem, queues: this.queues, stats: this.counters, maxq: opts.maxq, maxEntries: opts.qsz, vectors,
      identity: {
        serial: opts.serial, maxEntries: opts.qsz, readonly: opts.readonly, dsm: disk.dsm, eui64: opts.eui64,
        sectorSize: opts.sectorSize, lbas: Math.floor(backend.size / opts.sectorSize),
      },
      signal, flush: () => this.ns.backend.flush(), onDbbuf: (on) => this.setDbbuf(on), guestError: (m) => ctx.guestError(label, m),
    });
    const barSize = Math.max(0x4000, 1 << Math.ceil(Math.log2(DOORBELLS + 8 * (opts.maxq + 1))));
    const bars = new PciBars(ctx, this.config, name);
    bars.add({
      index: 0, size: barSize, kind: 'mem32', what: 'regs',
      dev: { read: (o, s) => this.controller.read(o, s), write: (o, s, v) => this.controller.write(o, s, v) },
      onMap: (a) => { this.barAddr = a; this.bindDoorbells(); },
    });
    bars.add({ index: MSIX_BAR, size: MSIX_BAR_SIZE, kind: 'mem32', what: 'msix', dev: this.msix });
    bars.enable();
  }

  private setDbbuf(on: boolean): void {
    if (this.dbbuf === on) return;
    this.dbbuf = on;
    this.bindDoorbells();
  }

  /** With shadow doorbells, the I/O queues' doorbell registers as ioeventfds (both of each pair). */
  private bindDoorbells(): void {
    for (const n of this.notifiers) n.remove();
    this.notifiers = [];
    const base = this.barAddr;
    if (base === undefined || !this.dbbuf) return;
    for (let i = 2; i < 2 * (this.maxq + 1); i++) {
      const addr = base + DOORBELLS + 4 * i;
      const n = this.thread
        ? this.ctx.bindIoeventfd?.(this.thread.kickFd, addr, 4)
        : this.ctx.ioeventfd?.(addr, 4, () => this.serveHere());
      if (n) this.notifiers.push(n);
    }
  }

  /** Per vector, the irqfd the I/O thread may write itself (else it asks this thread: masking, the PBA). */
  private updateDirect(): void {
    const words = this.thread?.directIrq;
    if (!words) return;
    for (let v = 0; v < words.length; v++) Atomics.store(words, v, this.msix.directFd(v));
  }

  reset(): void { this.controller.reset(); }

  /** In-flight commands: none once the thread has answered (it runs each to completion); then data is made durable. */
  quiesce(): Promise<void> {
    this.thread?.quiesce();
    try { this.ns.backend.flush(); } catch (e) { this.ctx.guestError('nvme', `flush before save: ${(e as Error).message}`); }
    return Promise.resolve();
  }
  unquiesce(): void { this.thread?.unquiesce(); }
  activity(): number { return this.thread?.served ?? 0; }

  /** `tshyvectl --get-stats`: commands and bytes moved, and I/O doorbells that were exits. */
  stats(): Record<string, number> {
    const c = this.counters, p = this.statsPrefix;
    return {
      [`${p}reads`]: c[Stat.READS]!, [`${p}writes`]: c[Stat.WRITES]!,
      [`${p}read_bytes`]: c[Stat.READ_UNITS]! * 512, [`${p}written_bytes`]: c[Stat.WRITE_UNITS]! * 512,
      [`${p}io_doorbell_exits`]: this.controller.ioDoorbellExits,
    };
  }

  saveState(w: StateWriter): void {
    // a RAM disk would come back empty under a restored file system: refuse rather than corrupt it
    if (this.ramDisk) throw new UserError(`${this.label}: a ram= disk cannot be saved (its contents are not part of a snapshot)`);
    this.controller.saveState(w, this.queues.save());
    this.msix.saveState(w);
  }

  restoreState(r: StateReader): void {
    const installMsix = this.msix.readState(r);
    const queues = this.controller.restoreState(r);
    try {
      this.queues.restore(queues);
    } catch (e) {
      throw new SnapshotError(`snapshot field ${r.path}.io: ${(e as Error).message}`);
    }
    this.setDbbuf(queues.dbs !== 0);
    installMsix();
  }

  afterRestore(): void {
    this.msix.deliverPending();
    this.controller.kick();
    if (this.thread) this.thread.kick(); else this.serveHere();
  }

  /** Queues on this thread: serve, and come back after other work while some is left. */
  private serveHere(): void {
    if ((this.queues as IoQueues).serve()) setImmediate(() => this.serveHere());
  }

  destroy(): void {
    this.setDbbuf(false);
    try {
      this.thread?.destroy();
      this.ns.backend.close();
    } finally {
      this.msix.close();
    }
  }
}

registerPciDevice({
  ...nvmeInfo,
  create: (ctx, node, bdf) => {
    const opts = parseNvmeOptions(node, bdf, ctx.vmName ?? '');
    const useThread = ctx.guestRam !== undefined && ctx.bindIoeventfd !== undefined;
    return new NvmePci(ctx, opts, bdf, `nvme@${bdf.slot}`, useThread);
  },
});
