# boxrun's default seccomp profile: what a batch job never needs and an attacker would.
#
# One rule a line:  SYSCALL[,SYSCALL...]  ERRNO  [when argN&MASK]  [unless-nested]  [only ARCH]
#   ERRNO          EPERM (a normal "operation not permitted", so programs fall back cleanly)
#                  or ENOSYS (as if the kernel lacked the call)
#   when argN&MASK the rule applies only when argument N has every bit of MASK set (so one bit)
#   unless-nested  dropped when the site allows nested containers (--allow-nested)
#   only ARCH      x86_64 or aarch64: the call exists on that architecture alone
# Everything else is allowed. Foreign ABIs (i386, x32) are refused before these rules: the
# filter kills a process calling with another architecture and refuses x32 syscall numbers.

# The running kernel is not the job's to replace, extend or reconfigure.
kexec_load,kexec_file_load                      EPERM
init_module,finit_module,delete_module          EPERM
iopl,ioperm                                     EPERM   only x86_64
reboot,swapon,swapoff,acct                      EPERM
syslog                                          EPERM   # the kernel log leaks addresses

# Kernel attack surface with a long record of exploits, unused by batch jobs.
bpf                                             EPERM
perf_event_open                                 EPERM   # also a side channel across jobs
userfaultfd                                     EPERM   # widens kernel race windows
keyctl,add_key,request_key                      EPERM   # keyrings are not namespaced

# Opening files by handle bypasses the mount namespace ("shocker").
open_by_handle_at,name_to_handle_at             EPERM

# No nested user namespaces: each one re-grants capabilities over new namespaces.
clone                                           EPERM   when arg0&0x10000000 unless-nested
unshare                                         EPERM   when arg0&0x10000000 unless-nested
# clone3's flags are in memory a filter cannot read: report it missing, and libc falls back
# to clone, which the rule above checks.
clone3                                          ENOSYS  unless-nested
