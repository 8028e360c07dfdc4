/*
 * A simulated asynchronous crypto engine in C (engine.c), behind the kernel's skcipher
 * contract: the native plane's model of offload hardware, priced at C cost on the host side.
 *
 * What is simulated is the engine's timing; the bytes are computed by the native core
 * (core.h) on the engine's own threads, so the data stays right unless a fault says
 * otherwise, and the host CPU that computing stands for is measured apart.
 *
 * - A ring of queue_depth slots.  engine_submit answers ENGINE_IN_PROGRESS while a slot is
 *   free and ENGINE_BUSY when the ring is full (or a busy storm says so): the request then
 *   waits on the backlog, and its completion is called first with ENGINE_RESTART when it
 *   enters the ring - the submitter's signal to go on submitting - and later with its result.
 * - `channels` threads run jobs in ring order, each job costing setup_us + per_unit_us x units
 *   + bytes / throughput_mbps; without native_multi_du a request is one job per data unit,
 *   each paying the setup.  A channel keeps its own clock: a job starts when it entered the
 *   ring or when the channel's previous job ended, whichever is later, so neither waking a
 *   channel nor a completion's host work is the engine's time.
 * - Completions are called on the channel thread that ran the job, never on the submitter's,
 *   and never with the engine's lock held: a completion may submit again.
 * - Faults, each from its own seeded stream: error_rate (completion with -EIO), lost_rate (no
 *   completion ever: the submitter's timeout must notice; the simulation hands the request
 *   back through `forget` so the submitter can free it), busy_storm_every/length (the ring
 *   claims to be full), nomem_rate (-ENOMEM for multi-unit requests) and corrupt (wrong
 *   output, which a known-answer self-test catches).
 *
 * The options, their defaults and meanings are the Python engine's (backends/engine.py,
 * EngineOptions), the trio plane's model of the same engine.
 */
#ifndef CRYPTFS_ENGINE_H
#define CRYPTFS_ENGINE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

enum { ENGINE_DONE = 0, ENGINE_IN_PROGRESS = 1, ENGINE_BUSY = 2 };
/* What a completion receives when its request leaves the backlog (the kernel's -EINPROGRESS). */
#define ENGINE_RESTART (-EINPROGRESS)

struct engine_options {
    unsigned queue_depth, channels;
    double setup_us, per_unit_us, throughput_mbps;
    int native_multi_du;
    double error_rate, lost_rate;
    unsigned busy_storm_every, busy_storm_length;
    double nomem_rate;
    int corrupt;
    uint64_t seed;
};

struct engine_req {
    /* the submitter's, unchanged until the request comes back */
    int encrypt;
    const unsigned char *src;
    unsigned char *dst;             /* may be src (in place) */
    size_t len, du;                 /* len: a multiple of du */
    uint64_t first_iv_sector, step; /* as core_crypt_sectors takes them */
    /* Called on an engine thread: ENGINE_RESTART, then 0 or a negative errno (dst is then
     * not to be trusted). */
    void (*complete)(struct engine_req *req, int err);
    /* Called instead of a completion for a lost request, when the engine is done with it. */
    void (*forget)(struct engine_req *req);
    void *owner;
    /* the engine's */
    struct engine_req *next;
    uint64_t queued_ns, ring_ns;    /* submitted; entered the ring */
};

struct engine_stats {
    uint64_t requests, data_units, bytes, errors, busy, backlog_high_water, completed,
        errors_injected, lost, nomem_injected, overruns, in_flight, backlog;
    double engine_busy_s, engine_compute_cpu_s, engine_wait_cpu_s, engine_thread_cpu_s,
        latency_mean_us, latency_max_us;
};

struct engine;

/* A running engine over `core` (it takes its own reference), one reference held; NULL with a
 * message in err for bad options or when its threads cannot start. */
struct engine *engine_new(struct core *core, const struct engine_options *options, char *err,
                          size_t errlen);
void engine_ref(struct engine *engine);
/* The last reference stops the threads; requests still queued are handed back through
 * `forget` (never completed).  NULL is ignored. */
void engine_unref(struct engine *engine);
/* ENGINE_IN_PROGRESS or ENGINE_BUSY (the request is the engine's until it comes back). */
int engine_submit(struct engine *engine, struct engine_req *req);
void engine_statistics(struct engine *engine, struct engine_stats *out);

/* What a PyCapsule named ENGINE_CAPSULE_NAME holds (Engine.capsule() in _native.c): the engine
 * with a reference of its own, dropped by the capsule's destructor, and its functions. */
#define ENGINE_CAPSULE_NAME "cryptfs.backends._native.engine"
#define ENGINE_API_VERSION 1

struct engine_api {
    unsigned version;
    struct engine *engine;
    void (*ref)(struct engine *);
    void (*unref)(struct engine *);
    int (*submit)(struct engine *, struct engine_req *);
};

#endif
