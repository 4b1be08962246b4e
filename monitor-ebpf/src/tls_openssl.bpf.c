// SPDX-License-Identifier: GPL-2.0-only
//! OpenSSL sensor: plaintext of SSL_write/SSL_read(_ex) and the server name set through SSL_ctrl.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "nhiwatch.h"
#include "tls.h"

SEC("uprobe")
int BPF_KPROBE(ssl_write, void *ssl, const void *buf, int num)
{
	return tls_enter((u64)ssl, buf, 0, NW_TLS_OPENSSL, 0);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read, void *ssl, void *buf, int num)
{
	return tls_enter((u64)ssl, buf, 0, NW_TLS_OPENSSL, 1);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_enter((u64)ssl, buf, (u64)written, NW_TLS_OPENSSL, 0);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_enter((u64)ssl, buf, (u64)readbytes, NW_TLS_OPENSSL, 1);
}

/* OpenSSL returns int: only the low 32 bits of the return register are defined. */
SEC("uretprobe")
int BPF_KRETPROBE(ssl_ret, int ret)
{
	return tls_exit(ret, false);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_ret_ex, int ret)
{
	return tls_exit(ret, true);
}

/* SSL_set_tlsext_host_name(s, name) is SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME (55),
 * TLSEXT_NAMETYPE_host_name (0), name): everything else SSL_ctrl does is ignored here. */
SEC("uprobe")
int BPF_KPROBE(ssl_ctrl_sni, void *ssl, int cmd, long larg, const char *parg)
{
	if (cmd != 55 || larg != 0)
		return 0;
	emit_sni((u64)ssl, parg, 0, true, NW_TLS_OPENSSL);
	return 0;
}
