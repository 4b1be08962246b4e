/* tlsloop: HTTPS requests through the system OpenSSL over one keep-alive connection.
 *
 * usage: tlsloop PORT REQUESTS
 * prints one line: "<ns per request> <requests> <seconds> <client CPU seconds>"
 *
 * Connects to 127.0.0.1:PORT, does one TLS handshake (no certificate check: the
 * server's certificate is self-signed), then sends REQUESTS keep-alive GETs with
 * SSL_write and reads each response with SSL_read until its Content-Length body is
 * complete. Only the request loop is timed, so process start and the handshake are
 * left out. The few OpenSSL functions used are declared here, so the program links
 * against the runtime libssl.so.3 without needing the OpenSSL headers. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
const SSL_METHOD *TLS_client_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method);
SSL *SSL_new(SSL_CTX *ctx);
int SSL_set_fd(SSL *ssl, int fd);
int SSL_connect(SSL *ssl);
int SSL_write(SSL *ssl, const void *buf, int num);
int SSL_read(SSL *ssl, void *buf, int num);
int SSL_shutdown(SSL *ssl);
void SSL_free(SSL *ssl);
void SSL_CTX_free(SSL_CTX *ctx);

static double clock_s(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Reads one HTTP response: headers, then Content-Length bytes of body. */
static int read_response(SSL *ssl)
{
	static char buf[16384];
	int have = 0;
	for (;;) {
		int n = SSL_read(ssl, buf + have, sizeof(buf) - 1 - have);
		if (n <= 0)
			return -1;
		have += n;
		buf[have] = 0;
		char *end = strstr(buf, "\r\n\r\n");
		if (!end)
			continue;
		if (strncmp(buf, "HTTP/1.1 200", 12) != 0)
			return -1;
		char *cl = strcasestr(buf, "\r\ncontent-length:");
		if (!cl || cl > end)
			return -1;
		long want = strtol(cl + 17, NULL, 10);
		long body = have - (end + 4 - buf);
		while (body < want) {
			n = SSL_read(ssl, buf, sizeof(buf) - 1);
			if (n <= 0)
				return -1;
			body += n;
		}
		return body == want ? 0 : -1;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PORT REQUESTS\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	long n = atol(argv[2]);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("connect");
		return 1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = ctx ? SSL_new(ctx) : NULL;
	if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1) {
		fprintf(stderr, "tlsloop: TLS handshake failed\n");
		return 1;
	}
	char req[256];
	int len = snprintf(req, sizeof(req),
			   "GET /bench HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: nhiwatch-bench\r\n\r\n",
			   port);
	/* one warm-up request */
	if (SSL_write(ssl, req, len) != len || read_response(ssl)) {
		fprintf(stderr, "tlsloop: warm-up request failed\n");
		return 1;
	}
	double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	for (long i = 0; i < n; i++) {
		if (SSL_write(ssl, req, len) != len || read_response(ssl)) {
			fprintf(stderr, "tlsloop: request %ld failed\n", i);
			return 1;
		}
	}
	double dt = clock_s(CLOCK_MONOTONIC) - t0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
	printf("%.1f %ld %.6f %.6f\n", dt * 1e9 / n, n, dt, cpu);
	SSL_shutdown(ssl);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return 0;
}
