/*
 * Adiantum, the length-preserving tweakable wide-block cipher of Linux's dm-crypt
 * `xchacha12,aes-adiantum-plain64` and `xchacha20,aes-adiantum-plain64` (adiantum.c).
 *
 * Adiantum (Crowley & Biggers, "Adiantum: length-preserving encryption for entry-level
 * processors", IACR ToSC 2018(4), https://eprint.iacr.org/2018/720) encrypts a whole sector
 * as one block: a change of any bit of the input changes every bit of the output, in either
 * direction.  It is an HBSH construction: XChaCha12 (or XChaCha20) over all but the last 16
 * bytes, AES-256 on one 16-byte block, and two passes of an ε-almost-Δ-universal hash (NH and
 * Poly1305).  This implementation is byte-for-byte the Linux kernel's `adiantum(xchacha12,aes)`
 * and `adiantum(xchacha20,aes)` (crypto/adiantum.c, crypto/nhpoly1305.c): a 32-byte key and a
 * fixed 32-byte tweak, which dm-crypt fills with its IV (plain64: the sector number
 * little-endian, zero-padded to 32 bytes).  It passes every vector of the kernel's
 * crypto/testmgr.h templates (tests/vectors/adiantum.json).
 *
 * AES-256 is OpenSSL's (EVP, one ECB block); XChaCha, NH and Poly1305 are written here.
 * Nothing in this file depends on OpenSSL's headers.
 */
#ifndef CRYPTFS_ADIANTUM_H
#define CRYPTFS_ADIANTUM_H

#include <stddef.h>
#include <stdint.h>

#define ADIANTUM_KEY_SIZE 32      /* K_S, the XChaCha key every other key is derived from */
#define ADIANTUM_TWEAK_SIZE 32    /* the kernel's fixed tweak length (dm-crypt's IV size) */
#define ADIANTUM_MIN_LEN 16       /* a message is at least one AES block */

/* NH as the kernel parameterises it (include/crypto/nhpoly1305.h): 32-bit words, stride 2,
 * 4 passes, 1024-byte NH messages; the key covers one message plus 3 passes' offsets. */
#define ADIANTUM_NH_MESSAGE_BYTES 1024
#define ADIANTUM_NH_KEY_WORDS (ADIANTUM_NH_MESSAGE_BYTES / 4 + 4 * 3)   /* 268 */
/* NHPoly1305's key: a Poly1305 r (16 bytes) then the NH key (1072 bytes). */
#define ADIANTUM_NHPOLY1305_KEY_SIZE (16 + ADIANTUM_NH_KEY_WORDS * 4)   /* 1088 */

struct evp_cipher_ctx_st;   /* OpenSSL's EVP_CIPHER_CTX */

/* A clamped Poly1305 r, in three limbs of 44, 44 and 42 bits, and its multiples by 20 that
 * fold the product's bits above 2^130 back (2^130 = 5 mod p). */
struct adiantum_poly1305_key {
    uint64_t r[3];
    uint64_t s[2];   /* r[1] * 20, r[2] * 20 */
};

/* NHPoly1305's key (the hash of the message bulk).  The NH key is kept rearranged for SIMD:
 * nh[i][c][p] is the key word that word c of a chunk's unit i meets in pass p, i.e. raw key
 * word 4i + 4p + c, so one unit's four passes read contiguous words. */
struct adiantum_nhpoly1305_key {
    struct adiantum_poly1305_key poly;
    uint32_t nh[ADIANTUM_NH_MESSAGE_BYTES / 16][4][4];
};

/*
 * A keyed Adiantum.  The caller owns the storage; adiantum_init fills it, adiantum_wipe
 * cleanses it and frees what init allocated.  Between the two, adiantum_crypt only reads it:
 * any number of threads may use one context at once.
 */
struct adiantum_ctx {
    uint32_t stream_key[8];                     /* K_S as little-endian words */
    int rounds;                                 /* 12 or 20 */
    struct evp_cipher_ctx_st *aes_enc;          /* K_E keyed templates, copied per call */
    struct evp_cipher_ctx_st *aes_dec;
    struct adiantum_poly1305_key header_key;    /* K_T: Poly1305 over (bulk length, tweak) */
    struct adiantum_nhpoly1305_key bulk_key;    /* K_L: NHPoly1305 over the bulk */
};

/*
 * Key ctx (storage never keyed, or wiped: a keyed ctx would leak its AES contexts) with the
 * 32-byte key; rounds is the XChaCha round count, 12 (Adiantum-XChaCha12-AES, the paper's and
 * dm-crypt's usual choice) or 20.  0 on success; -1 with errno EINVAL (bad rounds), ENOMEM or
 * EIO (OpenSSL failed), ctx then holding nothing to wipe.
 */
int adiantum_init(struct adiantum_ctx *ctx, const uint8_t key[ADIANTUM_KEY_SIZE], int rounds);

/*
 * Encrypt (encrypt != 0) or decrypt len bytes (len >= 16) of src into dst under the 32-byte
 * tweak.  dst may be src (in place), never a partial overlap.  0 on success; -1 with errno
 * EINVAL (len < 16), ENOMEM or EIO (OpenSSL failed): dst is then not to be trusted.
 */
int adiantum_crypt(const struct adiantum_ctx *ctx, int encrypt, const uint8_t *src, uint8_t *dst,
                   size_t len, const uint8_t tweak[ADIANTUM_TWEAK_SIZE]);

/* Cleanse the key material and free the AES contexts; ctx may then be keyed again. */
void adiantum_wipe(struct adiantum_ctx *ctx);

/*
 * The parts, exposed for their own test vectors (the kernel's xchacha12/xchacha20 and
 * nhpoly1305 templates in testmgr.h).
 *
 * adiantum_xchacha: dst = src XOR XChaCha<rounds>(key, iv) keystream, for len bytes; iv is
 * the kernel's 32-byte XChaCha IV: the 24-byte nonce, then the 64-bit little-endian stream
 * position (block) to start at, of which, as in the kernel, only the low 32 bits count up
 * (mod 2^32).  dst may be src.  rounds: 12 or 20 (any even number works).
 */
void adiantum_xchacha(const uint8_t key[32], const uint8_t iv[32], int rounds,
                      const uint8_t *src, uint8_t *dst, size_t len);

/* NHPoly1305 of msg under a raw 1088-byte key (crypto/nhpoly1305.c's digest, 16 bytes). */
void adiantum_nhpoly1305(const uint8_t key[ADIANTUM_NHPOLY1305_KEY_SIZE], const uint8_t *msg,
                         size_t len, uint8_t out[16]);

#endif
