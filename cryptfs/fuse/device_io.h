/*
 * The device's shared pieces, for both paths of the native plane (_plane.c, synchronous;
 * offload.c, through an asynchronous engine): the range lock that keeps overlapping writes
 * and discards apart, and whole reads and writes of the image.  Header-only: each is small.
 */
#ifndef CRYPTFS_DEVICE_IO_H
#define CRYPTFS_DEVICE_IO_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* --- a range lock: overlapping ranges wait, disjoint ones run in parallel ---------------- */

struct range {
    uint64_t a, b;
    struct range *next;
};

struct rangelock {
    pthread_mutex_t mu;
    pthread_cond_t freed;
    struct range *held;
    int waiting;            /* only then is a release announced */
};

static inline void range_hold(struct rangelock *l, struct range *r)
{
    pthread_mutex_lock(&l->mu);
    for (;;) {
        struct range *h = l->held;
        while (h && !(h->a < r->b && r->a < h->b))
            h = h->next;
        if (!h)
            break;
        l->waiting++;
        pthread_cond_wait(&l->freed, &l->mu);
        l->waiting--;
    }
    r->next = l->held;
    l->held = r;
    pthread_mutex_unlock(&l->mu);
}

static inline void range_release(struct rangelock *l, struct range *r)
{
    pthread_mutex_lock(&l->mu);
    struct range **at = &l->held;
    while (*at != r)
        at = &(*at)->next;
    *at = r->next;
    if (l->waiting)
        pthread_cond_broadcast(&l->freed);
    pthread_mutex_unlock(&l->mu);
}

/* 0 or a (positive) errno. */
static inline int pread_all(int fd, unsigned char *buf, size_t len, uint64_t at)
{
    while (len) {
        ssize_t n = pread(fd, buf, len, (off_t)at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO;     /* the image ended: zeros would decrypt to garbage */
        buf += n, len -= (size_t)n, at += (uint64_t)n;
    }
    return 0;
}

static inline int pwrite_all(int fd, const unsigned char *buf, size_t len, uint64_t at)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, (off_t)at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;   /* ENOSPC of a full disk reaches the writer as ENOSPC */
        if (n == 0)
            return EIO;
        buf += n, len -= (size_t)n, at += (uint64_t)n;
    }
    return 0;
}

#endif
