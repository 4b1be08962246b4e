// The floor of benchmark 9: an empty BPF program for uprobes, attached by bench/gofloor.c at
// the entries and RET sites nhiwatch probes in a Go binary, so its cost is trapping alone.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("uprobe")
int empty(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
