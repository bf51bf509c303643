/**
 * The block layer shared by the disk devices: the BlockBackend interface
 * and the backends (raw files and block devices).
 */
export { BlockIoError, type BlockBackend } from './backend.js';
export { FileBlockBackend, type FileBackendOptions } from './file.js';
