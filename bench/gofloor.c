// gofloor OBJ BINARY OFFSET...: loads the empty program of bench/gofloor.bpf.c and attaches it as
// a uprobe at each file OFFSET of BINARY (the places nhiwatch probes, read from the kernel by
// `cargo xtask bench`), then holds the attachments until SIGTERM. bpftrace on this machine cannot
// attach at offsets, hence this loader.
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s OBJ BINARY OFFSET...\n", argv[0]);
		return 2;
	}
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "gofloor: loading %s failed\n", argv[1]);
		return 1;
	}
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "empty");
	if (!prog) {
		fprintf(stderr, "gofloor: no program \"empty\" in %s\n", argv[1]);
		return 1;
	}
	for (int i = 3; i < argc; i++) {
		size_t off = strtoull(argv[i], NULL, 0);
		struct bpf_link *l = bpf_program__attach_uprobe(prog, false, -1, argv[2], off);
		if (!l) {
			fprintf(stderr, "gofloor: attaching at %s+%#zx failed\n", argv[2], off);
			return 1;
		}
	}
	printf("attached %d\n", argc - 3);
	fflush(stdout);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sig;
	sigwait(&set, &sig);
	return 0;
}
