/** The I/O-thread entry of the test EchoDevice. */
import { runIoThread } from '../runtime.js';
import { EchoDevice, type EchoInit } from './echo-device.js';

runIoThread<EchoInit>({
  create: (init) => new EchoDevice(init),
  warmUp: (init, _interrupt, stop) => {
    if (!init.warmUp) return undefined;
    const end = Date.now() + 10_000;
    while (!stop() && Date.now() < end) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    return 'echo warm-up stopped';
  },
});
