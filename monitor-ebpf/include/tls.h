/* SPDX-License-Identifier: GPL-2.0-only */
//! TLS plaintext and server-name capture shared by the OpenSSL and GnuTLS sensors (and the socket hint from tcp).
#ifndef NW_TLS_H
#define NW_TLS_H

#include "output.h"
#include "task.h"

/* Plaintext bytes captured per call, at most NW_TLS_CAPTURE_MAX (set by the daemon). */
const volatile u32 tls_capture_len __weak = 4096;

/* BPF_LOCAL_STORAGE_GET_F_CREATE (uapi; not in every vmlinux.h) */
#define NW_STORAGE_CREATE 1ULL

/* A thread's TLS state, in its task-local storage: the call in flight and the last session the
 * thread reported with its socket. Task storage instead of a hash keyed by thread id: a lookup is
 * a pointer walk (no hashing, no bucket lock, no delete at return — the measured cost of the hash
 * was most of the entry and a third of the return), and it goes away with the thread (a hash
 * entry of a thread that died mid-call stayed until the map filled). */
struct tls_call {
	u64 session;
	u64 buf;
	u64 len_out; /* size_t * of the _ex variants, 0 otherwise */
	u64 sock;    /* socket the call sent or received on (tls_note_sock), 0 if none yet */
	u32 depth;   /* nested probed calls in the same thread */
	u8 lib;
	u8 read;
	u8 active;   /* a call is in flight (entry seen, return not yet) */
	u8 last_role; /* enum tls_role of last_session */
	/* Most threads drive one session at a time: remembering its socket and role here spares
	 * the shared session map on almost every call. */
	u64 last_session;
	u64 last_sock;
};

/* Which side of its connection a session is, decided by its first call with data: a read that
 * opens with an HTTP request line or the h2 preface is a server's (as the daemon's parser
 * decides, protocol/sessions.rs), anything else a client's. */
enum tls_role {
	TLS_ROLE_CLIENT = 1,
	TLS_ROLE_SERVER = 2,
};

struct tls_session {
	u64 sock; /* last socket seen under the session, 0 if none yet */
	u8 role;  /* enum tls_role */
	u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tls_call);
} tls_calls __weak SEC(".maps");

/* Each TLS session's socket and role. A call served from the library's buffer makes no
 * syscall, so it inherits its session's socket. Shared by the threads of a process (a session
 * may be read on one thread and written on another). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct tls_session);
} tls_session_socks __weak SEC(".maps");

/* Whether a call's first bytes open an HTTP/1 request line or the HTTP/2 connection preface
 * ("GET " "PUT " "POST " "HEAD " "PATCH " "DELETE " "OPTIONS " "PRI * HT", little-endian loads):
 * a subset of what the parser takes for a request, so a session this calls a server's is one
 * the parser would skip too. */
static __always_inline bool tls_opens_request(u64 buf, u64 len)
{
	u64 w = 0;
	if (len < 8 || bpf_probe_read_user(&w, sizeof(w), (void *)buf))
		return false;
#define STARTS(s, n) ((w & ((n) == 8 ? ~0ULL : ((1ULL << ((n) * 8)) - 1))) == (s))
	return STARTS(0x20544547ULL, 4) || STARTS(0x20545550ULL, 4) ||
	       STARTS(0x2054534f50ULL, 5) || STARTS(0x2044414548ULL, 5) ||
	       STARTS(0x204843544150ULL, 6) || STARTS(0x204554454c4544ULL, 7) ||
	       STARTS(0x20534e4f4954504fULL, 8) || STARTS(0x5448202a20495250ULL, 8);
#undef STARTS
}

/* The current thread's TLS state, or NULL if it has none (it never made a probed call). */
static __always_inline struct tls_call *tls_thread(u64 flags)
{
	return bpf_task_storage_get(&tls_calls, bpf_get_current_task_btf(), 0, flags);
}

/* A socket send/receive inside a TLS call tells which socket the session uses. Runs on every
 * TCP send and receive of the host: a thread that never made a probed call leaves at the
 * first pointer test. */
static __always_inline void tls_note_sock(const struct sock *sk)
{
	struct tls_call *c = tls_thread(0);
	if (c && c->active && !c->sock)
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
	struct tls_call *c = tls_thread(NW_STORAGE_CREATE);
	if (!c) {
		count(NW_CNT_MAP_FULL);
		return 0;
	}
	if (c->active) {
		/* a probed function called from another probed function: the outer call reports */
		c->depth++;
		return 0;
	}
	c->session = session;
	c->buf = (u64)buf;
	c->len_out = len_out;
	c->sock = 0;
	c->depth = 0;
	c->lib = lib;
	c->read = read;
	c->active = 1;
	return 0;
}

/* ex: the _ex variants return 1 and store the length through len_out. */
static __always_inline int tls_exit(long ret, bool ex)
{
	/* No state, or no call in flight (the daemon's own threads never get one). */
	struct tls_call *c = tls_thread(0);
	if (!c || !c->active)
		return 0;
	if (c->depth) {
		c->depth--;
		return 0;
	}
	c->active = 0;

	u64 len = 0;
	if (ex) {
		if (ret != 1 || !c->len_out)
			return 0;
		bpf_probe_read_user(&len, sizeof(len), (void *)c->len_out);
	} else {
		if (ret <= 0)
			return 0;
		len = ret;
	}
	if (len == 0)
		return 0;
	u64 session = c->session;
	u64 sock = c->sock;
	u8 role;
	bool decided = false;
	if (session == c->last_session && c->last_sock && (!sock || sock == c->last_sock)) {
		/* the thread's current session, on the same connection */
		sock = c->last_sock;
		role = c->last_role;
	} else {
		struct tls_session *s = bpf_map_lookup_elem(&tls_session_socks, &session);
		if (s && sock && s->sock && s->sock != sock)
			s = NULL; /* the address now serves another connection: a new session */
		if (s) {
			if (!sock)
				sock = s->sock;
			else if (!s->sock)
				s->sock = sock;
			role = s->role;
		} else {
			role = c->read && tls_opens_request(c->buf, len) ? TLS_ROLE_SERVER : TLS_ROLE_CLIENT;
			decided = true;
			struct tls_session n = {.sock = sock, .role = role};
			bpf_map_update_elem(&tls_session_socks, &session, &n, BPF_ANY);
		}
		c->last_session = session;
		c->last_sock = sock;
		c->last_role = role;
	}
	/* A server's session: its first request goes out (the daemon learns that the process
	 * serves, for proxy attribution); the rest the parser would only skip. Only once its
	 * socket is known: a session without one (memory BIOs) cannot tell a reused address. */
	if (role == TLS_ROLE_SERVER && sock && !decided) {
		count(NW_CNT_TLS_SERVER_SKIPPED);
		return 0;
	}

	tls_emit_data(bpf_get_current_pid_tgid(), session, sock, c->buf, len, c->lib, c->read);
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
