/**
 * The legacy (virtio 0.9.5) register block of a transitional virtio-pci
 * device, I/O BAR 0 (little-endian, guest-native on x86):
 *
 *   0x00 u32 host features (bits 0-31)   0x10 u16 queue notify
 *   0x04 u32 guest features              0x12 u8  device status
 *   0x08 u32 queue PFN                   0x13 u8  ISR (read clears)
 *   0x0c u16 queue size (read-only)      0x14 u16 config vector  } with MSI-X
 *   0x0e u16 queue select                0x16 u16 queue vector   } enabled
 *   device config at 0x14, or at 0x18 while MSI-X is enabled.
 *
 * The queue select, status, ISR and vector registers are the modern
 * interface's (TransportRegisters); only their layout is here.
 */
import type { BusDevice } from '../../bus/bus.js';
import type { VirtioCore } from '../device.js';

const HOST_FEATURES = 0x00, GUEST_FEATURES = 0x04, QUEUE_PFN = 0x08, QUEUE_NUM = 0x0c, QUEUE_SEL = 0x0e,
  STATUS = 0x12, ISR = 0x13, CONFIG_VECTOR = 0x14, QUEUE_VECTOR = 0x16;
/** The queue notify register (a port ioeventfd per queue matches the index written). */
export const LEGACY_QUEUE_NOTIFY = 0x10;

/** Transitional PCI device IDs (virtio 1.2, 4.1.2.1), by virtio device type. */
const LEGACY_DEVICE_ID: Record<number, number> = { 1: 0x1000, 2: 0x1001, 3: 0x1003, 4: 0x1005, 5: 0x1002, 8: 0x1004, 9: 0x1009 };

/** The transitional PCI device ID of virtio type `type`, if it has one. */
export function legacyDeviceId(type: number): number | undefined { return LEGACY_DEVICE_ID[type]; }

/** The I/O BAR's size: the registers and `configSize` bytes of device config, a power of two. */
export function legacyBarSize(configSize: number): number { return 1 << Math.max(5, Math.ceil(Math.log2(0x18 + configSize))); }

/** The registers both interfaces share (the transport implements them once). */
export interface TransportRegisters {
  readonly core: VirtioCore;
  /** MSI-X is enabled: the vector registers exist and the device config starts at 0x18. */
  readonly msixEnabled: boolean;
  queueSelect: number;
  readonly configVector: number;
  /** queue q's vector (NO_VECTOR for a queue that does not exist) */
  queueVector(q: number): number;
  setConfigVector(v: number): void;
  setQueueVector(q: number, v: number): void;
  /** A device status write; 0 resets the device and the transport. */
  writeStatus(value: number): void;
  /** Read the ISR: reading clears it and lowers INTx. */
  takeIsr(): number;
}

export class LegacyRegisters implements BusDevice {
  constructor(private readonly t: TransportRegisters) {}

  private get configOffset(): number { return this.t.msixEnabled ? 0x18 : 0x14; }

  read(off: number, size: number): number {
    const t = this.t, core = t.core;
    const cfg = this.configOffset;
    if (off >= cfg) return core.readConfig(off - cfg, size);
    const q = core.queue(t.queueSelect);
    let v: number;
    let base: number;
    switch (true) {
      case off < 0x04: base = HOST_FEATURES; v = core.deviceFeatureWord(0); break;
      case off < 0x08: base = GUEST_FEATURES; v = core.driverFeatureWord(0); break;
      case off < 0x0c: base = QUEUE_PFN; v = q ? Number(q.descTable / 4096n) >>> 0 : 0; break;
      case off < 0x0e: base = QUEUE_NUM; v = q ? q.maxSize : 0; break;
      case off < 0x10: base = QUEUE_SEL; v = t.queueSelect; break;
      case off < 0x12: base = LEGACY_QUEUE_NOTIFY; v = 0; break;
      case off === STATUS: base = STATUS; v = core.status; break;
      case off === ISR: {
        const isr = t.takeIsr();
        return size === 1 ? isr : 0;
      }
      case off < 0x16: base = CONFIG_VECTOR; v = t.configVector; break;
      default: base = QUEUE_VECTOR; v = t.queueVector(t.queueSelect); break;
    }
    const shift = (off - base) * 8;
    const mask = size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    return ((v >>> shift) & mask) >>> 0;
  }

  write(off: number, size: number, value: number): void {
    const t = this.t, core = t.core;
    const cfg = this.configOffset;
    if (off >= cfg) { core.writeConfig(off - cfg, size, value); return; }
    core.setLegacy(true);
    const w16 = value & 0xffff;
    switch (off) {
      case GUEST_FEATURES: if (size === 4) core.writeDriverFeatureWord(0, value >>> 0); break;
      case QUEUE_PFN: if (size === 4) core.setQueuePfn(t.queueSelect, value >>> 0); break;
      case QUEUE_SEL: if (size === 2) t.queueSelect = w16; break;
      case LEGACY_QUEUE_NOTIFY: if (size === 2) core.notifyQueue(w16); break;
      case STATUS: if (size === 1) t.writeStatus(value); break;
      case CONFIG_VECTOR: if (size === 2 && t.msixEnabled) t.setConfigVector(w16); break;
      case QUEUE_VECTOR: if (size === 2 && t.msixEnabled) t.setQueueVector(t.queueSelect, w16); break;
      default: break; // read-only or unknown: ignored
    }
  }
}
