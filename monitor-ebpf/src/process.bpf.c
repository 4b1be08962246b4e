// SPDX-License-Identifier: GPL-2.0-only
//! Process sensor: exec, fork (new processes, not threads) and whole-process exit.
//
// Hooks are tracepoints, tp_btf and uprobes only, in every sensor: kprobes, fentry and BPF-LSM
// are missing on many production kernels (and on ours).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "nhiwatch.h"
#include "output.h"
#include "task.h"

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	struct nw_exec *e = scratch_buf();
	if (!e)
		return 0;
	u64 uid_gid = bpf_get_current_uid_gid();
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = (u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->start_time_ns = BPF_CORE_READ(p, start_boottime);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str((char *)(e + 1), NW_PATH_MAX, filename);
	if (n < 1) {
		count(NW_CNT_PATH_READ_FAIL);
		n = 1;
	}
	e->filename_len = n - 1;
	u32 size = sizeof(*e) + (u32)(n - 1);
	fill_header(&e->hdr, NW_EVENT_EXEC, size, pid_tgid);
	emit(e, size & 0xffff, NW_EVENT_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 child_pid = BPF_CORE_READ(child, pid);
	u32 child_tgid = BPF_CORE_READ(child, tgid);
	if (child_pid != child_tgid) /* a new thread, not a new process */
		return 0;
	struct nw_fork *f = bpf_ringbuf_reserve(&events, sizeof(*f), 0);
	if (!f) {
		count(NW_EVENT_FORK);
		return 0;
	}
	fill_header(&f->hdr, NW_EVENT_FORK, sizeof(*f), ((u64)child_tgid << 32) | child_pid);
	f->ppid = pid_tgid >> 32;
	f->uid = (u32)bpf_get_current_uid_gid();
	f->start_time_ns = BPF_CORE_READ(child, start_boottime);
	bpf_get_current_comm(f->comm, sizeof(f->comm));
	bpf_ringbuf_submit(f, wakeup_flags());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	/* do_exit() decrements signal->live before this tracepoint: zero means the
	 * last thread of the process is leaving. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	struct nw_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);
	if (!x) {
		count(NW_EVENT_EXIT);
		return 0;
	}
	fill_header(&x->hdr, NW_EVENT_EXIT, sizeof(*x), pid_tgid);
	x->exit_code = BPF_CORE_READ(p, exit_code);
	x->_pad = 0;
	x->start_time_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	bpf_ringbuf_submit(x, wakeup_flags());
	return 0;
}
