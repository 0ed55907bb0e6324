/* The kernel's own cost of a loopback TCP connection on this machine, both ends together.
 *
 * connect_cost N SOURCES: a forked acceptor accepts N connections on 127.0.0.1 (blocking, and
 * keeps them), while this process connects N times (blocking, IP_BIND_ADDRESS_NO_PORT, source
 * addresses 127.0.0.2 .. 127.0.0.SOURCES+1 in turn) and keeps them too. Each side's user and
 * system CPU over its loop (getrusage) is printed as one JSON line: almost all of it is the
 * kernel's handshake and socket work, which is the floor under any load generator's cost.
 *
 * connect_cost N SOURCES hold: the same, then both keep their connections until this process is
 * ended (SIGTERM) or its parent ends (PR_SET_PDEATHSIG): connections a measurement is taken beside.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static long usec(struct timeval t) { return t.tv_sec * 1000000L + t.tv_usec; }

static void raise_fd_limit(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
}

int main(int argc, char **argv) {
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "hold") == 0)) {
        fprintf(stderr, "usage: connect_cost N SOURCES [hold]\n");
        return 2;
    }
    int n = atoi(argv[1]), sources = atoi(argv[2]), hold = argc == 4;
    pid_t parent = getppid();
    if (hold && (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)) return 1; /* never outlive the harness */
    raise_fd_limit();
    int lsock = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof addr) || listen(lsock, 4096)) {
        perror("listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lsock, (struct sockaddr *)&addr, &len);
    int report[2], go[2];
    if (pipe(report) || pipe(go)) return 1;
    pid_t child = fork();
    if (child == 0) { /* the acceptor */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL)) _exit(1); /* never outlive the connector */
        close(go[1]); /* so the connector's end is the only writer: its exit is EOF here */
        struct rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        for (int i = 0; i < n; i++)
            if (accept(lsock, NULL, NULL) < 0) { perror("accept"); _exit(1); }
        getrusage(RUSAGE_SELF, &b);
        long out[2] = {usec(b.ru_utime) - usec(a.ru_utime), usec(b.ru_stime) - usec(a.ru_stime)};
        if (write(report[1], out, sizeof out) != sizeof out) _exit(1);
        char c;
        if (read(go[0], &c, 1) < 0) _exit(1); /* hold every connection until the connector is done */
        _exit(0);
    }
    close(go[0]);
    struct rusage a, b;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    getrusage(RUSAGE_SELF, &a);
    int one = 1;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
        src.sin_addr.s_addr = htonl(0x7f000002 + (i % sources));
        setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (hold) /* ended by a signal: each close is a reset, so no TIME_WAIT is left behind */
            setsockopt(s, SOL_SOCKET, SO_LINGER, &(struct linger){.l_onoff = 1, .l_linger = 0}, sizeof(struct linger));
        if (s < 0 || bind(s, (struct sockaddr *)&src, sizeof src) || connect(s, (struct sockaddr *)&addr, sizeof addr)) {
            perror("connect");
            kill(child, SIGKILL); /* the acceptor would wait in accept() for good */
            waitpid(child, NULL, 0);
            return 1;
        }
    }
    getrusage(RUSAGE_SELF, &b);
    long server[2];
    if (read(report[0], server, sizeof server) != sizeof server) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("{\"connections\": %d, \"sources\": %d, \"client_user_us\": %ld, \"client_system_us\": %ld, "
           "\"server_user_us\": %ld, \"server_system_us\": %ld, \"wall_s\": %.4f}\n",
           n, sources, usec(b.ru_utime) - usec(a.ru_utime), usec(b.ru_stime) - usec(a.ru_stime), server[0], server[1],
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    fflush(stdout);
    if (hold) pause(); /* until SIGTERM: the acceptor then reads EOF on its pipe and ends too */
    if (write(go[1], "x", 1) != 1) return 1;
    waitpid(child, NULL, 0);
    return 0;
}
