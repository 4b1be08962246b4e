/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one definition of every record and map value shared between the kernel
 * programs and the daemon. The Rust side (monitor/src/probes/abi.rs) is
 * generated from this file by bindgen at build time, so the two cannot drift.
 *
 * Rules for this file:
 * - fixed-width types only, explicit padding, every struct a multiple of 8;
 * - enum values are explicit and never reused;
 * - variable-length data rides at the end of a record, its length in the record.
 */
#ifndef NHIWATCH_H
#define NHIWATCH_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
#endif

/* Bumped whenever a record changes shape; the daemon refuses a mismatching object. */
#define NW_ABI_VERSION 2

#define NW_COMM_LEN 16
#define NW_PATH_MAX 256
/* Hard upper bound of TLS plaintext captured per call (the configured prefix is <= this). */
#define NW_TLS_CAPTURE_MAX 8192
#define NW_WATCH_SUFFIX_LEN 16
/* Dentry levels walked above an opened file when matching watched directories by inode. */
#define NW_DENTRY_DEPTH 8
/* The watched-inode prefilter (map watch_ino_bits): 1 << LOG2 bits in WORDS u64s; a (dev, ino)
 * has bit ((ino ^ (dev << 32)) * MUL) >> (64 - LOG2), the same in files.bpf.c and watch.rs. */
#define NW_INODE_BITS_LOG2 16
#define NW_INODE_BITS_WORDS 1024
#define NW_INODE_BITS_MUL 0x9E3779B97F4A7C15ULL
/* The watched-path prefilter (map watch_head_bits): a path's head is its first 8 bytes cut after
 * the first component's '/' (or at the NUL), little-endian; it has bit (head * MUL) >> (64 - LOG2)
 * of these, the same in files.bpf.c and watch.rs. All bits set: no filter. */
#define NW_HEAD_BITS_LOG2 12
#define NW_HEAD_BITS_WORDS 64
/* DNS message bytes captured per UDP response (the classic UDP limit; larger EDNS
 * answers arrive cut and are rejected by the parser). */
#define NW_DNS_CAPTURE_MAX 512
/* Server name captured per SNI call (RFC 1035 names are at most 253 bytes). */
#define NW_SNI_MAX 256

enum nw_event_kind {
	NW_EVENT_EXEC = 1,
	NW_EVENT_FORK = 2,
	NW_EVENT_EXIT = 3,
	NW_EVENT_FILE_OPEN = 4,
	NW_EVENT_TCP_CONNECT = 5,
	NW_EVENT_TCP_CLOSE = 6,
	NW_EVENT_TLS_DATA = 7,
	NW_EVENT_DNS_ANSWER = 8,
	NW_EVENT_TLS_SNI = 9,
	/* One past the last kind: sizes the loss counters. */
	NW_EVENT_KIND_COUNT = 10,
};

/* Every record starts with this header. */
struct nw_header {
	u16 kind;       /* enum nw_event_kind */
	u16 flags;      /* kind-specific NW_F_* bits */
	u32 size;       /* bytes of the whole record, header included */
	u64 ktime_ns;   /* bpf_ktime_get_boot_ns() */
	u32 pid;        /* thread-group id (the process) */
	u32 tid;        /* thread id */
	u64 cgroup_id;  /* cgroup v2 id of the task (inode of its cgroup directory) */
};

/* exec: the process image was replaced. Followed by filename_len bytes of the
 * path passed to execve (not NUL-terminated). */
struct nw_exec {
	struct nw_header hdr;
	u32 ppid;
	u32 uid;
	u32 gid;
	u32 filename_len;
	u64 start_time_ns; /* task start, boot clock: with pid, identifies the process */
	char comm[NW_COMM_LEN];
	/* char filename[filename_len]; */
};

/* fork: a new process (not a thread). hdr.pid is the child. */
struct nw_fork {
	struct nw_header hdr;
	u32 ppid;
	u32 uid;
	u64 start_time_ns;
	char comm[NW_COMM_LEN];
};

/* exit: the whole process (its group leader) exited. */
struct nw_exit {
	struct nw_header hdr;
	s32 exit_code; /* raw wait status */
	u32 _pad;
	u64 start_time_ns;
};

#define NW_F_OPEN_PATH_ARG 0x1   /* path is the string the process passed */
#define NW_F_OPEN_PATH_DENTRY 0x2 /* path is dentry names leaf-first, NUL-separated, under watch_id */

/* open/openat/openat2 of a watched file. Followed by path_len bytes. */
struct nw_file_open {
	struct nw_header hdr;
	s64 result;     /* fd, or -errno */
	u32 open_flags; /* O_* flags */
	u32 watch_id;   /* which configured watch matched */
	u64 ino;        /* inode of the opened file (0 if the open failed) */
	u32 dev;        /* st_dev of the opened file, kernel encoding */
	u32 path_len;
	/* char path[path_len]; */
};

#define NW_F_TCP_IPV6 0x1
#define NW_F_TCP_FAILED 0x2 /* connect never reached ESTABLISHED */

/* Outbound TCP connection established (or failed). Attributed to the task that
 * called connect(), not to the softirq that completed it. */
struct nw_tcp {
	struct nw_header hdr;
	u64 sock;       /* kernel socket address: a flow key, never shown to users */
	u8 saddr[16];   /* IPv4 in the first 4 bytes when !NW_F_TCP_IPV6 */
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u32 _pad;
	u64 bytes_sent;     /* close only: tcp_sock.bytes_acked */
	u64 bytes_received; /* close only: tcp_sock.bytes_received */
	u64 start_ns;       /* close only: when connect() was called */
};

enum nw_tls_lib {
	NW_TLS_OPENSSL = 1,
	NW_TLS_GNUTLS = 2,
	NW_TLS_GO = 3, /* crypto/tls in a Go program: session is the *tls.Conn */
	/* Cleartext bytes of a TCP socket's read/write syscalls (sockets.bpf.c): session and
	 * sock are both the kernel socket address. */
	NW_TLS_PLAIN = 4,
};

#define NW_F_TLS_READ 0x1 /* plaintext received (else sent) */
/* NW_TLS_PLAIN only: the first bytes read on an accepted connection, which looked like an HTTP
 * request (the process serves HTTP; reported once per connection, never parsed as a call). */
#define NW_F_TLS_INBOUND 0x2

/* Plaintext of one TLS library call. Followed by captured bytes. */
struct nw_tls_data {
	struct nw_header hdr;
	u64 session;   /* the library's session object address: a stream key */
	u64 sock;      /* socket the library used during the call, 0 if none seen */
	u32 len;       /* full plaintext length of the call */
	u32 captured;  /* bytes that follow (a prefix of len) */
	u8 lib;        /* enum nw_tls_lib */
	u8 _pad[7];
	/* u8 data[captured]; */
};

#define NW_F_DNS_IPV6 0x1 /* the response came over IPv6 */

/* A UDP datagram from source port 53 delivered to a socket on this host. Fixed
 * size; hdr.pid/tid are 0 (it arrives in softirq), hdr.cgroup_id is the receiving
 * socket's cgroup. */
struct nw_dns_answer {
	struct nw_header hdr;
	u32 len;      /* DNS message length (UDP payload) */
	u32 captured; /* bytes of data that are valid (a prefix of len) */
	u8 data[NW_DNS_CAPTURE_MAX];
};

/* A TLS client named its server (OpenSSL SSL_ctrl(SSL_CTRL_SET_TLSEXT_HOSTNAME),
 * GnuTLS gnutls_server_name_set). Fixed size. */
struct nw_tls_sni {
	struct nw_header hdr;
	u64 session;  /* same key as nw_tls_data.session */
	u32 name_len; /* bytes of name that are valid (no NUL) */
	u8 lib;       /* enum nw_tls_lib */
	u8 _pad[3];
	char name[NW_SNI_MAX];
};

/* Value of the watch map (keyed by path prefix or by inode). */
#define NW_WATCH_DIR 0x1    /* matches the entry and everything beneath */
#define NW_WATCH_EXACT 0x2  /* matches only this exact path */
#define NW_WATCH_SUFFIX 0x4 /* the opened file name must end with suffix */

struct nw_watch {
	u32 id;
	u32 flags;
	u32 suffix_len;
	u32 prefix_len; /* bytes of the stored path prefix (path-keyed entries) */
	char suffix[NW_WATCH_SUFFIX_LEN];
};

/* Key of the path-prefix LPM trie. */
struct nw_path_key {
	u32 prefixlen; /* bits */
	char path[NW_PATH_MAX];
};

/* Key of the inode watch map. */
struct nw_inode_key {
	u64 ino;
	u32 dev;
	u32 _pad;
};

/* Loss and self-check counters, one u64 slot each in a per-CPU array. */
/* A process mapping a TLS library file executable for the first time (tls_hold.bpf.c → the
 * daemon, through the tls_hold_events ring): the daemon attaches the uprobes to that file and,
 * if the process was stopped (held), continues it. */
struct nw_tls_hold {
	u32 pid;       /* tgid */
	u32 fd;        /* the mapped file's descriptor, still open while the loader maps it */
	u64 ino;       /* the file's inode (kernel view, as tls_lib_state is keyed) */
	u32 dev;       /* its superblock's s_dev (kernel encoding) */
	u32 held;      /* 1 if the process was sent SIGSTOP and is listed in tls_held */
	u64 since_ns;  /* bpf_ktime_get_ns() when it was held */
};

/* Per library file (struct nw_inode_key): attaching in progress, or done. */
enum nw_tls_lib_state {
	NW_TLS_LIB_PENDING = 1,
	NW_TLS_LIB_DONE = 2,
};

struct nw_tls_lib_entry {
	u32 state;     /* enum nw_tls_lib_state */
	u32 _pad;
	u64 since_ns;  /* bpf_ktime_get_ns() when it became pending */
};

/* A held process, by tgid in tls_held. */
struct nw_tls_held {
	u64 ino;
	u32 dev;
	u32 _pad;
	u64 since_ns;
};

/* tls_hold_ctl[0]: the daemon's heartbeat; no process is held unless it is recent. */
struct nw_tls_hold_ctl {
	u64 heartbeat_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) of the daemon's last beat; 0 = stopping */
	u32 uid;          /* the daemon's uid (kernel view) ... */
	u32 kill_any;     /* ... and whether it holds CAP_KILL: else only processes of its uid are
	                   * held, since only those can it continue (kill(2) permission rules) */
};

enum nw_counter {
	/* slots 0..NW_EVENT_KIND_COUNT-1: records lost because the ring buffer was full, by kind */
	NW_CNT_TLS_TRUNCATED = 16,  /* TLS calls whose plaintext exceeded the capture prefix */
	NW_CNT_TLS_READ_FAIL = 17,  /* bpf_probe_read_user of TLS plaintext failed */
	NW_CNT_PATH_READ_FAIL = 18,
	NW_CNT_TCP_UNATTRIBUTED = 19, /* established socket with no connect() owner */
	NW_CNT_MAP_FULL = 20,     /* a bookkeeping map was full */
	NW_CNT_GO_SOCK_UNRESOLVED = 21, /* Go TLS call whose socket could not be followed from its tls.Conn */
	NW_CNT_GO_RET_UNMATCHED = 22,   /* a Go TLS RET with no entry state (attached mid-call, or the map was full) */
	NW_CNT_SOCK_NOT_HTTP = 24,  /* TCP connections whose first bytes were not an HTTP request: never looked at again */
	NW_CNT_SOCK_INBOUND = 25,   /* accepted connections (server side): first bytes checked, never captured */
	NW_CNT_SOCK_TRUNCATED = 26, /* cleartext socket calls longer than the capture prefix */
	NW_CNT_SOCK_READ_FAIL = 27, /* bpf_probe_read_user of socket bytes failed */
	NW_CNT_TLS_SERVER_SKIPPED = 30, /* TLS calls of a server's session after its first request: not sent, the parser would skip them */
	NW_CNT_COUNT = 32,
};

/* Written by the CO-RE canary program: the daemon checks both agree. */
struct nw_canary {
	u32 tgid_helper; /* from bpf_get_current_pid_tgid() */
	u32 tgid_core;   /* from task_struct via a deliberately misplaced CO-RE flavour */
	u64 hits;
};

#endif /* NHIWATCH_H */
