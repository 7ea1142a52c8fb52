/* Run a command with the fallocate(2) syscall failing with EOPNOTSUPP, as on NFSv3, FUSE or
 * ext4 without extents, so glibc's posix_fallocate() falls back to its emulation (read one
 * byte per block, write a zero where it read one).
 *
 * usage: nofalloc DELAY_US COMMAND [ARG...]
 *
 * With DELAY_US > 0 a supervisor (this process) also holds every one-byte pwrite64 for
 * DELAY_US microseconds before letting it run, the round trip a network filesystem adds:
 * it widens the emulation's read-then-write window that a concurrent writer falls into.
 * Exits with the command's exit status (128 + signal if it was killed). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define ARG(n) offsetof(struct seccomp_data, args[n])

static int install(int notify) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fallocate, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EOPNOTSUPP & SECCOMP_RET_DATA)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pwrite64, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG(2)),          /* count, low word */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG(2) + 4),      /* count, high word */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, notify ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    if (!notify) return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
}

static void send_fd(int sock, int fd) {
    char byte = 0, ctl[CMSG_SPACE(sizeof fd)];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                         .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fd);
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &msg, 0) != 1) { perror("sendmsg"); _exit(126); }
}

static int recv_fd(int sock) {
    int fd = -1;
    char byte, ctl[CMSG_SPACE(sizeof fd)];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                         .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &msg, 0) != 1) return -1;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof fd);
    return fd;
}

static void supervise(int listener, long delay_us) {
    struct seccomp_notif_sizes sizes;
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return;
    struct seccomp_notif *req = calloc(1, sizes.seccomp_notif);
    struct seccomp_notif_resp *resp = calloc(1, sizes.seccomp_notif_resp);
    struct pollfd p = {listener, POLLIN, 0};
    while (poll(&p, 1, -1) >= 0 && !(p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
        memset(req, 0, sizes.seccomp_notif);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) continue;
        usleep((useconds_t)delay_us);
        memset(resp, 0, sizes.seccomp_notif_resp);
        resp->id = req->id;
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp); /* ENOENT: the caller died */
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s DELAY_US COMMAND [ARG...]\n", argv[0]); return 2; }
    long delay_us = strtol(argv[1], NULL, 10);
    int notify = delay_us > 0, pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) { perror("socketpair"); return 126; }
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 126; }
    if (child == 0) {
        close(pair[0]);
        int listener = install(notify);
        if (listener < 0) { perror("seccomp"); _exit(126); }
        if (notify) { send_fd(pair[1], listener); close(listener); }
        close(pair[1]);
        execvp(argv[2], argv + 2);
        perror("execvp");
        _exit(127);
    }
    close(pair[1]);
    if (notify) {
        int listener = recv_fd(pair[0]);
        if (listener >= 0) supervise(listener, delay_us);
    }
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
