/* SPDX-License-Identifier: GPL-2.0-only */
//! Questions about the current task that every sensor asks.
#ifndef NW_TASK_H
#define NW_TASK_H

#include "maps.h"

/* The daemon's own activity is never reported: it would observe itself reading what it reports. */
static __always_inline bool is_self(u64 pid_tgid)
{
	return (u32)(pid_tgid >> 32) == self_tgid;
}

#endif /* NW_TASK_H */
