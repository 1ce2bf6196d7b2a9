/* A fixed-latency HTTP/1.1 server for bench_generator_capacity.py: every request is answered DELAY_MS after it
 * was read, with the same small JSON body, and the server logs its own time for each answer.
 *
 * Why C: the benchmark asks how much load the *generator* carries. A Python server on the same 2 cores costs
 * about as much CPU per request as the generator does, so it saturates first and hides the answer. This one
 * costs tens of microseconds a request (one epoll loop, one thread); all delays are equal, so the pending
 * answers are a FIFO and the loop sleeps until the head is due.
 *
 *   cc -O2 -o fixed_latency_server fixed_latency_server.c
 *   ./fixed_latency_server PORT DELAY_MS LOG_PATH     (log: one "epoch_second service_us" line per answer)
 * PORT 0 takes a free port; the port is printed as one line, "PORT\n", once the server listens.
 *
 * Keep-alive, Content-Length bodies (no chunked requests), no pipelining beyond what arrives in one read.
 * Binds 127.0.0.1 only. Stops on SIGTERM/SIGINT, flushing the log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MAX_FDS 65536
#define MAX_REQUEST (64 * 1024 * 1024)

static const char BODY[] =
    "{\"status\": \"ok\", \"success\": true, \"data\": {\"id\": \"1\", \"token\": \"bench\", \"csrfToken\": \"bench\"}}";
static char response[512];
static size_t response_len;

typedef struct { char *buf; size_t len, cap; unsigned gen; int open; } Conn;
typedef struct { int fd; unsigned gen; long long read_ns; } Pending;

static Conn conns[MAX_FDS];
static Pending *fifo;
static size_t fifo_head, fifo_len, fifo_cap;
static volatile sig_atomic_t stopping;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void push(int fd, unsigned gen, long long read_ns) {
    if (fifo_len == fifo_cap) {
        size_t cap = fifo_cap ? fifo_cap * 2 : 4096;
        Pending *grown = malloc(cap * sizeof *grown);
        for (size_t i = 0; i < fifo_len; i++) grown[i] = fifo[(fifo_head + i) % fifo_cap];
        free(fifo);
        fifo = grown, fifo_cap = cap, fifo_head = 0;
    }
    fifo[(fifo_head + fifo_len++) % fifo_cap] = (Pending){fd, gen, read_ns};
}

static void close_conn(int epfd, int fd) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    conns[fd].open = 0, conns[fd].len = 0, conns[fd].gen++;
}

/* Length of the first complete request in buf (headers and body), or 0 when more bytes are needed. */
static size_t complete_request(const char *buf, size_t len) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - buf) + 4, body = 0;
    for (const char *line = buf; line < end; ) {
        const char *next = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!next) next = end;
        if ((size_t)(next - line) > 15 && strncasecmp(line, "Content-Length:", 15) == 0) body = strtoul(line + 15, NULL, 10);
        line = next + 2;
    }
    return len >= head + body ? head + body : 0;
}

static void on_readable(int epfd, int fd) {
    Conn *c = &conns[fd];
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap ? c->cap * 2 : 131072;
            if (c->cap > MAX_REQUEST) { close_conn(epfd, fd); return; }
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t got = read(fd, c->buf + c->len, c->cap - c->len);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) { close_conn(epfd, fd); return; }
        if (got < 0) break;
        c->len += (size_t)got;
    }
    size_t used;
    while ((used = complete_request(c->buf, c->len)) > 0) {
        push(fd, c->gen, now_ns());
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    }
}

static void on_stop(int signal_number) { (void)signal_number; stopping = 1; }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s PORT DELAY_MS LOG_PATH\n", argv[0]); return 2; }
    int port = atoi(argv[1]);
    long long delay_ns = (long long)(atof(argv[2]) * 1e6);
    FILE *log = fopen(argv[3], "w");
    if (!log) { perror(argv[3]); return 2; }
    response_len = (size_t)snprintf(response, sizeof response, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n%s", sizeof BODY - 1, BODY);
    signal(SIGTERM, on_stop), signal(SIGINT, on_stop), signal(SIGPIPE, SIG_IGN);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 4096)) { perror("bind"); return 2; }
    socklen_t bound = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &bound);
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    int epfd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener}, ready[512];
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &event);

    long long flushed_ns = now_ns();
    while (!stopping) {
        long long now = now_ns();
        if (now - flushed_ns > 1000000000LL) fflush(log), flushed_ns = now;  /* the log is read while it grows */
        while (fifo_len) {
            Pending *p = &fifo[fifo_head];
            if (p->read_ns + delay_ns > now) break;
            if (conns[p->fd].open && conns[p->fd].gen == p->gen) {
                if (write(p->fd, response, response_len) < 0) close_conn(epfd, p->fd);
                else {
                    long long done = now_ns();
                    fprintf(log, "%ld %lld\n", (long)time(NULL), (done - p->read_ns) / 1000);
                }
            }
            fifo_head = (fifo_head + 1) % fifo_cap, fifo_len--;
        }
        /* epoll_pwait2: nanoseconds, so answers are not late; idle, wake once a second to flush the log */
        long long wait_ns = fifo_len ? fifo[fifo_head].read_ns + delay_ns - now_ns() : 1000000000LL;
        if (wait_ns < 0) wait_ns = 0;
        struct timespec timeout = {wait_ns / 1000000000LL, wait_ns % 1000000000LL};
        int count = epoll_pwait2(epfd, ready, 512, &timeout, NULL);
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (client >= MAX_FDS) { close(client); continue; }
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[client].open = 1, conns[client].len = 0;
                    struct epoll_event watch = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, client, &watch);
                }
            } else {
                on_readable(epfd, fd);
            }
        }
    }
    fclose(log);
    return 0;
}
