/* SPDX-License-Identifier: GPL-2.0-only */
//! Writing records to the ring buffer: headers, staging, wake-up policy and loss counting.
#ifndef NW_OUTPUT_H
#define NW_OUTPUT_H

#include "maps.h"

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

/* Copies a staged record into the ring; a full ring counts a loss under the record's kind. */
static __always_inline void emit_flags(void *rec, u32 size, u16 kind, u64 flags)
{
	if (bpf_ringbuf_output(&events, rec, size, flags))
		count(kind);
}

/* Emits a staged variable-length record; size is already bounded by the caller. */
static __always_inline void emit(void *rec, u32 size, u16 kind)
{
	if (size > SCRATCH_SIZE)
		return;
	emit_flags(rec, size, kind, wakeup_flags());
}

#endif /* NW_OUTPUT_H */
