/**
 * `-s N,virtio-console,NAME=/path/sock[,NAME=/path/sock...]` on virtio-pci
 * (bhyve syntax; a port named `console` is the guest console). Each port
 * listens on its unix socket, one client at a time.
 *
 * create() is synchronous and UnixSerialBackend.open is not, so each port
 * gets a LazySerialBackend: the path is checked synchronously (UserError at
 * startup), the listen happens in the background and a late failure (e.g.
 * the socket is live in another process) is reported through guestError.
 */
import { registerPciDevice } from '../../pci/device.js';
import { VirtioPci, virtioPciOptions } from '../../virtio/pci/transport.js';
import { openSerialBackend } from '../backends/index.js';
import { VirtioConsole } from './device.js';
import { checkSocketPath, parseVirtioConsolePorts, virtioConsoleInfo } from './config.js';
import { LazySerialBackend } from './lazy-backend.js';

registerPciDevice({
  ...virtioConsoleInfo,
  create: (ctx, node, bdf) => {
    const cfg = parseVirtioConsolePorts(node);
    for (const p of cfg) checkSocketPath(p.path);
    const backends = cfg.map((p) => new LazySerialBackend(
      () => openSerialBackend(`unix=${p.path}`),
      (e) => ctx.guestError('virtio-console', `port ${p.name}: ${e instanceof Error ? e.message : String(e)}`),
    ));
    const dev = new VirtioConsole({
      ports: cfg.map((p, i) => ({ name: p.name, backend: backends[i]!, console: p.console })),
      onGuestError: (m) => ctx.guestError('virtio-console', m),
    });
    const fn = new VirtioPci(ctx, dev, bdf, `virtio-console@${bdf.slot}`, virtioPciOptions(node));
    fn.onDestroy = () => { for (const b of backends) void b.close().catch(() => undefined); };
    return fn;
  },
});
