/** bhyve's exit status: how the VM ended. */
export enum ExitCode {
  REBOOT = 0,
  POWEROFF = 1,
  HALT = 2,
  TRIPLE_FAULT = 3,
  ERROR = 4,
}
