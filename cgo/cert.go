package main

/*
#include <stdlib.h>
#include "guard.h"
*/
import "C"

import (
	"crypto/x509"
	"fmt"
	"sync"
	"unsafe"

	"github.com/mosquitto-guard/mosquitto-guard/keys"
	"github.com/mosquitto-guard/mosquitto-guard/plugin"
)

// certMax bounds the DER of a client certificate read: a larger one is
// taken for none (and said once). Real device certificates are 1-2 KiB.
const certMax = C.GUARD_CERT_MAX

var (
	noCryptoOnce sync.Once
	tooBigOnce   sync.Once
	failedOnce   sync.Once
)

// clientCert returns the ID (keys.CertID of its DER) and subject of the
// client's certificate, or "" and "" without one: on a listener without
// require_certificate, on a broker without TLS or without libcrypto's
// i2d_X509 and X509_free to be found (said once), or for a DER over certMax
// (said once). The subject is "" when Go cannot parse the certificate: the
// ID, the hash of the bytes the handshake verified, is what lists match.
// Broker thread only, inside a callback.
func clientCert(client C.uintptr_t) (id, subject string) {
	return certOf(C.guard_client_cert(client, certMax))
}

// certOf is clientCert for guard_client_cert's answer r: it frees r's DER.
func certOf(r C.struct_guard_der) (id, subject string) {
	if r.der != nil {
		defer C.free(unsafe.Pointer(r.der))
	}
	return certFrom(r.der, r.n)
}

// certFrom is certOf for a DER of n bytes at der (or a GUARD_CERT_*
// result), which the caller frees.
func certFrom(der *C.uchar, n C.int) (id, subject string) {
	switch {
	case n == C.GUARD_CERT_NO_CRYPTO:
		noCryptoOnce.Do(func() {
			enqueueLog(plugin.LevelWarning, "mosquitto-guard: i2d_X509 or X509_free not found in the broker (built without TLS?): client certificates are not read, and the cert scope matches no client")
		})
		return "", ""
	case n == C.GUARD_CERT_TOO_BIG:
		tooBigOnce.Do(func() {
			enqueueLog(plugin.LevelWarning, fmt.Sprintf("mosquitto-guard: a client certificate over %d bytes of DER was taken for none (this is said once)", certMax))
		})
		return "", ""
	case n == C.GUARD_CERT_FAILED:
		failedOnce.Do(func() {
			enqueueLog(plugin.LevelWarning, "mosquitto-guard: a client certificate could not be encoded to DER and was taken for none (this is said once)")
		})
		return "", ""
	case n <= 0 || der == nil:
		return "", ""
	}
	b := C.GoBytes(unsafe.Pointer(der), n)
	return keys.CertID(b), certSubject(b)
}

// certSubject returns the subject of a DER certificate as text, "" when Go
// cannot parse it.
func certSubject(der []byte) string {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return cert.Subject.String()
}
