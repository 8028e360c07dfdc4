/*
 * The native plane's asynchronous path (offload.c): the device's READ and WRITE through an
 * asynchronous crypto engine (backends/engine.h), dm-crypt's kcryptd path with its
 * convert_context.
 *
 * A FUSE worker reads the ciphertext (or copies the data), submits the bio's requests - one
 * for the bio (multi_du) or one per data unit - and returns to the next FUSE request; the
 * engine's completions, on the engine's threads, finish the bio and answer FUSE from there.
 * The contract is the trio plane's (cryptfs/core/convert.py): BUSY stops the submitting until
 * the request's RESTART, which goes on submitting from the engine's thread; a multi data unit
 * bio that fails for lack of memory goes again per data unit, once; every other failed
 * request, and every request without a completion within the timeout, is redone unit by unit
 * on the core (the CPU path), or the bio fails with EIO - never wrong data, never a write
 * acknowledged that was not encrypted.  A write holds its range (the plane's range lock) from
 * its edge reads to its pwrite.
 */
#ifndef CRYPTFS_OFFLOAD_H
#define CRYPTFS_OFFLOAD_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <stdint.h>

#include "core.h"
#include "device_io.h"
#include "engine.h"

struct offload_device {
    int fd;
    uint64_t payload;               /* the device's first byte in the image */
    size_t ss;                      /* data unit (sector) size */
    uint64_t iv_step, iv_base;      /* unit u has IV sector u * iv_step + iv_base */
    int multi_du;                   /* one request per bio, else one per data unit */
    const struct core_api *core;    /* the fallback (the caller keeps it alive) */
    struct rangelock *locks;        /* the plane's */
};

enum offload_counter {
    OFF_READS, OFF_BYTES_READ, OFF_WRITES, OFF_BYTES_WRITTEN, OFF_RMW, OFF_ERRORS,
    OFF_CRYPTO_REQUESTS, OFF_DATA_UNITS, OFF_BUSY, OFF_TIMEOUTS, OFF_RETRIES,
    OFF_RETRIED_UNITS, OFF_MULTI_DU_RETRIED_BIOS, OFF_FAILED_BIOS, OFF_N_COUNTERS
};
/* The names `status` shows, the trio plane's for the same events. */
extern const char *const OFFLOAD_COUNTER_NAMES[OFF_N_COUNTERS];

struct offload;

/* The path over `engine` (a reference taken); NULL (errno set) if its watchdog cannot start.
 * timeout_s: how long a request may go without completing. */
struct offload *offload_new(const struct offload_device *dev, const struct engine_api *engine,
                            double timeout_s);
/* Answer `req` with the plaintext of [off, end) of the device (0 <= off < end <= size). */
void offload_read(struct offload *o, fuse_req_t req, uint64_t off, uint64_t end);
/* Write data (end - off bytes) at off and answer `req` (0 <= off < end <= size). */
void offload_write(struct offload *o, fuse_req_t req, uint64_t off, uint64_t end,
                   const unsigned char *data);
/* Wait until every bio has been answered and the engine has given back every request. */
void offload_drain(struct offload *o);
void offload_counters(struct offload *o, uint64_t out[OFF_N_COUNTERS]);
/* Drains, stops the watchdog, drops the engine. */
void offload_free(struct offload *o);

#endif
