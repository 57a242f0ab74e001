/*
 * The broker's signal handlers, made safe to run on the plugin's Go threads.
 *
 * Mosquitto installs its handlers (SIGINT, SIGTERM, SIGHUP, SIGUSR1,
 * SIGUSR2) with signal(), after it has loaded the plugins: without
 * SA_ONSTACK. The kernel delivers a process signal to any thread that does
 * not block it, a Go thread among them; without SA_ONSTACK the handler's
 * frame (with the saved vector registers, some KB) is pushed on whatever
 * stack that thread runs on, a goroutine's of 2 KB and up, and writes past
 * it. Go says so: non-Go code that installs signal handlers must use
 * SA_ONSTACK (os/signal, "Go programs that use cgo"). A broker under load
 * given SIGHUP every 20 ms crashed in the collector's stack copying within
 * seconds, about one run in four (e2e TestAttackRecordsReloadStorm).
 *
 * guard_signals_onstack adds SA_ONSTACK to those of the five that have a
 * handler, changing nothing else: on a Go thread the handler then runs on
 * the thread's signal stack (Go gives each of its threads one; the broker's
 * own thread has one while it runs Go), elsewhere as before. It returns 1
 * once all five have handlers with it (Mosquitto has installed them), 0
 * before. Idempotent; any thread.
 */
#include <signal.h>
#include <stddef.h>
#include "guard.h"

static const int guard_broker_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};

static int guard_signals_done = 0;

int guard_signals_onstack(void)
{
	if (__atomic_load_n(&guard_signals_done, __ATOMIC_ACQUIRE))
		return 1;
	size_t n = sizeof guard_broker_signals / sizeof guard_broker_signals[0];
	size_t ready = 0;
	for (size_t i = 0; i < n; i++) {
		struct sigaction sa;
		if (sigaction(guard_broker_signals[i], NULL, &sa) != 0)
			continue;
		if (!(sa.sa_flags & SA_SIGINFO) && (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN))
			continue; /* no handler: nothing runs on any stack */
		if (!(sa.sa_flags & SA_ONSTACK)) {
			sa.sa_flags |= SA_ONSTACK;
			if (sigaction(guard_broker_signals[i], &sa, NULL) != 0)
				continue;
		}
		ready++;
	}
	if (ready == n && !__atomic_exchange_n(&guard_signals_done, 1, __ATOMIC_ACQ_REL)) {
		/* Mosquitto installs these right after it starts its listeners
		 * (mosquitto.c: listeners__start, mux__init, signal__setup): they
		 * exist now, and get listen_backlog (backlog.c), once. */
		guard_backlog_raise();
		__atomic_store_n(&guard_tick_work, 1, __ATOMIC_SEQ_CST); /* a TICK into Go logs it */
	}
	return ready == n;
}

/* guard_sigurg_handled reports whether SIGURG has a handler (Go's runtime
 * installs one, for its preemption, in a c-shared library too): only then
 * does a SIGURG sent to the broker thread interrupt its wait (wake.go). A
 * signal whose disposition is to be ignored is discarded by the kernel and
 * interrupts nothing. */
int guard_sigurg_handled(void)
{
	struct sigaction sa;
	if (sigaction(SIGURG, NULL, &sa) != 0)
		return 0;
	if (sa.sa_flags & SA_SIGINFO)
		return sa.sa_sigaction != NULL;
	return sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN;
}

/* guard_signal_flags is sa_flags of sig's handler, -1 if unreadable (tests). */
int guard_signal_flags(int sig)
{
	struct sigaction sa;
	if (sigaction(sig, NULL, &sa) != 0)
		return -1;
	return sa.sa_flags;
}

/* Tests only (signals_test.go; cgo is not allowed in _test.go files): the
 * broker's way of installing handlers, signal() without SA_ONSTACK, and
 * back. */
static void guard_noop_handler(int sig) { (void)sig; }
static struct sigaction guard_saved[5];

void guard_signals_test_plain(void)
{
	__atomic_store_n(&guard_signals_done, 0, __ATOMIC_RELEASE);
	for (size_t i = 0; i < 5; i++) {
		sigaction(guard_broker_signals[i], NULL, &guard_saved[i]);
		signal(guard_broker_signals[i], guard_noop_handler);
	}
}

void guard_signals_test_restore(void)
{
	for (size_t i = 0; i < 5; i++)
		sigaction(guard_broker_signals[i], &guard_saved[i], NULL);
	__atomic_store_n(&guard_signals_done, 0, __ATOMIC_RELEASE);
}
