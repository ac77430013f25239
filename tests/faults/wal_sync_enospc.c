/*
 * A fault injector for tests/tests/wal_sync_fault.rs, loaded into a real
 * `acct serve` with LD_PRELOAD. It wraps fsync and fdatasync:
 *
 * - Once the file $ACCT_FAULT_DIR/arm exists, the next sync of a RocksDB WAL
 *   file (a name ending in ".log") fails with ENOSPC after its write already
 *   succeeded: the group's bytes are in the WAL file, the group is refused,
 *   and RocksDB starts its automatic recovery from "no space" (what a
 *   delayed-allocation file system or a thin volume does when it fills).
 *   The arm file is removed and $ACCT_FAULT_DIR/faulted is created.
 * - After that, once the process has synced MANIFEST files
 *   $ACCT_FAULT_KILL_AFTER times (the recovery's flushes record their
 *   results there), it kills itself with SIGKILL right after the sync: a
 *   crash between two steps of the recovery. With 0 it kills itself at the
 *   failing WAL sync instead (the group's bytes written, nothing answered);
 *   unset, it never kills.
 *
 * Nothing else is changed; without the arm file it only forwards.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int faulted;
static int manifest_syncs;

static int path_of(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, out, size - 1);
    if (length < 0) return -1;
    out[length] = 0;
    return 0;
}

static int ends_with(const char *text, const char *suffix) {
    size_t a = strlen(text), b = strlen(suffix);
    return a >= b && strcmp(text + a - b, suffix) == 0;
}

static void touch(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    if (fd >= 0) close(fd);
}

/* 1: fail this sync with ENOSPC; 0: forward it. */
static int before_sync(int fd, char *path, size_t size) {
    const char *dir = getenv("ACCT_FAULT_DIR");
    if (!dir || path_of(fd, path, size) != 0) return 0;
    if (ends_with(path, ".log") && !__atomic_load_n(&faulted, __ATOMIC_SEQ_CST)) {
        char arm[4096];
        snprintf(arm, sizeof arm, "%s/arm", dir);
        if (unlink(arm) == 0) {
            __atomic_store_n(&faulted, 1, __ATOMIC_SEQ_CST);
            touch(dir, "faulted");
            const char *limit = getenv("ACCT_FAULT_KILL_AFTER");
            if (limit && atoi(limit) == 0) raise(SIGKILL);
            return 1;
        }
    }
    return 0;
}

static void after_sync(const char *path) {
    if (!__atomic_load_n(&faulted, __ATOMIC_SEQ_CST)) return;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strncmp(base, "MANIFEST-", 9) != 0) return;
    const char *limit = getenv("ACCT_FAULT_KILL_AFTER");
    int kill_after = limit ? atoi(limit) : 0;
    int count = __atomic_add_fetch(&manifest_syncs, 1, __ATOMIC_SEQ_CST);
    if (kill_after > 0 && count == kill_after) raise(SIGKILL);
}

/* A sync through `real`, failed or followed as the fault says. */
static int wrapped(int fd, int (*real)(int)) {
    char path[4096] = {0};
    if (before_sync(fd, path, sizeof path)) {
        errno = ENOSPC;
        return -1;
    }
    int result = real(fd);
    if (path[0]) after_sync(path);
    return result;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return wrapped(fd, real);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return wrapped(fd, real);
}
