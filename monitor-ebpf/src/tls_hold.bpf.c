// SPDX-License-Identifier: GPL-2.0-only
//! TLS library hold: a process that maps a not-yet-probed libssl/libgnutls file executable is stopped until the daemon has attached the uprobes to it.
//
// Why: a short-lived client (a cron job, a container's one-shot agent) loads its own copy of
// the library and makes its call within milliseconds; discovering the file afterwards, from
// /proc/PID/maps, attaches too late. Holding at the executable mmap of the library — the loader
// has opened the file but no code of it has run — closes that race. Safety first:
// - only while the daemon beats (tls_hold_ctl, HEARTBEAT_MAX_NS): a dead or hung daemon holds
//   nothing new;
// - once per file: tls_lib_state marks a file pending and then done; a file pending for longer
//   than PENDING_MAX_NS (the daemon failed to finish) is not held for again;
// - every held pid is listed in tls_held, which the daemon sweeps: it continues each one after
//   the attach, or at a deadline, or when it stops, whatever happened to the attach;
// - processes with a controlling terminal are never held (an interactive shell would report a
//   stopped job), nor processes the daemon could not continue (another uid, no CAP_KILL); they
//   are reported all the same, so the daemon attaches at once.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "nhiwatch.h"
#include "output.h"
#include "task.h"

#define PROT_EXEC 0x4
#define SIGSTOP 19
#define HEARTBEAT_MAX_NS (3ULL * 1000000000ULL)
#define PENDING_MAX_NS (3ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct nw_tls_hold_ctl);
} tls_hold_ctl SEC(".maps");

/* LRU: cannot fill up; a file evicted from it is merely held for once more. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nw_inode_key);
	__type(value, struct nw_tls_lib_entry);
} tls_lib_state SEC(".maps");

/* Not LRU: a held pid must never be forgotten. When full, nobody more is held. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct nw_tls_held);
} tls_held SEC(".maps");

/* Its own small ring, read by a thread that wakes on every record: a held process waits on it. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} tls_hold_events SEC(".maps");

struct sys_enter_mmap_ctx {
	u64 _common;
	s32 nr;
	u32 _pad;
	u64 addr, len, prot, flags, fd, off;
};

static __always_inline bool has_prefix(const char *name, const char *prefix, int n)
{
	for (int i = 0; i < n; i++)
		if (name[i] != prefix[i])
			return false;
	return true;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int hold_tls_library(struct sys_enter_mmap_ctx *ctx)
{
	if (!(ctx->prot & PROT_EXEC) || (s64)ctx->fd < 0)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	u64 fd = ctx->fd;
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	char name[16] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(f, f_path.dentry, d_name.name));
	if (!has_prefix(name, "libssl.so", 9) && !has_prefix(name, "libgnutls.so", 12))
		return 0;

	struct inode *inode = BPF_CORE_READ(f, f_inode);
	struct nw_inode_key key = {
		.ino = BPF_CORE_READ(inode, i_ino),
		.dev = BPF_CORE_READ(inode, i_sb, s_dev),
	};
	u64 now = bpf_ktime_get_ns();
	struct nw_tls_lib_entry *lib = bpf_map_lookup_elem(&tls_lib_state, &key);
	if (lib && (lib->state == NW_TLS_LIB_DONE || now - lib->since_ns > PENDING_MAX_NS))
		return 0;
	u32 zero = 0;
	struct nw_tls_hold_ctl *ctl = bpf_map_lookup_elem(&tls_hold_ctl, &zero);
	if (!ctl || !ctl->heartbeat_ns || now - ctl->heartbeat_ns > HEARTBEAT_MAX_NS)
		return 0;
	if (!lib) {
		struct nw_tls_lib_entry pending = {.state = NW_TLS_LIB_PENDING, .since_ns = now};
		bpf_map_update_elem(&tls_lib_state, &key, &pending, BPF_NOEXIST);
	}

	struct nw_tls_hold *r = bpf_ringbuf_reserve(&tls_hold_events, sizeof(*r), 0);
	if (!r) {
		count(NW_CNT_MAP_FULL);
		return 0;
	}
	u32 tgid = pid_tgid >> 32;
	r->pid = tgid;
	r->fd = (u32)fd;
	r->ino = key.ino;
	r->dev = key.dev;
	r->held = 0;
	r->since_ns = now;
	bool tty = BPF_CORE_READ(task, signal, tty) != 0;
	/* Hold only what the daemon may continue: kill(2) needs CAP_KILL, or a uid in common. */
	bool may_continue = ctl->kill_any || BPF_CORE_READ(task, cred, uid.val) == ctl->uid ||
			    BPF_CORE_READ(task, cred, suid.val) == ctl->uid;
	if (!tty && may_continue) {
		struct nw_tls_held h = {.ino = key.ino, .dev = key.dev, .since_ns = now};
		/* Listed before the signal: the daemon's sweep must know every stopped pid. */
		if (!bpf_map_update_elem(&tls_held, &tgid, &h, BPF_NOEXIST)) {
			if (bpf_send_signal(SIGSTOP) == 0)
				r->held = 1;
			else
				bpf_map_delete_elem(&tls_held, &tgid);
		}
	}
	bpf_ringbuf_submit(r, 0);
	return 0;
}
