// SPDX-License-Identifier: GPL-2.0-only
//! Go crypto/tls sensor: plaintext of (*tls.Conn).Write at its entry and of (*tls.Conn).Read at each of its RET instructions (never a uretprobe), the socket followed from the tls.Conn itself.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "nhiwatch.h"
#include "tls.h"

/*
 * Go >= 1.17 on amd64 passes arguments and results in registers (ABIInternal): at the entry of
 * (*Conn).Read/Write(b []byte) (int, error), RAX = *Conn, RBX = b.ptr, RCX = b.len; at a RET,
 * RAX = n. R14 always holds the current goroutine (runtime.g).
 *
 * A goroutine parked in Read leaves its thread to run others and may resume on another thread,
 * so a call in flight is keyed by (process, g pointer), not by thread. A g is reused only after
 * its goroutine has exited, so a stale entry is overwritten by the next call on it.
 */
struct go_call_key {
	u64 g;
	u32 tgid;
	u32 _pad;
};

struct go_call {
	u64 conn;
	u64 buf;
	u64 cookie; /* the struct offsets of this binary, from the attach cookie */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_call_key);
	__type(value, struct go_call);
} go_tls_calls SEC(".maps");

/*
 * Attach cookie of the entry probes, set per binary by the daemon (probes/golang.rs): bit 63
 * marks it set; bits 0-15 the offset of tls.Conn.conn, 16-31 of net.TCPConn's fd pointer,
 * 32-47 of netFD's Sysfd.
 */
#define GO_COOKIE_SET (1ULL << 63)

#define NW_S_IFMT 0170000
#define NW_S_IFSOCK 0140000

static __always_inline int go_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u64 cookie = bpf_get_attach_cookie(ctx);
	if (!(cookie & GO_COOKIE_SET))
		return 0;
	struct go_call_key k = { .g = ctx->r14, .tgid = pid_tgid >> 32 };
	struct go_call c = {
		.conn = ctx->ax,
		.buf = ctx->bx,
		.cookie = cookie,
	};
	/* The stack-growth check at a Go function's entry calls morestack and re-enters the
	 * function from its start: the second entry overwrites the first with the same values. */
	if (bpf_map_update_elem(&go_tls_calls, &k, &c, BPF_ANY))
		count(NW_CNT_MAP_FULL);
	return 0;
}

/* tls.Conn.conn (interface: itab, data) → *net.TCPConn → *netFD → Sysfd → the task's file →
 * its socket's struct sock, which is what the flow table is keyed on. 0 if any step fails, or
 * the descriptor is not a socket (tls.Conn over something other than a TCP connection). */
static __always_inline u64 go_conn_sock(u64 conn, u64 cookie)
{
	u64 off_conn = cookie & 0xffff, off_fd = (cookie >> 16) & 0xffff, off_sysfd = (cookie >> 32) & 0xffff;
	u64 data = 0, netfd = 0;
	s64 sysfd = -1;
	if (bpf_probe_read_user(&data, sizeof(data), (void *)(conn + off_conn + 8)) || !data)
		return 0;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(data + off_fd)) || !netfd)
		return 0;
	if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + off_sysfd)))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (sysfd < 0 || sysfd >= max)
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[sysfd]) || !f)
		return 0;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & NW_S_IFMT) != NW_S_IFSOCK)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so)
		return 0;
	return (u64)BPF_CORE_READ(so, sk);
}

/* Writes are reported at entry, where the plaintext is already in the buffer: reported at a RET,
 * the request could reach the daemon after its response, which another goroutine (on another
 * CPU) may read from the socket before the writer's RET probe runs. Write sends all of b or
 * fails; a failed write leaves its exchange unanswered (`aborted`). */
SEC("uprobe")
int go_tls_write(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	u64 cookie = bpf_get_attach_cookie(ctx);
	s64 len = (s64)ctx->cx;
	if (!(cookie & GO_COOKIE_SET) || len <= 0)
		return 0;
	u64 sock = go_conn_sock(ctx->ax, cookie);
	if (!sock)
		count(NW_CNT_GO_SOCK_UNRESOLVED);
	tls_emit_data(pid_tgid, ctx->ax, sock, ctx->bx, (u64)len, NW_TLS_GO, 0);
	return 0;
}

SEC("uprobe")
int go_tls_read(struct pt_regs *ctx)
{
	return go_enter(ctx);
}

/* Attached at every RET instruction of Read (found by decoding its code). */
SEC("uprobe")
int go_tls_ret(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (is_self(pid_tgid))
		return 0;
	struct go_call_key k = { .g = ctx->r14, .tgid = pid_tgid >> 32 };
	struct go_call *c = bpf_map_lookup_elem(&go_tls_calls, &k);
	if (!c) {
		count(NW_CNT_GO_RET_UNMATCHED);
		return 0;
	}
	struct go_call call = *c;
	bpf_map_delete_elem(&go_tls_calls, &k);
	s64 n = (s64)ctx->ax;
	if (n <= 0)
		return 0;
	u64 sock = go_conn_sock(call.conn, call.cookie);
	if (!sock)
		count(NW_CNT_GO_SOCK_UNRESOLVED);
	tls_emit_data(pid_tgid, call.conn, sock, call.buf, (u64)n, NW_TLS_GO, 1);
	return 0;
}
