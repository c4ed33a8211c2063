/* tls.c - client TLS contexts and memory-BIO connections on BoringSSL. */
#include "tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define TLS_RECORD_HEADER 5

struct tls_client {
	SSL_CTX *ctx;
	char *host;
	bool ip_literal; /* no SNI for addresses (RFC 6066) */
};

struct tls_conn {
	SSL *ssl;
	BIO *rbio, *wbio; /* owned by ssl */
	/* framing of the records received, for tls_recv_limit */
	uint8_t hdr[TLS_RECORD_HEADER];
	unsigned hdr_have; /* header bytes of the next record seen so far */
	size_t rec_left;   /* bytes of the current record's body still to come */
};

/* The server issued a session (a TLS 1.3 ticket arrives after the handshake): keep it as
 * the one the pool offers next. Returning 1 takes the reference. */
static int on_new_session(SSL *ssl, SSL_SESSION *session)
{
	struct tls_session_slot *slot = SSL_get_app_data(ssl);
	if (!slot)
		return 0;
	if (slot->last)
		SSL_SESSION_free(slot->last);
	slot->last = session;
	return 1;
}

static const char *err_text(void)
{
	uint32_t e = ERR_get_error();
	ERR_clear_error();
	const char *s = e ? ERR_reason_error_string(e) : NULL;
	return s ? s : "unknown error";
}

struct tls_client *tls_client_new(const char *host, bool verify, const char *ca_file, char *err,
				  size_t errlen)
{
	static const uint8_t alpn[] = "\x08http/1.1";
	struct tls_client *t = calloc(1, sizeof(*t));
	if (!t || !(t->host = strdup(host)) || !(t->ctx = SSL_CTX_new(TLS_method()))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	unsigned char addr[16];
	t->ip_literal = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
	SSL_CTX *ctx = t->ctx;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) != 0) { /* 0 is success */
		snprintf(err, errlen, "ALPN: %s", err_text());
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, on_new_session);
	if (verify) {
		const char *bundle = ca_file ? ca_file : SYSTEM_CA_BUNDLE;
		if (SSL_CTX_load_verify_locations(ctx, bundle, NULL) != 1) {
			snprintf(err, errlen, "cannot load CA certificates from %s: %s", bundle,
				 err_text());
			goto fail;
		}
		X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
		int ok = t->ip_literal ? X509_VERIFY_PARAM_set1_ip_asc(vp, host)
				       : X509_VERIFY_PARAM_set1_host(vp, host, strlen(host));
		if (ok != 1) {
			snprintf(err, errlen, "cannot check certificates for %s: %s", host,
				 err_text());
			goto fail;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return t;
fail:
	tls_client_free(t);
	return NULL;
}

void tls_client_free(struct tls_client *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	free(t->host);
	free(t);
}

struct tls_conn *tls_conn_new(struct tls_client *t, struct tls_session_slot *slot)
{
	struct tls_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->ssl = SSL_new(t->ctx);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	if (!c->ssl || !rbio || !wbio) {
		BIO_free(rbio);
		BIO_free(wbio);
		SSL_free(c->ssl);
		free(c);
		ERR_clear_error();
		return NULL;
	}
	/* An empty input BIO means "more to come", never end of file. */
	BIO_set_mem_eof_return(rbio, -1);
	SSL_set_bio(c->ssl, rbio, wbio);
	c->rbio = rbio;
	c->wbio = wbio;
	SSL_set_connect_state(c->ssl);
	if (!t->ip_literal)
		SSL_set_tlsext_host_name(c->ssl, t->host);
	SSL_set_app_data(c->ssl, slot);
	if (slot->last)
		SSL_set_session(c->ssl, slot->last);
	return c;
}

void tls_conn_free(struct tls_conn *c)
{
	if (!c)
		return;
	SSL_free(c->ssl);
	free(c);
}

void tls_session_slot_clear(struct tls_session_slot *slot)
{
	if (slot->last)
		SSL_SESSION_free(slot->last);
	slot->last = NULL;
}

bool tls_feed(struct tls_conn *c, const char *p, size_t n)
{
	if (BIO_write(c->rbio, p, (int)n) != (int)n) {
		ERR_clear_error();
		return false;
	}
	const uint8_t *q = (const uint8_t *)p;
	while (n) {
		if (c->rec_left) {
			size_t k = n < c->rec_left ? n : c->rec_left;
			c->rec_left -= k;
			q += k;
			n -= k;
			continue;
		}
		c->hdr[c->hdr_have++] = *q++;
		n--;
		if (c->hdr_have == TLS_RECORD_HEADER) {
			c->rec_left = (size_t)c->hdr[3] << 8 | c->hdr[4];
			c->hdr_have = 0;
		}
	}
	return true;
}

size_t tls_recv_limit(const struct tls_conn *c, size_t cap)
{
	if (c->hdr_have)
		return TLS_RECORD_HEADER - c->hdr_have;
	if (c->rec_left)
		return c->rec_left < cap ? c->rec_left : cap;
	return cap;
}

static enum tls_status status_of(struct tls_conn *c, int r)
{
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ: return TLS_WANT;
	case SSL_ERROR_ZERO_RETURN: return TLS_CLOSED;
	default: return TLS_FAILED;
	}
}

enum tls_status tls_handshake(struct tls_conn *c)
{
	int r = SSL_do_handshake(c->ssl);
	return r == 1 ? TLS_DONE : status_of(c, r);
}

enum tls_status tls_read(struct tls_conn *c, char *dst, size_t cap, size_t *got)
{
	size_t n = 0;
	enum tls_status st = TLS_WANT;
	while (n < cap) {
		int r = SSL_read(c->ssl, dst + n, (int)(cap - n));
		if (r <= 0) {
			st = status_of(c, r);
			break;
		}
		n += (size_t)r;
	}
	*got = n;
	return st;
}

bool tls_write(struct tls_conn *c, const void *p, size_t n)
{
	if (SSL_write(c->ssl, p, (int)n) != (int)n) {
		ERR_clear_error();
		return false;
	}
	return true;
}

size_t tls_pending_out(const struct tls_conn *c) { return BIO_pending(c->wbio); }

bool tls_take_out(struct tls_conn *c, struct buf *out, size_t max)
{
	size_t n = BIO_pending(c->wbio);
	if (!n)
		return true;
	if (!buf_reserve(out, n, max) || BIO_read(c->wbio, out->p + out->len, (int)n) != (int)n) {
		ERR_clear_error();
		return false;
	}
	out->len += n;
	return true;
}

const char *tls_describe(struct tls_conn *c, char *buf, size_t n)
{
	uint32_t e = ERR_peek_error();
	if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
		snprintf(buf, n, "certificate verify failed: %s",
			 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
	} else if (e) {
		/* BoringSSL's reasons are names like TLSV1_ALERT_HANDSHAKE_FAILURE: make them
		 * read as words. */
		const char *r = ERR_reason_error_string(e);
		snprintf(buf, n, "%s", r ? r : "unknown error");
		for (char *p = buf; *p; p++)
			*p = *p == '_' ? ' ' : (char)tolower((unsigned char)*p);
	} else {
		snprintf(buf, n, "the connection closed during the handshake");
	}
	ERR_clear_error();
	return buf;
}

bool tls_resumed(const struct tls_conn *c) { return SSL_session_reused(c->ssl); }
