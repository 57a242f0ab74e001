/* A C thread calling an exported Go function (lib.go) every GAP µs, as the
 * broker thread calls the plugin: prints, per call, the context switches
 * and the CPU time of the process's other threads (Go's: sysmon, idle Ms),
 * and the time the calling thread spends from the call to its return. Kept out of lib.go's directory:
 * go build compiles every .c file beside a cgo package. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "libcgocall.h"

static long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* The voluntary and involuntary switches of every thread but this one. */
static long switches(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	long s = 0, v;
	char p[300], l[256];
	int me = getpid();
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == me)
			continue;
		snprintf(p, sizeof p, "/proc/self/task/%s/status", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		while (fgets(l, sizeof l, f))
			if (sscanf(l, "voluntary_ctxt_switches: %ld", &v) == 1 || sscanf(l, "nonvoluntary_ctxt_switches: %ld", &v) == 1)
				s += v;
		fclose(f);
	}
	closedir(d);
	return s;
}

/* The CPU time of every thread but this one, in ns (schedstat: exact). */
static long others_cpu_ns(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	long s = 0;
	long long ns;
	char p[300];
	int me = getpid();
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == me)
			continue;
		snprintf(p, sizeof p, "/proc/self/task/%s/schedstat", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		if (fscanf(f, "%lld", &ns) == 1)
			s += ns;
		fclose(f);
	}
	closedir(d);
	return s;
}

int main(int argc, char **argv)
{
	int gap = argc > 1 ? atoi(argv[1]) : 150, calls = 20000;
	Work(1);
	usleep(100000);
	long c0 = switches(), o0 = others_cpu_ns(), in_call = 0;
	for (int i = 0; i < calls; i++) {
		long t = now_ns();
		while (now_ns() - t < gap * 1000L) /* the broker's own work, in C */
			;
		long w = now_ns();
		Work(i);
		in_call += now_ns() - w;
	}
	printf("a call every %d us: per call, Go's threads switch %.2f times and use %.2f us of CPU; the call takes %.2f us\n",
	       gap, (double)(switches() - c0) / calls, (others_cpu_ns() - o0) / 1000.0 / calls, in_call / 1000.0 / calls);
	return 0;
}
