/* tls.h - client TLS on BoringSSL for upstream connections, driven by the caller's I/O.
 *
 * A tls_client is one SSL_CTX for one upstream host, shared by every worker: certificate
 * verification (on unless turned off explicitly) against the system CA bundle or a given
 * CA file, the host name checked against the certificate, SNI for names (not for IP
 * literals), ALPN http/1.1, TLS 1.2 at least.
 *
 * A tls_conn is one connection's SSL with memory BIOs: the caller feeds it the ciphertext
 * it received and takes the ciphertext to send; no socket is touched here, so the io_uring
 * loop stays in charge of all I/O.
 *
 * Plaintext is decrypted into the caller's receive buffer. So that a buffer's worth of
 * ciphertext never yields more than a buffer's worth of plaintext, the connection tracks
 * TLS record framing and tls_recv_limit says how many bytes the next receive may take:
 * everything up to the buffer size at a record boundary (the plaintext of the complete
 * records in n bytes is less than n), but no more than the rest of the current record when
 * one is partly received (a record carries at most 16 KiB of plaintext).
 */
#ifndef PENSTOCK_TLS_H
#define PENSTOCK_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* Largest plaintext in one TLS record: receive buffers must hold at least this. */
#define TLS_MAX_PLAINTEXT 16384

struct tls_client;
struct tls_conn;
struct ssl_session_st;

/* The last session the upstream gave a pool, offered again by its new connections. One
 * per pool (per worker), so it is only touched by its worker. */
struct tls_session_slot {
	struct ssl_session_st *last;
};

/* host: the name (or IP literal) the certificate must match. ca_file NULL: the system
 * bundle. verify false: no certificate checks at all (the caller warns about it).
 * Returns NULL with a reason in err on failure. */
struct tls_client *tls_client_new(const char *host, bool verify, const char *ca_file, char *err,
				  size_t errlen);
/* After every connection made from it is gone. */
void tls_client_free(struct tls_client *t);

/* A client connection, offering the session in slot (if any) and storing the sessions the
 * server issues there. NULL when out of memory. */
struct tls_conn *tls_conn_new(struct tls_client *t, struct tls_session_slot *slot);
void tls_conn_free(struct tls_conn *c);
void tls_session_slot_clear(struct tls_session_slot *slot);

enum tls_status {
	TLS_DONE,   /* handshake complete */
	TLS_WANT,   /* needs more ciphertext in */
	TLS_CLOSED, /* the peer sent close_notify */
	TLS_FAILED, /* handshake or record failure: tls_describe says why */
};

/* Ciphertext received. False when out of memory. */
bool tls_feed(struct tls_conn *c, const char *p, size_t n);
/* How many bytes the next receive may take, at most cap (see the header comment). */
size_t tls_recv_limit(const struct tls_conn *c, size_t cap);

enum tls_status tls_handshake(struct tls_conn *c);
/* Decrypt what has arrived into dst (cap >= TLS_MAX_PLAINTEXT bytes); *got says how much.
 * Returns TLS_WANT when all of it was read, else why reading stopped. */
enum tls_status tls_read(struct tls_conn *c, char *dst, size_t cap, size_t *got);
/* Encrypt plaintext into the outgoing ciphertext. False on failure. */
bool tls_write(struct tls_conn *c, const void *p, size_t n);
/* Ciphertext waiting to be sent. */
size_t tls_pending_out(const struct tls_conn *c);
/* Move the ciphertext waiting to be sent to the end of out (bounded by max). */
bool tls_take_out(struct tls_conn *c, struct buf *out, size_t max);

/* Why the handshake failed, for a log line: "certificate verify failed: Hostname
 * mismatch", "alert received: handshake failure", ... Clears the thread's error queue. */
const char *tls_describe(struct tls_conn *c, char *buf, size_t n);
bool tls_resumed(const struct tls_conn *c);

#endif
