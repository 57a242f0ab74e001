/*
 * Two sets of client pointers, for listeners with use_identity_as_username
 * or use_subject_as_username, whose clients never reach BASIC_AUTH in
 * Mosquitto 2.0.
 *
 * seen: the connections the plugin has seen. An ACL check of a connected
 * client (one with a certificate: its TLS session is up) not in it is the
 * plugin's first sight of it (guardFirstSight). A pointer enters at a new
 * CONNECT's BASIC_AUTH or after a first sight ran, and leaves at its
 * DISCONNECT. The broker makes ACL checks on contexts that are not
 * connected (a will, after the DISCONNECT event; messages queued for an
 * offline session): those have no certificate, are never first-sighted and
 * never enter, so no pointer the broker may free without a DISCONNECT stays
 * in the set for a new client to inherit.
 *
 * denied: clients banned at their DISCONNECT before any ACL check (seen
 * there, their certificate still readable): the will check that follows is
 * refused. An entry is consumed by a connected client's check at the same
 * pointer (a new client: its own check decides) and by a new CONNECT's
 * BASIC_AUTH.
 *
 * Open addressing with linear probing and tombstones, rebuilt at half load
 * (tombstones included) to four times the live entries: one slot per
 * connected client at most eight times over, 8 bytes a slot, whatever the
 * churn. Broker thread only: every caller is a broker callback.
 */
#include <stdint.h>
#include <stdlib.h>
#include "guard.h"

#define TOMB ((uintptr_t)1)

struct set {
	uintptr_t *slots;
	size_t cap;  /* a power of two, or 0 */
	size_t used; /* live entries and tombstones */
	size_t live;
};

static struct set seen, denied;

static size_t hash(uintptr_t p)
{
	uint64_t x = (uint64_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (size_t)x;
}

static int rebuild(struct set *s)
{
	size_t ncap = 1024;
	while (ncap < s->live * 4) {
		ncap *= 2;
	}
	uintptr_t *n = calloc(ncap, sizeof(*n));
	if (!n) {
		return 0;
	}
	for (size_t i = 0; i < s->cap; i++) {
		uintptr_t p = s->slots[i];
		if (p > TOMB) {
			size_t j = hash(p) & (ncap - 1);
			while (n[j]) {
				j = (j + 1) & (ncap - 1);
			}
			n[j] = p;
		}
	}
	free(s->slots);
	s->slots = n;
	s->cap = ncap;
	s->used = s->live;
	return 1;
}

static int has(const struct set *s, uintptr_t p)
{
	if (!s->cap || p <= TOMB) {
		return 0;
	}
	for (size_t i = hash(p) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->slots[i] == p) {
			return 1;
		}
		if (!s->slots[i]) {
			return 0;
		}
	}
}

/* add adds p; 0 when memory ran out. */
static int add(struct set *s, uintptr_t p)
{
	if (p <= TOMB || has(s, p)) {
		return 1;
	}
	if ((s->used + 1) * 2 > s->cap && !rebuild(s)) {
		return 0;
	}
	size_t i = hash(p) & (s->cap - 1);
	while (s->slots[i] > TOMB) {
		i = (i + 1) & (s->cap - 1);
	}
	if (!s->slots[i]) {
		s->used++;
	}
	s->slots[i] = p;
	s->live++;
	return 1;
}

/* del removes p; 1 when it was there. */
static int del(struct set *s, uintptr_t p)
{
	if (!s->cap || p <= TOMB) {
		return 0;
	}
	for (size_t i = hash(p) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->slots[i] == p) {
			s->slots[i] = TOMB;
			s->live--;
			return 1;
		}
		if (!s->slots[i]) {
			return 0;
		}
	}
}

int guard_seen_has(uintptr_t p) { return has(&seen, p); }
/* guard_seen_add: 0 when memory ran out (p is then unseen, and its next
 * ACL check looks again: checked twice rather than never). */
int guard_seen_add(uintptr_t p) { return add(&seen, p); }
void guard_seen_del(uintptr_t p) { del(&seen, p); }
size_t guard_seen_len(void) { return seen.live; }
size_t guard_seen_cap(void) { return seen.cap; }

int guard_denied_add(uintptr_t p) { return add(&denied, p); }
int guard_denied_take(uintptr_t p) { return del(&denied, p); }

/* guard_seen_connect: a new CONNECT at p is seen, and not the banned client
 * a freed p may have belonged to. One call from Go for both: each call from
 * Go into C is a cgo transition on the broker thread. */
int guard_seen_connect(uintptr_t p)
{
	del(&denied, p);
	return add(&seen, p);
}
