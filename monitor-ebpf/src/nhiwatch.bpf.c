// SPDX-License-Identifier: GPL-2.0-only
//! Kernel sensors: process lifecycle, watched file opens, outbound TCP flows and
//! TLS plaintext, all written to one ring buffer as records from nhiwatch.h.
//
// Hooks are tracepoints, tp_btf and uprobes only: kprobes, fentry and BPF-LSM are
// missing on many production kernels (and on ours).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "nhiwatch.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- load-time configuration (set by the daemon through aya's override_global) ---- */
const volatile u32 self_tgid = 0;
const volatile u32 tls_capture_len = 4096;
/* Wake the reader only once this much is waiting; the reader also polls on a timer,
 * so small batches are still delivered promptly. */
const volatile u64 wakeup_bytes = 256 * 1024;

/* ---- maps ---- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* resized by the daemon from config */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_CNT_COUNT);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nw_path_key);
	__type(value, struct nw_watch);
} watch_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct nw_inode_key);
	__type(value, struct nw_watch);
} watch_inodes SEC(".maps");

/* Devices that hold at least one watched inode: lets an unwatched open on another
 * filesystem skip the dentry walk with a single lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, u32);
	__type(value, u32);
} watch_devs SEC(".maps");

struct open_pending {
	u32 watch_id;
	u32 open_flags;
	u32 path_len;
	u32 _pad;
	char path[NW_PATH_MAX];
};

/* Opens that matched by path at entry, waiting for their result. Only matches land here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, struct open_pending);
} open_pending SEC(".maps");

struct conn_owner {
	u32 pid;
	u32 tid;
	u64 cgroup_id;
	u64 start_ns;
	u8 established;
	u8 peer_fin; /* the peer's FIN was received: it occupies one sequence number */
	u8 is_self;  /* the daemon's own connection: tracked only to be ignored */
	u8 _pad[5];
};

/* Outbound sockets by kernel address, from connect() until close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, struct conn_owner);
} conn_owners SEC(".maps");

struct tls_call {
	u64 session;
	u64 buf;
	u64 len_out; /* size_t * of the _ex variants, 0 otherwise */
	u64 sock;
	u32 depth;   /* nested probed calls in the same thread */
	u8 lib;
	u8 read;
	u8 _pad[2];
};

/* TLS calls in flight, by thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* Last socket seen under each TLS session: a call served from the library's
 * buffer makes no syscall, so it inherits its session's socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, u64);
} tls_session_socks SEC(".maps");

#define SCRATCH_SIZE (sizeof(struct nw_tls_data) + NW_TLS_CAPTURE_MAX)
struct scratch {
	u8 buf[SCRATCH_SIZE];
};

/* Per-CPU staging for variable-length records (process-context programs only). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct nw_path_key);
} path_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct nw_canary);
} canary SEC(".maps");

/* ---- helpers ---- */

static __always_inline void count(u32 slot)
{
	u64 *v = bpf_map_lookup_elem(&counters, &slot);
	if (v)
		*v += 1;
}

static __always_inline u64 wakeup_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline bool is_self(u64 pid_tgid)
{
	return (u32)(pid_tgid >> 32) == self_tgid;
}

static __always_inline void fill_header(struct nw_header *h, u16 kind, u32 size, u64 pid_tgid)
{
	h->kind = kind;
	h->flags = 0;
	h->size = size;
	h->ktime_ns = bpf_ktime_get_boot_ns();
	h->pid = pid_tgid >> 32;
	h->tid = (u32)pid_tgid;
	h->cgroup_id = bpf_get_current_cgroup_id();
}

static __always_inline void *scratch_buf(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

/* Watched-file opens become alerts: rather than wait for the reader's poll timer (most of the
 * kernel → alert latency, BENCHMARKS.md benchmark 5), they let the kernel wake a caught-up
 * reader (flags 0) — at most once per URGENT_GAP_NS host-wide, so a storm of opens costs a
 * few thousand wake-ups a second, not one per event (benchmark 3). Racy across CPUs on purpose:
 * an extra or a missed wake-up is harmless, the poll timer still bounds the wait. */
#define URGENT_GAP_NS 500000
u64 last_urgent_ns = 0;

static __always_inline u64 wakeup_flags_urgent(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	u64 now = bpf_ktime_get_ns();
	if (now - last_urgent_ns < URGENT_GAP_NS)
		return BPF_RB_NO_WAKEUP;
	last_urgent_ns = now;
	return 0;
}

/* Emits a staged variable-length record; size is already bounded by the caller. */
static __always_inline void emit(void *rec, u32 size, u16 kind)
{
	if (size > SCRATCH_SIZE)
		return;
	u64 flags = kind == NW_EVENT_FILE_OPEN ? wakeup_flags_urgent() : wakeup_flags();
	if (bpf_ringbuf_output(&events, rec, size, flags))
		count(kind);
}

/* ---- process lifecycle ---- */

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

/* ---- watched file opens ---- */

/* Checks a path-matched watch's EXACT and SUFFIX conditions against the full path. */
static __always_inline bool watch_accepts(const struct nw_watch *w, const char *path, u32 len)
{
	if ((w->flags & NW_WATCH_EXACT) && len != w->prefix_len)
		return false;
	if (w->flags & NW_WATCH_SUFFIX) {
		u32 sl = w->suffix_len;
		if (sl > NW_WATCH_SUFFIX_LEN || sl > len)
			return false;
		u32 start = len - sl;
		for (u32 i = 0; i < NW_WATCH_SUFFIX_LEN; i++) {
			if (i >= sl)
				break;
			if (path[(start + i) & (NW_PATH_MAX - 1)] != w->suffix[i])
				return false;
		}
	}
	return true;
}

static __always_inline int open_enter(const char *filename, u32 open_flags)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 zero = 0;
	struct nw_path_key *k = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!k)
		return 0;
	long n = bpf_probe_read_user_str(k->path, sizeof(k->path), filename);
	/* Relative paths (and failed reads) are left to the inode match at exit. */
	if (n <= 1 || k->path[0] != '/')
		return 0;
	u32 len = n - 1;
	k->prefixlen = len * 8;
	struct nw_watch *w = 0;
	/* The longest prefix may reject (EXACT/SUFFIX); try up to two shorter ones. */
	for (int attempt = 0; attempt < 3; attempt++) {
		w = bpf_map_lookup_elem(&watch_paths, k);
		if (!w)
			return 0;
		if (watch_accepts(w, k->path, len))
			break;
		if (w->prefix_len == 0)
			return 0;
		k->prefixlen = (w->prefix_len - 1) * 8;
		w = 0;
	}
	if (!w)
		return 0;
	u32 tid = (u32)pid_tgid;
	struct open_pending *p = (struct open_pending *)scratch_buf();
	if (!p)
		return 0;
	p->watch_id = w->id;
	p->open_flags = open_flags;
	p->path_len = len;
	bpf_probe_read_kernel(p->path, sizeof(p->path), k->path);
	if (bpf_map_update_elem(&open_pending, &tid, p, BPF_ANY))
		count(NW_CNT_MAP_FULL);
	return 0;
}

static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline void inode_of(struct file *f, u64 *ino, u32 *dev)
{
	struct inode *i = BPF_CORE_READ(f, f_inode);
	*ino = BPF_CORE_READ(i, i_ino);
	*dev = BPF_CORE_READ(i, i_sb, s_dev);
}

static __always_inline int open_exit(long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 tid = (u32)pid_tgid;
	struct open_pending *p = bpf_map_lookup_elem(&open_pending, &tid);
	struct nw_file_open *e = scratch_buf();
	if (!e)
		return 0;
	if (p) {
		u32 len = p->path_len;
		if (len > NW_PATH_MAX - 1)
			len = NW_PATH_MAX - 1;
		e->result = ret;
		e->open_flags = p->open_flags;
		e->watch_id = p->watch_id;
		e->ino = 0;
		e->dev = 0;
		if (ret >= 0) {
			struct file *f = fd_file(ret);
			if (f)
				inode_of(f, &e->ino, &e->dev);
		}
		e->path_len = len;
		bpf_probe_read_kernel((char *)(e + 1), NW_PATH_MAX, p->path);
		bpf_map_delete_elem(&open_pending, &tid);
		u32 size = sizeof(*e) + len;
		fill_header(&e->hdr, NW_EVENT_FILE_OPEN, size, pid_tgid);
		e->hdr.flags = NW_F_OPEN_PATH_ARG;
		emit(e, size & 0xffff, NW_EVENT_FILE_OPEN);
		return 0;
	}
	if (ret < 0)
		return 0;

	/* Not matched by the path string: match the opened file's dentry and its
	 * ancestors by inode, which catches relative paths and symlinks. */
	struct file *f = fd_file(ret);
	if (!f)
		return 0;
	struct inode_key_walk {
		struct nw_inode_key key;
	} kw = {};
	u64 leaf_ino;
	u32 dev;
	inode_of(f, &leaf_ino, &dev);
	if (!bpf_map_lookup_elem(&watch_devs, &dev))
		return 0;
	kw.key.dev = dev;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct dentry *chain[NW_DENTRY_DEPTH];
	struct nw_watch *w = 0;
	int level = -1;
	for (int i = 0; i < NW_DENTRY_DEPTH; i++) {
		chain[i] = d;
		kw.key.ino = BPF_CORE_READ(d, d_inode, i_ino);
		w = bpf_map_lookup_elem(&watch_inodes, &kw.key);
		if (w) {
			level = i;
			break;
		}
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d)
			return 0;
		d = parent;
	}
	if (level < 0 || !w)
		return 0;
	if (w->flags & NW_WATCH_SUFFIX) {
		/* suffix applies to the opened file's own name */
		char *name = (char *)(e + 1);
		const unsigned char *leaf = BPF_CORE_READ(chain[0], d_name.name);
		long n = bpf_probe_read_kernel_str(name, NW_PATH_MAX, leaf);
		if (n <= 1 || !watch_accepts(w, name, n - 1))
			return 0;
	}
	if ((w->flags & NW_WATCH_EXACT) && level != 0)
		return 0;
	/* leaf-first names of the levels below the watched inode, NUL-separated */
	u32 off = 0;
	for (int i = 0; i < NW_DENTRY_DEPTH; i++) {
		if (i >= level)
			break;
		const unsigned char *name = BPF_CORE_READ(chain[i], d_name.name);
		if (off > NW_PATH_MAX - 64)
			break;
		long n = bpf_probe_read_kernel_str((char *)(e + 1) + off, 64, name);
		if (n < 1)
			break;
		off += n;
	}
	e->result = ret;
	e->open_flags = 0;
	e->watch_id = w->id;
	e->ino = leaf_ino;
	e->dev = dev;
	e->path_len = off;
	u32 size = sizeof(*e) + off;
	fill_header(&e->hdr, NW_EVENT_FILE_OPEN, size, pid_tgid);
	e->hdr.flags = NW_F_OPEN_PATH_DENTRY;
	emit(e, size & 0xffff, NW_EVENT_FILE_OPEN);
	return 0;
}

/* Classic tracepoint layouts, from the tracefs format files (stable ABI). */
struct sys_enter_open_ctx {
	u64 _common;
	s32 nr;
	u32 _pad;
	u64 a0, a1, a2, a3;
};

struct sys_exit_ctx {
	u64 _common;
	s32 nr;
	u32 _pad;
	s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct sys_enter_open_ctx *ctx)
{
	return open_enter((const char *)ctx->a1, (u32)ctx->a2);
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct sys_enter_open_ctx *ctx)
{
	return open_enter((const char *)ctx->a0, (u32)ctx->a1);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct sys_enter_open_ctx *ctx)
{
	struct open_how how = {};
	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->a2);
	return open_enter((const char *)ctx->a1, (u32)how.flags);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct sys_exit_ctx *ctx)
{
	return open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct sys_exit_ctx *ctx)
{
	return open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct sys_exit_ctx *ctx)
{
	return open_exit(ctx->ret);
}

/* ---- outbound TCP ---- */

static __always_inline void fill_tuple(struct nw_tcp *t, const struct sock *sk)
{
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__builtin_memset(t->saddr, 0, sizeof(t->saddr));
	__builtin_memset(t->daddr, 0, sizeof(t->daddr));
	if (family == 10 /* AF_INET6 */) {
		t->hdr.flags |= NW_F_TCP_IPV6;
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((u32 *)t->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((u32 *)t->daddr, sk, __sk_common.skc_daddr);
	}
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

static __always_inline void emit_tcp(const struct sock *sk, struct conn_owner *o, u16 kind, bool closing)
{
	struct nw_tcp *t = bpf_ringbuf_reserve(&events, sizeof(*t), 0);
	if (!t) {
		count(kind);
		return;
	}
	t->hdr.kind = kind;
	t->hdr.flags = 0;
	t->hdr.size = sizeof(*t);
	t->hdr.ktime_ns = bpf_ktime_get_boot_ns();
	t->hdr.pid = o->pid;
	t->hdr.tid = o->tid;
	t->hdr.cgroup_id = o->cgroup_id;
	t->sock = (u64)sk;
	t->_pad = 0;
	fill_tuple(t, sk);
	t->start_ns = o->start_ns;
	t->bytes_sent = 0;
	t->bytes_received = 0;
	if (closing) {
		/* Payload bytes only: bytes_acked would count SYN and FIN, so take
		 * data sent minus retransmissions, and data received minus the FIN. */
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;
		u64 sent = BPF_CORE_READ(tp, bytes_sent);
		u64 retrans = BPF_CORE_READ(tp, bytes_retrans);
		u64 rcvd = BPF_CORE_READ(tp, bytes_received);
		t->bytes_sent = sent > retrans ? sent - retrans : 0;
		t->bytes_received = rcvd > o->peer_fin ? rcvd - o->peer_fin : 0;
		if (!o->established)
			t->hdr.flags |= NW_F_TCP_FAILED;
	}
	bpf_ringbuf_submit(t, wakeup_flags());
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != 6 /* IPPROTO_TCP */)
		return 0;
	u64 key = (u64)sk;
	if (newstate == 2 /* TCP_SYN_SENT */) {
		/* connect() runs in the caller's context: remember who it was */
		u64 pid_tgid = bpf_get_current_pid_tgid();
		struct conn_owner o = {
			.is_self = is_self(pid_tgid),
			.pid = pid_tgid >> 32,
			.tid = (u32)pid_tgid,
			.cgroup_id = bpf_get_current_cgroup_id(),
			.start_ns = bpf_ktime_get_boot_ns(),
		};
		if (bpf_map_update_elem(&conn_owners, &key, &o, BPF_ANY))
			count(NW_CNT_MAP_FULL);
		return 0;
	}
	struct conn_owner *o = bpf_map_lookup_elem(&conn_owners, &key);
	if (o && o->is_self) {
		if (newstate == 7 /* TCP_CLOSE */)
			bpf_map_delete_elem(&conn_owners, &key);
		return 0;
	}
	if (newstate == 1 /* TCP_ESTABLISHED */ && oldstate == 2) {
		if (!o) {
			count(NW_CNT_TCP_UNATTRIBUTED);
			return 0;
		}
		o->established = 1;
		emit_tcp(sk, o, NW_EVENT_TCP_CONNECT, false);
		return 0;
	}
	if (!o)
		return 0;
	/* CLOSE_WAIT / CLOSING follow the peer's FIN; FIN_WAIT2 -> CLOSE is the
	 * time-wait hand-off, which happens when the peer's FIN arrives. */
	if (newstate == 8 /* TCP_CLOSE_WAIT */ || newstate == 11 /* TCP_CLOSING */ ||
	    (oldstate == 5 /* TCP_FIN_WAIT2 */ && newstate == 7))
		o->peer_fin = 1;
	if (newstate == 7 /* TCP_CLOSE */) {
		emit_tcp(sk, o, NW_EVENT_TCP_CLOSE, true);
		bpf_map_delete_elem(&conn_owners, &key);
	}
	return 0;
}

/* A socket send/receive inside a TLS call tells which socket the session uses. */
static __always_inline void note_tls_sock(const struct sock *sk)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &tid);
	if (c && !c->sock)
		c->sock = (u64)sk;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(handle_sock_send, struct sock *sk, int ret, int flags)
{
	note_tls_sock(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(handle_sock_recv, struct sock *sk, int ret, int flags)
{
	note_tls_sock(sk);
	return 0;
}

/* ---- TLS plaintext ---- */

static __always_inline int tls_enter(u64 session, const void *buf, u64 len_out, u8 lib, u8 read)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 tid = (u32)pid_tgid;
	struct tls_call *outer = bpf_map_lookup_elem(&tls_calls, &tid);
	if (outer) {
		/* a probed function called from another probed function: the outer call reports */
		outer->depth++;
		return 0;
	}
	struct tls_call c = {
		.session = session,
		.buf = (u64)buf,
		.len_out = len_out,
		.lib = lib,
		.read = read,
	};
	if (bpf_map_update_elem(&tls_calls, &tid, &c, BPF_ANY))
		count(NW_CNT_MAP_FULL);
	return 0;
}

/* ex: the _ex variants return 1 and store the length through len_out. */
static __always_inline int tls_exit(long ret, bool ex)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 tid = (u32)pid_tgid;
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &tid);
	if (!c)
		return 0;
	if (c->depth) {
		c->depth--;
		return 0;
	}
	struct tls_call call = *c;
	bpf_map_delete_elem(&tls_calls, &tid);

	u64 len = 0;
	if (ex) {
		if (ret != 1 || !call.len_out)
			return 0;
		bpf_probe_read_user(&len, sizeof(len), (void *)call.len_out);
	} else {
		if (ret <= 0)
			return 0;
		len = ret;
	}
	if (len == 0)
		return 0;
	/* LRU updates are costly: write only when the session's socket is new or changed. */
	u64 *known = bpf_map_lookup_elem(&tls_session_socks, &call.session);
	if (call.sock) {
		if (!known || *known != call.sock)
			bpf_map_update_elem(&tls_session_socks, &call.session, &call.sock, BPF_ANY);
	} else if (known) {
		call.sock = *known;
	}

	struct nw_tls_data *t = scratch_buf();
	if (!t)
		return 0;
	u32 cap = tls_capture_len;
	if (cap > NW_TLS_CAPTURE_MAX)
		cap = NW_TLS_CAPTURE_MAX;
	u32 n = len < cap ? (u32)len : cap;
	if (n < len)
		count(NW_CNT_TLS_TRUNCATED);
	if (n > NW_TLS_CAPTURE_MAX)
		n = NW_TLS_CAPTURE_MAX;
	if (bpf_probe_read_user((u8 *)(t + 1), n, (void *)call.buf)) {
		count(NW_CNT_TLS_READ_FAIL);
		n = 0;
	}
	t->session = call.session;
	t->sock = call.sock;
	t->len = len > 0xffffffff ? 0xffffffff : (u32)len;
	t->captured = n;
	t->lib = call.lib;
	__builtin_memset(t->_pad, 0, sizeof(t->_pad));
	u32 size = sizeof(*t) + n;
	fill_header(&t->hdr, NW_EVENT_TLS_DATA, size, pid_tgid);
	t->hdr.flags = call.read ? NW_F_TLS_READ : 0;
	emit(t, size, NW_EVENT_TLS_DATA);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_write, void *ssl, const void *buf, int num)
{
	return tls_enter((u64)ssl, buf, 0, NW_TLS_OPENSSL, 0);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read, void *ssl, void *buf, int num)
{
	return tls_enter((u64)ssl, buf, 0, NW_TLS_OPENSSL, 1);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_enter((u64)ssl, buf, (u64)written, NW_TLS_OPENSSL, 0);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_enter((u64)ssl, buf, (u64)readbytes, NW_TLS_OPENSSL, 1);
}

/* OpenSSL returns int: only the low 32 bits of the return register are defined. */
SEC("uretprobe")
int BPF_KRETPROBE(ssl_ret, int ret)
{
	return tls_exit(ret, false);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_ret_ex, int ret)
{
	return tls_exit(ret, true);
}

SEC("uretprobe")
int BPF_KRETPROBE(gnutls_ret, long ret)
{
	return tls_exit(ret, false);
}

SEC("uprobe")
int BPF_KPROBE(gnutls_send, void *session, const void *data, size_t size)
{
	return tls_enter((u64)session, data, 0, NW_TLS_GNUTLS, 0);
}

SEC("uprobe")
int BPF_KPROBE(gnutls_recv, void *session, void *data, size_t size)
{
	return tls_enter((u64)session, data, 0, NW_TLS_GNUTLS, 1);
}

/* ---- destination names: TLS SNI ---- */

static __always_inline void emit_sni(u64 session, const void *name, u64 name_len, bool nul_terminated, u8 lib)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid) || !name)
		return;
	struct nw_tls_sni *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(NW_EVENT_TLS_SNI);
		return;
	}
	long n;
	if (nul_terminated) {
		n = bpf_probe_read_user_str(r->name, sizeof(r->name), name);
		n = n > 0 ? n - 1 : 0;
	} else {
		u32 want = name_len < NW_SNI_MAX ? (u32)name_len : NW_SNI_MAX;
		/* name_len >= 1: (want - 1) & mask + 1 is want, bounded for the verifier */
		want = ((want - 1) & (NW_SNI_MAX - 1)) + 1;
		n = bpf_probe_read_user(r->name, want, name) ? 0 : want;
	}
	if (n <= 0) {
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
		return;
	}
	fill_header(&r->hdr, NW_EVENT_TLS_SNI, sizeof(*r), pid_tgid);
	r->session = session;
	r->name_len = (u32)n;
	r->lib = lib;
	__builtin_memset(r->_pad, 0, sizeof(r->_pad));
	bpf_ringbuf_submit(r, wakeup_flags());
}

/* SSL_set_tlsext_host_name(s, name) is SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME (55),
 * TLSEXT_NAMETYPE_host_name (0), name): everything else SSL_ctrl does is ignored here. */
SEC("uprobe")
int BPF_KPROBE(ssl_ctrl_sni, void *ssl, int cmd, long larg, const char *parg)
{
	if (cmd != 55 || larg != 0)
		return 0;
	emit_sni((u64)ssl, parg, 0, true, NW_TLS_OPENSSL);
	return 0;
}

/* gnutls_server_name_set(session, GNUTLS_NAME_DNS (1), name, name_length) */
SEC("uprobe")
int BPF_KPROBE(gnutls_sni, void *session, int type, const void *name, size_t name_length)
{
	if (type != 1 || name_length == 0)
		return 0;
	emit_sni((u64)session, name, name_length, false, NW_TLS_GNUTLS);
	return 0;
}

/* ---- destination names: DNS answers ---- */

/* Runs on every packet delivered to a socket in the attached cgroup subtree, in
 * softirq: must stay cheap and must always let the packet through (return 1). */
SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	u32 off;
	u8 v6 = 0;
	if (skb->protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
		u8 vihl, proto;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1))
			return 1;
		if (proto != 17 /* IPPROTO_UDP */)
			return 1;
		off = (vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(0x86DD /* ETH_P_IPV6 */)) {
		u8 next;
		/* Extension headers before UDP are rare on DNS replies: not followed. */
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != 17)
			return 1;
		off = 40;
		v6 = 1;
	} else {
		return 1;
	}
	struct {
		u16 source;
		u16 dest;
		u16 len;
		u16 check;
	} udp;
	if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
		return 1;
	if (udp.source != bpf_htons(53))
		return 1;
	u32 ulen = bpf_ntohs(udp.len);
	if (ulen <= sizeof(udp))
		return 1;
	u32 len = ulen - sizeof(udp);
	u32 avail = skb->len > off + sizeof(udp) ? skb->len - off - sizeof(udp) : 0;
	if (len > avail)
		len = avail;
	u32 n = len < NW_DNS_CAPTURE_MAX ? len : NW_DNS_CAPTURE_MAX;
	if (n < 12) /* not even a DNS header */
		return 1;
	struct nw_dns_answer *d = bpf_ringbuf_reserve(&events, sizeof(*d), 0);
	if (!d) {
		count(NW_EVENT_DNS_ANSWER);
		return 1;
	}
	/* (n - 1) & mask + 1 is n itself (12..512) in a form the verifier can bound on both ends */
	if (bpf_skb_load_bytes(skb, off + sizeof(udp), d->data, ((n - 1) & (NW_DNS_CAPTURE_MAX - 1)) + 1)) {
		bpf_ringbuf_discard(d, BPF_RB_NO_WAKEUP);
		return 1;
	}
	d->hdr.kind = NW_EVENT_DNS_ANSWER;
	d->hdr.flags = v6 ? NW_F_DNS_IPV6 : 0;
	d->hdr.size = sizeof(*d);
	d->hdr.ktime_ns = bpf_ktime_get_boot_ns();
	d->hdr.pid = 0;
	d->hdr.tid = 0;
	d->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
	d->len = len;
	d->captured = n;
	bpf_ringbuf_submit(d, wakeup_flags());
	return 1;
}

/* ---- CO-RE canary ----
 * A flavour of task_struct whose only field sits at the wrong offset on purpose:
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
