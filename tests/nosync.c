/* Run a command with fsync(2) and fdatasync(2) failing with EIO, as on a disk (or a network
 * filesystem) that cannot write its pages back: nothing the command wrote is durable.
 *
 * usage: nosync [--fdatasync-only] COMMAND [ARG...]
 *
 * With --fdatasync-only, fsync(2) still works: what a command makes durable with fdatasync
 * alone (a resume checkpoint's data) is told apart from what it fsyncs (records, the file).
 *
 * Exits with the command's exit status (128 + signal if it was killed). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int only = argc > 1 && strcmp(argv[1], "--fdatasync-only") == 0;
    if (argc < 2 + only) {
        fprintf(stderr, "usage: %s [--fdatasync-only] COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    /* Without --fdatasync-only, fsync is matched too; with it, the jump never matches. */
    unsigned int fsync_nr = only ? 0xffffffffu : __NR_fsync;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, fsync_nr, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fdatasync, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EIO & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) { perror("prctl"); return 126; }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) { perror("seccomp"); return 126; }
    execvp(argv[1 + only], argv + 1 + only);
    perror("execvp");
    return 127;
}
