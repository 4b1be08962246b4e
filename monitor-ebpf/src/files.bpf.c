// SPDX-License-Identifier: GPL-2.0-only
//! Files sensor: open/openat/openat2 of watched paths, matched by path prefix at entry or by inode at exit.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "nhiwatch.h"
#include "output.h"
#include "task.h"

/* Watch tables, programmed by the daemon (probes/watch.rs). */
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

/* A bit per hash of (dev, ino) for every key of watch_inodes (probes/watch.rs keeps it, with
 * the same hash): the exit's dentry walk tests each ancestor here, an array access the verifier
 * inlines, and pays a watch_inodes lookup only on a set bit. Without it every level of every
 * open on a filesystem holding a watched inode cost a hash lookup (BENCHMARKS.md benchmark 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64[NW_INODE_BITS_WORDS]);
} watch_ino_bits SEC(".maps");

/* A bit per head (first path component, see nhiwatch.h) of every watched path: an absolute
 * open whose head has no bit set cannot match any watch prefix, so the entry leaves after an
 * 8-byte read instead of copying the whole path and walking the prefix trie — the common case
 * (/usr, /proc, /tmp, /sys …), which was most of enter_openat's time (BENCHMARKS.md benchmark 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64[NW_HEAD_BITS_WORDS]);
} watch_head_bits SEC(".maps");

/* Keeps the bytes of `raw` up to the first '/' after the leading one (included) or the NUL. */
static __always_inline u64 path_head(u64 raw)
{
	u64 keep = ~0ULL;
#pragma unroll
	for (int i = 1; i < 8; i++) {
		u8 c = (raw >> (i * 8)) & 0xff;
		if (c == 0) {
			keep = (1ULL << (i * 8)) - 1;
			break;
		}
		if (c == '/') {
			keep = i == 7 ? ~0ULL : (1ULL << ((i + 1) * 8)) - 1;
			break;
		}
	}
	return raw & keep;
}

static __always_inline bool head_may_be_watched(u64 head)
{
	u32 zero = 0;
	u64 *bits = bpf_map_lookup_elem(&watch_head_bits, &zero);
	if (!bits)
		return true;
	u32 h = (head * NW_INODE_BITS_MUL) >> (64 - NW_HEAD_BITS_LOG2);
	return (bits[(h >> 6) & (NW_HEAD_BITS_WORDS - 1)] >> (h & 63)) & 1;
}

static __always_inline u32 inode_bit(u64 ino, u32 dev)
{
	return ((ino ^ ((u64)dev << 32)) * NW_INODE_BITS_MUL) >> (64 - NW_INODE_BITS_LOG2);
}

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct nw_path_key);
} path_scratch SEC(".maps");

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

static __always_inline void emit_urgent(void *rec, u32 size)
{
	if (size > SCRATCH_SIZE)
		return;
	emit_flags(rec, size, NW_EVENT_FILE_OPEN, wakeup_flags_urgent());
}

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
	u64 raw;
	/* A path shorter than 8 bytes at the end of a mapped page fails this read: it takes the
	 * full copy below, unfiltered. */
	if (bpf_probe_read_user(&raw, sizeof(raw), filename) == 0) {
		if ((raw & 0xff) != '/')
			return 0; /* relative: left to the inode match at exit */
		if (!head_may_be_watched(path_head(raw)))
			return 0;
	}
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

/* The first fds live in the files_struct's inline array until the table outgrows it. */
#define NW_INLINE_FDS 64

/* The file an fd names as a BTF pointer, so the exit reads the file, its inode and its dentries
 * with plain loads rather than one bpf_probe_read_kernel call each (those helper calls were most
 * of exit_openat's cost per unwatched open, BENCHMARKS.md benchmark 1). The verifier allows loads
 * through BTF pointers at constant offsets only, so the fd picks its slot of the inline array by
 * an unrolled compare; a larger fd, or a table that has outgrown the inline array (its max_fds is
 * then above NW_INLINE_FDS), gives 0 and the caller takes the probe-read path. */
static __always_inline struct file *fd_file_btf(long fd)
{
	if (fd < 0 || fd >= NW_INLINE_FDS)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return 0;
	struct fdtable *fdt = files->fdt;
	if (!fdt || fdt->max_fds > NW_INLINE_FDS)
		return 0;
	/* j is i hidden from the compiler, which would otherwise fold the loop into one load at a
	 * variable offset; the verifier still walks the loop knowing j exactly on each turn. */
	for (int i = 0; i < NW_INLINE_FDS; i++) {
		int j = i;
		asm volatile("" : "+r"(j));
		if (i == fd)
			return files->fd_array[j & (NW_INLINE_FDS - 1)];
	}
	return 0;
}

/* True when the opened file is certainly not at or under a watched inode: the same walk as
 * open_exit's inode match, with plain loads and no name copies. Anything it cannot read says
 * "not sure", and the full walk decides. Watched opens are rare, so they walk twice. */
static __always_inline bool surely_unwatched(long fd)
{
	struct file *f = fd_file_btf(fd);
	if (!f)
		return false;
	struct inode *leaf = f->f_inode;
	if (!leaf)
		return false;
	struct super_block *sb = leaf->i_sb;
	if (!sb)
		return false;
	u32 zero = 0;
	u64 *bits = bpf_map_lookup_elem(&watch_ino_bits, &zero);
	if (!bits)
		return false;
	struct nw_inode_key key = {};
	key.dev = sb->s_dev;
	struct dentry *d = f->f_path.dentry;
	for (int i = 0; i < NW_DENTRY_DEPTH; i++) {
		if (!d)
			return false;
		struct inode *di = d->d_inode;
		if (!di)
			return false;
		key.ino = di->i_ino;
		u32 h = inode_bit(key.ino, key.dev);
		if ((bits[(h >> 6) & (NW_INODE_BITS_WORDS - 1)] >> (h & 63)) & 1 &&
		    bpf_map_lookup_elem(&watch_inodes, &key))
			return false;
		struct dentry *parent = d->d_parent;
		if (!parent || parent == d)
			return true;
		d = parent;
	}
	/* the full walk gives up at the same depth */
	return true;
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
		emit_urgent(e, size & 0xffff);
		return 0;
	}
	if (ret < 0 || surely_unwatched(ret))
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
	u32 zero = 0;
	u64 *bits = bpf_map_lookup_elem(&watch_ino_bits, &zero);
	if (!bits)
		return 0;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct dentry *chain[NW_DENTRY_DEPTH];
	struct nw_watch *w = 0;
	int level = -1;
	for (int i = 0; i < NW_DENTRY_DEPTH; i++) {
		chain[i] = d;
		kw.key.ino = BPF_CORE_READ(d, d_inode, i_ino);
		u32 h = inode_bit(kw.key.ino, kw.key.dev);
		/* no bit, no watched inode: skip the hash lookup */
		if ((bits[(h >> 6) & (NW_INODE_BITS_WORDS - 1)] >> (h & 63)) & 1)
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
	emit_urgent(e, size & 0xffff);
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
