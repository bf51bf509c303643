/**
 * Typed errors, one class per layer, each with a stable `code`.
 * A UserError is printed as one line (no stack) and ends the CLI with exit 4.
 */
export class TshyveError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad user input: options, files, config. One line for the user, exit 4. */
export class UserError extends TshyveError {
  constructor(message: string, code = 'EUSER') {
    super(code, message);
  }
}

/** The host cannot run the VM (no KVM, missing capability, emulated KVM). */
export class HostError extends TshyveError {
  constructor(message: string, code = 'EHOST') {
    super(code, message);
  }
}

/** A guest-physical access outside guest RAM or overflowing. Never fatal to the monitor. */
export class GuestMemoryError extends TshyveError {
  constructor(readonly gpa: number, readonly length: number, why = 'outside guest memory') {
    super('EGUESTMEM', `guest access [0x${gpa.toString(16)}, +0x${length.toString(16)}) ${why}`);
  }
}

/** A KVM ioctl failed. */
export class KvmError extends TshyveError {
  constructor(readonly op: string, readonly errno: number) {
    super('EKVM', `${op} failed: errno ${errno}`);
  }
}
