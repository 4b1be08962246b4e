// SPDX-License-Identifier: GPL-2.0-only
//! DNS sensor: UDP answers from port 53 delivered to any socket below the cgroup the daemon attaches it to.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "nhiwatch.h"
#include "output.h"

/* Runs on every packet delivered to a socket in the attached cgroup subtree, in
 * softirq: must stay cheap and must always let the packet through (return 1). */
SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	u32 off;
	u8 v6 = 0;
	if (skb->protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
		u8 vihl, proto;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1))
			return 1;
		if (proto != 17 /* IPPROTO_UDP */)
			return 1;
		off = (vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(0x86DD /* ETH_P_IPV6 */)) {
		u8 next;
		/* Extension headers before UDP are rare on DNS replies: not followed. */
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != 17)
			return 1;
		off = 40;
		v6 = 1;
	} else {
		return 1;
	}
	struct {
		u16 source;
		u16 dest;
		u16 len;
		u16 check;
	} udp;
	if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
		return 1;
	if (udp.source != bpf_htons(53))
		return 1;
	u32 ulen = bpf_ntohs(udp.len);
	if (ulen <= sizeof(udp))
		return 1;
	u32 len = ulen - sizeof(udp);
	u32 avail = skb->len > off + sizeof(udp) ? skb->len - off - sizeof(udp) : 0;
	if (len > avail)
		len = avail;
	u32 n = len < NW_DNS_CAPTURE_MAX ? len : NW_DNS_CAPTURE_MAX;
	if (n < 12) /* not even a DNS header */
		return 1;
	struct nw_dns_answer *d = bpf_ringbuf_reserve(&events, sizeof(*d), 0);
	if (!d) {
		count(NW_EVENT_DNS_ANSWER);
		return 1;
	}
	/* (n - 1) & mask + 1 is n itself (12..512) in a form the verifier can bound on both ends */
	if (bpf_skb_load_bytes(skb, off + sizeof(udp), d->data, ((n - 1) & (NW_DNS_CAPTURE_MAX - 1)) + 1)) {
		bpf_ringbuf_discard(d, BPF_RB_NO_WAKEUP);
		return 1;
	}
	d->hdr.kind = NW_EVENT_DNS_ANSWER;
	d->hdr.flags = v6 ? NW_F_DNS_IPV6 : 0;
	d->hdr.size = sizeof(*d);
	d->hdr.ktime_ns = bpf_ktime_get_boot_ns();
	d->hdr.pid = 0;
	d->hdr.tid = 0;
	d->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
	d->len = len;
	d->captured = n;
	bpf_ringbuf_submit(d, wakeup_flags());
	return 1;
}
