/**
 * vCPU threads started ahead of their VM. A worker thread takes tens of
 * milliseconds to boot Node and load its modules; the CLI starts one
 * before it loads its own, so the two overlap, and the vCPU thread that
 * takes it gets its work by message. Imports nothing but worker_threads,
 * so that starting early costs the CLI nothing.
 */
import { Worker } from 'node:worker_threads';

const WORKER_URL = new URL('./worker.js', import.meta.url);
/** prestarted workers not taken yet, each with its listener that drops it */
const idle = new Map<Worker, () => void>();

/** A vCPU worker that waits for its VcpuWorkerData message. */
function spawn(): Worker {
  return new Worker(WORKER_URL, { stdout: false, stderr: false });
}

/** Start `n` vCPU workers now; they keep the process alive only once taken. */
export function prestartVcpuWorkers(n: number): void {
  for (let i = 0; i < n; i++) {
    const w = spawn();
    w.unref();
    // One that fails before it is taken is dropped; a new one reports the failure.
    const drop = () => { idle.delete(w); };
    w.once('error', drop).once('exit', drop);
    idle.set(w, drop);
  }
}

/** A prestarted worker if one is left, else a new one; the caller sends it its work. */
export function takeVcpuWorker(): Worker {
  const [entry] = idle;
  if (!entry) return spawn();
  const [w, drop] = entry;
  idle.delete(w);
  w.off('error', drop).off('exit', drop);
  w.ref();
  return w;
}
