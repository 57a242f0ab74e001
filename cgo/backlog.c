/*
 * The broker's listen backlog (listen_backlog).
 *
 * Mosquitto 2.0 listens on its TCP listeners with a backlog of 100
 * (net.c: listen(sock, 100)) and has no option for it. When a fleet
 * reconnects at once, after a broker restart or a network outage, devices
 * complete their handshakes faster than the broker thread accepts and
 * authenticates them; once 101 wait to be accepted, the kernel drops every
 * further SYN (a listen overflow), and each of those devices waits for TCP
 * to send its SYN again: after 1 s, then 3 s, then 7 s. A fleet that the
 * broker could take in two seconds takes three to five, and its p99 with it.
 *
 * Linux lets listen() be called again on a listening socket to change its
 * backlog (the kernel caps it at net.core.somaxconn, 4096 since Linux 5.4).
 * guard_backlog_raise does that for the broker's TCP listeners, once they
 * exist. Mosquitto starts its listeners after it has loaded the plugins and
 * installs its signal handlers right after (mosquitto.c: listeners__start,
 * mux__init, signal__setup, then the main loop; 2.0.11 to 2.0.22), so
 * signals.c calls it when those handlers first appear: from the watcher
 * goroutine (every 10 ms), or from the first BASIC_AUTH or TICK, whichever
 * comes first.
 *
 * Which sockets: those of this process that listen (SO_ACCEPTCONN) on TCP
 * (SO_PROTOCOL), IPv4 or IPv6, websockets listeners among them; not a unix
 * socket (Mosquitto's own backlog of 10 stays), and not a listening socket
 * that was already open when an instance was configured (the plugin's own
 * metrics endpoint; it is told by its inode, not its number, which may be
 * reused). A backlog is only ever raised: a listener whose backlog is
 * already as large (libwebsockets listens with SOMAXCONN) is left as it is;
 * the kernel tells a listener's backlog through sock_diag (what ss shows as
 * Send-Q). Nothing else changes: the sockets keep their options, addresses
 * and queued connections.
 *
 * A reload (SIGHUP) gives it again: a listener the kernel capped at
 * net.core.somaxconn gets the rest once that sysctl is raised.
 */
#include <dirent.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include "guard.h"

#define GUARD_BACKLOG_OWN_MAX 16
#define GUARD_BACKLOG_LISTENERS_MAX 64 /* the broker's listeners handled; more are left as they are */
#define GUARD_TCP_LISTEN 10            /* the kernel's TCP_LISTEN state */

static pthread_mutex_t backlog_mu = PTHREAD_MUTEX_INITIALIZER;
static int backlog_want = 0; /* the highest listen_backlog of the instances; 0: leave the broker's */
static ino_t backlog_own[GUARD_BACKLOG_OWN_MAX];
static int backlog_own_n = 0;
static int backlog_raised = -1; /* sockets raised by the raise; -1: not done */
static int backlog_kept = 0;    /* sockets whose backlog was as large already */
static int backlog_failed = 0;  /* sockets whose listen() failed */
static int backlog_errno = 0;   /* the first failure's errno */

/* The broker's listeners found by a raise (backlog_mu held). */
static struct {
	int fd;
	ino_t ino;
	long backlog; /* as sock_diag tells it; -1: not known */
} found[GUARD_BACKLOG_LISTENERS_MAX];
static int nfound;

/* tcp_listener reports whether fd is a TCP socket that listens; its inode in *ino. */
static int tcp_listener(int fd, ino_t *ino)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	int v = 0;
	socklen_t l = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) != 0 || !v)
		return 0;
	v = 0;
	l = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &l) != 0 || v != IPPROTO_TCP)
		return 0;
	*ino = st.st_ino;
	return 1;
}

/* each_listener calls fn for every TCP listener of the process, as
 * /proc/self/fd lists them; -1 if it cannot be read. */
static int each_listener(void (*fn)(int fd, ino_t ino))
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	int self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char *end;
		long fd = strtol(e->d_name, &end, 10);
		if (end == e->d_name || *end != '\0' || fd < 0 || fd == self)
			continue;
		ino_t ino;
		if (tcp_listener((int)fd, &ino))
			fn((int)fd, ino);
	}
	closedir(d);
	return 0;
}

static int own(ino_t ino)
{
	for (int i = 0; i < backlog_own_n; i++)
		if (backlog_own[i] == ino)
			return 1;
	return 0;
}

static void note_own(int fd, ino_t ino)
{
	(void)fd;
	if (!own(ino) && backlog_own_n < GUARD_BACKLOG_OWN_MAX)
		backlog_own[backlog_own_n++] = ino;
}

static void note_found(int fd, ino_t ino)
{
	if (!own(ino) && nfound < GUARD_BACKLOG_LISTENERS_MAX) {
		found[nfound].fd = fd;
		found[nfound].ino = ino;
		found[nfound].backlog = -1;
		nfound++;
	}
}

/* diag_backlogs asks sock_diag for the listening TCP sockets of family and
 * records the backlog of those found. Bounded: the kernel ends a dump with
 * NLMSG_DONE; a receive waits at most 1 s. */
static void diag_backlogs(int family)
{
	int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return;
	struct timeval tv = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 r;
	} req;
	memset(&req, 0, sizeof req);
	req.nlh.nlmsg_len = sizeof req;
	req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.r.sdiag_family = family;
	req.r.sdiag_protocol = IPPROTO_TCP;
	req.r.idiag_states = 1u << GUARD_TCP_LISTEN;
	if (send(fd, &req, sizeof req, 0) != (ssize_t)sizeof req) {
		close(fd);
		return;
	}
	long buf[8192 / sizeof(long)];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n <= 0)
			break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR)
				goto done;
			if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
				continue;
			struct inet_diag_msg *m = NLMSG_DATA(h);
			for (int i = 0; i < nfound; i++)
				if (found[i].ino == (ino_t)m->idiag_inode)
					found[i].backlog = m->idiag_wqueue; /* a listener's: its backlog */
		}
	}
done:
	close(fd);
}

/* guard_backlog_configure records an instance's listen_backlog (the highest
 * of the instances counts) and the listening sockets already open, which
 * are not the broker's listeners: Mosquitto opens those after every
 * plugin_init. Called at the end of plugin_init. */
void guard_backlog_configure(int backlog)
{
	pthread_mutex_lock(&backlog_mu);
	if (backlog > backlog_want)
		backlog_want = backlog;
	each_listener(note_own);
	pthread_mutex_unlock(&backlog_mu);
}

/* guard_backlog_raise gives the broker's TCP listeners the configured
 * backlog; signals.c calls it once, when Mosquitto's listeners exist. */
void guard_backlog_raise(void)
{
	pthread_mutex_lock(&backlog_mu);
	backlog_raised = 0;
	backlog_kept = 0;
	backlog_failed = 0;
	backlog_errno = 0;
	nfound = 0;
	if (backlog_want > 0) {
		if (each_listener(note_found) != 0) {
			backlog_failed = -1;
			backlog_errno = errno;
		} else if (nfound > 0) {
			diag_backlogs(AF_INET);
			diag_backlogs(AF_INET6);
		}
	}
	for (int i = 0; i < nfound; i++) {
		if (found[i].backlog >= backlog_want) {
			backlog_kept++; /* never lowered */
		} else if (listen(found[i].fd, backlog_want) == 0) {
			backlog_raised++;
		} else if (backlog_failed++ == 0) {
			backlog_errno = errno;
		}
	}
	pthread_mutex_unlock(&backlog_mu);
}

/* Tests only: the backlog sock_diag tells for listening socket fd, -1 if
 * it tells none. */
long guard_backlog_of(int fd)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return -1;
	pthread_mutex_lock(&backlog_mu);
	int saved = nfound;
	nfound = 1;
	found[0].fd = fd;
	found[0].ino = st.st_ino;
	found[0].backlog = -1;
	diag_backlogs(AF_INET);
	diag_backlogs(AF_INET6);
	long b = found[0].backlog;
	nfound = saved;
	pthread_mutex_unlock(&backlog_mu);
	return b;
}

/* guard_backlog_result: what the last raise did (for the log line): the
 * backlog asked for, the sockets raised (-1: not yet), kept (as large
 * already), failed (-1: /proc/self/fd unreadable), and the first failure's
 * errno. */
struct guard_backlog guard_backlog_result(void)
{
	pthread_mutex_lock(&backlog_mu);
	struct guard_backlog r = {backlog_want, backlog_raised, backlog_kept, backlog_failed, backlog_errno};
	pthread_mutex_unlock(&backlog_mu);
	return r;
}

/* Tests only: forget the configuration and the result. */
void guard_backlog_test_reset(void)
{
	pthread_mutex_lock(&backlog_mu);
	backlog_want = 0;
	backlog_own_n = 0;
	backlog_raised = -1;
	backlog_kept = 0;
	backlog_failed = 0;
	backlog_errno = 0;
	nfound = 0;
	pthread_mutex_unlock(&backlog_mu);
}
