/* alertload: open distinct watched files one at a time at a steady rate, and say when.
 *
 * usage: alertload DIR COUNT RATE CPU
 *   opens DIR/warmup once, waits 500 ms, then DIR/f00000 … DIR/f(COUNT-1), the i-th at a
 *   point drawn uniformly (fixed seed) within the slot [start + i / RATE, start + (i+1) / RATE)
 *   (absolute CLOCK_MONOTONIC deadlines, so a late open does not shift the rest), reading
 *   one byte and closing each; pinned to CPU first. The rate is exact over any two slots, but
 *   the opens do not run in step with a monitor's periodic timer (200/s is one open per 5 ms
 *   poll tick), which would make the measured wait depend on a slowly drifting phase.
 * prints one line per file: "<index> <CLOCK_MONOTONIC ns just before open()>", then
 *   "done <opens> <failed> <seconds> <achieved opens per second>".
 *
 * The warm-up open lets the monitor learn this process (executable, identity) before the
 * measured opens, so the first of them does not carry that one-time cost. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int touch(const char *path)
{
	char c;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	if (read(fd, &c, 1) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s DIR COUNT RATE CPU\n", argv[0]);
		return 2;
	}
	const char *dir = argv[1];
	long n = atol(argv[2]);
	double rate = atof(argv[3]);
	if (n <= 0 || rate <= 0) {
		fprintf(stderr, "alertload: COUNT and RATE must be positive\n");
		return 2;
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[4]), &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		perror("sched_setaffinity");
		return 1;
	}
	long long *at = calloc(n, sizeof *at);
	char (*paths)[4096] = calloc(n, sizeof *paths);
	char warm[4096];
	if (!at || !paths) {
		perror("calloc");
		return 1;
	}
	for (long i = 0; i < n; i++)
		snprintf(paths[i], sizeof paths[i], "%s/f%05ld", dir, i);
	snprintf(warm, sizeof warm, "%s/warmup", dir);
	if (touch(warm)) {
		perror(warm);
		return 1;
	}
	struct timespec pause = {0, 500000000};
	nanosleep(&pause, NULL);

	long failed = 0;
	unsigned long long seed = 0x9e3779b97f4a7c15ULL;
	long long t0 = now_ns() + 1000000;
	for (long i = 0; i < n; i++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		double u = (seed >> 11) / 9007199254740992.0; /* [0, 1) */
		long long due = t0 + (long long)((i + u) * 1e9 / rate);
		struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL))
			;
		at[i] = now_ns();
		if (touch(paths[i]))
			failed++;
	}
	double secs = (now_ns() - t0) / 1e9;
	for (long i = 0; i < n; i++)
		printf("%ld %lld\n", i, at[i]);
	printf("done %ld %ld %.6f %.1f\n", n, failed, secs, n / secs);
	return 0;
}
