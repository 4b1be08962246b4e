/* ioloop: write() then read() 64 bytes in a tight loop on a pipe or a file, and print the mean
 * cost of one write+read pair. Neither is a socket: a monitor that decides in the kernel which
 * fds to follow pays only its filter here.
 *
 * usage: ioloop pipe|file PATH ITERATIONS   (PATH: the file for `file`, ignored for `pipe`)
 * prints one line: "<ns per write+read pair> <iterations> <seconds>"
 *
 * Built by `cargo xtask bench` with `cc -O2`. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s pipe|file PATH ITERATIONS\n", argv[0]);
		return 2;
	}
	long n = atol(argv[3]);
	if (n <= 0) {
		fprintf(stderr, "ioloop: bad iteration count %s\n", argv[3]);
		return 2;
	}
	int wfd, rfd;
	int file = strcmp(argv[1], "file") == 0;
	if (file) {
		wfd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
		rfd = open(argv[2], O_RDONLY);
		if (wfd < 0 || rfd < 0) {
			perror(argv[2]);
			return 1;
		}
	} else {
		int p[2];
		if (pipe(p)) {
			perror("pipe");
			return 1;
		}
		rfd = p[0];
		wfd = p[1];
	}
	/* looks like an HTTP request on purpose: only sockets may ever be classified */
	char buf[64] = "GET /not-a-socket HTTP/1.1\r\nHost: x\r\n\r\n";
	char in[64];
	double t0 = 0;
	for (long i = -1000; i < n; i++) {
		if (i == 0)
			t0 = now();
		if (file && lseek(wfd, 0, SEEK_SET) < 0)
			return 1;
		if (write(wfd, buf, sizeof(buf)) != sizeof(buf)) {
			perror("write");
			return 1;
		}
		if (file && lseek(rfd, 0, SEEK_SET) < 0)
			return 1;
		if (read(rfd, in, sizeof(in)) != sizeof(in)) {
			perror("read");
			return 1;
		}
	}
	double dt = now() - t0;
	printf("%.1f %ld %.6f\n", dt * 1e9 / n, n, dt);
	return 0;
}
