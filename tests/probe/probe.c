/* A tiny static probe that the escape tests run inside a container (as crun's init.c and
 * youki's runtimetest do): it tries one thing and prints what the kernel answered.
 *
 *   probe euid                 the effective uid
 *   probe syscall NAME         try a syscall the seccomp profile denies, with arguments that
 *                              succeed (or fail otherwise than EPERM) where it is allowed;
 *                              prints OK or the errno name
 *   probe kill PID             kill(PID, 0)
 *   probe ptrace PID           ptrace(PTRACE_ATTACH, PID)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name_of(int err) {
    switch (err) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case ESRCH: return "ESRCH";
    case EBADF: return "EBADF";
    case EFAULT: return "EFAULT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOENT: return "ENOENT";
    default: return strerror(err);
    }
}

/* The result of a raw syscall: 0 for success, else errno. A child it made exits at once. */
static int outcome(long r) {
    if (r == 0 && errno == 0) return 0;
    if (r < 0) return errno;
    return 0;
}

static int try_syscall(const char *name) {
    errno = 0;
    if (!strcmp(name, "unshare-user")) return outcome(syscall(SYS_unshare, CLONE_NEWUSER));
    if (!strcmp(name, "clone-user")) {
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) { waitpid(pid, NULL, 0); return 0; }
        return errno;
    }
#ifdef SYS_clone3
    if (!strcmp(name, "clone3-user")) {
        struct clone_args args = {0};
        args.flags = CLONE_NEWUSER;
        args.exit_signal = SIGCHLD;
        long pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid == 0) _exit(0);
        if (pid > 0) { waitpid(pid, NULL, 0); return 0; }
        return errno;
    }
#endif
    if (!strcmp(name, "userfaultfd")) return outcome(syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */) >= 0 ? 0 : -1);
    if (!strcmp(name, "keyctl")) return outcome(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 1) >= 0 ? 0 : -1);
    if (!strcmp(name, "add_key")) return outcome(syscall(SYS_add_key, "user", "boxrun-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING) >= 0 ? 0 : -1);
    if (!strcmp(name, "request_key")) return outcome(syscall(SYS_request_key, "user", "boxrun-none", 0, 0));
    if (!strcmp(name, "name_to_handle_at")) {
        struct { unsigned int bytes; int type; unsigned char h[128]; } handle = { 128, 0, {0} };
        int mount_id;
        return outcome(syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &handle, &mount_id, 0));
    }
    if (!strcmp(name, "open_by_handle_at")) return outcome(syscall(SYS_open_by_handle_at, -1, NULL, 0));
    if (!strcmp(name, "bpf")) return outcome(syscall(SYS_bpf, -1, NULL, 0));
    if (!strcmp(name, "perf_event_open")) return outcome(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    if (!strcmp(name, "kexec_load")) return outcome(syscall(SYS_kexec_load, 0, 0, NULL, 0));
    if (!strcmp(name, "init_module")) return outcome(syscall(SYS_init_module, NULL, 0, ""));
    if (!strcmp(name, "finit_module")) return outcome(syscall(SYS_finit_module, -1, "", 0));
    if (!strcmp(name, "delete_module")) return outcome(syscall(SYS_delete_module, "boxrun-none", 0));
    if (!strcmp(name, "syslog")) return outcome(syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0) >= 0 ? 0 : -1);
    if (!strcmp(name, "acct")) return outcome(syscall(SYS_acct, NULL));
#if defined(__x86_64__)
    if (!strcmp(name, "iopl")) return outcome(syscall(SYS_iopl, 0));
    /* The x32 twin of getpid: refused by the filter, ENOSYS where x32 is compiled out. */
    if (!strcmp(name, "x32-getpid")) return outcome(syscall(0x40000000 | SYS_getpid) >= 0 ? 0 : -1);
#endif
    fprintf(stderr, "probe: unknown syscall %s\n", name);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "euid")) {
        printf("%d\n", (int)geteuid());
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "syscall")) {
        printf("%s\n", name_of(try_syscall(argv[2])));
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "kill")) {
        errno = 0;
        printf("%s\n", name_of(kill(atoi(argv[2]), 0) == 0 ? 0 : errno));
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "ptrace")) {
        errno = 0;
        printf("%s\n", name_of(ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0) == 0 ? 0 : errno));
        return 0;
    }
    fprintf(stderr, "usage: probe euid | syscall NAME | kill PID | ptrace PID\n");
    return 2;
}
