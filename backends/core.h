/*
 * The native multi data unit core, as a C API (core.c).
 *
 * One call converts a whole bio: every data unit of a buffer, each with its own IV derived by
 * the core (dm-crypt's IV modes), through keyed OpenSSL EVP contexts (libgcrypt handles for
 * the ciphers OpenSSL lacks) that are only re-IVed per unit; a large bio can be split over a few worker threads.  Two users: the Python binding
 * (backends/_native.c, the `multidu` backend) and the native data plane
 * (cryptfs/fuse/_plane.c), which gets a core from the binding through a PyCapsule holding a
 * struct core_api, so core.c is linked into one extension only and both share one key
 * schedule.
 *
 * Every function is thread-safe and never touches Python: callers release the GIL around
 * them.  Nothing here keeps a copy of the key bytes but the one libgcrypt ciphers need (their
 * handles cannot be copied, so each thread keys its own); the schedules, that copy and LRW's
 * tables are cleansed when the last reference goes.
 */
#ifndef CRYPTFS_CORE_H
#define CRYPTFS_CORE_H

#include <stddef.h>
#include <stdint.h>

struct core;

/* At most this many threads share one call (more are capped to it). */
#define CORE_MAX_THREADS 64

/*
 * A keyed core, holding one reference; NULL with a message in err (errlen bytes) if the
 * arguments are wrong or OpenSSL refuses the key.
 *   chain: "xts" (AES-XTS, key = both halves: 32 or 64 bytes), "cbc" or "ecb" (AES-CBC,
 *          AES-ECB: 16/24/32 bytes; ECB ignores the IV mode, as dm-crypt, and refuses essiv),
 *          "lrw" (the kernel's LRW over AES: the AES key then a 16-byte tweak key, 32/40/48
 *          bytes); "CIPHER-MODE" for serpent, twofish, camellia (xts, cbc, ecb, lrw), cast5
 *          and blowfish (cbc, ecb: 64-bit blocks, so 8-byte IVs) through libgcrypt; or
 *          "null": dm-crypt's cipher_null-ecb, output = input, any key (ignored) and
 *          any IV mode (validated, ignored) - the plane's no-crypto ceiling.
 *          "adiantum12" / "adiantum20": Adiantum with XChaCha12 / XChaCha20 (adiantum.h),
 *          a 32-byte key, the unit one wide block (16..65536 bytes), the tweak the unit's IV
 *          zero-padded to 32 bytes; only the plain, plain64 and null IV modes.
 *   ivmode: plain, plain64, plain64be, essiv, benbi or null; essiv_hash (digest name) goes
 *          with, and only with, essiv.
 */
struct core *core_new(const char *chain, const unsigned char *key, size_t keylen,
                      const char *ivmode, const char *essiv_hash, char *err, size_t errlen);

/* One more reference.  */
void core_ref(struct core *core);

/* One reference less; the last one waits for calls in flight, then frees and cleanses every
 * key schedule.  NULL is ignored. */
void core_unref(struct core *core);

/*
 * Convert len bytes of src into dst, data unit by data unit (du bytes each, a power of two
 * from 16 to 65536, len a multiple of it); dst may be src (in place), never a partial overlap.
 * iv is the first unit's IV as the backend contract defines it (backends/base.py): for
 * plain64 and plain64be a 128-bit counter (little- and big-endian) stepped by `step` per unit;
 * for plain a 32-bit counter that wraps as dm-crypt's does; for essiv, benbi and null the
 * plain64 IV of the first unit, from which each unit's IV is derived as dm-crypt derives it
 * (64-bit sector).  A 64-bit block cipher's unit IVs are 8 bytes (dm-crypt's iv_size is the
 * block size): the counter's low 64 bits, in its byte order.  threads > 1 splits the units
 * over that many threads (the caller decides when a bio is worth it: waking a worker has a
 * cost).
 * 0 on success; -1 with errno EINVAL (bad arguments), ENOMEM (no context) or EIO (OpenSSL or
 * libgcrypt failed): dst is then not to be trusted.
 */
int core_crypt(struct core *core, int encrypt, const unsigned char *src, unsigned char *dst,
               size_t len, const unsigned char iv[16], size_t du, uint64_t step, int threads);

/*
 * core_crypt with the first IV built from the first unit's 64-bit IV sector, exactly as the
 * Python request path builds it (cryptfs/core/convert.py, cryptfs/crypto/ivgen.py): plain, the
 * low 32 bits little-endian; plain64, 64-bit little-endian; plain64be, the sector as a
 * 16-byte big-endian counter; essiv, benbi and null, the plain64 IV.  So a C caller needs no
 * IV knowledge: unit u of a device has IV sector u * iv_step + iv_base (Geometry.iv_sector).
 */
int core_crypt_sectors(struct core *core, int encrypt, const unsigned char *src,
                       unsigned char *dst, size_t len, uint64_t first_iv_sector, size_t du,
                       uint64_t step, int threads);

/*
 * What a PyCapsule named CORE_CAPSULE_NAME holds (Core.capsule() in _native.c): the core with
 * one reference of its own, which the capsule's destructor drops (so a user takes its own with
 * ref() before the capsule may go), and the functions above, so another extension calls the
 * core without linking core.c again.  A user checks `version` first.
 */
#define CORE_CAPSULE_NAME "cryptfs.backends._native.core"
#define CORE_API_VERSION 1

struct core_api {
    unsigned version;
    struct core *core;
    void (*ref)(struct core *);
    void (*unref)(struct core *);
    int (*crypt)(struct core *, int, const unsigned char *, unsigned char *, size_t,
                 const unsigned char *, size_t, uint64_t, int);
    int (*crypt_sectors)(struct core *, int, const unsigned char *, unsigned char *, size_t,
                         uint64_t, size_t, uint64_t, int);
};

#endif
