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
 * A reload (SIGHUP) gives it again to the listeners found
 * (guard_backlog_reapply): a listener the kernel capped at
 * net.core.somaxconn gets the rest once that sysctl is raised.
 */
#include <dirent.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
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
static int backlog_want = 0;  /* the highest listen_backlog of the instances: the ceiling; 0: leave the broker's */
static int backlog_level = 0; /* what the broker drains in backlog.go's wait, as last measured; 0: not yet */
static ino_t backlog_own[GUARD_BACKLOG_OWN_MAX];
static int backlog_own_n = 0;
static int backlog_raised = -1; /* listeners the last raise found below the ceiling; -1: none done */
static int backlog_kept = 0;    /* listeners with a backlog of their own as large as the ceiling */
static int backlog_failed = 0;  /* listen() failures of the last raise or apply */
static int backlog_errno = 0;   /* the first failure's errno */
static int backlog_raises = 0;  /* raises done: the log line is made again only after one */

/* The broker's listeners found by a raise (backlog_mu held). */
static struct {
	int fd;
	ino_t ino;
	long own; /* its backlog when first found, as sock_diag tells it; -1: not known */
	long set; /* the backlog last given; 0: none */
} found[GUARD_BACKLOG_LISTENERS_MAX];
static int nfound;

/* The broker's CONNECTs, for backlog.go's measure of its rate. */
uint64_t guard_connects = 0; /* CONNECTs admitted, or passed on with a username (plugin.c), relaxed atomic */

/* tcp_listener reports whether fd is a TCP socket that listens; its inode
 * in *ino. What fd is comes from its /proc/self/fd link ("socket:[N]"):
 * nothing else is touched (an fstat of a file on a hung network file
 * system would wait). */
static int tcp_listener(int fd, ino_t *ino)
{
	char path[64], link[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n <= 0)
		return 0;
	link[n] = '\0';
	unsigned long long inode;
	if (sscanf(link, "socket:[%llu]", &inode) != 1)
		return 0;
	int v = 0;
	socklen_t l = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) != 0 || !v)
		return 0;
	v = 0;
	l = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &l) != 0 || v != IPPROTO_TCP)
		return 0;
	*ino = (ino_t)inode;
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

/* Listeners found before (a reload finds them again): their own backlog
 * and what was given, by inode. */
static struct {
	ino_t ino;
	long own, set;
} known[GUARD_BACKLOG_LISTENERS_MAX];
static int nknown;

static void note_found(int fd, ino_t ino)
{
	if (own(ino) || nfound >= GUARD_BACKLOG_LISTENERS_MAX)
		return;
	found[nfound].fd = fd;
	found[nfound].ino = ino;
	found[nfound].own = -1;
	found[nfound].set = 0;
	for (int i = 0; i < nknown; i++)
		if (known[i].ino == ino) {
			found[nfound].own = known[i].own;
			found[nfound].set = known[i].set;
		}
	nfound++;
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
				if (found[i].ino == (ino_t)m->idiag_inode && found[i].set == 0)
					found[i].own = m->idiag_wqueue; /* a listener's: its backlog */
		}
	}
done:
	close(fd);
}

/* guard_backlog_configure records an instance's listen_backlog (the highest
 * of the instances counts), the listening sockets already open, which are
 * not the broker's listeners (Mosquitto opens those after every
 * plugin_init). */
void guard_backlog_configure(int backlog)
{
	pthread_mutex_lock(&backlog_mu);
	if (backlog > backlog_want)
		backlog_want = backlog;
	each_listener(note_own);
	pthread_mutex_unlock(&backlog_mu);
}

/* apply gives each listener found the level (at most the ceiling), never
 * less than its own backlog; force: call listen() even where the level was
 * given already (a reload: net.core.somaxconn may have been raised, and the
 * kernel caps at listen()). backlog_mu held. */
static void apply(int level, int force)
{
	if (level > backlog_want)
		level = backlog_want;
	for (int i = 0; i < nfound; i++) {
		long t = level;
		if (found[i].own >= t)
			t = found[i].own; /* never lowered below its own */
		if (found[i].own >= backlog_want || t <= 0 || (t == found[i].set && !force) || (found[i].set == 0 && t == found[i].own))
			continue;
		ino_t ino;
		if (!tcp_listener(found[i].fd, &ino) || ino != found[i].ino)
			continue; /* closed, its number reused since (at the broker's exit): not ours to touch */
		if (listen(found[i].fd, (int)t) == 0) {
			found[i].set = t;
		} else if (backlog_failed++ == 0) {
			backlog_errno = errno;
		}
	}
	nknown = 0;
	for (int i = 0; i < nfound; i++) {
		known[nknown].ino = found[i].ino;
		known[nknown].own = found[i].own;
		known[nknown].set = found[i].set;
		nknown++;
	}
}

/* guard_backlog_raise finds the broker's TCP listeners and gives them the
 * level measured so far (none yet: they keep Mosquitto's 100 until
 * backlog.go has measured the broker); signals.c calls it once Mosquitto's
 * listeners exist. */
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
		if (found[i].own >= backlog_want)
			backlog_kept++;
		else
			backlog_raised++;
	}
	if (backlog_failed >= 0)
		apply(backlog_level, 1);
	backlog_raises++;
	pthread_mutex_unlock(&backlog_mu);
}

/* guard_backlog_reapply gives the listeners found the level again, each
 * with listen() (a reload: net.core.somaxconn may have been raised, and the
 * kernel caps at listen()). It does not look for listeners again: Mosquitto
 * 2.0 opens none after its start, and a look reads every descriptor, each
 * client's among them (100 000 of them on a busy broker), on the broker
 * thread that runs the reload. */
void guard_backlog_reapply(void)
{
	pthread_mutex_lock(&backlog_mu);
	backlog_failed = 0;
	backlog_errno = 0;
	apply(backlog_level, 1);
	backlog_raises++;
	pthread_mutex_unlock(&backlog_mu);
}

/* guard_backlog_apply gives the listeners found a new level (backlog.go's
 * measure); it returns the listeners whose backlog changed. */
int guard_backlog_apply(int level)
{
	pthread_mutex_lock(&backlog_mu);
	backlog_level = level;
	long before[GUARD_BACKLOG_LISTENERS_MAX];
	for (int i = 0; i < nfound; i++)
		before[i] = found[i].set;
	apply(level, 0);
	int changed = 0;
	for (int i = 0; i < nfound; i++)
		changed += found[i].set != before[i];
	pthread_mutex_unlock(&backlog_mu);
	return changed;
}

/* guard_backlog_connects is the CONNECTs the broker has handled
 * (BASIC_AUTH callbacks), for backlog.go's measure of its rate. */
uint64_t guard_backlog_connects(void)
{
	return __atomic_load_n(&guard_connects, __ATOMIC_RELAXED);
}

/* guard_backlog_result: what the last raise found (for the log line): the
 * ceiling, the listeners below it (-1: no raise yet), those as large already,
 * failed (-1: /proc/self/fd unreadable), and the first failure's errno. */
struct guard_backlog guard_backlog_result(void)
{
	pthread_mutex_lock(&backlog_mu);
	struct guard_backlog r = {backlog_want, backlog_raised, backlog_kept, backlog_failed, backlog_errno, backlog_raises};
	pthread_mutex_unlock(&backlog_mu);
	return r;
}

/* Tests only: forget the configuration and the result. */
void guard_backlog_test_reset(void)
{
	pthread_mutex_lock(&backlog_mu);
	backlog_want = 0;
	backlog_level = 0;
	backlog_own_n = 0;
	backlog_raised = -1;
	backlog_kept = 0;
	backlog_failed = 0;
	backlog_errno = 0;
	backlog_raises = 0;
	nfound = 0;
	nknown = 0;
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
	typeof(found[0]) keep = found[0];
	nfound = 1;
	found[0].fd = fd;
	found[0].ino = st.st_ino;
	found[0].own = -1;
	found[0].set = 0;
	diag_backlogs(AF_INET);
	diag_backlogs(AF_INET6);
	long b = found[0].own;
	found[0] = keep;
	nfound = saved;
	pthread_mutex_unlock(&backlog_mu);
	return b;
}

