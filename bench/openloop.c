/* openloop: open()/close() the same file in a tight loop and print the mean cost.
 *
 * usage: openloop PATH ITERATIONS
 * prints one line: "<ns per open+close pair> <iterations> <seconds>"
 *
 * Built by `cargo xtask bench` with `cc -O2`; the file is outside every watched
 * location, so a monitor that filters in the kernel pays only its filter. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
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
	if (argc != 3) {
		fprintf(stderr, "usage: %s PATH ITERATIONS\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	long n = atol(argv[2]);
	if (n <= 0) {
		fprintf(stderr, "openloop: bad iteration count %s\n", argv[2]);
		return 2;
	}
	/* warm the dentry cache and the code path */
	for (int i = 0; i < 1000; i++) {
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			return 1;
		}
		close(fd);
	}
	double t0 = now();
	for (long i = 0; i < n; i++) {
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror(path);
			return 1;
		}
		close(fd);
	}
	double dt = now() - t0;
	printf("%.1f %ld %.6f\n", dt * 1e9 / n, n, dt);
	return 0;
}
