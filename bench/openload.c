/* openload: generate watched-file open events at a controlled rate.
 *
 * usage: openload PATH RATE SECONDS [CPU]
 *   RATE     opens per second; 0 = as fast as possible
 *   CPU      pin this process to that CPU first
 * prints one line: "<opens> <failed> <seconds> <achieved opens per second>"
 *
 * Paced runs keep to the schedule by checking the clock every few opens and
 * catching up in bursts of at most 64, so the rate is exact on average over
 * milliseconds. Every open+close of a watched file is one file_open event. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
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
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s PATH RATE SECONDS [CPU]\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	double rate = atof(argv[2]);
	double secs = atof(argv[3]);
	if (argc == 5) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(atoi(argv[4]), &set);
		if (sched_setaffinity(0, sizeof(set), &set)) {
			perror("sched_setaffinity");
			return 1;
		}
	}
	unsigned long long done = 0, failed = 0;
	double t0 = now(), t = t0, end = t0 + secs;
	while (t < end) {
		unsigned long long burst = 64;
		if (rate > 0) {
			double due = (t - t0) * rate;
			if ((double)done >= due) {
				t = now();
				continue;
			}
			if (due - (double)done < (double)burst)
				burst = (unsigned long long)(due - (double)done) + 1;
		}
		for (unsigned long long i = 0; i < burst; i++) {
			int fd = open(path, O_RDONLY);
			if (fd < 0)
				failed++;
			else
				close(fd);
		}
		done += burst;
		t = now();
	}
	double dt = t - t0;
	printf("%llu %llu %.6f %.0f\n", done, failed, dt, done / dt);
	return 0;
}
