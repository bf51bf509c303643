/**
 * The host side of an emulated serial port (bhyve's uart backends).
 * Contract for implementations, since callers run on the vCPU exit path:
 *  - write() never blocks and never throws; it copies what it keeps (the
 *    caller may reuse its buffer) into a queue bounded in real memory, not
 *    in writes: excess is dropped and counted (`droppedOutput`, for stats);
 *  - onData() delivers host input; pause()/resume() are backpressure hints
 *    (a chunk already in flight may still arrive after pause()).
 */
export interface SerialBackend {
  write(bytes: Uint8Array): void;
  onData(cb: (bytes: Uint8Array) => void): void;
  pause(): void;
  resume(): void;
  close(): Promise<void> | void;
  /** Output bytes dropped so far (a reader not keeping up, a size cap). */
  readonly droppedOutput?: number;
}
