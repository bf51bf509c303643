/** The control plane: a VM's control socket, its server and its client. */
export { ControlServer, MAX_SOCKET_PATH_BYTES, type ControlServerOptions } from './server.js';
export { ControlClient, ControlError, connectVm, listVms, type ConnectOptions, type CallOptions, type ListedVm } from './client.js';
export { defaultControlDir, socketPathFor, resolveSocket } from './paths.js';
export { controlSocketPath } from './config.js';
export { OPS, type Op, type VmInfo, type Request, type Response, type ProgressEvent } from './protocol.js';
