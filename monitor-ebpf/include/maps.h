/* SPDX-License-Identifier: GPL-2.0-only */
//! Maps and load-time settings that several sensors share, defined once for the linked object.
//
// Every sensor file includes this header, so each compiled sensor carries its own copy of these
// definitions. They are __weak on purpose: libbpf's static linker (`bpftool gen object`) resolves
// same-named weak definitions to ONE map or variable, and refuses to link if two copies differ,
// so a sensor can never end up writing to a private ring buffer or counter array. A map that
// only one sensor uses is defined, non-weak, in that sensor's own file.
#ifndef NW_MAPS_H
#define NW_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "nhiwatch.h"

/* ---- load-time configuration (set by the daemon through aya's override_global) ---- */
const volatile u32 self_tgid __weak = 0;
/* Wake the reader only once this much is waiting; the reader also polls on a timer,
 * so small batches are still delivered promptly. */
const volatile u64 wakeup_bytes __weak = 256 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* resized by the daemon from config */
} events __weak SEC(".maps");

/* Loss and self-check counters (enum nw_counter). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_CNT_COUNT);
	__type(key, u32);
	__type(value, u64);
} counters __weak SEC(".maps");

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
} scratch __weak SEC(".maps");

#endif /* NW_MAPS_H */
