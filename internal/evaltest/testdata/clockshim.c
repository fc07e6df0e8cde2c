/* clockshim: an LD_PRELOAD library that steps a process's wall clock, as an
 * NTP step or an operator's `date -s` would, while its monotonic clock runs
 * on. The step is the signed nanoseconds at the start of the file named by
 * EVALPOOL_CLOCK_STEP_FILE, read through a shared mapping on every call, so
 * that a test steps a running process by writing the file. It makes no
 * library call that could allocate (jemalloc reads the clock while it
 * starts): the file is opened and mapped by system calls alone. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static volatile int64_t *step;
static int mapped;

static int64_t step_ns(void) {
	if (!mapped) {
		mapped = 1;
		const char *path = getenv("EVALPOOL_CLOCK_STEP_FILE");
		if (path) {
			long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
			if (fd >= 0) {
				void *p = (void *)syscall(SYS_mmap, 0, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
				if (p != MAP_FAILED) {
					step = p;
				}
				syscall(SYS_close, fd);
			}
		}
	}
	return step ? *step : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
	long rc = syscall(SYS_clock_gettime, id, ts);
	if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
		int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + step_ns();
		ts->tv_sec = ns / 1000000000;
		ts->tv_nsec = ns % 1000000000;
	}
	return (int)rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
	struct timespec ts;
	(void)tz;
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
		return -1;
	}
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}

time_t time(time_t *t) {
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (t) {
		*t = ts.tv_sec;
	}
	return ts.tv_sec;
}
