/*
 * cryptfs.fuse._plane: the native data plane.
 *
 * The FUSE session itself, served in C through libfuse's low-level API: a multi-threaded loop
 * with one cloned /dev/fuse fd per worker thread, and READ / WRITE / FLUSH / FSYNC / FALLOCATE
 * of the device done here without the GIL, through the native core (backends/core.h), which
 * this extension reaches only through the capsule of a keyed backends._native.Core - so the
 * plane converts with the very key schedule the Python stack keyed, and links no OpenSSL.
 * The semantics are the trio plane's (cryptfs/fuse/operations.py, cryptfs/core/device.py):
 * the same file system, the same per_sector / multi_du requests and IVs, the same errno
 * contract, byte-identical ciphertext.  Python still assembles the stack, checks everything
 * and owns the daemon's life; only the stats file calls back into Python.
 *
 * Session(mountpoint, fuse_options, image_fd, payload_offset, size, sector_size, iv_step,
 *         iv_offset, core_capsule, multi_du, read_only, allow_discards, uid, gid, mtime_ns,
 *         threads, max_background, congestion_threshold, split_bytes, crypto_threads, stats,
 *         engine_capsule=None, completion_timeout=30.0)
 *     Creates the session and mounts it.  fuse_options: libfuse's arguments, e.g. ["-o",
 *     "fsname=cryptfs,subtype=cryptfs,default_permissions,allow_other,ro"].  image_fd: the
 *     open image (kept open by the caller until close()); the device is `size` bytes (a
 *     multiple of sector_size, 512..4096) at byte payload_offset of it.  Data unit u has IV
 *     sector u * iv_step + iv_offset: iv_step and iv_offset are Geometry.iv_step and
 *     Geometry.iv_base (cryptfs/core/geometry.py).  core_capsule: Core.capsule() of the keyed
 *     core (the session takes its own reference).  multi_du: one core call per bio (split over
 *     crypto_threads threads from split_bytes bytes; 0 = never), else one per data unit.
 *     uid, gid, mtime_ns: the device file's owner and time.  threads: FUSE worker threads at
 *     most (0: one per CPU); max_background, congestion_threshold: the kernel's (0: its
 *     default).  stats: a callable returning bytes, called (with the GIL) each time the stats
 *     file is opened.  engine_capsule: Engine.capsule() of a running simulated engine
 *     (backends/engine.h): READ and WRITE then go through it asynchronously (offload.h), the
 *     core being the fallback for what the engine fails or does not complete within
 *     completion_timeout seconds.  ValueError for a bad argument, OSError if the image or mountpoint is
 *     unusable, RuntimeError if libfuse refuses the options or cannot mount (or WAKE_SIGNAL,
 *     below, has someone else's handler).  Make it in the process that serves it: after any
 *     fork.
 * Session.run()
 *     Serves until the file system is unmounted (fusermount3 -u, umount) or exit() is
 *     called, with the GIL released; then unmounts (if still mounted) and fsyncs the image
 *     (unless read-only).  Once per session.  Call it from a thread other than the one that
 *     handles signals: a Python signal handler cannot run while its thread is in here.
 *     OSError if the session failed or the final fsync did.
 * Session.exit()
 *     From any thread: makes run() return promptly, and returns when it has - unmounted and
 *     synced - unless called from one of the session's own threads (the stats callable).
 *     Before run(): run() will return at once.  Files still open on the device then fail
 *     with ENOTCONN.
 * Session.counters()
 *     The workers' counters merged: reads, bytes_read, writes, bytes_written, rmw, flushes,
 *     discards, bytes_discarded, errors (device requests answered with an error),
 *     crypto_requests (core calls), data_units.
 * Session.close()
 *     Unmounts if run() never did, frees the session and drops the core reference.
 *     RuntimeError while run() is running.
 *
 * How run() is stopped: libfuse's loop thread sleeps in sem_wait until a worker ends (which
 * happens when the kernel ends the connection) or a signal interrupts it; it then cancels the
 * workers blocked in read(2) on /dev/fuse and joins them (requests in progress finish first).
 * So exit() flags the session and interrupts the loop thread with WAKE_SIGNAL, whose handler
 * does nothing, until the loop has returned (a signal landing just before sem_wait is lost).
 * WAKE_SIGNAL is a real-time signal (SIGRTMIN + 7) no one else is expected to use; the module
 * installs its handler with the first session and refuses to run over another one.
 *
 * Concurrency: the kernel sends requests to up to `threads` workers at once; each worker
 * keeps its own buffers and counters (no lock on the data path but the range lock of
 * writes and discards).  Reads run in parallel.  Direct writes to one file are serialized by
 * the kernel unless the open reply sets FOPEN_PARALLEL_DIRECT_WRITES, which libfuse offers
 * from 3.15 (it is set where it can be); the range lock keeps overlapping writes correct
 * either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "device_io.h"
#include "engine.h"
#include "offload.h"

#define DEVICE_INO (FUSE_ROOT_ID + 1)
#define STATS_INO (FUSE_ROOT_ID + 2)
/* the device's size never changes while mounted; let the kernel cache its attributes */
#define ATTR_TIMEOUT 3600.0
/* Interrupts libfuse's loop thread (see the top comment); its handler is a no-op. */
#define WAKE_SIGNAL (SIGRTMIN + 7)
/* Buffers start at this size (a read or write of 128 KiB is common) and grow to a request. */
#define MIN_BUFFER (128 << 10)
/* Zeros written where the image's filesystem cannot punch holes. */
static const unsigned char zeros[1 << 16];

enum counter {
    READS, BYTES_READ, WRITES, BYTES_WRITTEN, RMW, FLUSHES, DISCARDS, BYTES_DISCARDED, ERRORS,
    CRYPTO_REQUESTS, DATA_UNITS, N_COUNTERS
};
static const char *const COUNTER_NAMES[N_COUNTERS] = {
    "reads", "bytes_read", "writes", "bytes_written", "rmw", "flushes", "discards",
    "bytes_discarded", "errors", "crypto_requests", "data_units",
};

/* --- the plane ------------------------------------------------------------------------- */

struct plane;

/* One FUSE worker thread's own state: no lock on the hot path.  Kept (for its counters and
 * buffers) when its thread ends, for the next thread to adopt. */
struct worker {
    struct worker *next;
    struct plane *plane;
    int busy;                       /* adopted by a live thread (plane.mu) */
    unsigned char *cipher;          /* ciphertext, page-aligned (see grow) */
    size_t cipher_cap;
    unsigned char *merge;           /* a read-modify-write's plaintext */
    size_t merge_cap;
    uint64_t count[N_COUNTERS];     /* written by the owner only, read by counters() */
};

enum state { IDLE, RUNNING, FINISHING, DONE };

struct plane {
    /* the device */
    int fd;
    uint64_t payload, size, iv_step, iv_base;
    size_t ss, split_bytes;
    int multi_du, read_only, allow_discards, crypto_threads;
    uid_t uid;
    gid_t gid;
    struct timespec mtime;
    struct core_api api;            /* api.core: this plane's reference */
    int have_core;
    struct offload *offload;        /* READ and WRITE through an engine (or NULL) */
    struct rangelock locks;
    PyObject *stats;
    /* the session */
    struct fuse_session *se;
    char *mountpoint;
    unsigned threads, max_background, congestion_threshold;
    pthread_key_t key;              /* a thread's struct worker */
    int have_key;
    pthread_mutex_t mu;             /* workers, state, stopping, exits */
    pthread_cond_t state_changed;
    struct worker *workers;
    enum state state;
    int stopping;
    int exits;                      /* exit() calls in flight: close() waits for them */
    pthread_t loop_thread;
};

static inline void bump(struct worker *w, enum counter c, uint64_t n)
{
    /* the owner is the only writer: a relaxed store, no locked instruction */
    __atomic_store_n(&w->count[c], w->count[c] + n, __ATOMIC_RELAXED);
}

static void worker_gone(void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->plane->mu);
    w->busy = 0;
    pthread_mutex_unlock(&w->plane->mu);
}

/* This thread's worker: adopted (or made) on its first request. */
static struct worker *worker_of(struct plane *p)
{
    struct worker *w = pthread_getspecific(p->key);
    if (w)
        return w;
    pthread_mutex_lock(&p->mu);
    for (w = p->workers; w && w->busy; w = w->next)
        ;
    if (!w && (w = calloc(1, sizeof *w))) {
        w->plane = p;
        w->next = p->workers;
        p->workers = w;
    }
    if (w)
        w->busy = 1;
    pthread_mutex_unlock(&p->mu);
    if (w && pthread_setspecific(p->key, w)) {
        worker_gone(w);
        w = NULL;
    }
    return w;
}

/* At least `need` bytes of *buf, page-aligned: the kernel's copy into user memory (pread)
 * measured up to 10x slower into a buffer 16 bytes into a page (cryptfs/core/device.py). */
static unsigned char *grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return *buf;
    size_t size = MIN_BUFFER;
    while (size < need)
        size *= 2;
    void *fresh;
    if (posix_memalign(&fresh, 4096, size))
        return NULL;
    free(*buf);
    *buf = fresh;
    *cap = size;
    return fresh;
}

/* --- the device: bytes, whole data units, the image ------------------------------------ */
/* Every function here returns 0 or a (positive) errno, which reply_error sends. */

/* Encrypt or decrypt the whole data units at device byte `a`, src into dst: one core call for
 * the bio (multi_du) or one per unit (per_sector, the per-request cost at C scale).  Any
 * failure of the core is EIO, as on the trio plane: the caller gets no data, never wrong
 * data. */
static int convert(struct plane *p, struct worker *w, int encrypt, uint64_t a,
                   const unsigned char *src, unsigned char *dst, size_t len)
{
    const struct core_api *c = &p->api;
    uint64_t unit = a / p->ss;
    size_t units = len / p->ss;
    if (p->multi_du) {
        int threads = p->crypto_threads > 1 && p->split_bytes && len >= p->split_bytes
                      ? p->crypto_threads : 1;
        if (c->crypt_sectors(c->core, encrypt, src, dst, len, unit * p->iv_step + p->iv_base,
                             p->ss, p->iv_step, threads))
            return EIO;
        bump(w, CRYPTO_REQUESTS, 1);
    } else {
        for (size_t i = 0; i < units; i++) {
            size_t at = i * p->ss;
            if (c->crypt_sectors(c->core, encrypt, src + at, dst + at, p->ss,
                                 (unit + i) * p->iv_step + p->iv_base, p->ss, 1, 1))
                return EIO;
        }
        bump(w, CRYPTO_REQUESTS, units);
    }
    bump(w, DATA_UNITS, units);
    return 0;
}

/* The plaintext of the whole data units [a, a+len) into dst (ciphertext read into it, then
 * decrypted in place). */
static int read_units(struct plane *p, struct worker *w, uint64_t a, unsigned char *dst,
                      size_t len)
{
    int err = pread_all(p->fd, dst, len, p->payload + a);
    return err ? err : convert(p, w, 0, a, dst, dst, len);
}

/* [off, off+len) cut at the end of the device: *out points into the worker's buffer. */
static int device_read(struct plane *p, struct worker *w, uint64_t off, size_t len,
                       const unsigned char **out, size_t *n)
{
    *n = 0;
    if (off >= p->size || !len)
        return 0;                                   /* EOF */
    uint64_t end = off + len < p->size ? off + len : p->size;
    uint64_t a = off / p->ss * p->ss, b = (end + p->ss - 1) / p->ss * p->ss;
    unsigned char *buf = grow(&w->cipher, &w->cipher_cap, b - a);
    if (!buf)
        return ENOMEM;
    int err = read_units(p, w, a, buf, b - a);
    if (err)
        return err;
    *out = buf + (off - a);
    *n = end - off;
    bump(w, READS, 1);
    bump(w, BYTES_READ, *n);
    return 0;
}

/* Write data at off, cut at the end of the device; *written: the bytes taken.  Holds the
 * aligned range while it reads the edge units, lays the data in, encrypts into the worker's
 * ciphertext buffer (never the caller's) and writes: overlapping writes never interleave. */
static int device_write(struct plane *p, struct worker *w, uint64_t off,
                        const unsigned char *data, size_t len, size_t *written)
{
    *written = 0;
    if (p->read_only)
        return EROFS;
    if (off >= p->size)
        return ENOSPC;
    if (!len)
        return 0;
    uint64_t end = off + len < p->size ? off + len : p->size;
    uint64_t a = off / p->ss * p->ss, b = (end + p->ss - 1) / p->ss * p->ss;
    size_t span = b - a;
    int rmw = a != off || b != end;
    unsigned char *cipher = grow(&w->cipher, &w->cipher_cap, span);
    unsigned char *merge = rmw ? grow(&w->merge, &w->merge_cap, span) : NULL;
    if (!cipher || (rmw && !merge))
        return ENOMEM;
    struct range r = {a, b, NULL};
    int err = 0;
    const unsigned char *plain = data;
    range_hold(&p->locks, &r);
    if (rmw) {
        int head = off != a, tail = end != b && (b - p->ss != a || !head);
        if (head)
            err = read_units(p, w, a, merge, p->ss);
        if (!err && tail)
            err = read_units(p, w, b - p->ss, merge + span - p->ss, p->ss);
        memcpy(merge + (off - a), data, end - off);
        plain = merge;
        bump(w, RMW, 1);
    }
    if (!err)
        err = convert(p, w, 1, a, plain, cipher, span);
    if (!err)
        err = pwrite_all(p->fd, cipher, span, p->payload + a);
    range_release(&p->locks, &r);
    if (err)
        return err;
    *written = end - off;
    bump(w, WRITES, 1);
    bump(w, BYTES_WRITTEN, *written);
    return 0;
}

static int device_flush(struct plane *p, struct worker *w)
{
    if (p->read_only)
        return 0;
    if (fsync(p->fd))
        return errno;
    bump(w, FLUSHES, 1);
    return 0;
}

/* Deallocate [a, b) of the payload so it reads back as zeros, which decrypt as dm-crypt's
 * discarded sectors do. */
static int punch(struct plane *p, uint64_t a, uint64_t b)
{
    uint64_t at = p->payload + a, end = p->payload + b;
    if (!fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at,
                   (off_t)(end - at)))
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
        return errno;
    for (; at < end; at += sizeof zeros) {
        int err = pwrite_all(p->fd, zeros, end - at < sizeof zeros ? end - at : sizeof zeros,
                             at);
        if (err)
            return err;
    }
    return 0;
}

/* fallocate on the device: PUNCH_HOLE|KEEP_SIZE discards the whole data units inside the
 * range (partial edge units stay as they are); 0 and KEEP_SIZE only check it (a device is
 * allocated already and cannot grow). */
static int device_fallocate(struct plane *p, struct worker *w, int mode, off_t off, off_t len)
{
    int punching = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
    if (!punching && mode != 0 && mode != FALLOC_FL_KEEP_SIZE)
        return EOPNOTSUPP;
    if (punching && !p->allow_discards)
        return EOPNOTSUPP;
    if (punching && p->read_only)
        return EROFS;
    if (off < 0 || len <= 0)
        return EINVAL;
    uint64_t end = (uint64_t)off + (uint64_t)len;     /* both < 2^63: no overflow */
    if (!punching)
        return mode != FALLOC_FL_KEEP_SIZE && end > p->size ? ENOSPC : 0;
    uint64_t a = ((uint64_t)off + p->ss - 1) / p->ss * p->ss;
    uint64_t b = (end < p->size ? end : p->size) / p->ss * p->ss;
    if (a >= b)
        return 0;
    struct range r = {a, b, NULL};
    range_hold(&p->locks, &r);
    int err = punch(p, a, b);
    range_release(&p->locks, &r);
    if (!err) {
        bump(w, DISCARDS, 1);
        bump(w, BYTES_DISCARDED, b - a);
    }
    return err;
}

/* --- the file system ------------------------------------------------------------------- */

/* The one place errors become errno replies: a positive errno (anything else is a bug and
 * becomes EIO); w, for a device request, counts it. */
static void reply_error(fuse_req_t req, int err, struct worker *w)
{
    if (err <= 0 || err >= 4096)
        err = EIO;
    if (w)
        bump(w, ERRORS, 1);
    fuse_reply_err(req, err);
}

static void reply_status(fuse_req_t req, int err, struct worker *w)
{
    if (err)
        reply_error(req, err, w);
    else
        fuse_reply_err(req, 0);
}

static struct plane *plane_of(fuse_req_t req) { return fuse_req_userdata(req); }

/* A stats file's bytes, taken when it is opened (fi->fh). */
struct blob {
    size_t len;
    unsigned char data[];
};

static int attr_of(struct plane *p, fuse_ino_t ino, struct stat *st, double *timeout)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = p->uid;
    st->st_gid = p->gid;
    st->st_blksize = (blksize_t)p->ss;
    *timeout = ATTR_TIMEOUT;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else if (ino == DEVICE_INO) {
        st->st_mode = S_IFREG | (p->read_only ? 0400 : 0600);
        st->st_nlink = 1;
        st->st_size = (off_t)p->size;
        st->st_blocks = (blkcnt_t)(p->size / 512);
        st->st_mtim = p->mtime;
    } else if (ino == STATS_INO) {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        *timeout = 0;
    } else {
        return ENOENT;
    }
    return 0;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct plane *p = userdata;
    if (p->max_background)
        conn->max_background = p->max_background;
    if (p->congestion_threshold)
        conn->congestion_threshold = p->congestion_threshold;
    /* Direct I/O only: large requests may be split by the kernel and served in parallel.
     * Splice stays off: replies come from memory the core just wrote (vmsplice would still
     * copy), and WRITE needs its data in memory anyway. */
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ |
                              FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e = {0};
    fuse_ino_t ino = parent != FUSE_ROOT_ID ? 0
                   : !strcmp(name, "device") ? DEVICE_INO
                   : !strcmp(name, "stats") ? STATS_INO : 0;
    if (!ino || attr_of(plane_of(req), ino, &e.attr, &e.attr_timeout)) {
        reply_error(req, ENOENT, NULL);
        return;
    }
    e.ino = ino;
    e.entry_timeout = e.attr_timeout;
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct stat st;
    double timeout;
    int err = attr_of(plane_of(req), ino, &st, &timeout);
    if (err)
        reply_error(req, err, NULL);
    else
        fuse_reply_attr(req, &st, timeout);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    struct plane *p = plane_of(req);
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        reply_error(req, EPERM, NULL);
        return;
    }
    /* a device has the size it has; times are accepted and not kept, as on a device node */
    if ((to_set & FUSE_SET_ATTR_SIZE) && (ino != DEVICE_INO || (uint64_t)attr->st_size != p->size)) {
        reply_error(req, EINVAL, NULL);
        return;
    }
    op_getattr(req, ino, fi);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != FUSE_ROOT_ID)
        reply_error(req, ENOTDIR, NULL);
    else
        fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    static const struct { const char *name; fuse_ino_t ino; mode_t mode; } entries[] = {
        {"device", DEVICE_INO, S_IFREG}, {"stats", STATS_INO, S_IFREG},
    };
    char buf[256];
    size_t used = 0;
    if (ino != FUSE_ROOT_ID) {
        reply_error(req, ENOTDIR, NULL);
        return;
    }
    if (size > sizeof buf)
        size = sizeof buf;
    for (off_t i = off < 0 ? 0 : off; i < (off_t)(sizeof entries / sizeof *entries); i++) {
        struct stat st = {.st_ino = entries[i].ino, .st_mode = entries[i].mode};
        size_t n = fuse_add_direntry(req, buf + used, size - used, entries[i].name, &st, i + 1);
        if (n > size - used)
            break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
}

/* Set while this thread runs the stats callable: exit() must not wait for it. */
static __thread int in_callback;

/* Call the Python stats callable (the only Python on any FUSE thread). */
static int stats_blob(struct plane *p, struct blob **out)
{
    int err = EIO;
    PyGILState_STATE gil = PyGILState_Ensure();
    in_callback = 1;
    PyObject *r = PyObject_CallNoArgs(p->stats);
    in_callback = 0;
    Py_buffer view;
    if (r && PyObject_GetBuffer(r, &view, PyBUF_SIMPLE) == 0) {
        struct blob *b = malloc(sizeof *b + (size_t)view.len);
        err = ENOMEM;
        if (b) {
            b->len = (size_t)view.len;
            memcpy(b->data, view.buf, b->len);
            *out = b;
            err = 0;
        }
        PyBuffer_Release(&view);
    }
    Py_XDECREF(r);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(p->stats);
    PyGILState_Release(gil);
    return err;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct plane *p = plane_of(req);
    int writing = (fi->flags & O_ACCMODE) != O_RDONLY;
    fi->direct_io = 1;          /* the kernel caches nothing */
    fi->fh = 0;
    if (ino == STATS_INO) {
        struct blob *b = NULL;
        int err = writing ? EACCES : stats_blob(p, &b);
        if (err) {
            reply_error(req, err, NULL);
            return;
        }
        fi->fh = (uintptr_t)b;
        if (fuse_reply_open(req, fi))
            free(b);            /* interrupted: no release will come */
        return;
    }
    if (ino != DEVICE_INO) {
        reply_error(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT, NULL);
        return;
    }
    if (writing && p->read_only) {
        reply_error(req, EROFS, NULL);
        return;
    }
#if FUSE_MAJOR_VERSION > 3 || FUSE_MINOR_VERSION >= 15
    /* Without it the kernel serializes direct writes on the inode; the range lock keeps
     * overlapping ones apart here. */
    fi->parallel_direct_writes = 1;
#endif
    fuse_reply_open(req, fi);   /* O_TRUNC is ignored, as a block device ignores it */
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino == STATS_INO)
        free((void *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct plane *p = plane_of(req);
    if (ino == STATS_INO) {
        const struct blob *b = (const struct blob *)(uintptr_t)fi->fh;
        size_t at = off < 0 || (uint64_t)off >= b->len ? b->len : (size_t)off;
        fuse_reply_buf(req, (const char *)b->data + at, b->len - at < size ? b->len - at : size);
        return;
    }
    struct worker *w = worker_of(p);
    const unsigned char *out = NULL;
    size_t n = 0;
    if (p->offload && w && ino == DEVICE_INO && off >= 0 && (uint64_t)off < p->size && size) {
        uint64_t end = (uint64_t)off + size < p->size ? (uint64_t)off + size : p->size;
        offload_read(p->offload, req, (uint64_t)off, end);
        return;
    }
    int err = !w ? ENOMEM : ino != DEVICE_INO ? EISDIR : off < 0 ? EINVAL
            : device_read(p, w, (uint64_t)off, size, &out, &n);
    if (err)
        reply_error(req, err, w);
    else
        fuse_reply_buf(req, (const char *)out, n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)fi;
    struct plane *p = plane_of(req);
    struct worker *w = worker_of(p);
    size_t written = 0;
    if (p->offload && w && ino == DEVICE_INO && off >= 0 && !p->read_only &&
        (uint64_t)off < p->size && size) {
        uint64_t end = (uint64_t)off + size < p->size ? (uint64_t)off + size : p->size;
        offload_write(p->offload, req, (uint64_t)off, end, (const unsigned char *)buf);
        return;
    }
    int err = !w ? ENOMEM : ino != DEVICE_INO ? EBADF : off < 0 ? EINVAL
            : device_write(p, w, (uint64_t)off, (const unsigned char *)buf, size, &written);
    if (err)
        reply_error(req, err, w);
    else
        fuse_reply_write(req, written);
}

static void flush_device(fuse_req_t req, fuse_ino_t ino)
{
    struct plane *p = plane_of(req);
    if (ino != DEVICE_INO) {
        fuse_reply_err(req, 0);
        return;
    }
    struct worker *w = worker_of(p);
    reply_status(req, w ? device_flush(p, w) : ENOMEM, w);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    flush_device(req, ino);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)datasync, (void)fi;
    flush_device(req, ino);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    (void)fi;
    struct plane *p = plane_of(req);
    struct worker *w = worker_of(p);
    int err = !w ? ENOMEM : ino != DEVICE_INO ? EOPNOTSUPP
            : device_fallocate(p, w, mode, off, len);
    reply_status(req, err, w);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    struct plane *p = plane_of(req);
    struct statvfs s = {0};
    s.f_bsize = s.f_frsize = p->ss;
    s.f_blocks = p->size / p->ss;
    s.f_files = 3;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
}

static const struct fuse_lowlevel_ops OPS = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .open = op_open,
    .release = op_release,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
    .statfs = op_statfs,
};

/* --- the session's life ---------------------------------------------------------------- */

static void wake(int sig) { (void)sig; }

/* Our WAKE_SIGNAL handler, unless someone else's is there; without SA_RESTART, so sem_wait
 * returns EINTR. */
static int install_wake_handler(void)
{
    struct sigaction old, sa = {.sa_handler = wake};
    sigemptyset(&sa.sa_mask);
    if (sigaction(WAKE_SIGNAL, NULL, &old))
        return -1;
    if (old.sa_handler == wake)
        return 0;
    if (old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) {
        errno = EBUSY;
        return -1;
    }
    return sigaction(WAKE_SIGNAL, &sa, NULL);
}

/* Everything the plane holds; with the GIL (stats), never while run() runs. */
static void plane_free(struct plane *p)
{
    offload_free(p->offload);       /* drained: before the session and the core it uses */
    if (p->se) {
        fuse_session_unmount(p->se);        /* nothing if run() already did */
        fuse_session_destroy(p->se);
    }
    while (p->workers) {
        struct worker *w = p->workers;
        p->workers = w->next;
        free(w->cipher);
        free(w->merge);
        free(w);
    }
    if (p->have_key)
        pthread_key_delete(p->key);
    if (p->have_core)
        p->api.unref(p->api.core);
    Py_XDECREF(p->stats);
    free(p->mountpoint);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->state_changed);
    pthread_mutex_destroy(&p->locks.mu);
    pthread_cond_destroy(&p->locks.freed);
    free(p);
}

/* fuse_session_exit, and the loop thread interrupted until run() is done (see the top
 * comment).  From the stats callable, on a session thread the loop would join, it does not
 * wait: the end of that very request lets the loop see the flag. */
static void plane_stop(struct plane *p)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    if (p->state == RUNNING) {
        fuse_session_exit(p->se);
        pthread_kill(p->loop_thread, WAKE_SIGNAL);
    }
    while (!in_callback && (p->state == RUNNING || p->state == FINISHING)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 10 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L)
            until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&p->state_changed, &p->mu, &until);
        if (p->state == RUNNING)
            pthread_kill(p->loop_thread, WAKE_SIGNAL);
    }
    p->exits--;
    pthread_cond_broadcast(&p->state_changed);
    pthread_mutex_unlock(&p->mu);       /* the last touch: close() may free p now */
}

static void set_state(struct plane *p, enum state s)
{
    pthread_mutex_lock(&p->mu);
    p->state = s;
    pthread_cond_broadcast(&p->state_changed);
    pthread_mutex_unlock(&p->mu);
}

/* The loop with the GIL released: 0, or the -errno of a failed session; *sync_err, the final
 * fsync's errno. */
static int plane_run(struct plane *p, int *sync_err)
{
    sigset_t wake_set, old_mask;
    sigemptyset(&wake_set);
    sigaddset(&wake_set, WAKE_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &wake_set, &old_mask);
    int res = 0;
    pthread_mutex_lock(&p->mu);
    int skip = p->stopping;
    pthread_mutex_unlock(&p->mu);
    if (!skip) {
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        if (!cfg) {
            res = -ENOMEM;
        } else {
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            fuse_loop_cfg_set_clone_fd(cfg, 1);
            fuse_loop_cfg_set_max_threads(cfg, p->threads ? p->threads
                                               : cpus > 0 ? (unsigned)cpus : 1);
            res = fuse_session_loop_mt(p->se, cfg);
            fuse_loop_cfg_destroy(cfg);
        }
    }
    set_state(p, FINISHING);
    if (p->offload)
        offload_drain(p->offload);  /* answers still owed come from the engine's threads */
    fuse_session_unmount(p->se);    /* lazily, if exit() (not an unmount) ended the loop */
    *sync_err = !p->read_only && fsync(p->fd) ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    return res;
}

/* --- the Python type ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct plane *p;        /* NULL once closed (or never made) */
} Session;

/* libfuse's argv: a program name, then fuse_options. */
static int fuse_argv(PyObject *options, struct fuse_args *args)
{
    PyObject *seq = PySequence_Fast(options, "fuse_options must be a list of str");
    if (!seq)
        return -1;
    int rc = fuse_opt_add_arg(args, "cryptfs");
    for (Py_ssize_t i = 0; !rc && i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *arg = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!arg) {
            Py_DECREF(seq);
            return -1;
        }
        rc = fuse_opt_add_arg(args, arg);
    }
    Py_DECREF(seq);
    if (rc)
        PyErr_NoMemory();
    return rc ? -1 : 0;
}

static int Session_init(Session *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "mountpoint", "fuse_options", "image_fd", "payload_offset", "size", "sector_size",
        "iv_step", "iv_offset", "core_capsule", "multi_du", "read_only", "allow_discards",
        "uid", "gid", "mtime_ns", "threads", "max_background", "congestion_threshold",
        "split_bytes", "crypto_threads", "stats", "engine_capsule", "completion_timeout", NULL,
    };
    PyObject *mountpoint = NULL, *options, *capsule, *stats, *engine_capsule = Py_None;
    double timeout = 30.0;
    int fd, sector_size, multi_du, read_only, allow_discards, threads, max_bg, congestion,
        crypto_threads;
    unsigned long long payload, size, iv_step, iv_base;
    unsigned int uid, gid;
    long long mtime_ns;
    Py_ssize_t split_bytes;
    if (self->p) {
        PyErr_SetString(PyExc_RuntimeError, "a Session is made once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&OiKKiKKOpppIILiiiniO|Od", kwlist,
                                     PyUnicode_FSConverter, &mountpoint, &options, &fd,
                                     &payload, &size, &sector_size, &iv_step, &iv_base,
                                     &capsule, &multi_du, &read_only, &allow_discards, &uid,
                                     &gid, &mtime_ns, &threads, &max_bg, &congestion,
                                     &split_bytes, &crypto_threads, &stats, &engine_capsule,
                                     &timeout))
        return -1;
    const char *path = PyBytes_AS_STRING(mountpoint);
    const char *bad = NULL;
    if (sector_size < 512 || sector_size > 4096 || (sector_size & (sector_size - 1)))
        bad = "sector_size must be a power of two from 512 to 4096";
    else if (!size || size % (unsigned)sector_size || size > INT64_MAX ||
             payload > INT64_MAX - size)
        bad = "size must be a positive multiple of sector_size, payload_offset + size < 2^63";
    else if (!iv_step)
        bad = "iv_step must be at least 1";
    else if (threads < 0 || max_bg < 0 || max_bg > 65535 || congestion < 0 ||
             congestion > 65535 || split_bytes < 0 || crypto_threads < 1)
        bad = "threads, max_background, congestion_threshold and split_bytes must not be "
              "negative (the kernel's at most 65535), crypto_threads at least 1";
    else if (!PyCallable_Check(stats))
        bad = "stats must be callable";
    else if (!(timeout > 0 && timeout <= 86400))
        bad = "completion_timeout must be from 0 to 86400 seconds";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        Py_DECREF(mountpoint);
        return -1;
    }
    const struct core_api *api = PyCapsule_GetPointer(capsule, CORE_CAPSULE_NAME);
    if (!api || api->version != CORE_API_VERSION) {
        if (api)
            PyErr_Format(PyExc_ValueError, "core capsule version %u, this plane needs %u",
                         api->version, CORE_API_VERSION);
        Py_DECREF(mountpoint);
        return -1;
    }
    const struct engine_api *engine = NULL;
    if (engine_capsule != Py_None) {
        engine = PyCapsule_GetPointer(engine_capsule, ENGINE_CAPSULE_NAME);
        if (!engine || engine->version != ENGINE_API_VERSION) {
            if (engine)
                PyErr_Format(PyExc_ValueError, "engine capsule version %u, this plane needs %u",
                             engine->version, ENGINE_API_VERSION);
            Py_DECREF(mountpoint);
            return -1;
        }
    }
    struct stat st;
    if (fstat(fd, &st)) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(mountpoint);
        return -1;
    }
    if (stat(path, &st) || !S_ISDIR(st.st_mode)) {
        if (S_ISDIR(st.st_mode) == 0)
            errno = ENOTDIR;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, mountpoint);
        Py_DECREF(mountpoint);
        return -1;
    }
    if (install_wake_handler()) {
        PyErr_Format(PyExc_RuntimeError, "signal %d, which the plane needs to stop its loop, "
                     "has another handler", WAKE_SIGNAL);
        Py_DECREF(mountpoint);
        return -1;
    }

    struct plane *p = calloc(1, sizeof *p);
    if (!p) {
        Py_DECREF(mountpoint);
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->state_changed, NULL);
    pthread_mutex_init(&p->locks.mu, NULL);
    pthread_cond_init(&p->locks.freed, NULL);
    p->fd = fd;
    p->payload = payload;
    p->size = size;
    p->ss = (size_t)sector_size;
    p->iv_step = iv_step;
    p->iv_base = iv_base;
    p->multi_du = multi_du;
    p->read_only = read_only;
    p->allow_discards = allow_discards;
    p->uid = uid;
    p->gid = gid;
    p->mtime.tv_sec = (time_t)(mtime_ns / 1000000000LL);
    p->mtime.tv_nsec = (long)(mtime_ns % 1000000000LL);
    if (p->mtime.tv_nsec < 0)
        p->mtime.tv_sec--, p->mtime.tv_nsec += 1000000000L;
    p->threads = (unsigned)threads;
    p->max_background = (unsigned)max_bg;
    p->congestion_threshold = (unsigned)congestion;
    p->split_bytes = (size_t)split_bytes;
    p->crypto_threads = crypto_threads;
    p->api = *api;
    p->api.ref(p->api.core);
    p->have_core = 1;
    Py_INCREF(stats);
    p->stats = stats;
    p->mountpoint = strdup(path);
    Py_DECREF(mountpoint);
    if (!p->mountpoint || pthread_key_create(&p->key, worker_gone)) {
        plane_free(p);
        PyErr_NoMemory();
        return -1;
    }
    p->have_key = 1;
    if (engine) {
        struct offload_device dev = {
            .fd = fd, .payload = payload, .ss = p->ss, .iv_step = iv_step, .iv_base = iv_base,
            .multi_du = multi_du, .core = &p->api, .locks = &p->locks,
        };
        if (!(p->offload = offload_new(&dev, engine, timeout))) {
            int err = errno;
            plane_free(p);
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }

    struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
    if (fuse_argv(options, &fargs)) {
        fuse_opt_free_args(&fargs);
        plane_free(p);
        return -1;
    }
    p->se = fuse_session_new(&fargs, &OPS, sizeof OPS, p);
    fuse_opt_free_args(&fargs);
    if (!p->se) {
        plane_free(p);
        PyErr_SetString(PyExc_RuntimeError, "libfuse refused the session's options (its "
                                            "reason is on stderr)");
        return -1;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = fuse_session_mount(p->se, p->mountpoint);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_Format(PyExc_RuntimeError, "cannot mount FUSE on %s (libfuse's reason is on "
                     "stderr)", p->mountpoint);
        plane_free(p);
        return -1;
    }
    self->p = p;
    return 0;
}

static struct plane *open_plane(Session *self)
{
    if (!self->p)
        PyErr_SetString(PyExc_ValueError, "this session is closed");
    return self->p;
}

static PyObject *Session_run(Session *self, PyObject *unused)
{
    (void)unused;
    struct plane *p = open_plane(self);
    if (!p)
        return NULL;
    pthread_mutex_lock(&p->mu);
    int fresh = p->state == IDLE;
    if (fresh) {
        p->state = RUNNING;
        p->loop_thread = pthread_self();
    }
    pthread_mutex_unlock(&p->mu);
    if (!fresh) {
        PyErr_SetString(PyExc_RuntimeError, "run() is called once per session");
        return NULL;
    }
    int res, sync_err, stopped;
    Py_BEGIN_ALLOW_THREADS
    res = plane_run(p, &sync_err);
    pthread_mutex_lock(&p->mu);
    stopped = p->stopping;
    pthread_mutex_unlock(&p->mu);
    set_state(p, DONE);
    Py_END_ALLOW_THREADS
    if (res < 0 && !stopped) {
        errno = -res;
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if (sync_err) {
        PyErr_Format(PyExc_OSError, "fsync of the image after the session: %s",
                     strerror(sync_err));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Session_exit(Session *self, PyObject *unused)
{
    (void)unused;
    struct plane *p = self->p;
    if (p) {
        pthread_mutex_lock(&p->mu);     /* counted with the GIL held: close() sees it */
        p->exits++;
        pthread_mutex_unlock(&p->mu);
        Py_BEGIN_ALLOW_THREADS
        plane_stop(p);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* Add n named counters into dict d (names may repeat): 0, or -1 with an exception. */
static int add_counters(PyObject *d, const char *const *names, const uint64_t *values, int n)
{
    for (int c = 0; c < n; c++) {
        PyObject *old = PyDict_GetItemString(d, names[c]);
        unsigned long long sum = values[c] + (old ? PyLong_AsUnsignedLongLong(old) : 0);
        PyObject *v = PyLong_FromUnsignedLongLong(sum);
        if (!v || PyDict_SetItemString(d, names[c], v)) {
            Py_XDECREF(v);
            return -1;
        }
        Py_DECREF(v);
    }
    return 0;
}

static int offload_counts(PyObject *d, struct offload *o)
{
    uint64_t values[OFF_N_COUNTERS];
    offload_counters(o, values);
    return add_counters(d, OFFLOAD_COUNTER_NAMES, values, OFF_N_COUNTERS);
}

static PyObject *Session_counters(Session *self, PyObject *unused)
{
    (void)unused;
    struct plane *p = open_plane(self);
    if (!p)
        return NULL;
    uint64_t total[N_COUNTERS] = {0};
    pthread_mutex_lock(&p->mu);
    for (struct worker *w = p->workers; w; w = w->next)
        for (int c = 0; c < N_COUNTERS; c++)
            total[c] += __atomic_load_n(&w->count[c], __ATOMIC_RELAXED);
    pthread_mutex_unlock(&p->mu);
    PyObject *d = PyDict_New();
    if (d && (add_counters(d, COUNTER_NAMES, total, N_COUNTERS) ||
              (p->offload && offload_counts(d, p->offload))))
        Py_CLEAR(d);
    return d;
}

static PyObject *Session_close(Session *self, PyObject *unused)
{
    (void)unused;
    struct plane *p = self->p;
    if (!p)
        Py_RETURN_NONE;
    pthread_mutex_lock(&p->mu);
    int busy = p->state == RUNNING || p->state == FINISHING;
    pthread_mutex_unlock(&p->mu);
    if (busy) {
        PyErr_SetString(PyExc_RuntimeError, "the session is running: exit() it first");
        return NULL;
    }
    self->p = NULL;                     /* later exit() calls find nothing to stop */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&p->mu);
    while (p->exits)
        pthread_cond_wait(&p->state_changed, &p->mu);
    pthread_mutex_unlock(&p->mu);
    Py_END_ALLOW_THREADS
    plane_free(p);
    Py_RETURN_NONE;
}

static void Session_dealloc(Session *self)
{
    /* run() holds a reference while it runs: no thread can be serving now */
    if (self->p)
        plane_free(self->p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Session_methods[] = {
    {"run", (PyCFunction)Session_run, METH_NOARGS,
     "Serve until unmounted or exit(); then unmount and fsync the image (see the module doc)."},
    {"exit", (PyCFunction)Session_exit, METH_NOARGS,
     "Make run() return (thread-safe); returns once it has."},
    {"counters", (PyCFunction)Session_counters, METH_NOARGS,
     "The worker threads' counters, merged, as a dict."},
    {"close", (PyCFunction)Session_close, METH_NOARGS,
     "Free the session (unmounting if run() never did) and drop the core reference."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cryptfs.fuse._plane.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mounted native FUSE session serving the decrypted device (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cryptfs.fuse._plane",
    .m_doc = "The native data plane: the FUSE session served in C, the device's I/O without "
             "the GIL through the native core.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__plane(void)
{
    if (PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddStringConstant(m, "fuse_version", fuse_pkgversion()) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_SIGNAL", WAKE_SIGNAL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
