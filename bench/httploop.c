/* httploop: cleartext HTTP/1.1 GETs on one keep-alive TCP connection to 127.0.0.1:PORT, one at a
 * time, each response read whole (Content-Length), and print the mean cost of one request.
 *
 * usage: httploop PORT REQUESTS
 * prints one line: "<µs per request> <requests> <seconds>"
 *
 * Built by `cargo xtask bench` with `cc -O2`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Reads one response: head, then Content-Length bytes of body. */
static int response(int fd, char *buf, size_t cap)
{
	size_t have = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, cap - have - 1);
		if (r <= 0)
			return -1;
		have += r;
		buf[have] = 0;
		char *end = strstr(buf, "\r\n\r\n");
		if (!end)
			continue;
		char *cl = strcasestr(buf, "content-length:");
		size_t body = cl ? strtoul(cl + 15, 0, 10) : 0;
		size_t want = (end + 4 - buf) + body;
		if (have >= want)
			return 0;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PORT REQUESTS\n", argv[0]);
		return 2;
	}
	long n = atol(argv[2]);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		perror("connect");
		return 1;
	}
	const char req[] = "GET /fhir/R4/Patient/123 HTTP/1.1\r\nHost: bench.local\r\n"
			   "Authorization: Bearer bench-token-not-a-secret\r\n\r\n";
	char buf[4096];
	double t0 = 0;
	for (long i = -100; i < n; i++) {
		if (i == 0)
			t0 = now();
		if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1) ||
		    response(fd, buf, sizeof(buf))) {
			perror("request");
			return 1;
		}
	}
	double dt = now() - t0;
	printf("%.2f %ld %.6f\n", dt * 1e6 / n, n, dt);
	return 0;
}
