/*
 * The connections the plugin has seen: a set of client pointers, for
 * listeners with use_identity_as_username or use_subject_as_username, whose
 * clients never reach BASIC_AUTH in Mosquitto 2.0. An ACL check of a client
 * not in the set is the plugin's first sight of it (guardFirstSight). A
 * pointer enters at a new CONNECT's BASIC_AUTH or at that first sight, and
 * leaves at its DISCONNECT, before the broker can free and reuse it; it
 * never enters from the re-check walk after a reload, which also visits
 * offline sessions the broker may free without a DISCONNECT.
 *
 * Open addressing with linear probing and tombstones, grown at half load:
 * one slot per connected client at most twice over (16 bytes a client).
 * Broker thread only: every caller is a broker callback.
 */
#include <stdint.h>
#include <stdlib.h>
#include "guard.h"

#define TOMB ((uintptr_t)1)

static uintptr_t *slots = NULL;
static size_t cap = 0;   /* a power of two, or 0 */
static size_t used = 0;  /* live entries and tombstones */
static size_t live = 0;

static size_t hash(uintptr_t p)
{
	uint64_t x = (uint64_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (size_t)x;
}

static int grow(void)
{
	size_t ncap = cap ? cap * 2 : 1024;
	while (live * 2 >= ncap) {
		ncap *= 2;
	}
	uintptr_t *n = calloc(ncap, sizeof(*n));
	if (!n) {
		return 0;
	}
	for (size_t i = 0; i < cap; i++) {
		uintptr_t p = slots[i];
		if (p > TOMB) {
			size_t j = hash(p) & (ncap - 1);
			while (n[j]) {
				j = (j + 1) & (ncap - 1);
			}
			n[j] = p;
		}
	}
	free(slots);
	slots = n;
	cap = ncap;
	used = live;
	return 1;
}

int guard_seen_has(uintptr_t p)
{
	if (!cap || p <= TOMB) {
		return 0;
	}
	for (size_t i = hash(p) & (cap - 1);; i = (i + 1) & (cap - 1)) {
		if (slots[i] == p) {
			return 1;
		}
		if (!slots[i]) {
			return 0;
		}
	}
}

/* guard_seen_add adds p; 0 when memory ran out (p is then unseen, and its
 * next ACL check looks again: checked twice rather than never). */
int guard_seen_add(uintptr_t p)
{
	if (p <= TOMB || guard_seen_has(p)) {
		return 1;
	}
	if ((used + 1) * 2 > cap && !grow()) {
		return 0;
	}
	size_t i = hash(p) & (cap - 1);
	while (slots[i] > TOMB) {
		i = (i + 1) & (cap - 1);
	}
	if (!slots[i]) {
		used++;
	}
	slots[i] = p;
	live++;
	return 1;
}

void guard_seen_del(uintptr_t p)
{
	if (!cap || p <= TOMB) {
		return;
	}
	for (size_t i = hash(p) & (cap - 1);; i = (i + 1) & (cap - 1)) {
		if (slots[i] == p) {
			slots[i] = TOMB;
			live--;
			return;
		}
		if (!slots[i]) {
			return;
		}
	}
}

size_t guard_seen_len(void)
{
	return live;
}
