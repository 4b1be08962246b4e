// SPDX-License-Identifier: GPL-2.0-only
//! Sockets sensor: cleartext HTTP/1 and h2c bytes a process writes and reads on its outbound TCP
//! connections (syscall tracepoints), classified once per connection in the kernel.
//
// Cost model: every write/read of every process hits these tracepoints, so an fd that is not a
// followed TCP connection must leave at once: a process with no followed connection leaves after
// one array load (`sock_tgid_filter`, inlined by the verifier), one with some after one hash
// lookup. Connections enter `sock_conns` only
// at connect()/accept() exits (rare), after the fd was resolved to a TCP socket with CO-RE; the
// first bytes the process writes decide: an HTTP/1 request line or the h2 preface keeps it,
// anything else (TLS records, database protocols, ...) removes it for good. close() removes it
// too, so a reused fd number starts clean.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "nhiwatch.h"
#include "output.h"
#include "task.h"
#include "tls.h"

struct sock_conn_key {
	u32 tgid;
	u32 fd;
};

enum sock_state {
	SOCK_UNKNOWN = 0, /* outbound, nothing written yet */
	SOCK_HTTP = 1,    /* outbound, first write was HTTP: captured */
	SOCK_INBOUND = 2, /* accepted: its first read tells whether the process serves HTTP */
};

struct sock_conn {
	u64 sk;
	/* The process's start (group leader's start_boottime): a process that exits without
	 * close() leaves its entries behind, and a later process with the same pid must not
	 * inherit them through an equal fd number. */
	u64 start_ns;
	u8 state;
	u8 _pad[7];
};

static __always_inline u64 process_start(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, group_leader, start_boottime);
}

/* Candidate and classified-HTTP connections by (process, fd). LRU: a process that exits without
 * closing leaves entries the map forgets by itself. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_conn_key);
	__type(value, struct sock_conn);
} sock_conns SEC(".maps");

/* How many followed connections the processes whose tgid falls in each slot have (tgid modulo
 * the size). Zero: none, and the process's calls leave without a hash lookup. Entries evicted by
 * the LRU are not subtracted: that only costs a lookup, never a missed connection. */
#define SOCK_FILTER_SLOTS 65536
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOCK_FILTER_SLOTS);
	__type(key, u32);
	__type(value, u32);
} sock_tgid_filter SEC(".maps");

static __always_inline u32 *filter_slot(u32 tgid)
{
	u32 k = tgid & (SOCK_FILTER_SLOTS - 1);
	return bpf_map_lookup_elem(&sock_tgid_filter, &k);
}

/* Whether the process may have a followed connection. */
static __always_inline bool may_follow(u64 pid_tgid)
{
	u32 *n = filter_slot(pid_tgid >> 32);
	return n && *n;
}

static __always_inline void untrack(struct sock_conn_key *key)
{
	if (bpf_map_delete_elem(&sock_conns, key))
		return;
	u32 *n = filter_slot(key->tgid);
	if (n && *n)
		__sync_fetch_and_add(n, (u32)-1); /* XADD: the BPF v1 target has no atomic sub */
}

enum sock_buf_kind {
	BUF_PLAIN = 0,  /* buf is the data */
	BUF_IOVEC = 1,  /* buf is a struct iovec[iovcnt] */
};

/* One followed call between its enter and exit, by thread. */
struct sock_call {
	u64 sk;
	u64 buf;
	u32 iovcnt;
	u32 fd;
	u8 kind;
	u8 read;
	u8 inbound;
	u8 _pad[5];
};

struct {
	/* LRU: a call whose process lost its last connection meanwhile is never looked up at exit */
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct sock_call);
} sock_calls SEC(".maps");

/* connect()/accept() in flight, by thread: the fd (connect) or a marker (accept). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u32);
} sock_connecting SEC(".maps");

/* ---- destination rules (sensors.sockets), programmed by the daemon ---- */
#define SOCK_RULE_FOLLOW 1
#define SOCK_RULE_IGNORE 2

/* By destination port (host order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u16);
	__type(value, u8);
} sock_port_rules SEC(".maps");

struct sock_cidr_key {
	u32 prefixlen; /* bits */
	u8 addr[16];   /* IPv6, or IPv4-mapped (::ffff:a.b.c.d) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sock_cidr_key);
	__type(value, u8);
} sock_cidr_rules SEC(".maps");

/* Set when follow lists are given: then only listed destinations are followed. */
const volatile u8 sock_follow_ports_only = 0;
const volatile u8 sock_follow_cidrs_only = 0;

/* Staging big enough for an unaligned iovec copy: each piece is bounded by the capture max,
 * at an offset bounded by it too. */
struct sock_scratch {
	u8 buf[sizeof(struct nw_tls_data) + 3 * NW_TLS_CAPTURE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct sock_scratch);
} sock_scratch SEC(".maps");

/* Classic syscall tracepoint contexts (the tracefs format files). */
struct sock_enter_ctx {
	u64 _common;
	s32 nr;
	u32 _pad;
	u64 a0, a1, a2, a3, a4, a5;
};

struct sock_exit_ctx {
	u64 _common;
	s32 nr;
	u32 _pad;
	s64 ret;
};

/* The TCP socket behind fd in the current process, or 0. Only at connect/accept exits. */
static __always_inline struct sock *tcp_sock_of(u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	u32 max = BPF_CORE_READ(task, files, fdt, max_fds);
	if (!fds || fd >= max)
		return 0;
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), fds + fd) || !f)
		return 0;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & 00170000) != 0140000 /* S_IFSOCK */)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so)
		return 0;
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return 0;
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != 6 /* IPPROTO_TCP */ ||
	    BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type) != 1 /* SOCK_STREAM */)
		return 0;
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != 2 /* AF_INET */ && family != 10 /* AF_INET6 */)
		return 0;
	return sk;
}

/* Whether the settings follow connections to sk's destination. */
static __always_inline bool destination_followed(struct sock *sk)
{
	u16 port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	u8 *rule = bpf_map_lookup_elem(&sock_port_rules, &port);
	if (rule && *rule == SOCK_RULE_IGNORE)
		return false;
	if (sock_follow_ports_only && !rule)
		return false;
	struct sock_cidr_key key = { .prefixlen = 128 };
	if (BPF_CORE_READ(sk, __sk_common.skc_family) == 10) {
		BPF_CORE_READ_INTO(&key.addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		BPF_CORE_READ_INTO((u32 *)&key.addr[12], sk, __sk_common.skc_daddr);
	}
	rule = bpf_map_lookup_elem(&sock_cidr_rules, &key);
	if (rule && *rule == SOCK_RULE_IGNORE)
		return false;
	if (sock_follow_cidrs_only && !rule)
		return false;
	return true;
}

static __always_inline void track(u64 pid_tgid, s64 fd, u8 state)
{
	if (fd < 0)
		return;
	struct sock *sk = tcp_sock_of((u32)fd);
	if (!sk)
		return;
	if (state == SOCK_UNKNOWN && !destination_followed(sk))
		return;
	struct sock_conn_key key = { .tgid = pid_tgid >> 32, .fd = (u32)fd };
	struct sock_conn c = { .sk = (u64)sk, .start_ns = process_start(), .state = state };
	if (bpf_map_update_elem(&sock_conns, &key, &c, BPF_ANY)) {
		count(NW_CNT_MAP_FULL);
		return;
	}
	u32 *n = filter_slot(key.tgid);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* ---- connect / accept: the only way into sock_conns ---- */

SEC("tracepoint/syscalls/sys_enter_connect")
int sock_enter_connect(struct sock_enter_ctx *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u32 tid = (u32)pid_tgid;
	u32 fd = (u32)ctx->a0;
	bpf_map_update_elem(&sock_connecting, &tid, &fd, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sock_exit_connect(struct sock_exit_ctx *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	u32 *fd = bpf_map_lookup_elem(&sock_connecting, &tid);
	if (!fd)
		return 0;
	u32 f = *fd;
	bpf_map_delete_elem(&sock_connecting, &tid);
	/* a non-blocking connect returns -EINPROGRESS and completes later */
	if (ctx->ret == 0 || ctx->ret == -115)
		track(pid_tgid, f, SOCK_UNKNOWN);
	return 0;
}

static __always_inline int accept_exit(struct sock_exit_ctx *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid) || ctx->ret < 0)
		return 0;
	track(pid_tgid, ctx->ret, SOCK_INBOUND);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int sock_exit_accept(struct sock_exit_ctx *ctx)
{
	return accept_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int sock_exit_accept4(struct sock_exit_ctx *ctx)
{
	return accept_exit(ctx);
}

/* A closed (or dup2'ed-over) fd number no longer names the connection. */
static __always_inline int forget_fd(u64 fd)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!may_follow(pid_tgid))
		return 0;
	struct sock_conn_key key = { .tgid = pid_tgid >> 32, .fd = (u32)fd };
	untrack(&key);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int sock_enter_close(struct sock_enter_ctx *ctx)
{
	return forget_fd(ctx->a0);
}

SEC("tracepoint/syscalls/sys_enter_dup2")
int sock_enter_dup2(struct sock_enter_ctx *ctx)
{
	return forget_fd(ctx->a1);
}

SEC("tracepoint/syscalls/sys_enter_dup3")
int sock_enter_dup3(struct sock_enter_ctx *ctx)
{
	return forget_fd(ctx->a1);
}

/* ---- classification ---- */

/* Whether the first 8 bytes (little-endian load, n of them valid) open an HTTP/1 request line
 * or the HTTP/2 connection preface. CONNECT is left out: what follows it is a tunnel (TLS). */
static __always_inline bool http_opening(u64 w, u64 n)
{
#define STARTS(s, len) (n >= (len) && (w & ((len) == 8 ? ~0ULL : ((1ULL << ((len) * 8)) - 1))) == (s))
	/* "GET " "PUT " "POST " "HEAD " "PATCH " "DELETE " "OPTIONS " "PRI * HT" */
	return STARTS(0x20544547ULL, 4) || STARTS(0x20545550ULL, 4) ||
	       STARTS(0x2054534f50ULL, 5) || STARTS(0x2044414548ULL, 5) ||
	       STARTS(0x204843544150ULL, 6) || STARTS(0x204554454c4544ULL, 7) ||
	       STARTS(0x20534e4f4954504fULL, 8) || STARTS(0x5448202a20495250ULL, 8);
#undef STARTS
}

/* The first bytes of a call's data (the first iovec's for vectored calls). */
static __always_inline u64 first_word(u64 buf, u8 kind, u64 *n)
{
	u64 w = 0;
	if (kind == BUF_IOVEC) {
		struct iovec iov = {};
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)buf))
			return 0;
		buf = (u64)iov.iov_base;
		if (iov.iov_len < *n)
			*n = iov.iov_len;
	}
	if (*n >= 8) {
		if (bpf_probe_read_user(&w, 8, (void *)buf))
			*n = 0;
	} else {
		*n = 0; /* a request is never this short; a split first write is missed (README) */
	}
	return w;
}

/* ---- the data path ---- */

static __always_inline int data_enter(u64 fd, u64 buf, u64 len, u8 kind, u8 read)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!may_follow(pid_tgid))
		return 0;
	struct sock_conn_key key = { .tgid = pid_tgid >> 32, .fd = (u32)fd };
	struct sock_conn *c = bpf_map_lookup_elem(&sock_conns, &key);
	if (!c)
		return 0;
	if (c->start_ns != process_start()) {
		/* left by an earlier process with this pid */
		untrack(&key);
		return 0;
	}
	u8 inbound = 0;
	if (c->state == SOCK_INBOUND) {
		if (!read) {
			/* the server spoke first: not an HTTP server connection */
			untrack(&key);
			count(NW_CNT_SOCK_INBOUND);
			return 0;
		}
		inbound = 1;
	} else if (c->state == SOCK_UNKNOWN) {
		u64 n = kind == BUF_IOVEC ? 8 : len;
		u64 w = read ? 0 : first_word(buf, kind, &n);
		if (read || !http_opening(w, n)) {
			/* TLS, a database protocol, a server that speaks first: never looked at again */
			untrack(&key);
			count(NW_CNT_SOCK_NOT_HTTP);
			return 0;
		}
		c->state = SOCK_HTTP;
	}
	struct sock_call call = {
		.sk = c->sk,
		.buf = buf,
		.iovcnt = kind == BUF_IOVEC ? (u32)len : 0,
		.fd = (u32)fd,
		.kind = kind,
		.read = read,
		.inbound = inbound,
	};
	u32 tid = (u32)pid_tgid;
	if (bpf_map_update_elem(&sock_calls, &tid, &call, BPF_ANY))
		count(NW_CNT_MAP_FULL);
	return 0;
}

/* gRPC C-core writes each HTTP/2 frame piece as its own iovec (preface, SETTINGS, HEADERS, DATA
 * ... in one sendmsg; python grpcio's first request is 26-28 of them): enough of them to reach the
 * request's header block. Iovecs after the first are copied in a bpf_loop, whose body the
 * verifier checks once: an unrolled loop of 32, or a bounded loop of 64, is refused (EINVAL). */
#define SOCK_IOV_MAX 64
/* Bytes of a first inbound read sent up: enough to tell a request line from anything else. */
#define SOCK_INBOUND_CAPTURE 64

/* One vectored call's copy into the scratch record, iovec by iovec. */
struct iov_copy {
	u64 iov; /* user address of the struct iovec array */
	u32 want;
	u32 got;
	u8 failed;
};

/* Appends iovec i of c to the record's data; nonzero when the copy is over. */
static __always_inline long copy_iov(u32 i, struct iov_copy *c)
{
	if (c->got >= c->want)
		return 1;
	u32 zero = 0;
	struct sock_scratch *s = bpf_map_lookup_elem(&sock_scratch, &zero);
	if (!s)
		return 1;
	u8 *data = s->buf + sizeof(struct nw_tls_data);
	struct iovec iov = {};
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(c->iov + (u64)i * sizeof(iov)))) {
		c->failed = 1;
		return 1;
	}
	u64 off = c->got;
	u64 n = c->want - c->got;
	if (iov.iov_len < n)
		n = iov.iov_len;
	if (off >= NW_TLS_CAPTURE_MAX || n > NW_TLS_CAPTURE_MAX)
		return 1;
	/* for the verifier, which loses the bounds above through register copies: masks that
	 * change nothing (off < 8192, n <= 8192), inside the scratch */
	off &= NW_TLS_CAPTURE_MAX - 1;
	n &= 2 * NW_TLS_CAPTURE_MAX - 1;
	if (n && bpf_probe_read_user(data + off, n, iov.iov_base)) {
		c->failed = 1;
		return 1;
	}
	c->got += n;
	return 0;
}

/* bpf_loop body: iovecs 1.. (the first is copied inline, the common one-iovec case pays no call). */
static long copy_iov_rest(u32 i, void *ctx)
{
	return copy_iov(i + 1, ctx);
}

static __always_inline int data_exit(s64 ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!may_follow(pid_tgid))
		return 0;
	u32 tid = (u32)pid_tgid;
	struct sock_call *cp = bpf_map_lookup_elem(&sock_calls, &tid);
	if (!cp)
		return 0;
	struct sock_call call = *cp;
	bpf_map_delete_elem(&sock_calls, &tid);
	if (ret <= 0)
		return 0;

	u32 zero = 0;
	struct sock_scratch *s = bpf_map_lookup_elem(&sock_scratch, &zero);
	if (!s)
		return 0;
	struct nw_tls_data *t = (struct nw_tls_data *)s->buf;
	u8 *data = (u8 *)(t + 1);
	u32 cap = tls_capture_len;
	if (cap > NW_TLS_CAPTURE_MAX)
		cap = NW_TLS_CAPTURE_MAX;
	if (call.inbound)
		cap = SOCK_INBOUND_CAPTURE;
	u64 len = (u64)ret;
	u32 want = len < cap ? (u32)len : cap;
	u32 got = 0;
	bool failed = false;
	if (call.kind == BUF_PLAIN) {
		u32 n = want;
		if (n > NW_TLS_CAPTURE_MAX)
			n = NW_TLS_CAPTURE_MAX;
		if (bpf_probe_read_user(data, n, (void *)call.buf))
			failed = true;
		else
			got = n;
	} else {
		struct iov_copy c = { .iov = call.buf, .want = want };
		if (call.iovcnt > 0 && !copy_iov(0, &c) && call.iovcnt > 1 && c.got < c.want) {
			u32 rest = call.iovcnt < SOCK_IOV_MAX ? call.iovcnt - 1 : SOCK_IOV_MAX - 1;
			bpf_loop(rest, copy_iov_rest, &c, 0);
		}
		got = c.got;
		failed = c.failed;
	}
	if (failed)
		count(NW_CNT_SOCK_READ_FAIL);
	if (got > NW_TLS_CAPTURE_MAX)
		got = NW_TLS_CAPTURE_MAX;

	if (call.inbound) {
		/* One look per accepted connection, then it is forgotten either way. */
		struct sock_conn_key key = { .tgid = pid_tgid >> 32, .fd = call.fd };
		untrack(&key);
		u64 w = 0;
		if (got >= 8)
			__builtin_memcpy(&w, data, 8);
		count(NW_CNT_SOCK_INBOUND);
		if (!http_opening(w, got))
			return 0;
	} else if (got < len) {
		count(NW_CNT_SOCK_TRUNCATED);
	}

	t->session = call.sk;
	t->sock = call.sk;
	t->len = len > 0xffffffff ? 0xffffffff : (u32)len;
	t->captured = got;
	t->lib = NW_TLS_PLAIN;
	__builtin_memset(t->_pad, 0, sizeof(t->_pad));
	u32 size = sizeof(*t) + got;
	fill_header(&t->hdr, NW_EVENT_TLS_DATA, size, pid_tgid);
	t->hdr.flags = (call.read ? NW_F_TLS_READ : 0) | (call.inbound ? NW_F_TLS_INBOUND : 0);
	if (size > sizeof(*t) + NW_TLS_CAPTURE_MAX)
		return 0;
	emit_flags(t, size, NW_EVENT_TLS_DATA, wakeup_flags());
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int sock_enter_write(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_PLAIN, 0);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int sock_enter_sendto(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_PLAIN, 0);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int sock_enter_writev(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_IOVEC, 0);
}

static __always_inline int msg_enter(u64 fd, u64 msg, u8 read)
{
	struct user_msghdr m = {};
	/* the lookup in data_enter happens after this read: keep the unrelated path short by
	 * checking the fd first */
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!may_follow(pid_tgid))
		return 0;
	struct sock_conn_key key = { .tgid = pid_tgid >> 32, .fd = (u32)fd };
	if (!bpf_map_lookup_elem(&sock_conns, &key))
		return 0;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg))
		return 0;
	return data_enter(fd, (u64)m.msg_iov, m.msg_iovlen, BUF_IOVEC, read);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int sock_enter_sendmsg(struct sock_enter_ctx *ctx)
{
	return msg_enter(ctx->a0, ctx->a1, 0);
}

SEC("tracepoint/syscalls/sys_enter_read")
int sock_enter_read(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_PLAIN, 1);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int sock_enter_recvfrom(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_PLAIN, 1);
}

SEC("tracepoint/syscalls/sys_enter_readv")
int sock_enter_readv(struct sock_enter_ctx *ctx)
{
	return data_enter(ctx->a0, ctx->a1, ctx->a2, BUF_IOVEC, 1);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int sock_enter_recvmsg(struct sock_enter_ctx *ctx)
{
	return msg_enter(ctx->a0, ctx->a1, 1);
}

SEC("tracepoint/syscalls/sys_exit_write")
int sock_exit_write(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int sock_exit_sendto(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int sock_exit_writev(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int sock_exit_sendmsg(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_read")
int sock_exit_read(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int sock_exit_recvfrom(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_readv")
int sock_exit_readv(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int sock_exit_recvmsg(struct sock_exit_ctx *ctx)
{
	return data_exit(ctx->ret);
}
