/* SPDX-License-Identifier: GPL-2.0-only */
//! TLS plaintext and server-name capture shared by the OpenSSL and GnuTLS sensors (and the socket hint from tcp).
#ifndef NW_TLS_H
#define NW_TLS_H

#include "output.h"
#include "task.h"

/* Plaintext bytes captured per call, at most NW_TLS_CAPTURE_MAX (set by the daemon). */
const volatile u32 tls_capture_len __weak = 4096;

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
} tls_calls __weak SEC(".maps");

/* Last socket seen under each TLS session: a call served from the library's
 * buffer makes no syscall, so it inherits its session's socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, u64);
} tls_session_socks __weak SEC(".maps");

/* A socket send/receive inside a TLS call tells which socket the session uses. */
static __always_inline void tls_note_sock(const struct sock *sk)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &tid);
	if (c && !c->sock)
		c->sock = (u64)sk;
}

/* Emits one call's plaintext (its first tls_capture_len bytes) as an nw_tls_data record. */
static __always_inline void tls_emit_data(u64 pid_tgid, u64 session, u64 sock, u64 buf, u64 len, u8 lib, u8 read)
{
	struct nw_tls_data *t = scratch_buf();
	if (!t)
		return;
	u32 cap = tls_capture_len;
	if (cap > NW_TLS_CAPTURE_MAX)
		cap = NW_TLS_CAPTURE_MAX;
	u32 n = len < cap ? (u32)len : cap;
	if (n < len)
		count(NW_CNT_TLS_TRUNCATED);
	if (n > NW_TLS_CAPTURE_MAX)
		n = NW_TLS_CAPTURE_MAX;
	if (bpf_probe_read_user((u8 *)(t + 1), n, (void *)buf)) {
		count(NW_CNT_TLS_READ_FAIL);
		n = 0;
	}
	t->session = session;
	t->sock = sock;
	t->len = len > 0xffffffff ? 0xffffffff : (u32)len;
	t->captured = n;
	t->lib = lib;
	__builtin_memset(t->_pad, 0, sizeof(t->_pad));
	u32 size = sizeof(*t) + n;
	fill_header(&t->hdr, NW_EVENT_TLS_DATA, size, pid_tgid);
	t->hdr.flags = read ? NW_F_TLS_READ : 0;
	emit(t, size, NW_EVENT_TLS_DATA);
}

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

	tls_emit_data(pid_tgid, call.session, call.sock, call.buf, len, call.lib, call.read);
	return 0;
}

/* Reports the server name a client set on a session (SNI). */
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

#endif /* NW_TLS_H */
