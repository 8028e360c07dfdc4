/*
 * The simulated asynchronous crypto engine (engine.h): a ring, a backlog, `channels` threads.
 *
 * One mutex guards the ring, the backlog, the fault streams and the counters; it is never
 * held while bytes are computed, while a channel waits out a job's simulated time, or while a
 * completion runs.
 *
 * Timing: a job's bytes are computed when it starts, then its channel waits until the job's
 * simulated end.  The wait sleeps (clock_nanosleep, timer slack 1 ns) until shortly before
 * the end and spins the rest: the kernel wakes a sleeper some microseconds late, and the
 * channel learns how late (`margin_ns`) so the spin stays short.
 *
 * A channel that has just finished a job polls the ring for POLL_NS before it sleeps (one
 * channel at a time): hardware needs no thread woken to take the next request, and waking
 * one costs the simulation 5-20 us on a virtual machine, more than a fast engine's job.
 *
 * What the host would spend is only the submitter's work and the completions' (which run on
 * the channel threads, as interrupt handlers would on the host's CPUs).  Everything else the
 * channel threads spend - computing the bytes, sleeping and spinning out the jobs' time,
 * polling, waking - is the simulation's: engine_thread_cpu_s, which a study subtracts from
 * the daemon's CPU time (engine_compute_cpu_s and engine_wait_cpu_s are parts of it).
 */
#define _GNU_SOURCE
#include "engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#define MAX_CHANNELS 64
#define MAX_MARGIN_NS 100000
#define POLL_NS 100000

struct queue {
    struct engine_req *head, *tail;
    uint64_t n;
};

/* splitmix64: one seeded stream per fault, as the Python model keeps */
struct rng {
    uint64_t s;
};

struct channel {
    struct engine *e;
    pthread_t thread;
    uint64_t clock_ns;          /* the simulated end of this channel's last job */
    uint64_t margin_ns;         /* how early to wake before a job's end */
    double cpu_mark;            /* thread CPU when the simulation's part last resumed */
    uint64_t sim_cpu_ns;        /* the simulation's CPU on this thread (written by it) */
};

struct engine {
    struct core *core;
    struct engine_options o;
    pthread_mutex_t mu;
    pthread_cond_t work;
    struct queue ring, backlog;
    unsigned in_ring;           /* slots taken: queued in the ring or running on a channel */
    uint64_t submitted;
    uint64_t promote_at_ns;     /* a storm left slots free: promote then (0: nothing due) */
    int stopping;
    int polling;                /* a channel polls the ring: no need to signal */
    int refs;
    struct rng error, lost, nomem;
    struct engine_stats st;
    double latency_sum_us;
    unsigned started;
    struct channel channels[MAX_CHANNELS];
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static double thread_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double uniform(struct rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

static void push(struct queue *q, struct engine_req *r)
{
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        __atomic_store_n(&q->head, r, __ATOMIC_RELEASE);    /* a poller reads it unlocked */
    q->tail = r;
    q->n++;
}

static struct engine_req *pop(struct queue *q)
{
    struct engine_req *r = q->head;
    if (r) {
        __atomic_store_n(&q->head, r->next, __ATOMIC_RELAXED);     /* read unlocked by a poller */
        if (!q->head)
            q->tail = NULL;
        q->n--;
    }
    return r;
}

/* Under mu: backlogged requests into the free slots, their slots taken; the list to
 * announce (restart()). */
static struct engine_req *promote_locked(struct engine *e)
{
    struct queue out = {0};
    while (e->backlog.head && e->in_ring < e->o.queue_depth) {
        e->in_ring++;
        push(&out, pop(&e->backlog));
    }
    return out.head;
}

/* Without mu: tell each promoted request (RESTART), then queue it in the ring. */
static void restart(struct engine *e, struct engine_req *list)
{
    while (list) {
        struct engine_req *r = list;
        list = r->next;
        r->complete(r, ENGINE_RESTART);
        pthread_mutex_lock(&e->mu);
        r->ring_ns = now_ns();
        push(&e->ring, r);
        pthread_cond_signal(&e->work);
        pthread_mutex_unlock(&e->mu);
    }
}

static uint64_t duration_ns(const struct engine *e, const struct engine_req *r)
{
    uint64_t units = r->len / r->du, jobs = e->o.native_multi_du ? 1 : units;
    double us = (double)jobs * e->o.setup_us + (double)units * e->o.per_unit_us +
                (double)r->len / e->o.throughput_mbps;      /* bytes / (MB/s) = us */
    return (uint64_t)(us * 1000.0);
}

/* Until `deadline`: sleep, then spin the last stretch; the CPU seconds spun. */
static double wait_until(struct channel *c, uint64_t deadline)
{
    uint64_t now = now_ns();
    if (now >= deadline)
        return 0;
    if (deadline - now > c->margin_ns + 2000) {
        uint64_t wake_at = deadline - c->margin_ns;
        struct timespec t = {(time_t)(wake_at / 1000000000u), (long)(wake_at % 1000000000u)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
            ;
        uint64_t late = now_ns() - wake_at;     /* how late the kernel woke us */
        late = late > MAX_MARGIN_NS ? MAX_MARGIN_NS : late;
        c->margin_ns = (7 * c->margin_ns + late) / 8;
    }
    double start = thread_cpu_s();
    while (now_ns() < deadline)
        cpu_relax();
    return thread_cpu_s() - start;
}

/* Host work follows on this thread (completions): the simulation's CPU so far is counted. */
static void host_begins(struct channel *c)
{
    double now = thread_cpu_s();
    __atomic_store_n(&c->sim_cpu_ns, c->sim_cpu_ns + (uint64_t)((now - c->cpu_mark) * 1e9),
                     __ATOMIC_RELAXED);
}

static void host_ends(struct channel *c)
{
    c->cpu_mark = thread_cpu_s();
}

/* One job on channel c (mu not held): its fault (drawn under mu), its bytes, its time. */
static void run_job(struct channel *c, struct engine_req *r)
{
    struct engine *e = c->e;
    uint64_t units = r->len / r->du;
    int err = 0;
    pthread_mutex_lock(&e->mu);
    if (units > 1 && uniform(&e->nomem) < e->o.nomem_rate) {
        err = -ENOMEM;
        e->st.nomem_injected++;
    } else if (uniform(&e->error) < e->o.error_rate) {
        err = -EIO;
        e->st.errors_injected++;
        e->st.errors++;
    }
    int lost = uniform(&e->lost) < e->o.lost_rate;
    pthread_mutex_unlock(&e->mu);

    /* the job starts when it entered the ring or when the channel's last one ended: a
     * channel's wake-up and a completion's host work are not the engine's time */
    uint64_t duration = duration_ns(e, r);
    uint64_t done_at = (r->ring_ns > c->clock_ns ? r->ring_ns : c->clock_ns) + duration;
    c->clock_ns = done_at;
    double compute = 0;
    if (!err) {
        double cpu = thread_cpu_s();
        if (core_crypt_sectors(e->core, r->encrypt, r->src, r->dst, r->len,
                               r->first_iv_sector, r->du, r->step, 1))
            err = -EIO;
        else if (e->o.corrupt)
            r->dst[0] ^= 0x5A;
        compute = thread_cpu_s() - cpu;
    }
    int overrun = now_ns() > done_at;       /* computing took longer than the engine would */
    double spun = wait_until(c, done_at);

    pthread_mutex_lock(&e->mu);
    e->st.engine_busy_s += (double)duration / 1e9;
    e->st.engine_compute_cpu_s += compute;
    e->st.engine_wait_cpu_s += spun;
    e->st.overruns += (uint64_t)overrun;
    e->in_ring--;
    struct engine_req *promoted = promote_locked(e);
    if (lost) {
        e->st.lost++;
    } else {
        e->st.completed++;
        double us = (double)(now_ns() - r->queued_ns) / 1000.0;
        e->latency_sum_us += us;
        if (us > e->st.latency_max_us)
            e->st.latency_max_us = us;
    }
    pthread_mutex_unlock(&e->mu);
    host_begins(c);
    restart(e, promoted);
    if (lost)
        r->forget(r);
    else
        r->complete(r, err);
    host_ends(c);
}

/* After a job: poll the ring for POLL_NS unless another channel does (mu held on entry and
 * exit); whether a request came. */
static int poll_ring(struct engine *e)
{
    if (e->polling)
        return 0;
    e->polling = 1;
    pthread_mutex_unlock(&e->mu);
    uint64_t until = now_ns() + POLL_NS;
    while (!__atomic_load_n(&e->ring.head, __ATOMIC_ACQUIRE) && now_ns() < until)
        cpu_relax();
    pthread_mutex_lock(&e->mu);
    e->polling = 0;
    return e->ring.head != NULL;
}

static void *channel_main(void *arg)
{
    struct channel *c = arg;
    struct engine *e = c->e;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    c->cpu_mark = thread_cpu_s();
    int ran = 0;                /* a job just ended: poll before sleeping */
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        if (e->promote_at_ns && now_ns() >= e->promote_at_ns) {
            e->promote_at_ns = 0;
            struct engine_req *promoted = promote_locked(e);
            pthread_mutex_unlock(&e->mu);
            host_begins(c);
            restart(e, promoted);
            host_ends(c);
            pthread_mutex_lock(&e->mu);
            continue;
        }
        struct engine_req *r = pop(&e->ring);
        if (r) {
            if (e->ring.head)
                pthread_cond_signal(&e->work);  /* more queued: an idle channel takes it */
            pthread_mutex_unlock(&e->mu);
            run_job(c, r);
            ran = 1;
            pthread_mutex_lock(&e->mu);
        } else if (ran) {
            ran = poll_ring(e);
        } else if (e->promote_at_ns) {
            struct timespec t = {(time_t)(e->promote_at_ns / 1000000000u),
                                 (long)(e->promote_at_ns % 1000000000u)};
            pthread_cond_timedwait(&e->work, &e->mu, &t);
        } else {
            pthread_cond_wait(&e->work, &e->mu);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int engine_submit(struct engine *e, struct engine_req *r)
{
    r->queued_ns = now_ns();
    pthread_mutex_lock(&e->mu);
    e->st.requests++;
    e->st.data_units += r->len / r->du;
    e->st.bytes += r->len;
    e->submitted++;
    unsigned every = e->o.busy_storm_every;
    int storm = every && e->submitted % every < e->o.busy_storm_length;
    int status = ENGINE_IN_PROGRESS;
    if (e->in_ring < e->o.queue_depth && !storm && !e->backlog.head) {
        e->in_ring++;
        r->ring_ns = r->queued_ns;
        push(&e->ring, r);
    } else {
        push(&e->backlog, r);
        e->st.busy++;
        if (e->backlog.n > e->st.backlog_high_water)
            e->st.backlog_high_water = e->backlog.n;
        /* a storm with free slots: no completion will free one, so look again after a setup */
        if (e->in_ring < e->o.queue_depth && !e->promote_at_ns)
            e->promote_at_ns = now_ns() + (uint64_t)(e->o.setup_us * 1000.0) + 1;
        status = ENGINE_BUSY;
    }
    if (!e->polling)
        pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    return status;
}

void engine_statistics(struct engine *e, struct engine_stats *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    out->backlog = e->backlog.n;
    out->in_flight = e->in_ring + e->backlog.n;
    out->latency_mean_us = e->st.completed ? e->latency_sum_us / (double)e->st.completed : 0;
    pthread_mutex_unlock(&e->mu);
    uint64_t ns = 0;
    for (unsigned i = 0; i < e->started; i++)
        ns += __atomic_load_n(&e->channels[i].sim_cpu_ns, __ATOMIC_RELAXED);
    out->engine_thread_cpu_s = (double)ns / 1e9;
}

static const char *check(const struct engine_options *o)
{
    if (!o->queue_depth)
        return "queue_depth must be at least 1";
    if (!o->channels || o->channels > MAX_CHANNELS)
        return "channels must be from 1 to 64";
    if (!(o->setup_us >= 0) || !(o->per_unit_us >= 0) || !(o->throughput_mbps >= 1))
        return "setup_us and per_unit_us must be >= 0, throughput_mbps >= 1";
    if (!(o->error_rate >= 0 && o->error_rate <= 1) || !(o->lost_rate >= 0 && o->lost_rate <= 1)
        || !(o->nomem_rate >= 0 && o->nomem_rate <= 1))
        return "fault rates must be probabilities";
    if (!o->busy_storm_length)
        return "busy_storm_length must be at least 1";
    return NULL;
}

static void stop(struct engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->mu);
    for (unsigned i = 0; i < e->started; i++)
        pthread_join(e->channels[i].thread, NULL);
    struct engine_req *r;
    while ((r = pop(&e->ring)) || (r = pop(&e->backlog)))
        r->forget(r);
}

static void destroy(struct engine *e)
{
    core_unref(e->core);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work);
    free(e);
}

struct engine *engine_new(struct core *core, const struct engine_options *o, char *err,
                          size_t errlen)
{
    const char *bad = check(o);
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        return NULL;
    }
    struct engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->o = *o;
    e->refs = 1;
    e->core = core;
    core_ref(core);
    struct rng seeds = {o->seed};
    e->error.s = (uint64_t)(uniform(&seeds) * 0x1.0p53);
    e->lost.s = (uint64_t)(uniform(&seeds) * 0x1.0p53);
    e->nomem.s = (uint64_t)(uniform(&seeds) * 0x1.0p53);
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t attr;                    /* promote_at_ns is a CLOCK_MONOTONIC time */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&e->work, &attr);
    pthread_condattr_destroy(&attr);
    for (unsigned i = 0; i < o->channels; i++) {
        struct channel *c = &e->channels[i];
        c->e = e;
        c->margin_ns = 10000;
        if (pthread_create(&c->thread, NULL, channel_main, c)) {
            snprintf(err, errlen, "cannot start the engine's threads");
            stop(e);
            destroy(e);
            return NULL;
        }
        e->started++;
    }
    return e;
}

void engine_ref(struct engine *e)
{
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
}

void engine_unref(struct engine *e)
{
    if (e && __atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        stop(e);
        destroy(e);
    }
}
