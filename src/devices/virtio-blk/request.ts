/**
 * The driver's side of a virtio-blk request: the 16-byte header a driver
 * puts first in a chain (struct virtio_blk_req). The I/O thread's warm-up
 * builds its requests with it, and so do the tests and the host bench.
 */
import { VIRTIO_BLK_HEADER_SIZE } from './device.js';

/** type, reserved, sector (512-byte units; wrapped to 64 bits as a driver would write it). */
export function requestHeader(type: number, sector: bigint | number, reserved = 0): Buffer {
  const b = Buffer.alloc(VIRTIO_BLK_HEADER_SIZE);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(reserved, 4);
  b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(sector)), 8);
  return b;
}
