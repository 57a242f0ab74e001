/*
 * The C half of the cgo skin: the three plugin entry points (cgo's //export
 * cannot produce the `const int *` prototype that mosquitto_plugin_version
 * has), the event trampolines, and the variadic log call Go cannot make.
 * Every function here only converts and forwards; decisions are made in Go.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "guard.h"
#include "_cgo_export.h"

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	uintptr_t handle = 0;
	int rc = guardInit(identifier, options, option_count, &handle);
	if (rc == MOSQ_ERR_SUCCESS) {
		*userdata = (void *)handle;
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)options;
	(void)option_count;
	return guardCleanup((uintptr_t)userdata);
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	guard_signals_onstack(); /* signals.c: once done, one atomic load */
	struct mosquitto_evt_basic_auth *ed = event_data;
	int rc = guard_basic_auth((uintptr_t)userdata, (uintptr_t)ed->client,
			mosquitto_client_id(ed->client), mosquitto_client_address(ed->client),
			ed->username, ed->password);
	/* backlog.go's measure of the broker's rate: the CONNECTs admitted, or
	 * passed on with a username to a later check (which checks its
	 * password). Not a refusal, nor a client without a username: a
	 * stranger's cheap refused CONNECTs would make the broker look fast and
	 * the queue long, and the devices in it would wait past their timeout
	 * (a README-only attacker: 100 -> 1 861, 10 s of a slow fleet's work). */
	if (rc == MOSQ_ERR_SUCCESS || (rc == MOSQ_ERR_PLUGIN_DEFER && ed->username != NULL))
		__atomic_add_fetch(&guard_connects, 1, __ATOMIC_RELAXED);
	return rc;
}

/* guard_basic_auth is on_basic_auth's call into Go with what C does around
 * it, so that Go calls nothing in C for a CONNECT: each call from Go into C
 * is a cgo transition on the broker thread, some 600 instructions (issue
 * 12). The client's certificate is read before (a new CONNECT and the
 * re-check after a reload both need it; Go copies it) and freed after. A
 * new CONNECT (fresh: not the walk after a reload) enters the seen set after
 * Go returns, where Go entered it before its checks: nothing between reads
 * or writes the sets for this pointer (a kick in the queue's drain never
 * targets the client being authenticated, which the broker does not yet
 * find by its ID), and the DISCONNECTs held since the last callback, a
 * freed pointer's, are still handled before it (guardBasicAuth's
 * handleHeld). */
int guard_basic_auth(uintptr_t handle, uintptr_t client, const char *id, const char *addr, char *username, char *password)
{
	struct guard_der cert = guard_client_cert(client, GUARD_CERT_MAX);
	int fresh = 0;
	int rc = guardBasicAuth(handle, client, (char *)id, (char *)addr, username, password, cert.der, cert.n, &fresh);
	free(cert.der);
	if (fresh) {
		guard_seen_connect(client);
	}
	return rc;
}

/* TICK fires at the end of every broker loop iteration: under load, about
 * once every few CONNECTs. It enters Go only when there is work for it:
 * the first TICK (it tells that TICK is delivered), the first after a
 * RELOAD (it ends the walk that follows it: plugin.ReloadWalk), and any
 * while the broker-thread queue holds work (workqueue.go sets the flag when
 * the queue stops being empty, and again when a drain leaves work in it).
 * A callback into Go costs the broker thread a scheduler round trip, and
 * often a wake-up of Go's sysmon thread on its core; an idle TICK now costs
 * one atomic exchange. Shared by every instance: the queue and the reload
 * walk are the process's. */
int guard_tick_work = 1;

/* Set by the first TICK: until then a DISCONNECT is not held (below). With
 * per_listener_settings true Mosquitto 2.0.11-2.0.14 never sends TICK, and a
 * held DISCONNECT would wait for the next CONNECT, which may never come: the
 * connection would stay live in Go (its conflict-tracking entry in Redis,
 * its metrics) after it left; and a kick is not worth waking the broker
 * for (wake.go): only a TICK runs it. Written on the broker thread, read
 * by the goroutines that queue kicks. */
int guard_tick_seen = 0;

int guard_on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	__atomic_store_n(&guard_tick_work, 1, __ATOMIC_SEQ_CST);
	return guardReload((uintptr_t)userdata);
}

int guard_on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	if (!guard_tick_seen)
		__atomic_store_n(&guard_tick_seen, 1, __ATOMIC_RELEASE); /* read by wake.go's goroutines */
	guard_signals_onstack();
	if (!__atomic_exchange_n(&guard_tick_work, 0, __ATOMIC_SEQ_CST))
		return MOSQ_ERR_SUCCESS;
	return guardTick((uintptr_t)userdata);
}

/* Connections flagged banned, awaiting their kick, across instances. While
 * none is, an ACL check answers without entering Go at all. */
static int flagged_total = 0;

void guard_flagged_add(int delta)
{
	__atomic_add_fetch(&flagged_total, delta, __ATOMIC_RELAXED);
}

/* DISCONNECTs held for Go. A callback into Go costs the broker thread a
 * scheduler round trip and, on Go 1.26, often a wake-up of Go's sysmon
 * thread on its core; a connection that comes and goes would pay it twice.
 * So a DISCONNECT only records what Go needs (which instance, which client,
 * whether its session stays) and the next callback that enters Go handles
 * the held ones first, in order, before anything else (handleHeld, pending.go): no
 * decision in Go ever sees a connection whose DISCONNECT came before it. A
 * TICK enters Go while any is held, so one waits at most until the end of
 * the broker's loop iteration. Until a TICK has come (guard_tick_seen: with
 * per_listener_settings, 2.0.11-2.0.14 deliver none), none is held. At
 * most GUARD_PENDING_MAX are held (24 KiB); past that, for a client leaving
 * unseen with a certificate (its will may need refusing now), and for any
 * while a connection is flagged (a flagged one's will is refused), the
 * DISCONNECT enters Go at once, the held ones first. Broker thread only. */
static struct guard_pending pending[GUARD_PENDING_MAX];
int guard_npending; /* read by Go (handleHeld) without a call into C */

int guard_pending_take(struct guard_pending *dst)
{
	int n = guard_npending;
	for (int i = 0; i < n; i++)
		dst[i] = pending[i];
	guard_npending = 0;
	return n;
}

/* guard_disconnect_hold holds a DISCONNECT, and reports whether there was
 * room. */
int guard_disconnect_hold(uintptr_t handle, uintptr_t client, int persistent)
{
	if (guard_npending == GUARD_PENDING_MAX)
		return 0;
	pending[guard_npending].handle = handle;
	pending[guard_npending].client = client;
	pending[guard_npending].persistent = persistent;
	guard_npending++;
	__atomic_store_n(&guard_tick_work, 1, __ATOMIC_SEQ_CST);
	return 1;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	struct mosquitto_evt_disconnect *ed = event_data;
	uintptr_t c = (uintptr_t)ed->client;
	/* A client that leaves unseen (no ACL check yet) may still send a will:
	 * its certificate is readable until the socket closes, after this. */
	int unseen = !guard_seen_has(c) && guard_client_has_cert(c);
	/* While a connection is flagged (banned, its kick on the way), Go
	 * looks at once: a flagged one leaving is refused its will, the ACL
	 * check that follows. */
	int flagged = __atomic_load_n(&flagged_total, __ATOMIC_RELAXED) > 0;
	int rc = MOSQ_ERR_SUCCESS;
	if (unseen || flagged || !guard_tick_seen || !guard_disconnect_hold((uintptr_t)userdata, c, guard_client_persistent(c)))
		rc = guardDisconnect((uintptr_t)userdata, c, unseen);
	guard_seen_del(c); /* the pointer may be freed and reused now */
	return rc;
}

/* One instance's ACL registration, its callback's userdata. fallback is what
 * a check of a connection that is not flagged returns: PLUGIN_DEFER when
 * another ACL mechanism decides, SUCCESS when none exists. It is per
 * instance: with per_listener_settings true each listener has its own
 * instance, its own ACL mechanisms and so its own answer. Registrations are
 * made and removed on the broker thread (plugin_init, plugin_cleanup) and
 * never change in between. */
struct acl_reg {
	mosquitto_plugin_id_t *id;
	uintptr_t handle;
	int fallback;
	struct acl_reg *next;
};

static struct acl_reg *acl_regs = NULL;

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	struct mosquitto_evt_acl_check *ed = event_data;
	const struct acl_reg *reg = userdata;
	uintptr_t c = (uintptr_t)ed->client;
	/* A client never seen at BASIC_AUTH (use_identity_as_username or
	 * use_subject_as_username): this check is the plugin's first sight, if
	 * it is connected (it has a certificate; see seen.c). */
	if (!guard_seen_has(c)) {
		int connected = guard_client_has_cert(c);
		if (guard_denied_take(c) && !connected) {
			return MOSQ_ERR_ACL_DENIED; /* the will of a client banned at its DISCONNECT */
		}
		if (connected) {
			switch (guardFirstSight(reg->handle, c)) {
			case GUARD_FIRST_ALLOW:
				guard_seen_add(c);
				break;
			case GUARD_FIRST_DENY:
				guard_seen_add(c);
				return MOSQ_ERR_ACL_DENIED;
			case GUARD_FIRST_ERROR:
				return MOSQ_ERR_ACL_DENIED;
			}
		}
	}
	if (__atomic_load_n(&flagged_total, __ATOMIC_RELAXED) > 0
			&& guardFlagged(reg->handle, (uintptr_t)ed->client)) {
		return MOSQ_ERR_ACL_DENIED;
	}
	return reg->fallback;
}

int guard_register_acl(mosquitto_plugin_id_t *id, uintptr_t handle, int fallback)
{
	struct acl_reg *reg = malloc(sizeof(*reg));
	if (!reg) {
		return MOSQ_ERR_NOMEM;
	}
	reg->id = id;
	reg->handle = handle;
	reg->fallback = fallback;
	int rc = mosquitto_callback_register(id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, reg);
	if (rc != MOSQ_ERR_SUCCESS) {
		free(reg);
		return rc;
	}
	reg->next = acl_regs;
	acl_regs = reg;
	return MOSQ_ERR_SUCCESS;
}

/* unregister_acl removes id's ACL registration, if it has one. */
static void unregister_acl(mosquitto_plugin_id_t *id)
{
	for (struct acl_reg **p = &acl_regs; *p; p = &(*p)->next) {
		if ((*p)->id == id) {
			struct acl_reg *reg = *p;
			int rc = mosquitto_callback_unregister(id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
			*p = reg->next;
			/* Free it only once the broker can no longer call back with it:
			 * otherwise leak it (a few bytes, once) rather than risk a use
			 * after free. */
			if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_NOT_FOUND) {
				free(reg);
			}
			return;
		}
	}
}

void guard_kick(const char *client_id)
{
	mosquitto_kick_client_by_clientid(client_id, false);
}

/* guard_self_path returns the path this plugin was loaded from. */
const char *guard_self_path(void)
{
	Dl_info info;
	if (dladdr((void *)mosquitto_plugin_version, &info) && info.dli_fname) {
		return info.dli_fname;
	}
	return "";
}

struct registration {
	int event;
	MOSQ_FUNC_generic_callback cb;
};

static const struct registration registrations[] = {
	{MOSQ_EVT_BASIC_AUTH, on_basic_auth},
	{MOSQ_EVT_RELOAD, guard_on_reload},
	{MOSQ_EVT_TICK, guard_on_tick},
	{MOSQ_EVT_DISCONNECT, on_disconnect},
};

#define NREG (int)(sizeof(registrations) / sizeof(registrations[0]))

/* guard_register registers every callback; on failure it undoes what it did
 * and returns the broker's error code. */
int guard_register(mosquitto_plugin_id_t *id, uintptr_t handle)
{
	for (int i = 0; i < NREG; i++) {
		int rc = mosquitto_callback_register(id, registrations[i].event, registrations[i].cb, NULL, (void *)handle);
		if (rc != MOSQ_ERR_SUCCESS) {
			for (int j = 0; j < i; j++) {
				mosquitto_callback_unregister(id, registrations[j].event, registrations[j].cb, NULL);
			}
			return rc;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

void guard_unregister(mosquitto_plugin_id_t *id)
{
	for (int i = 0; i < NREG; i++) {
		mosquitto_callback_unregister(id, registrations[i].event, registrations[i].cb, NULL);
	}
	unregister_acl(id);
}

void guard_log(int level, const char *msg)
{
	mosquitto_log_printf(level, "%s", msg);
}

const char *guard_opt_key(struct mosquitto_opt *opts, int i)
{
	return opts[i].key;
}

const char *guard_opt_value(struct mosquitto_opt *opts, int i)
{
	return opts[i].value;
}
