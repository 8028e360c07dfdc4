/*
 * The native multi data unit core (the C API is in core.h).
 *
 * One call converts a whole bio: every data unit of a buffer, each with its own IV derived
 * here (dm-crypt's IV modes), through one keyed OpenSSL EVP context that is only re-IVed per
 * unit.  A large bio can be split over a few worker threads (each with its own context).
 *
 * Why C: the per-unit loop is the hot loop of the device.  In Python (ctypes) it costs about a
 * microsecond per unit; here it runs at OpenSSL's speed.  Nothing here is cryptography of its
 * own: AES-XTS and AES-CBC are OpenSSL's, ESSIV's salt is OpenSSL's digest.  The null cipher
 * (dm-crypt's cipher_null-ecb) copies: it measures everything but the cipher.  Adiantum
 * (chains adiantum12 and adiantum20) is adiantum.c, the whole unit one wide block, its 32-byte
 * tweak the unit's IV zero-padded as dm-crypt pads it.
 *
 * Serpent, Twofish, Camellia, CAST5 and Blowfish (chains "serpent-xts", "cast5-cbc", ...)
 * are libgcrypt's: cryptsetup's other crypto backend, with every one of them and XTS for any
 * 128-bit block cipher, where OpenSSL 3 has no serpent or twofish, no XTS for camellia and
 * CAST5 and Blowfish only in its legacy provider.  A libgcrypt handle cannot be copied, so the
 * core keeps the key (cleansed when the core goes) to key one handle set per thread; ESSIV's
 * IV cipher is then the data cipher in ECB keyed with the hash.  A 64-bit block cipher's IV is
 * 8 bytes, as dm-crypt's iv_size is the block size.
 *
 * LRW (chains "lrw", "serpent-lrw", ...) is the kernel's lrw template, which no library has:
 * the data cipher in ECB between two XORs with T = I * K2 in GF(2^128) (I the unit's IV read
 * big-endian, counting its blocks; K2 the key's last 16 bytes), computed here from tables
 * built at keying, as the kernel's crypto/lrw.c does; cryptfs/crypto/lrw.py is the per-unit
 * reference, and both are proven on the kernel's vectors.
 */
#include "core.h"
#include "adiantum.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <gcrypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

enum ivmode { IV_PLAIN, IV_PLAIN64, IV_PLAIN64BE, IV_ESSIV, IV_BENBI, IV_NULL };
static const char *const IVMODE_NAMES[] = {"plain", "plain64", "plain64be", "essiv", "benbi",
                                           "null", NULL};
/* A block cipher's chain mode (AES through OpenSSL, the others through libgcrypt). */
enum mode { MODE_XTS, MODE_CBC, MODE_ECB, MODE_LRW };
static const char *const MODE_NAMES[] = {"xts", "cbc", "ecb", "lrw", NULL};
/* IVs are derived (and ESSIV-encrypted) this many units at a time. */
#define IV_BATCH 64
/* benbi counts the cipher's blocks from 1: shift = SECTOR_SHIFT - log2(block size) (dm-crypt). */
#define SECTOR_SHIFT 9
/* LRW: the tweak key's size, and how many blocks are whitened per ECB call. */
#define LRW_TWEAK_KEY 16
#define LRW_CHUNK 64

/* LRW's tables for one tweak key K2 (the kernel's mulinc): power[i] = K2 * x^i, to multiply
 * a unit's first index; step[i] = K2 * (2^(i+1) - 1), what T changes by when the index's i
 * lowest bits are ones (incrementing flips i + 1 bits). */
struct lrw_table {
    u128 power[128], step[128];
};

/* One thread's contexts: the data cipher both ways, and ESSIV's IV cipher. */
typedef struct ctxset {
    EVP_CIPHER_CTX *enc, *dec, *essiv;
    gcry_cipher_hd_t g, gessiv;     /* libgcrypt ciphers: one handle both ways, ESSIV's */
    struct ctxset *next;
} ctxset;

/* Every core's context pool and calls in flight, the worker pool's queue and the fork
 * handlers share this lock: it is only ever held for a few pointer moves. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct core {
    int ivmode;
    int mode;               /* block ciphers: enum mode */
    int iv_size;            /* bytes of a unit's IV: the block size (8 or 16) */
    int null;               /* cipher_null: no contexts at all */
    struct lrw_table *lrw;  /* LRW: read-only once keyed, shared by threads */
    struct adiantum_ctx *adiantum;  /* Adiantum: read-only once keyed, shared by threads */
    int galgo, gmode;       /* libgcrypt cipher: algorithm and mode, 0 for OpenSSL's */
    int gessiv_algo;        /* its ESSIV cipher (ECB), 0 without ESSIV */
    unsigned char *gkey;    /* the cipher's key, then ESSIV's salt, to key more handles */
    size_t gkeylen, gsaltlen;
    ctxset *keyed;          /* the template every other context set is copied from */
    ctxset *idle;           /* context sets not in use */
    int refs;               /* atomic: holders; the last one frees */
    int users;              /* calls in flight */
    int dying;              /* the last reference went: announce users reaching 0 */
    pthread_cond_t quiet;
};

static void ctxset_free(ctxset *s)
{
    if (!s)
        return;
    EVP_CIPHER_CTX_free(s->enc);    /* frees and cleanses the key schedules */
    EVP_CIPHER_CTX_free(s->dec);
    EVP_CIPHER_CTX_free(s->essiv);
    gcry_cipher_close(s->g);        /* NULL is ignored; closing wipes the key schedule */
    gcry_cipher_close(s->gessiv);
    free(s);
}

static ctxset *ctxset_copy(const ctxset *from)
{
    ctxset *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->enc = EVP_CIPHER_CTX_new();
    s->dec = EVP_CIPHER_CTX_new();
    if (!s->enc || !s->dec || !EVP_CIPHER_CTX_copy(s->enc, from->enc) ||
        !EVP_CIPHER_CTX_copy(s->dec, from->dec))
        goto fail;
    if (from->essiv) {
        s->essiv = EVP_CIPHER_CTX_new();
        if (!s->essiv || !EVP_CIPHER_CTX_copy(s->essiv, from->essiv))
            goto fail;
    }
    return s;
fail:
    ctxset_free(s);
    return NULL;
}

/* A libgcrypt handle keyed with key; NULL if libgcrypt refuses.  libgcrypt calls a Blowfish
 * key whose S-boxes repeat an entry weak and leaves it unset; the kernel takes it (about one
 * key in 30000), so the core allows weak keys. */
static gcry_cipher_hd_t gcrypt_handle(int algo, int mode, const unsigned char *key, size_t len)
{
    gcry_cipher_hd_t h;
    if (gcry_cipher_open(&h, algo, mode, 0))
        return NULL;
    gcry_cipher_ctl(h, GCRYCTL_SET_ALLOW_WEAK_KEY, NULL, 1);
    gcry_error_t e = gcry_cipher_setkey(h, key, len);
    if (e && gcry_err_code(e) != GPG_ERR_WEAK_KEY) {
        gcry_cipher_close(h);
        return NULL;
    }
    return h;
}

/* A libgcrypt handle set keyed from the core's key copy; NULL if libgcrypt fails. */
static ctxset *gset_new(const struct core *core)
{
    ctxset *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (!(s->g = gcrypt_handle(core->galgo, core->gmode, core->gkey, core->gkeylen)))
        goto fail;
    if (core->gessiv_algo &&
        !(s->gessiv = gcrypt_handle(core->gessiv_algo, GCRY_CIPHER_MODE_ECB,
                                    core->gkey + core->gkeylen, core->gsaltlen)))
        goto fail;
    return s;
fail:
    ctxset_free(s);
    return NULL;
}

/* A context set for a piece of a call: an idle one, or a fresh copy of the keyed template. */
static ctxset *ctxset_get(struct core *core)
{
    pthread_mutex_lock(&lock);
    ctxset *s = core->idle;
    if (s)
        core->idle = s->next;
    pthread_mutex_unlock(&lock);
    if (s)
        return s;
    return core->galgo ? gset_new(core) : ctxset_copy(core->keyed);
}

static void ctxset_put(struct core *core, ctxset *s)
{
    pthread_mutex_lock(&lock);
    s->next = core->idle;
    core->idle = s;
    pthread_mutex_unlock(&lock);
}

/* --- IVs --------------------------------------------------------------------------------- */

static u128 load_le(const unsigned char *p, int bytes)
{
    u128 v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static u128 load_be(const unsigned char *p, int bytes)
{
    u128 v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

static void store_le(unsigned char *p, u128 v, int bytes)
{
    for (int i = 0; i < bytes; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static void store_be(unsigned char *p, u128 v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* The counter a request's first IV stands for (see core_crypt in core.h). */
static u128 first_counter(int ivmode, const unsigned char *iv)
{
    switch (ivmode) {
    case IV_PLAIN:
        return load_le(iv, 4);
    case IV_PLAIN64:
        return load_le(iv, 16);
    case IV_PLAIN64BE:
        return load_be(iv, 16);
    default:            /* derived modes: the request carries a plain64 IV */
        return load_le(iv, 8);
    }
}

/* The first IV of a request from its IV sector, as cryptfs/crypto/ivgen.py builds it for the
 * convert loop (derived modes get the plain64 IV). */
static void sector_iv(int ivmode, uint64_t sector, unsigned char iv[16])
{
    memset(iv, 0, 16);
    switch (ivmode) {
    case IV_PLAIN:
        store_le(iv, (uint32_t)sector, 4);
        break;
    case IV_PLAIN64BE:
        store_be(iv, sector, 16);
        break;
    default:
        store_le(iv, sector, 8);
        break;
    }
}

/* The IVs of `n` units from counter `c`, stepping by `step`, into out[n][16]: the first
 * core->iv_size bytes of each, as dm-crypt fills its iv_size bytes.  ESSIV's are encrypted by
 * s's IV cipher (s is NULL where the core has none).  0 if that fails. */
static int derive_ivs(const struct core *core, const ctxset *s, u128 c, u128 step, size_t n,
                      unsigned char (*out)[16])
{
    int size = core->iv_size;
    int benbi_shift = SECTOR_SHIFT - (size == 8 ? 3 : 4);
    memset(out, 0, n * 16);
    for (size_t i = 0; i < n; i++, c += step) {
        switch (core->ivmode) {
        case IV_PLAIN:
            store_le(out[i], (uint32_t)c, 4);
            break;
        case IV_PLAIN64:
            store_le(out[i], c, size);
            break;
        case IV_PLAIN64BE:
            store_be(out[i], c, size);
            break;
        case IV_ESSIV:
            store_le(out[i], (uint64_t)c, 8);
            break;
        case IV_BENBI:
            store_be(out[i] + size - 8, (uint64_t)(((uint64_t)c << benbi_shift) + 1), 8);
            break;
        default:        /* null */
            break;
        }
    }
    if (core->ivmode != IV_ESSIV || !s)
        return 1;
    /* ECB over every 16-byte slot: an 8-byte block cipher also encrypts the zero half,
     * which its IV does not use */
    if (s->gessiv)
        return !gcry_cipher_encrypt(s->gessiv, out[0], n * 16, NULL, 0);
    int len;
    return EVP_CipherUpdate(s->essiv, out[0], &len, out[0], (int)(n * 16)) &&
           len == (int)(n * 16);
}

/* --- the loop ---------------------------------------------------------------------------- */

typedef struct batch batch;

/* A run of consecutive units: what one thread converts. */
typedef struct piece {
    struct core *core;
    int encrypt;
    const unsigned char *src;
    unsigned char *dst;
    size_t units, du;
    u128 counter, step;
    int err;            /* 0, or why the piece failed: ENOMEM (no context) or EIO (OpenSSL) */
    batch *batch;
    struct piece *next;
} piece;

/* Adiantum's units: one adiantum_crypt each, the tweak the derived IV zero-padded to 32. */
static void run_adiantum(piece *p, unsigned char (*ivs)[16])
{
    unsigned char tweak[ADIANTUM_TWEAK_SIZE] = {0};
    u128 c = p->counter;
    p->err = 0;
    for (size_t first = 0; first < p->units && !p->err; first += IV_BATCH) {
        size_t n = p->units - first < IV_BATCH ? p->units - first : IV_BATCH;
        derive_ivs(p->core, NULL, c, p->step, n, ivs);   /* no ESSIV: cannot fail */
        c += p->step * n;
        for (size_t i = 0; i < n; i++) {
            size_t at = (first + i) * p->du;
            memcpy(tweak, ivs[i], 16);
            if (adiantum_crypt(p->core->adiantum, p->encrypt, p->src + at, p->dst + at, p->du,
                               tweak)) {
                p->err = errno == ENOMEM ? ENOMEM : EIO;
                break;
            }
        }
    }
    OPENSSL_cleanse(ivs, IV_BATCH * 16);
    OPENSSL_cleanse(tweak, sizeof tweak);
}

/* Convert n bytes of in into out (may be in) through s's data cipher (OpenSSL's or
 * libgcrypt's), first re-IVed with iv unless iv is NULL (ECB).  0, or -1 if the library
 * failed. */
static int cipher_run(const struct core *core, ctxset *s, int encrypt, const unsigned char *iv,
                      const unsigned char *in, unsigned char *out, size_t n)
{
    if (core->galgo) {
        if (iv && gcry_cipher_setiv(s->g, iv, (size_t)core->iv_size))
            return -1;
        const unsigned char *from = in == out ? NULL : in;
        size_t from_len = in == out ? 0 : n;
        return (encrypt ? gcry_cipher_encrypt(s->g, out, n, from, from_len)
                        : gcry_cipher_decrypt(s->g, out, n, from, from_len)) ? -1 : 0;
    }
    EVP_CIPHER_CTX *ctx = encrypt ? s->enc : s->dec;
    int len;
    if (iv && !EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1))
        return -1;
    return EVP_CipherUpdate(ctx, out, &len, in, (int)n) && len == (int)n ? 0 : -1;
}

/* The host word holding the big-endian bytes of v's 64 bits. */
static inline uint64_t be64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

/* dst = src ^ the 16 big-endian bytes of t (dst may be src). */
static inline void xor_be128(unsigned char *dst, const unsigned char *src, u128 t)
{
    uint64_t w[2];
    memcpy(w, src, 16);
    w[0] ^= be64((uint64_t)(t >> 64));
    w[1] ^= be64((uint64_t)t);
    memcpy(dst, w, 16);
}

/* The number of ones at the bottom of v: the bits that incrementing v flips, less one; 127
 * when v is all ones (it wraps to 0 and all 128 flip), as the kernel's lrw_next_index. */
static int trailing_ones(u128 v)
{
    uint64_t lo = ~(uint64_t)v, hi = ~(uint64_t)(v >> 64);
    return lo ? __builtin_ctzll(lo) : hi ? 64 + __builtin_ctzll(hi) : 127;
}

/* One LRW unit: block j is E(P ^ T) ^ T with T = (I + j) * K2, I the IV read big-endian;
 * the whitened blocks go through the data cipher in ECB LRW_CHUNK at a time.  0 or -1. */
static int lrw_unit(const struct core *core, ctxset *s, int encrypt, const unsigned char *iv,
                    const unsigned char *in, unsigned char *out, size_t du)
{
    const struct lrw_table *tab = core->lrw;
    u128 index = load_be(iv, 16), t = 0, tweaks[LRW_CHUNK];
    int failed = 0;
    for (int half = 0; half < 2; half++)      /* T = I * K2: K2 * x^i for each bit i of I */
        for (uint64_t bits = (uint64_t)(index >> (64 * half)); bits; bits &= bits - 1)
            t ^= tab->power[64 * half + __builtin_ctzll(bits)];
    for (size_t at = 0; at < du && !failed; at += LRW_CHUNK * 16) {
        size_t n = (du - at) / 16 < LRW_CHUNK ? (du - at) / 16 : LRW_CHUNK;
        for (size_t j = 0; j < n; j++) {
            tweaks[j] = t;
            xor_be128(out + at + 16 * j, in + at + 16 * j, t);
            t ^= tab->step[trailing_ones(index++)];
        }
        failed = cipher_run(core, s, encrypt, NULL, out + at, out + at, n * 16);
        for (size_t j = 0; j < n; j++)
            xor_be128(out + at + 16 * j, out + at + 16 * j, tweaks[j]);
    }
    OPENSSL_cleanse(tweaks, sizeof tweaks);
    OPENSSL_cleanse(&t, sizeof t);
    return failed;
}

/* A block cipher's units (OpenSSL's or libgcrypt's): the IVs derived IV_BATCH at a time
 * (ECB: none), then each unit through its chain.  p->err is 0 or EIO. */
static void run_blocks(piece *p, ctxset *s, unsigned char (*ivs)[16])
{
    const struct core *core = p->core;
    u128 c = p->counter;
    p->err = EIO;
    for (size_t first = 0; first < p->units; first += IV_BATCH) {
        size_t n = p->units - first < IV_BATCH ? p->units - first : IV_BATCH;
        if (core->mode != MODE_ECB && !derive_ivs(core, s, c, p->step, n, ivs))
            goto out;
        c += p->step * n;
        for (size_t i = 0; i < n; i++) {
            size_t at = (first + i) * p->du;
            const unsigned char *in = p->src + at;
            unsigned char *out = p->dst + at;
            int failed = core->mode == MODE_LRW
                ? lrw_unit(core, s, p->encrypt, ivs[i], in, out, p->du)
                : cipher_run(core, s, p->encrypt, core->mode == MODE_ECB ? NULL : ivs[i], in,
                             out, p->du);
            if (failed)
                goto out;
        }
    }
    p->err = 0;
out:
    OPENSSL_cleanse(ivs, IV_BATCH * 16);
}

static void run_piece(piece *p)
{
    unsigned char ivs[IV_BATCH][16];
    if (p->core->null) {
        if (p->dst != p->src)
            memcpy(p->dst, p->src, p->units * p->du);
        p->err = 0;
        return;
    }
    if (p->core->adiantum) {
        run_adiantum(p, ivs);
        return;
    }
    ctxset *s = ctxset_get(p->core);
    p->err = ENOMEM;
    if (!s)
        return;
    run_blocks(p, s, ivs);
    ctxset_put(p->core, s);
}

/* --- worker threads ---------------------------------------------------------------------- */

struct batch {
    int remaining;
    pthread_cond_t done;
};

static struct {
    piece *head, *tail;     /* queued pieces */
    int threads;            /* workers started in this process */
    pthread_cond_t work;
} pool = {NULL, NULL, 0, PTHREAD_COND_INITIALIZER};

static void *worker(void *unused)
{
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (!pool.head)
            pthread_cond_wait(&pool.work, &lock);
        piece *p = pool.head;
        pool.head = p->next;
        if (!pool.head)
            pool.tail = NULL;
        pthread_mutex_unlock(&lock);
        run_piece(p);
        pthread_mutex_lock(&lock);
        if (--p->batch->remaining == 0)
            pthread_cond_signal(&p->batch->done);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

/* Start workers until there are `wanted` (called with the lock held); how many there are. */
static int ensure_workers(int wanted)
{
    while (pool.threads < wanted) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker, NULL);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        pool.threads++;
    }
    return pool.threads;
}

/* A forked child has none of the parent's workers (and its lock must be free). */
static void fork_prepare(void) { pthread_mutex_lock(&lock); }
static void fork_parent(void) { pthread_mutex_unlock(&lock); }
static void fork_child(void)
{
    pool.head = pool.tail = NULL;
    pool.threads = 0;
    pthread_cond_init(&pool.work, NULL);
    pthread_mutex_unlock(&lock);
}

static pthread_once_t fork_handlers = PTHREAD_ONCE_INIT;
static void install_fork_handlers(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* Convert `units` units in `pieces` pieces: the caller runs the first, workers the rest.
 * 0, or the first failing piece's errno. */
static int run_split(piece *whole, int pieces)
{
    piece parts[CORE_MAX_THREADS];
    batch b = {0};
    size_t per = whole->units / pieces, extra = whole->units % pieces, at = 0;
    for (int i = 0; i < pieces; i++) {
        size_t n = per + ((size_t)i < extra);
        parts[i] = *whole;
        parts[i].src = whole->src + at * whole->du;
        parts[i].dst = whole->dst + at * whole->du;
        parts[i].units = n;
        parts[i].counter = whole->counter + whole->step * at;
        parts[i].batch = &b;
        parts[i].next = NULL;
        at += n;
    }
    pthread_cond_init(&b.done, NULL);
    pthread_mutex_lock(&lock);
    int helpers = ensure_workers(pieces - 1);
    if (helpers < pieces - 1) {         /* could not start threads: do it all here */
        pthread_mutex_unlock(&lock);
        pthread_cond_destroy(&b.done);
        run_piece(whole);
        return whole->err;
    }
    b.remaining = pieces - 1;
    for (int i = 1; i < pieces; i++) {
        if (pool.tail)
            pool.tail->next = &parts[i];
        else
            pool.head = &parts[i];
        pool.tail = &parts[i];
    }
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&lock);
    run_piece(&parts[0]);
    pthread_mutex_lock(&lock);
    while (b.remaining)
        pthread_cond_wait(&b.done, &lock);
    pthread_mutex_unlock(&lock);
    pthread_cond_destroy(&b.done);
    for (int i = 0; i < pieces; i++)
        if (parts[i].err)
            return parts[i].err;
    return 0;
}

int core_crypt(struct core *core, int encrypt, const unsigned char *src, unsigned char *dst,
               size_t len, const unsigned char iv[16], size_t du, uint64_t step, int threads)
{
    if (!core || !src || !dst || !iv || du < 16 || du > 65536 || (du & (du - 1)) ||
        len % du || threads < 1 ||
        (src != dst && src < dst + len && dst < src + len)) {
        errno = EINVAL;
        return -1;
    }
    piece whole = {
        .core = core, .encrypt = encrypt, .src = src, .dst = dst, .units = len / du, .du = du,
        .counter = first_counter(core->ivmode, iv), .step = step,
    };
    int pieces = threads > CORE_MAX_THREADS ? CORE_MAX_THREADS : threads;
    if ((size_t)pieces > whole.units)
        pieces = (int)whole.units;
    pthread_mutex_lock(&lock);
    core->users++;
    pthread_mutex_unlock(&lock);
    int err;
    if (pieces > 1 && !core->null) {
        err = run_split(&whole, pieces);
    } else {
        run_piece(&whole);
        err = whole.err;
    }
    pthread_mutex_lock(&lock);
    if (--core->users == 0 && core->dying)
        pthread_cond_broadcast(&core->quiet);
    pthread_mutex_unlock(&lock);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int core_crypt_sectors(struct core *core, int encrypt, const unsigned char *src,
                       unsigned char *dst, size_t len, uint64_t first_iv_sector, size_t du,
                       uint64_t step, int threads)
{
    unsigned char iv[16];
    if (!core) {
        errno = EINVAL;
        return -1;
    }
    sector_iv(core->ivmode, first_iv_sector, iv);
    return core_crypt(core, encrypt, src, dst, len, iv, du, step, threads);
}

/* --- keying and lifetime ----------------------------------------------------------------- */

static EVP_CIPHER_CTX *keyed_context(const EVP_CIPHER *cipher, const unsigned char *key,
                                     int encrypt)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return NULL;
    if (!EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, encrypt) ||
        !EVP_CIPHER_CTX_set_padding(ctx, 0)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* ESSIV's IV cipher: AES-ECB keyed with hash(volume key). */
static EVP_CIPHER_CTX *essiv_context(const char *hash, const unsigned char *key, size_t len,
                                     const char **error)
{
    const EVP_MD *md = EVP_get_digestbyname(hash);
    unsigned char salt[EVP_MAX_MD_SIZE];
    unsigned int salt_len = 0;
    const EVP_CIPHER *ecb = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    *error = "ESSIV: unknown hash";
    if (!md || !EVP_Digest(key, len, salt, &salt_len, md, NULL))
        return NULL;
    ecb = salt_len == 16 ? EVP_aes_128_ecb() : salt_len == 24 ? EVP_aes_192_ecb()
        : salt_len == 32 ? EVP_aes_256_ecb() : NULL;
    *error = "ESSIV: the hash's digest is no AES key size";
    if (ecb)
        ctx = keyed_context(ecb, salt, 1);
    OPENSSL_cleanse(salt, sizeof salt);
    return ctx;
}

/* The keyed template: NULL and *error set if OpenSSL refuses the key. */
static ctxset *keyed_set(const EVP_CIPHER *cipher, const unsigned char *key, size_t len,
                         const char *essiv_hash, const char **error)
{
    ctxset *s = calloc(1, sizeof *s);
    *error = "out of memory";
    if (!s)
        return NULL;
    s->enc = keyed_context(cipher, key, 1);
    s->dec = keyed_context(cipher, key, 0);
    *error = "OpenSSL refuses this key";
    if (s->enc && s->dec && essiv_hash)
        s->essiv = essiv_context(essiv_hash, key, len, error);
    if (!s->enc || !s->dec || (essiv_hash && !s->essiv)) {
        ctxset_free(s);
        return NULL;
    }
    return s;
}

/* libgcrypt's algorithm for the cipher named by the len bytes at cipher with a bits-bit key, 0
 * if none: the sizes libgcrypt and the kernel both take (libgcrypt has no 192-bit twofish and
 * only 128-bit CAST5; Blowfish takes 32 to 448 bits, as the kernel). */
static int gcrypt_algo(const char *cipher, size_t len, size_t bits)
{
    int aes_sizes = bits == 128 || bits == 192 || bits == 256;
    char name[32];
#define IS(text) (len == sizeof text - 1 && strncmp(cipher, text, len) == 0)
    if (IS("twofish") && (bits == 128 || bits == 256))
        snprintf(name, sizeof name, bits == 256 ? "TWOFISH" : "TWOFISH128");
    else if ((IS("serpent") || IS("camellia")) && aes_sizes)
        snprintf(name, sizeof name, "%.*s%zu", (int)len, cipher, bits);
    else if (IS("cast5") && bits == 128)
        snprintf(name, sizeof name, "CAST5");
    else if (IS("blowfish") && bits >= 32 && bits <= 448 && bits % 8 == 0)
        snprintf(name, sizeof name, "BLOWFISH");
    else
        return 0;
#undef IS
    for (char *c = name; *c; c++)
        if (*c >= 'a' && *c <= 'z')
            *c = (char)(*c - 'a' + 'A');
    return gcry_cipher_map_name(name);
}

/* Fill core's libgcrypt fields for chain "CIPHER-MODE" (core->mode parsed; its key the first
 * cipher_keylen of keylen bytes) and check the key with a first handle set; NULL, or why
 * not.  ESSIV's salt hashes the whole key, as dm-crypt's. */
static const char *gcrypt_setup(struct core *core, const char *chain, const unsigned char *key,
                                size_t cipher_keylen, size_t keylen, const char *essiv_hash)
{
    static const int gmodes[] = {GCRY_CIPHER_MODE_XTS, GCRY_CIPHER_MODE_CBC,
                                 GCRY_CIPHER_MODE_ECB, GCRY_CIPHER_MODE_ECB};   /* LRW: ECB */
    size_t name_len = (size_t)(strchr(chain, '-') - chain);
    int xts = core->mode == MODE_XTS;
    if (!gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
        gcry_check_version(NULL);
        gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
        gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    }
    core->gmode = gmodes[core->mode];
    core->galgo = gcrypt_algo(chain, name_len, cipher_keylen * 8 / (xts ? 2 : 1));
    if (!core->galgo || (xts && cipher_keylen % 2))
        return "unknown cipher, or key size not valid for it";
    core->iv_size = (int)gcry_cipher_get_algo_blklen(core->galgo);
    if (core->iv_size != 16 && (xts || core->mode == MODE_LRW))
        return "xts and lrw need a 128-bit block cipher";
    unsigned char salt[EVP_MAX_MD_SIZE];
    unsigned int salt_len = 0;
    if (essiv_hash) {
        const EVP_MD *md = EVP_get_digestbyname(essiv_hash);
        if (!md || !EVP_Digest(key, keylen, salt, &salt_len, md, NULL))
            return "ESSIV: unknown hash";
        core->gessiv_algo = gcrypt_algo(chain, name_len, salt_len * 8);
        if (!core->gessiv_algo) {
            OPENSSL_cleanse(salt, sizeof salt);
            return "ESSIV: the hash's digest is no key size of this cipher";
        }
    }
    if (!(core->gkey = malloc(cipher_keylen + salt_len + 1))) {
        OPENSSL_cleanse(salt, sizeof salt);
        return "out of memory";
    }
    memcpy(core->gkey, key, cipher_keylen);
    memcpy(core->gkey + cipher_keylen, salt, salt_len);
    OPENSSL_cleanse(salt, sizeof salt);
    core->gkeylen = cipher_keylen;
    core->gsaltlen = salt_len;
    ctxset *first = gset_new(core);
    if (!first)
        return "libgcrypt refuses this key";
    core->idle = first;
    return NULL;
}

/* OpenSSL's AES for a chain mode and a bits-bit key (per XTS half), NULL if it has none
 * (no AES-192-XTS).  LRW runs AES-ECB. */
static const EVP_CIPHER *aes_cipher(int mode, size_t bits)
{
    switch (mode) {
    case MODE_XTS:
        return bits == 128 ? EVP_aes_128_xts() : bits == 256 ? EVP_aes_256_xts() : NULL;
    case MODE_CBC:
        return bits == 128 ? EVP_aes_128_cbc() : bits == 192 ? EVP_aes_192_cbc()
             : bits == 256 ? EVP_aes_256_cbc() : NULL;
    default:
        return bits == 128 ? EVP_aes_128_ecb() : bits == 192 ? EVP_aes_192_ecb()
             : bits == 256 ? EVP_aes_256_ecb() : NULL;
    }
}

/* LRW's tables for the tweak key k2 (see struct lrw_table); NULL without memory. */
static struct lrw_table *lrw_table_new(const unsigned char k2[LRW_TWEAK_KEY])
{
    struct lrw_table *tab = malloc(sizeof *tab);
    if (!tab)
        return NULL;
    u128 power = load_be(k2, LRW_TWEAK_KEY), step = 0;
    for (int i = 0; i < 128; i++) {
        tab->power[i] = power;
        tab->step[i] = step ^= power;
        power = (power << 1) ^ (power >> 127 ? 0x87 : 0);   /* times x, mod x^128+x^7+x^2+x+1 */
    }
    OPENSSL_cleanse(&power, sizeof power);
    OPENSSL_cleanse(&step, sizeof step);
    return tab;
}

/* Free everything a core holds, cleansing every key schedule and key copy. */
static void core_free(struct core *core)
{
    while (core->idle) {
        ctxset *next = core->idle->next;
        ctxset_free(core->idle);
        core->idle = next;
    }
    ctxset_free(core->keyed);
    if (core->gkey) {
        OPENSSL_cleanse(core->gkey, core->gkeylen + core->gsaltlen);
        free(core->gkey);
    }
    if (core->lrw) {
        OPENSSL_cleanse(core->lrw, sizeof *core->lrw);
        free(core->lrw);
    }
    if (core->adiantum) {
        adiantum_wipe(core->adiantum);
        free(core->adiantum);
    }
    free(core);
}

struct core *core_new(const char *chain, const unsigned char *key, size_t keylen,
                      const char *ivmode, const char *essiv_hash, char *err, size_t errlen)
{
    const char *error = NULL;
    const EVP_CIPHER *cipher = NULL;
    int null = strcmp(chain, "null") == 0;
    int adiantum = strcmp(chain, "adiantum12") == 0 ? 12
                 : strcmp(chain, "adiantum20") == 0 ? 20 : 0;
    const char *dash = strchr(chain, '-');             /* "serpent-xts" ...: libgcrypt */
    int mode = -1, iv = -1;
    for (int i = 0; MODE_NAMES[i]; i++)
        if (strcmp(dash ? dash + 1 : chain, MODE_NAMES[i]) == 0)
            mode = i;
    /* LRW's key is the cipher's followed by the tweak key; XTS's holds two keys */
    size_t cipher_keylen = keylen - (mode == MODE_LRW && keylen > LRW_TWEAK_KEY
                                     ? LRW_TWEAK_KEY : 0);
    struct core *core = NULL;
    pthread_once(&fork_handlers, install_fork_handlers);
    if (adiantum && keylen != ADIANTUM_KEY_SIZE)
        error = "an Adiantum key is 32 bytes";
    else if (!null && !adiantum && mode < 0)
        error = "chain mode must be xts, cbc, ecb, lrw (AES), CIPHER-MODE (libgcrypt), "
                "adiantum12, adiantum20 or null";
    else if (mode == MODE_LRW && keylen <= LRW_TWEAK_KEY)
        error = "an LRW key is the cipher's key and a 16-byte tweak key";
    else if (mode >= 0 && !dash &&
             !(cipher = aes_cipher(mode, cipher_keylen * 8 / (mode == MODE_XTS ? 2 : 1))))
        error = "key size not valid for this chain mode";
    for (int i = 0; !error && IVMODE_NAMES[i]; i++)
        if (strcmp(ivmode, IVMODE_NAMES[i]) == 0)
            iv = i;
    if (!error && iv < 0)
        error = "unknown IV mode";
    if (!error && (iv == IV_ESSIV) != (essiv_hash != NULL))
        error = "essiv_hash goes with (and only with) the essiv IV mode";
    /* dm-crypt fills the front of Adiantum's 32-byte IV only in these modes */
    if (!error && adiantum && iv != IV_PLAIN && iv != IV_PLAIN64 && iv != IV_NULL)
        error = "Adiantum takes the plain, plain64 or null IV mode";
    /* dm-crypt's essiv template needs an IV to encrypt; ECB has none */
    if (!error && mode == MODE_ECB && iv == IV_ESSIV)
        error = "ecb has no IV for ESSIV";
    if (!error && !(core = calloc(1, sizeof *core)))
        error = "out of memory";
    if (!error) {
        core->mode = mode;
        core->iv_size = 16;
    }
    if (!error && mode == MODE_LRW &&
        !(core->lrw = lrw_table_new(key + keylen - LRW_TWEAK_KEY)))
        error = "out of memory";
    if (!error && dash) {   /* keyed per thread from core->gkey (gset_new) */
        error = gcrypt_setup(core, chain, key, cipher_keylen, keylen, essiv_hash);
    } else if (!error && adiantum) {
        void *mem = NULL;
        if (posix_memalign(&mem, 64, sizeof *core->adiantum))
            error = "out of memory";
        else if (adiantum_init(mem, key, adiantum)) {
            free(mem);
            error = "Adiantum could not be keyed (OpenSSL failed)";
        } else
            core->adiantum = mem;
    } else if (!error && !null) {   /* EVP reads the cipher's key from the front of key */
        const char *why;
        core->keyed = keyed_set(cipher, key, keylen, essiv_hash, &why);
        if (!core->keyed)
            error = why;
    }
    if (error) {
        if (core)
            core_free(core);
        if (errlen)
            snprintf(err, errlen, "%s", error);
        return NULL;
    }
    core->ivmode = iv;
    core->null = null;
    core->refs = 1;
    pthread_cond_init(&core->quiet, NULL);
    return core;
}

void core_ref(struct core *core)
{
    __atomic_add_fetch(&core->refs, 1, __ATOMIC_RELAXED);
}

void core_unref(struct core *core)
{
    if (!core || __atomic_sub_fetch(&core->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    /* No holder is left; a call still in flight would be a holder's bug, but it must not
     * find its key schedule freed under it. */
    pthread_mutex_lock(&lock);
    core->dying = 1;
    while (core->users)
        pthread_cond_wait(&core->quiet, &lock);
    pthread_mutex_unlock(&lock);
    pthread_cond_destroy(&core->quiet);
    core_free(core);
}
