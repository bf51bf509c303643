/**
 * The block layer shared by the disk devices: the BlockBackend interface
 * and the backends (raw files and block devices, qcow2 images), opened by
 * format or by probing (open.ts).
 */
export { BlockIoError, type BlockBackend, type BlockSnapshots } from './backend.js';
export { FileBlockBackend, type FileBackendOptions } from './file.js';
export { IMAGE_FORMATS, parseImageFormat, type ImageFormat } from './format.js';
export { MAX_CHAIN, openImage, probeFormat, resolveBacking, type OpenImageOptions } from './open.js';
export { Qcow2Backend } from './qcow2/image.js';
export { checkpointImage, diskCheckpointHook, followOverlay, type CheckpointHere, type HeldImage } from './checkpoint.js';
