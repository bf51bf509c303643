/**
 * Virtio 1.2 constants shared by the queue, the transport-independent core,
 * the transports and the device models.
 *
 * Feature bits (spec 6, "Reserved Feature Bits"): a device offers a 64-bit
 * feature set and the driver accepts a subset of it. Bits are numbered; the
 * set is a bigint with bit N = 1n << BigInt(N):
 *
 *   63                  50   49 .. 38   37 ... 24   23 ........... 0
 *  +----------------------+-----------+-----------+----------------+
 *  |  reserved (future)   | device    | transport |  device type   |
 *  |                      | specific  | (generic) |  specific      |
 *  +----------------------+-----------+-----------+----------------+
 *
 *  transport bits used here: 28 INDIRECT_DESC, 29 EVENT_IDX, 32 VERSION_1,
 *  33 ACCESS_PLATFORM, 34 RING_PACKED, 35 IN_ORDER, 36 ORDER_PLATFORM,
 *  37 SR_IOV, 38 NOTIFICATION_DATA, 39 NOTIF_CONFIG_DATA, 40 RING_RESET.
 *
 * Device status (spec 2.1), one byte the driver writes bit by bit:
 *
 *    7        6          5 4   3            2           1        0
 *  +--------+-----------+---+-------------+-----------+--------+-------------+
 *  | FAILED | NEEDS_    | - | FEATURES_OK | DRIVER_OK | DRIVER | ACKNOWLEDGE |
 *  |  0x80  | RESET 0x40|   |    0x08     |   0x04    |  0x02  |    0x01     |
 *  +--------+-----------+---+-------------+-----------+--------+-------------+
 *
 * Writing 0 resets the device. NEEDS_RESET is set by the device only.
 *
 * Split-ring layouts (spec 2.7), all little-endian:
 *
 *  descriptor (16 bytes, table aligned 16):  u64 addr | u32 len | u16 flags | u16 next
 *  avail ring (aligned 2):  u16 flags | u16 idx | u16 ring[size] | u16 used_event
 *  used ring  (aligned 4):  u16 flags | u16 idx | {u32 id, u32 len}[size] | u16 avail_event
 */

// ---- feature bit numbers ------------------------------------------------

/** Descriptors may point at an indirect descriptor table (2.7.5.3). */
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
/** used_event / avail_event notification suppression (2.7.7, 2.7.10). */
export const VIRTIO_RING_F_EVENT_IDX = 29;
/** Virtio 1.x (non-legacy) device: this code only does modern virtio. */
export const VIRTIO_F_VERSION_1 = 32;
/** The device accesses memory through an IOMMU / platform translation. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Packed virtqueue layout (not implemented). */
export const VIRTIO_F_RING_PACKED = 34;
/** Buffers are used in the order they are made available. */
export const VIRTIO_F_IN_ORDER = 35;
/** Platform memory ordering required (weak-ordering hardware). */
export const VIRTIO_F_ORDER_PLATFORM = 36;
/** SR-IOV capable. */
export const VIRTIO_F_SR_IOV = 37;
/** Driver passes extra data in its queue notifications. */
export const VIRTIO_F_NOTIFICATION_DATA = 38;
/** Driver uses device-provided data in notifications. */
export const VIRTIO_F_NOTIF_CONFIG_DATA = 39;
/** Individual queues can be reset. */
export const VIRTIO_F_RING_RESET = 40;

/** The feature set containing bit `n` (0..63). */
export function featureBit(n: number): bigint {
  return 1n << BigInt(n);
}

/** True when `features` has bit `n`. */
export function hasFeature(features: bigint, n: number): boolean {
  return (features & featureBit(n)) !== 0n;
}

/** All 64 bits. */
export const FEATURES_MASK = (1n << 64n) - 1n;

/**
 * The transport/ring features the generic core and the split queue in this
 * folder implement; a device ORs these into its own offered features.
 */
export const VIRTIO_COMMON_FEATURES =
  featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_RING_F_INDIRECT_DESC) | featureBit(VIRTIO_RING_F_EVENT_IDX);

// ---- device status bits (2.1) --------------------------------------------

export const VIRTIO_STATUS_ACKNOWLEDGE = 0x01;
export const VIRTIO_STATUS_DRIVER = 0x02;
export const VIRTIO_STATUS_DRIVER_OK = 0x04;
export const VIRTIO_STATUS_FEATURES_OK = 0x08;
export const VIRTIO_STATUS_NEEDS_RESET = 0x40;
export const VIRTIO_STATUS_FAILED = 0x80;

// ---- split ring flags (2.7) ----------------------------------------------

/** Descriptor continues via `next`. */
export const VIRTQ_DESC_F_NEXT = 1;
/** Buffer is device-writable (otherwise device-readable). */
export const VIRTQ_DESC_F_WRITE = 2;
/** Buffer holds an indirect descriptor table. */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: driver does not want used-buffer notifications (no EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: device does not want available-buffer notifications (no EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Size of one descriptor in bytes. */
export const VIRTQ_DESC_SIZE = 16;
/** Ring alignment requirements (2.7, "Virtqueue Alignment"). */
export const VIRTQ_DESC_ALIGN = 16;
export const VIRTQ_AVAIL_ALIGN = 2;
export const VIRTQ_USED_ALIGN = 4;
/** Largest split queue size (a power of two, <= 32768). */
export const VIRTQ_MAX_SIZE = 32768;

/** Byte sizes of the three split-ring areas for a queue of `size` entries (event fields included). */
export function descTableBytes(size: number): number { return VIRTQ_DESC_SIZE * size; }
export function availRingBytes(size: number): number { return 6 + 2 * size; }
export function usedRingBytes(size: number): number { return 6 + 8 * size; }

// ---- device IDs (5) -------------------------------------------------------

export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_BALLOON = 5;
export const VIRTIO_ID_SCSI = 8;
export const VIRTIO_ID_9P = 9;
export const VIRTIO_ID_INPUT = 18;
export const VIRTIO_ID_VSOCK = 19;

/** Legacy (0.9.5) queue layout: rings in guest pages, the used ring on a page boundary. */
export const VIRTIO_LEGACY_PAGE = 4096;
/** Legacy layout of a queue of `size` entries at `base`: avail right after desc, used page-aligned. */
export function legacyRingLayout(base: bigint, size: number): { desc: bigint; avail: bigint; used: bigint } {
  const avail = base + BigInt(descTableBytes(size));
  const availEnd = avail + BigInt(availRingBytes(size));
  const page = BigInt(VIRTIO_LEGACY_PAGE);
  return { desc: base, avail, used: (availEnd + page - 1n) / page * page };
}
