/**
 * The host side of an emulated serial port (bhyve's uart backends).
 * Contract for implementations, since callers run on the vCPU exit path:
 *  - write() never blocks and never throws; it copies what it keeps and
 *    keeps a bounded queue (excess is dropped and counted);
 *  - onData() delivers host input; pause()/resume() are backpressure hints
 *    (a chunk already in flight may still arrive after pause()).
 */
export interface SerialBackend {
  write(bytes: Uint8Array): void;
  onData(cb: (bytes: Uint8Array) => void): void;
  pause(): void;
  resume(): void;
  close(): Promise<void> | void;
}
