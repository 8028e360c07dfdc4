/*
 * The native plane's asynchronous path (offload.h): bios through an asynchronous engine.
 *
 * A bio goes through stages, each one pass of crypto requests over one or two segments:
 *   read:  READING  (ciphertext -> plaintext), then the reply;
 *   write: EDGES    (the partial edge units' ciphertext -> plaintext; only if unaligned),
 *          WRITING  (merged plaintext -> ciphertext), then pwrite, the range released, reply.
 * A pass is dm-crypt's crypt_convert: pump() submits the requests in order until the engine
 * answers BUSY; the request's RESTART (on an engine thread) pumps on.  The thread that sees
 * the last completion of a pass (or the watchdog, when a pass outlives the timeout) ends it:
 * end_pass() retries, recovers or moves to the next stage.
 *
 * Lifetime: a bio holds one reference for itself until it is answered and one per request
 * the engine holds; it goes back to the pool when the last is dropped.  A pass given up on
 * (timeout) may still have requests in the engine, writing into its output: its recovery
 * writes into the bio's spare buffer instead, and the bio never submits again.
 */
#define _GNU_SOURCE
#include "offload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const OFFLOAD_COUNTER_NAMES[OFF_N_COUNTERS] = {
    "reads", "bytes_read", "writes", "bytes_written", "rmw", "errors", "crypto_requests",
    "data_units", "busy", "timeouts", "retries", "retried_units", "multi_du_retried_bios",
    "failed_bios",
};

enum stage { READING, EDGES, WRITING };

struct bio;

struct sub {
    struct engine_req r;        /* first: the engine hands back &r */
    struct bio *bio;
    int err;
};

struct seg {
    const unsigned char *src;
    unsigned char *dst;
    size_t len;
    uint64_t unit;              /* the device's data unit at src[0] */
};

struct bio {
    struct offload *o;
    fuse_req_t req;
    enum stage stage;
    uint64_t off, end, a, b;    /* the bytes asked for; the whole units around them */
    unsigned char *text, *cipher, *edge, *spare;   /* plaintext, ciphertext: span each */
    size_t cap;                 /* the allocation, for the pool */
    struct range range;         /* a write's */
    struct bio *prev, *next;    /* in flight (o->mu) */
    int refs;
    /* the pass, under mu */
    pthread_mutex_t mu;
    struct seg seg[2];
    int nseg, encrypt, multi, retried, abandoned;
    unsigned nreq, next_sub, outstanding, failed, nomem;
    int pumping, waiting, restarted, ending;
    uint64_t deadline_ns;
    unsigned max_subs;
    struct sub subs[];
};

#define POOL_CLASSES 40
#define POOL_KEEP 16         /* bios kept per size class for reuse */

struct offload {
    struct offload_device dev;
    struct engine_api engine;
    uint64_t timeout_ns;
    pthread_mutex_t mu;         /* in flight, live, pool, draining, stopping */
    pthread_cond_t drained;     /* live fell while draining */
    pthread_cond_t stop;        /* for the watchdog */
    struct bio *inflight;       /* not yet answered */
    unsigned live;              /* allocated bios */
    struct pool {
        void *free[POOL_KEEP];
        unsigned n;
    } pool[POOL_CLASSES];
    int draining, stopping;
    pthread_t watchdog;
    uint64_t count[OFF_N_COUNTERS];
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void bump(struct offload *o, enum offload_counter c, uint64_t n)
{
    __atomic_add_fetch(&o->count[c], n, __ATOMIC_RELAXED);
}

/* --- bios: allocation, lifetime ------------------------------------------------------- */

#define ALIGN_UP(x) (((x) + 4095) & ~(size_t)4095)

/* A bio for units [a, b): header, requests, then (page-aligned, for pread) its buffers. */
static struct bio *bio_new(struct offload *o, uint64_t a, uint64_t b)
{
    size_t span = b - a, ss = o->dev.ss, subs = span / ss;
    size_t head = ALIGN_UP(sizeof(struct bio) + subs * sizeof(struct sub));
    size_t need = head + 3 * span + 2 * ss;    /* text, cipher, spare; the edges */
    unsigned cls = 12;
    while (((size_t)1 << cls) < need)
        cls++;
    struct bio *bio = NULL;
    pthread_mutex_lock(&o->mu);
    if (cls < POOL_CLASSES && o->pool[cls].n)
        bio = o->pool[cls].free[--o->pool[cls].n];
    o->live++;
    pthread_mutex_unlock(&o->mu);
    if (!bio && posix_memalign((void **)&bio, 4096, (size_t)1 << cls)) {
        pthread_mutex_lock(&o->mu);
        o->live--;
        pthread_mutex_unlock(&o->mu);
        return NULL;
    }
    memset(bio, 0, sizeof *bio);
    unsigned char *base = (unsigned char *)bio + head;
    bio->o = o;
    bio->a = a;
    bio->b = b;
    bio->cap = cls;
    bio->text = base;
    bio->cipher = base + span;
    bio->spare = base + 2 * span;
    bio->edge = base + 3 * span;
    bio->refs = 1;
    bio->deadline_ns = UINT64_MAX;      /* no pass yet */
    bio->max_subs = (unsigned)subs;
    pthread_mutex_init(&bio->mu, NULL);
    return bio;
}

static void bio_put(struct bio *bio)
{
    if (__atomic_sub_fetch(&bio->refs, 1, __ATOMIC_ACQ_REL))
        return;
    struct offload *o = bio->o;
    pthread_mutex_destroy(&bio->mu);
    pthread_mutex_lock(&o->mu);
    struct pool *pool = bio->cap < POOL_CLASSES ? &o->pool[bio->cap] : NULL;
    if (pool && pool->n < POOL_KEEP) {
        pool->free[pool->n++] = bio;
        bio = NULL;
    }
    o->live--;
    if (o->draining)
        pthread_cond_broadcast(&o->drained);
    pthread_mutex_unlock(&o->mu);
    free(bio);
}

static void track(struct bio *bio)
{
    struct offload *o = bio->o;
    pthread_mutex_lock(&o->mu);
    bio->next = o->inflight;
    if (o->inflight)
        o->inflight->prev = bio;
    o->inflight = bio;
    pthread_mutex_unlock(&o->mu);
}

/* The one place a bio is answered: err 0 replies with its data, else with the errno. */
static void finish(struct bio *bio, int err)
{
    struct offload *o = bio->o;
    pthread_mutex_lock(&o->mu);
    if (bio->prev)
        bio->prev->next = bio->next;
    else
        o->inflight = bio->next;
    if (bio->next)
        bio->next->prev = bio->prev;
    pthread_mutex_unlock(&o->mu);
    size_t n = bio->end - bio->off;
    if (bio->stage != READING)
        range_release(o->dev.locks, &bio->range);
    if (err) {
        bump(o, OFF_ERRORS, 1);
        fuse_reply_err(bio->req, err);
    } else if (bio->stage == READING) {
        bump(o, OFF_READS, 1);
        bump(o, OFF_BYTES_READ, n);
        fuse_reply_buf(bio->req, (const char *)bio->seg[0].dst + (bio->off - bio->a), n);
    } else {
        bump(o, OFF_WRITES, 1);
        bump(o, OFF_BYTES_WRITTEN, n);
        fuse_reply_write(bio->req, n);
    }
    bio_put(bio);
}

/* --- a pass ---------------------------------------------------------------------------- */

static void end_pass(struct bio *bio);

static void completed(struct engine_req *r, int err);

static void forgotten(struct engine_req *r)
{
    bio_put(((struct sub *)r)->bio);
}

static void add_sub(struct bio *bio, const struct seg *s, size_t at, size_t len)
{
    const struct offload_device *d = &bio->o->dev;
    struct sub *sub = &bio->subs[bio->nreq++];
    uint64_t unit = s->unit + at / d->ss;
    *sub = (struct sub){
        .r = {.encrypt = bio->encrypt, .src = s->src + at, .dst = s->dst + at, .len = len,
              .du = d->ss, .first_iv_sector = unit * d->iv_step + d->iv_base,
              .step = d->iv_step, .complete = completed, .forget = forgotten, .owner = bio},
        .bio = bio,
    };
}

/* Under bio->mu: whether the pass is over — every request submitted and back, nobody still
 * submitting or waiting for a RESTART — and the caller is the one to end it (once). */
static int take_end(struct bio *bio)
{
    int end = !bio->pumping && !bio->waiting && !bio->ending && bio->next_sub == bio->nreq &&
              !bio->outstanding;
    bio->ending |= end;
    return end;
}

/* Submit from next_sub on until all are out or the engine is BUSY (then the request's
 * RESTART calls this again); end the pass if everything came back meanwhile.  The caller
 * took a reference for it, which it drops: a watchdog may end the pass and answer the bio
 * while this thread is inside submit. */
static void pump(struct bio *bio)
{
    struct offload *o = bio->o;
    pthread_mutex_lock(&bio->mu);
    bio->pumping = 1;
    bio->waiting = 0;
    while (bio->next_sub < bio->nreq && !bio->abandoned) {
        struct sub *sub = &bio->subs[bio->next_sub++];
        bio->outstanding++;
        __atomic_add_fetch(&bio->refs, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&bio->mu);
        int status = o->engine.submit(o->engine.engine, &sub->r);
        pthread_mutex_lock(&bio->mu);
        if (status == ENGINE_BUSY) {
            bump(o, OFF_BUSY, 1);
            if (!bio->restarted) {
                bio->waiting = 1;
                break;
            }
            bio->restarted = 0;     /* its RESTART came before BUSY did */
        }
    }
    bio->pumping = 0;
    int end = take_end(bio);
    pthread_mutex_unlock(&bio->mu);
    if (end)
        end_pass(bio);
    bio_put(bio);
}

static void completed(struct engine_req *r, int err)
{
    struct sub *sub = (struct sub *)r;
    struct bio *bio = sub->bio;
    pthread_mutex_lock(&bio->mu);
    if (bio->abandoned) {               /* late: given up on and redone already */
        pthread_mutex_unlock(&bio->mu);
        if (err != ENGINE_RESTART)
            bio_put(bio);
        return;
    }
    if (err == ENGINE_RESTART) {
        int go_on = bio->waiting;
        bio->waiting = 0;
        bio->restarted = bio->pumping;
        if (go_on)
            __atomic_add_fetch(&bio->refs, 1, __ATOMIC_RELAXED);     /* pump's */
        pthread_mutex_unlock(&bio->mu);
        if (go_on)
            pump(bio);
        return;
    }
    sub->err = err;
    bio->outstanding--;
    bio->failed += err != 0;
    bio->nomem += err == -ENOMEM;
    int end = take_end(bio);
    pthread_mutex_unlock(&bio->mu);
    if (end)
        end_pass(bio);
    bio_put(bio);
}

/* A pass over the bio's segments: one request per segment (multi) or per data unit. */
static void start_pass(struct bio *bio, int multi)
{
    struct offload *o = bio->o;
    size_t ss = o->dev.ss, units = 0;
    pthread_mutex_lock(&bio->mu);
    bio->multi = multi;
    bio->nreq = bio->next_sub = bio->outstanding = bio->failed = bio->nomem = 0;
    bio->restarted = bio->waiting = bio->ending = 0;
    for (int i = 0; i < bio->nseg; i++) {
        const struct seg *s = &bio->seg[i];
        units += s->len / ss;
        for (size_t at = 0; at < s->len; at += multi ? s->len : ss)
            add_sub(bio, s, at, multi ? s->len : ss);
    }
    bio->deadline_ns = now_ns() + o->timeout_ns;
    __atomic_add_fetch(&bio->refs, 1, __ATOMIC_RELAXED);     /* pump's */
    pthread_mutex_unlock(&bio->mu);
    bump(o, OFF_CRYPTO_REQUESTS, bio->nreq);
    bump(o, OFF_DATA_UNITS, units);
    pump(bio);
}

/* Units [at, at+len) of segment s on the core, one call per unit (the per-sector CPU path):
 * 0 or EIO. */
static int recover(struct bio *bio, const struct seg *s, size_t at, size_t len)
{
    const struct offload_device *d = &bio->o->dev;
    const struct core_api *c = d->core;
    for (size_t u = at; u < at + len; u += d->ss) {
        uint64_t unit = s->unit + u / d->ss;
        if (c->crypt_sectors(c->core, bio->encrypt, s->src + u, s->dst + u, d->ss,
                             unit * d->iv_step + d->iv_base, d->ss, 1, 1))
            return EIO;
    }
    bump(bio->o, OFF_RETRIED_UNITS, len / d->ss);
    return 0;
}

/* Every segment on the core, outputs moved to the spare buffer where a given-up pass's
 * requests may still write the usual one. */
static int recover_all(struct bio *bio)
{
    size_t used = 0;
    int err = 0;
    for (int i = 0; i < bio->nseg && !err; i++) {
        if (bio->abandoned) {
            bio->seg[i].dst = bio->spare + used;
            used += bio->seg[i].len;
        }
        bump(bio->o, OFF_RETRIES, 1);
        err = recover(bio, &bio->seg[i], 0, bio->seg[i].len);
    }
    return err;
}

static void next_stage(struct bio *bio);

/* The pass is over (all back, or given up on): retry, recover, or go on. */
static void end_pass(struct bio *bio)
{
    struct offload *o = bio->o;
    int err = 0;
    if (bio->abandoned) {
        err = recover_all(bio);
    } else if (bio->nomem && bio->multi && !bio->retried) {
        bump(o, OFF_MULTI_DU_RETRIED_BIOS, 1);
        bio->retried = 1;               /* a retried bio never re-enters multi_du */
        start_pass(bio, 0);
        return;
    } else if (bio->failed) {
        for (unsigned i = 0; i < bio->nreq && !err; i++) {
            struct sub *sub = &bio->subs[i];
            if (!sub->err)
                continue;
            const struct seg *s = &bio->seg[0];
            for (int k = 1; k < bio->nseg; k++)     /* which segment it was cut from */
                if (sub->r.src >= bio->seg[k].src)
                    s = &bio->seg[k];
            bump(o, OFF_RETRIES, 1);
            err = recover(bio, s, (size_t)(sub->r.src - s->src), sub->r.len);
        }
    }
    if (err) {
        bump(o, OFF_FAILED_BIOS, 1);
        finish(bio, EIO);
        return;
    }
    next_stage(bio);
}

/* One pass: through the engine, or on the core once the bio has given up on the engine. */
static void run_pass(struct bio *bio)
{
    if (!bio->abandoned) {
        start_pass(bio, bio->o->dev.multi_du && !bio->retried);
        return;
    }
    if (recover_all(bio)) {
        bump(bio->o, OFF_FAILED_BIOS, 1);
        finish(bio, EIO);
        return;
    }
    next_stage(bio);
}

/* The edge units' plaintext around the data (EDGES done): into the text buffer. */
static void merge_edges(struct bio *bio)
{
    size_t ss = bio->o->dev.ss;
    const unsigned char *head = bio->seg[0].dst;
    const unsigned char *tail = bio->nseg > 1 ? bio->seg[1].dst : head;
    if (bio->off != bio->a)
        memcpy(bio->text, head, bio->off - bio->a);
    if (bio->end != bio->b)
        memcpy(bio->text + (bio->end - bio->a), tail + (ss - (bio->b - bio->end)),
               bio->b - bio->end);
}

static void next_stage(struct bio *bio)
{
    struct offload *o = bio->o;
    size_t span = bio->b - bio->a;
    switch (bio->stage) {
    case READING:
        finish(bio, 0);
        return;
    case EDGES:
        merge_edges(bio);
        bio->stage = WRITING;
        bio->encrypt = 1;
        bio->nseg = 1;
        bio->seg[0] = (struct seg){bio->text, bio->cipher, span, bio->a / o->dev.ss};
        run_pass(bio);
        return;
    case WRITING:
        finish(bio, pwrite_all(o->dev.fd, bio->seg[0].dst, span, o->dev.payload + bio->a));
        return;
    }
}

/* --- the device ------------------------------------------------------------------------ */

/* The bio of request `req` for bytes [off, end): NULL (req answered ENOMEM) if none. */
static struct bio *bio_of(struct offload *o, fuse_req_t req, uint64_t off, uint64_t end)
{
    size_t ss = o->dev.ss;
    struct bio *bio = bio_new(o, off / ss * ss, (end + ss - 1) / ss * ss);
    if (!bio) {
        bump(o, OFF_ERRORS, 1);
        fuse_reply_err(req, ENOMEM);
        return NULL;
    }
    bio->req = req;
    bio->off = off;
    bio->end = end;
    return bio;
}

void offload_read(struct offload *o, fuse_req_t req, uint64_t off, uint64_t end)
{
    struct bio *bio = bio_of(o, req, off, end);
    if (!bio)
        return;
    uint64_t a = bio->a, b = bio->b;
    bio->stage = READING;
    track(bio);
    int err = pread_all(o->dev.fd, bio->cipher, b - a, o->dev.payload + a);
    if (err) {
        finish(bio, err);
        return;
    }
    bio->nseg = 1;
    bio->seg[0] = (struct seg){bio->cipher, bio->text, b - a, a / o->dev.ss};
    run_pass(bio);
}

void offload_write(struct offload *o, fuse_req_t req, uint64_t off, uint64_t end,
                   const unsigned char *data)
{
    struct bio *bio = bio_of(o, req, off, end);
    if (!bio)
        return;
    size_t ss = o->dev.ss;
    uint64_t a = bio->a, b = bio->b;
    bio->range = (struct range){a, b, NULL};
    memcpy(bio->text + (off - a), data, end - off);     /* FUSE's buffer is gone on return */
    range_hold(o->dev.locks, &bio->range);
    track(bio);
    int head = off != a, tail = end != b && (b - ss != a || !head);
    if (!head && !tail) {
        bio->stage = EDGES;             /* nothing to merge: straight on to WRITING */
        bio->nseg = 0;
        next_stage(bio);
        return;
    }
    bump(o, OFF_RMW, 1);
    bio->stage = EDGES;
    bio->encrypt = 0;
    int err = 0;
    if (head) {
        bio->seg[bio->nseg++] = (struct seg){bio->cipher, bio->edge, ss, a / ss};
        err = pread_all(o->dev.fd, bio->cipher, ss, o->dev.payload + a);
    }
    if (!err && tail) {
        size_t at = b - ss - a;
        bio->seg[bio->nseg++] = (struct seg){bio->cipher + at, bio->edge + ss, ss,
                                             (b - ss) / ss};
        err = pread_all(o->dev.fd, bio->cipher + at, ss, o->dev.payload + b - ss);
    }
    if (err) {
        finish(bio, err);
        return;
    }
    run_pass(bio);
}

/* --- the watchdog ---------------------------------------------------------------------- */

/* Give up on a pass that outlived the timeout (if it is still out): end it on the core. */
static void abandon(struct bio *bio)
{
    pthread_mutex_lock(&bio->mu);
    int mine = !bio->ending && !bio->abandoned;
    if (mine) {
        bump(bio->o, OFF_TIMEOUTS, bio->outstanding + (bio->nreq - bio->next_sub));
        bio->abandoned = bio->ending = 1;
    }
    pthread_mutex_unlock(&bio->mu);
    if (mine)
        end_pass(bio);
}

static void *watchdog_main(void *arg)
{
    struct offload *o = arg;
    uint64_t period = o->timeout_ns / 4;
    period = period < 1000000 ? 1000000 : period > 50000000 ? 50000000 : period;
    pthread_mutex_lock(&o->mu);
    while (!o->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + period;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&o->stop, &o->mu, &until);
        uint64_t now = now_ns();
        struct bio *bio = o->inflight;
        while (bio && !o->stopping) {
            /* a hint read without the bio's lock: abandon() decides under it */
            if (__atomic_load_n(&bio->deadline_ns, __ATOMIC_RELAXED) > now ||
                __atomic_load_n(&bio->ending, __ATOMIC_RELAXED)) {
                bio = bio->next;
                continue;
            }
            __atomic_add_fetch(&bio->refs, 1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&o->mu);
            abandon(bio);
            bio_put(bio);
            pthread_mutex_lock(&o->mu);
            bio = o->inflight;      /* the list may have changed: start over */
        }
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

/* --- life ------------------------------------------------------------------------------ */

struct offload *offload_new(const struct offload_device *dev, const struct engine_api *engine,
                            double timeout_s)
{
    struct offload *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->dev = *dev;
    o->engine = *engine;
    o->timeout_ns = (uint64_t)(timeout_s * 1e9);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->drained, NULL);
    pthread_cond_init(&o->stop, NULL);
    int err = pthread_create(&o->watchdog, NULL, watchdog_main, o);
    if (err) {
        pthread_mutex_destroy(&o->mu);
        pthread_cond_destroy(&o->drained);
        pthread_cond_destroy(&o->stop);
        free(o);
        errno = err;
        return NULL;
    }
    o->engine.ref(o->engine.engine);
    return o;
}

void offload_drain(struct offload *o)
{
    pthread_mutex_lock(&o->mu);
    o->draining++;
    while (o->live)
        pthread_cond_wait(&o->drained, &o->mu);
    o->draining--;
    pthread_mutex_unlock(&o->mu);
}

void offload_counters(struct offload *o, uint64_t out[OFF_N_COUNTERS])
{
    for (int c = 0; c < OFF_N_COUNTERS; c++)
        out[c] = __atomic_load_n(&o->count[c], __ATOMIC_RELAXED);
}

void offload_free(struct offload *o)
{
    if (!o)
        return;
    offload_drain(o);
    pthread_mutex_lock(&o->mu);
    o->stopping = 1;
    pthread_cond_signal(&o->stop);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->watchdog, NULL);
    o->engine.unref(o->engine.engine);
    for (int c = 0; c < POOL_CLASSES; c++)
        while (o->pool[c].n)
            free(o->pool[c].free[--o->pool[c].n]);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->drained);
    pthread_cond_destroy(&o->stop);
    free(o);
}
