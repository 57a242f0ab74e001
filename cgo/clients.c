/*
 * Client getters the Go half needs, taking the client as the integer handle
 * Go holds (a Go uintptr cannot be turned into a C pointer without vet
 * complaining). Call only on the broker thread, inside a callback.
 */
#include "guard.h"

/* guard_client_persistent: the client asked for a persistent session
 * (clean session / clean start false). */
int guard_client_persistent(uintptr_t client)
{
	return !mosquitto_client_clean_session((const struct mosquitto *)client);
}

/* guard_client_subs: the client's subscriptions; a new CONNECT has none
 * when BASIC_AUTH runs. */
int guard_client_subs(uintptr_t client)
{
	return mosquitto_client_sub_count((const struct mosquitto *)client);
}

/* The client's ID, address and username (NULL when it has none), for a
 * client first seen at an ACL check. */
const char *guard_client_id(uintptr_t client)
{
	return mosquitto_client_id((const struct mosquitto *)client);
}

const char *guard_client_address(uintptr_t client)
{
	return mosquitto_client_address((const struct mosquitto *)client);
}

const char *guard_client_username(uintptr_t client)
{
	return mosquitto_client_username((const struct mosquitto *)client);
}
