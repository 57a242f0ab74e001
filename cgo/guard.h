/* Declarations shared by the C and Go halves of the cgo skin. */
#ifndef GUARD_H
#define GUARD_H

#include <stdint.h>
#include <mosquitto_broker.h>
#include <mosquitto.h>
#include <mosquitto_plugin.h>

int guard_register(mosquitto_plugin_id_t *id, uintptr_t handle);
void guard_unregister(mosquitto_plugin_id_t *id);
void guard_log(int level, const char *msg);
void guard_flagged_add(int delta);
/* TICK enters Go only while this is set (plugin.c; set from workqueue.go). */
extern int guard_tick_work;
int guard_on_tick(int event, void *event_data, void *userdata);
/* Set by the first TICK (plugin.c): TICKs are delivered. */
extern int guard_tick_seen;
/* Whether SIGURG has a handler that is not SIG_DFL or SIG_IGN (signals.c). */
int guard_sigurg_handled(void);
int guard_on_reload(int event, void *event_data, void *userdata);
/* DISCONNECTs held for Go (plugin.c). */
#define GUARD_PENDING_MAX 1024
struct guard_pending {
	uintptr_t handle; /* the instance */
	uintptr_t client;
	int persistent; /* the client's session outlives the connection */
};
int guard_disconnect_hold(uintptr_t handle, uintptr_t client, int persistent);
int guard_pending_take(struct guard_pending *dst);
extern int guard_npending; /* how many are held */
int guard_client_persistent(uintptr_t client);
int guard_register_acl(mosquitto_plugin_id_t *id, uintptr_t handle, int fallback);
void guard_kick(const char *client_id);
const char *guard_self_path(void);
const char *guard_opt_key(struct mosquitto_opt *opts, int i);
const char *guard_opt_value(struct mosquitto_opt *opts, int i);

/* guard_client_cert's results other than a DER length (cert.c). */
#define GUARD_CERT_NONE 0
#define GUARD_CERT_NO_CRYPTO (-1)
#define GUARD_CERT_TOO_BIG (-2)
#define GUARD_CERT_FAILED (-3)
/* guard_client_cert's answer, returned by value: an out-parameter in Go's
 * memory would make every CONNECT allocate it on Go's heap. */
struct guard_der {
	unsigned char *der; /* malloc'd, the caller frees it; NULL unless n > 0 */
	int n;              /* its length, or one of GUARD_CERT_* */
};
struct guard_der guard_client_cert(uintptr_t client, int max);
/* The largest DER of a client certificate read (cert.go's certMax). */
#define GUARD_CERT_MAX (64 << 10)
/* on_basic_auth's call into Go (plugin.c). */
int guard_basic_auth(uintptr_t handle, uintptr_t client, const char *id, const char *addr, char *username, char *password);

/* A client's identity, for its first sight at an ACL check (clients.c). */
const char *guard_client_id(uintptr_t client);
const char *guard_client_address(uintptr_t client);
const char *guard_client_username(uintptr_t client);

/* The broker's signal handlers given SA_ONSTACK (signals.c). */
int guard_signals_onstack(void);
int guard_signal_flags(int sig);
void guard_signals_test_plain(void);
void guard_signals_test_restore(void);

/* The broker's listen backlog (backlog.c). */
struct guard_backlog {
	int want;   /* listen_backlog asked for; 0: the broker's left */
	int raised; /* listeners below it; -1: not found yet */
	int kept;   /* listeners whose backlog was as large already */
	int failed; /* listen() failures; -1: /proc/self/fd unreadable */
	int err;    /* the first failure's errno */
	int raises; /* raises done so far */
};
void guard_backlog_configure(int backlog);
void guard_backlog_raise(void);
void guard_backlog_reapply(void);
int guard_backlog_apply(int level);
uint64_t guard_backlog_connects(void);
extern uint64_t guard_connects; /* BASIC_AUTH callbacks, counted in plugin.c */
struct guard_backlog guard_backlog_result(void);
void guard_backlog_test_reset(void);
long guard_backlog_of(int fd);

/* The connections seen (seen.c). */
int guard_seen_has(uintptr_t p);
int guard_seen_add(uintptr_t p);
void guard_seen_del(uintptr_t p);
size_t guard_seen_len(void);
size_t guard_seen_cap(void);
int guard_denied_add(uintptr_t p);
int guard_denied_take(uintptr_t p);
int guard_seen_connect(uintptr_t p);
int guard_client_has_cert(uintptr_t client);

/* guardFirstSight's answers. */
#define GUARD_FIRST_NONE 0  /* not a connected client with a certificate: nothing seen */
#define GUARD_FIRST_ALLOW 1 /* seen, let through */
#define GUARD_FIRST_DENY 2  /* seen, refused (flagged; its kick queued) */
#define GUARD_FIRST_ERROR 3 /* the check blew up: refused, not seen (the next check looks again) */

#endif
