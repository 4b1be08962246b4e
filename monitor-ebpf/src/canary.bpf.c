// SPDX-License-Identifier: GPL-2.0-only
//! CO-RE canary: a self-check the daemon runs once at load to prove the loader applied CO-RE relocations.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nhiwatch.h"
#include "task.h"

/* The linked object's one license: the linker refuses a second strong LICENSE, and a weak or
 * static copy per file would leave "GPL\0GPL\0" in the section, which loaders reject. */
char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct nw_canary);
} canary SEC(".maps");

/* A flavour of task_struct whose only field sits at the wrong offset on purpose:
 * the read is right only if the loader applied the CO-RE relocation. */
struct task_struct___nw_canary {
	int tgid;
} __attribute__((preserve_access_index));

SEC("tracepoint/syscalls/sys_enter_getppid")
int core_canary(void *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_self(pid_tgid))
		return 0;
	struct task_struct___nw_canary *t = (void *)bpf_get_current_task();
	u32 zero = 0;
	struct nw_canary *c = bpf_map_lookup_elem(&canary, &zero);
	if (!c)
		return 0;
	c->tgid_helper = pid_tgid >> 32;
	c->tgid_core = BPF_CORE_READ(t, tgid);
	c->hits++;
	return 0;
}
