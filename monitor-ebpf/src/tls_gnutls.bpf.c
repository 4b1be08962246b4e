// SPDX-License-Identifier: GPL-2.0-only
//! GnuTLS sensor: plaintext of gnutls_record_send/recv and the server name set by gnutls_server_name_set.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "nhiwatch.h"
#include "tls.h"

SEC("uprobe")
int BPF_KPROBE(gnutls_send, void *session, const void *data, size_t size)
{
	return tls_enter((u64)session, data, 0, NW_TLS_GNUTLS, 0);
}

SEC("uprobe")
int BPF_KPROBE(gnutls_recv, void *session, void *data, size_t size)
{
	return tls_enter((u64)session, data, 0, NW_TLS_GNUTLS, 1);
}

SEC("uretprobe")
int BPF_KRETPROBE(gnutls_ret, long ret)
{
	return tls_exit(ret, false);
}

/* gnutls_server_name_set(session, GNUTLS_NAME_DNS (1), name, name_length) */
SEC("uprobe")
int BPF_KPROBE(gnutls_sni, void *session, int type, const void *name, size_t name_length)
{
	if (type != 1 || name_length == 0)
		return 0;
	emit_sni((u64)session, name, name_length, false, NW_TLS_GNUTLS);
	return 0;
}
