/*
 * The client certificate, as DER bytes, without a build dependency on
 * OpenSSL: mosquitto_client_certificate returns an X509 * (a new reference)
 * only on a broker built with TLS, which has libcrypto loaded; i2d_X509 and
 * X509_free are looked up there, once, with dlsym. Broker thread only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include "guard.h"

typedef int (*i2d_x509_fn)(void *x, unsigned char **out);
typedef void (*x509_free_fn)(void *x);

static int cert_resolved; /* 0: not yet; 1: found; -1: missing */
static i2d_x509_fn cert_i2d;
static x509_free_fn cert_free;

/* cert_symbols resolves i2d_X509 and X509_free at first use: 1 when both
 * are there. Without X509_free the certificate is never asked for: its
 * reference could not be released. */
static int cert_symbols(void)
{
	if (cert_resolved == 0) {
		cert_i2d = (i2d_x509_fn)dlsym(RTLD_DEFAULT, "i2d_X509");
		cert_free = (x509_free_fn)dlsym(RTLD_DEFAULT, "X509_free");
		cert_resolved = (cert_i2d != NULL && cert_free != NULL) ? 1 : -1;
	}
	return cert_resolved == 1;
}

/* guard_client_cert returns a malloc'd copy of the DER encoding of the
 * client's certificate (the caller frees it) and its length. Otherwise der
 * is NULL and n is GUARD_CERT_NONE (no certificate), GUARD_CERT_NO_CRYPTO
 * (i2d_X509 or X509_free not found), GUARD_CERT_TOO_BIG (DER over max bytes)
 * or GUARD_CERT_FAILED (no encoding, or no memory). */
struct guard_der guard_client_cert(uintptr_t client, int max)
{
	struct guard_der r = {NULL, GUARD_CERT_NONE};
	if (!cert_symbols()) {
		r.n = GUARD_CERT_NO_CRYPTO;
		return r;
	}
	void *x = mosquitto_client_certificate((const struct mosquitto *)client);
	if (x == NULL) {
		return r;
	}
	r.n = GUARD_CERT_FAILED;
	int n = cert_i2d(x, NULL);
	if (n > max) {
		r.n = GUARD_CERT_TOO_BIG;
	} else if (n > 0) {
		unsigned char *buf = malloc((size_t)n);
		unsigned char *p = buf; /* i2d_X509 advances p past what it wrote */
		if (buf != NULL && cert_i2d(x, &p) == n) {
			r.der = buf;
			r.n = n;
		} else {
			free(buf);
		}
	}
	cert_free(x);
	return r;
}

/* guard_client_has_cert: the client has a certificate now, so its TLS
 * session is up: a connected client of a require_certificate listener (a
 * context whose socket is closed, an offline session, has none). */
int guard_client_has_cert(uintptr_t client)
{
	if (!cert_symbols()) {
		return 0;
	}
	void *x = mosquitto_client_certificate((const struct mosquitto *)client);
	if (x == NULL) {
		return 0;
	}
	cert_free(x);
	return 1;
}
