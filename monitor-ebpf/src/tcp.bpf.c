// SPDX-License-Identifier: GPL-2.0-only
//! TCP sensor: outbound connections (established or failed) and their close with byte counts, plus
//! the socket hint that ties a TLS session to its connection.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "nhiwatch.h"
#include "output.h"
#include "task.h"
#include "tls.h"

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

/* Sends and receives tell the TLS sensors which socket a session uses (include/tls.h). */
SEC("tp_btf/sock_send_length")
int BPF_PROG(handle_sock_send, struct sock *sk, int ret, int flags)
{
	tls_note_sock(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(handle_sock_recv, struct sock *sk, int ret, int flags)
{
	tls_note_sock(sk);
	return 0;
}
