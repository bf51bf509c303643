/**
 * System calls the sandbox refuses whatever the measurement says (the
 * allow-list, allowed.ts, is checked against this list by its test): new
 * programs and processes, debugging other processes, mounts and namespaces,
 * kernel modules and kexec, BPF and perf, the kernel keyring, io_uring
 * (its operations bypass the filter), identity changes, and raw device
 * creation, and the changes to files Landlock does not govern (modes,
 * owners, times, extended attributes: as root, chmod of a system file would
 * need no capability). clone is refused only without CLONE_THREAD (bpf.ts).
 */
export const REFUSED: readonly string[] = [
  'execve', 'execveat', 'fork', 'vfork',
  'ptrace', 'process_vm_readv', 'process_vm_writev', 'pidfd_getfd',
  'mount', 'umount2', 'pivot_root', 'chroot', 'unshare', 'setns', 'move_mount', 'open_tree', 'fsopen', 'fsmount', 'fsconfig', 'fspick',
  'mount_setattr', 'open_tree_attr',
  'init_module', 'finit_module', 'delete_module', 'kexec_load', 'kexec_file_load', 'reboot', 'swapon', 'swapoff',
  'bpf', 'perf_event_open', 'userfaultfd',
  'keyctl', 'add_key', 'request_key',
  'io_uring_setup', 'io_uring_enter', 'io_uring_register',
  'setuid', 'setgid', 'setreuid', 'setregid', 'setresuid', 'setresgid', 'setgroups', 'setfsuid', 'setfsgid', 'capset',
  'mknod', 'mknodat', 'acct', 'quotactl', 'quotactl_fd', 'settimeofday', 'clock_settime', 'clock_adjtime', 'adjtimex',
  'sethostname', 'setdomainname', 'iopl', 'ioperm', 'lookup_dcookie', 'name_to_handle_at', 'open_by_handle_at',
  'chmod', 'fchmod', 'fchmodat', 'fchmodat2', 'chown', 'fchown', 'lchown', 'fchownat', 'umask',
  'utime', 'utimes', 'utimensat', 'futimesat', 'setxattr', 'lsetxattr', 'fsetxattr', 'removexattr', 'lremovexattr', 'fremovexattr',
  'setxattrat', 'removexattrat', 'file_setattr',
  'landlock_create_ruleset', 'landlock_add_rule', 'landlock_restrict_self', 'seccomp',
];
