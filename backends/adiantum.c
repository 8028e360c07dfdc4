/*
 * Adiantum as the Linux kernel computes it (adiantum.h says what and why).
 *
 * Written from the paper's description (Crowley & Biggers, "Adiantum: length-preserving
 * encryption for entry-level processors", IACR ToSC 2018(4), https://ia.cr/2018/720; cited
 * below as "paper §N": §2 specifies HBSH and its stream and key derivation, §6.1 Poly1305,
 * §6.3 NH, §6.4 Adiantum's hash) and checked step by step against what the kernel's
 * crypto/adiantum.c and crypto/nhpoly1305.c do (cited as "kernel: file, function"), since
 * dm-crypt's on-disk format is the kernel's choices where the paper leaves one open: the
 * 32-byte tweak, NH's parameters, the byte order of every number.  No kernel code is reused.
 *
 * The pieces, bottom up:
 *   - ChaCha / HChaCha / XChaCha (Bernstein's ChaCha; XChaCha as in "Extending the Salsa20
 *     nonce" and draft-irtf-cfrg-xchacha), 12 or 20 rounds;
 *   - Poly1305 (paper §6.1) as an ε-almost-Δ-universal hash: evaluation mod 2^130 - 5 with a
 *     clamped r, without the final "+ s" of the MAC (there is no nonce here);
 *   - NH (UMAC's hash, paper §6.3) compressing 1024-byte chunks to 32 bytes for Poly1305;
 *   - the HBSH steps of paper §2 (its pseudocode figure), with Adiantum's hash of §6.4: hash,
 *     AES on one block, XChaCha over the bulk, hash again.
 *
 * Thread safety: adiantum_crypt only reads the context.  AES goes through a private copy of
 * the keyed EVP template made per call (an EVP context is not safe to share between threads).
 */
#include "adiantum.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#ifndef __SIZEOF_INT128__
#error "adiantum.c needs a compiler with unsigned __int128 (a 64-bit target)"
#endif
typedef unsigned __int128 u128;

/* ---------------------------------------------------------------------------------------- */
/* Little-endian loads and stores (the compilers turn these into single moves on x86/ARM).  */

static inline uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void store_le64(uint8_t *p, uint64_t v)
{
    store_le32(p, (uint32_t)v);
    store_le32(p + 4, (uint32_t)(v >> 32));
}

/* 128-bit little-endian integers: the paper's elements of Z/2^128 Z (the "⊞" and "⊟" of
 * paper §2 are addition and subtraction mod 2^128 of such numbers). */
static inline u128 load_le128(const uint8_t *p)
{
    return (u128)load_le64(p) | (u128)load_le64(p + 8) << 64;
}

static inline void store_le128(uint8_t *p, u128 v)
{
    store_le64(p, (uint64_t)v);
    store_le64(p + 8, (uint64_t)(v >> 64));
}

/* ---------------------------------------------------------------------------------------- */
/* ChaCha, HChaCha, XChaCha                                                                 */
/*                                                                                          */
/* The ChaCha state is 16 32-bit words: the constant "expand 32-byte k", the 8 key words,  */
/* then the 4 words the kernel's ChaCha takes from its 16-byte IV, word 12 being the block  */
/* counter (XChaCha puts a 64-bit stream position in words 12-13 and 8 nonce bytes in      */
/* 14-15).  A double round is four "column" quarter rounds then four "diagonal" ones;     */
/* 12 rounds = 6 double rounds, 20 rounds = 10.                                             */

static const uint32_t CHACHA_CONSTANTS[4] = {
    0x61707865, 0x3320646e, 0x79622d32, 0x6b206574,   /* "expa" "nd 3" "2-by" "te k" */
};

#define ROTL32(v, n) (((v) << (n)) | ((v) >> (32 - (n))))

/* The quarter round on words a, b, c, d of a single state. */
#define QR1(x, a, b, c, d)                                                          \
    do {                                                                            \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = ROTL32(x[d], 16);                        \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = ROTL32(x[b], 12);                        \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = ROTL32(x[d], 8);                         \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = ROTL32(x[b], 7);                         \
    } while (0)

/* ChaCha's rounds on one state, in place, without the final feed-forward addition (which
 * HChaCha leaves out and the block function adds). */
static void chacha_permute(uint32_t x[16], int rounds)
{
    for (int i = 0; i < rounds; i += 2) {
        QR1(x, 0, 4, 8, 12);
        QR1(x, 1, 5, 9, 13);
        QR1(x, 2, 6, 10, 14);
        QR1(x, 3, 7, 11, 15);
        QR1(x, 0, 5, 10, 15);
        QR1(x, 1, 6, 11, 12);
        QR1(x, 2, 7, 8, 13);
        QR1(x, 3, 4, 9, 14);
    }
}

/*
 * The keystream is made CHACHA_LANES blocks at a time, "word-sliced": x[i] holds word i of
 * every block of the batch, one block per vector lane, so each step of a quarter round is one
 * SIMD operation on all of them (GNU C vector extensions, which GCC and Clang lower to SSE2,
 * AVX or NEON instructions as the target has them, or to scalar code: no intrinsics).  Four
 * lanes fill one 128-bit register per word, so the 16 words fit x86-64's 16 SSE registers
 * (measured: eight lanes spill without AVX2 and run slower at the baseline ISA).
 */
#define CHACHA_LANES 4
typedef uint32_t chacha_vec __attribute__((vector_size(4 * CHACHA_LANES)));

/* Whole batches un-slice with vector shuffles where the compiler has them (GCC 12+, Clang) and
 * a lane's bytes are its words in memory order (little-endian); else word by word (also
 * forced by -DCHACHA_TRANSPOSE=0). */
#ifndef CHACHA_TRANSPOSE
#if defined(__has_builtin) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#if __has_builtin(__builtin_shufflevector)
#define CHACHA_TRANSPOSE 1
#endif
#endif
#endif
#ifndef CHACHA_TRANSPOSE
#define CHACHA_TRANSPOSE 0
#endif

#define QRV(x, a, b, c, d)                                                          \
    do {                                                                            \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = (x[d] << 16) | (x[d] >> 16);             \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = (x[b] << 12) | (x[b] >> 20);             \
        x[a] += x[b]; x[d] ^= x[a]; x[d] = (x[d] << 8) | (x[d] >> 24);              \
        x[c] += x[d]; x[b] ^= x[c]; x[b] = (x[b] << 7) | (x[b] >> 25);              \
    } while (0)

/*
 * dst = src XOR CHACHA_LANES consecutive keystream blocks of the state init, whose word 12
 * (the block counter) is init[12] for the first block, +1 (mod 2^32) per block, for len bytes
 * (at most 64 * CHACHA_LANES).  The XOR is fused with un-slicing the lanes back into blocks.
 */
static void chacha_blocks_xor(const uint32_t init[16], int rounds, const uint8_t *src,
                              uint8_t *dst, size_t len)
{
    chacha_vec x[16], in12;
    uint32_t words[16][CHACHA_LANES];

    for (int l = 0; l < CHACHA_LANES; l++)
        in12[l] = init[12] + (uint32_t)l;
    for (int i = 0; i < 16; i++)
        x[i] = init[i] + (chacha_vec){ 0 };   /* the word in every lane */
    x[12] = in12;

    for (int r = 0; r < rounds; r += 2) {
        QRV(x, 0, 4, 8, 12);     /* columns */
        QRV(x, 1, 5, 9, 13);
        QRV(x, 2, 6, 10, 14);
        QRV(x, 3, 7, 11, 15);
        QRV(x, 0, 5, 10, 15);    /* diagonals */
        QRV(x, 1, 6, 11, 12);
        QRV(x, 2, 7, 8, 13);
        QRV(x, 3, 4, 9, 14);
    }

    /* Feed-forward (add the input state); block l is then lane l of every word. */
    for (int i = 0; i < 16; i++)
        x[i] += i == 12 ? in12 : init[i] + (chacha_vec){ 0 };

#if CHACHA_TRANSPOSE && CHACHA_LANES == 4   /* the shuffles below are for 4 lanes */
    if (len == 64 * CHACHA_LANES) {
        /* Un-slice four words at a time with a 4x4 transpose, then XOR 16 bytes at once. */
        for (int i = 0; i < 16; i += 4) {
            chacha_vec t0 = __builtin_shufflevector(x[i], x[i + 1], 0, 4, 1, 5);
            chacha_vec t1 = __builtin_shufflevector(x[i], x[i + 1], 2, 6, 3, 7);
            chacha_vec t2 = __builtin_shufflevector(x[i + 2], x[i + 3], 0, 4, 1, 5);
            chacha_vec t3 = __builtin_shufflevector(x[i + 2], x[i + 3], 2, 6, 3, 7);
            chacha_vec r[4] = {
                __builtin_shufflevector(t0, t2, 0, 1, 4, 5),
                __builtin_shufflevector(t0, t2, 2, 3, 6, 7),
                __builtin_shufflevector(t1, t3, 0, 1, 4, 5),
                __builtin_shufflevector(t1, t3, 2, 3, 6, 7),
            };
            for (int l = 0; l < 4; l++) {
                chacha_vec m;

                memcpy(&m, src + 64 * l + 4 * i, 16);
                m ^= r[l];
                memcpy(dst + 64 * l + 4 * i, &m, 16);
            }
        }
        return;
    }
#endif
    memcpy(words, x, sizeof(words));

    if (len == 64 * CHACHA_LANES) {
        for (int l = 0; l < CHACHA_LANES; l++, src += 64, dst += 64)
            for (int i = 0; i < 16; i++)
                store_le32(dst + 4 * i, load_le32(src + 4 * i) ^ words[i][l]);
    } else {
        uint8_t stream[64 * CHACHA_LANES];

        for (int l = 0; l < CHACHA_LANES; l++)
            for (int i = 0; i < 16; i++)
                store_le32(stream + 64 * l + 4 * i, words[i][l]);
        for (size_t j = 0; j < len; j++)
            dst[j] = src[j] ^ stream[j];
        OPENSSL_cleanse(stream, sizeof(stream));
    }
}

/*
 * dst = src XOR the ChaCha<rounds> keystream of (key, iv words) for len bytes, from block
 * iv[0] on.  As the kernel's ChaCha (lib/crypto/chacha.c, chacha_block_generic) only word 12
 * counts, modulo 2^32; words 13-15 stay as given.  (Bernstein's original ChaCha would carry
 * into word 13: the two differ only for a stream crossing block 2^32, never in Adiantum,
 * whose streams start at block 0 and span a sector.)
 */
static void chacha_xor(const uint32_t key[8], const uint32_t iv[4], int rounds,
                       const uint8_t *src, uint8_t *dst, size_t len)
{
    uint32_t init[16];

    memcpy(init, CHACHA_CONSTANTS, sizeof(CHACHA_CONSTANTS));
    memcpy(init + 4, key, 8 * sizeof(uint32_t));
    memcpy(init + 12, iv, 4 * sizeof(uint32_t));

    while (len) {
        size_t n = len < 64 * CHACHA_LANES ? len : 64 * CHACHA_LANES;

        chacha_blocks_xor(init, rounds, src, dst, n);
        src += n;
        dst += n;
        len -= n;
        init[12] += CHACHA_LANES;
    }
    OPENSSL_cleanse(init, sizeof(init));
}

/*
 * XChaCha (kernel: crypto/chacha_generic.c, crypto_xchacha_crypt): HChaCha of the key and the
 * IV's first 16 bytes gives a subkey; ChaCha then runs under it with the IV's bytes 24..31
 * (the stream position) as words 12-13 and bytes 16..23 (the rest of the nonce) as words
 * 14-15, all little-endian.  HChaCha = ChaCha's rounds on (constants, key, 16 nonce bytes)
 * with no feed-forward, the subkey being words 0-3 and 12-15 of the result.
 */
static void xchacha_xor(const uint32_t key[8], const uint8_t iv[32], int rounds,
                        const uint8_t *src, uint8_t *dst, size_t len)
{
    uint32_t x[16], subkey[8], words[4];

    memcpy(x, CHACHA_CONSTANTS, sizeof(CHACHA_CONSTANTS));
    memcpy(x + 4, key, 8 * sizeof(uint32_t));
    for (int i = 0; i < 4; i++)
        x[12 + i] = load_le32(iv + 4 * i);
    chacha_permute(x, rounds);
    memcpy(subkey, x, 4 * sizeof(uint32_t));
    memcpy(subkey + 4, x + 12, 4 * sizeof(uint32_t));

    words[0] = load_le32(iv + 24);
    words[1] = load_le32(iv + 28);
    words[2] = load_le32(iv + 16);
    words[3] = load_le32(iv + 20);
    chacha_xor(subkey, words, rounds, src, dst, len);

    OPENSSL_cleanse(x, sizeof(x));
    OPENSSL_cleanse(subkey, sizeof(subkey));
}

void adiantum_xchacha(const uint8_t key[32], const uint8_t iv[32], int rounds,
                      const uint8_t *src, uint8_t *dst, size_t len)
{
    uint32_t k[8];

    for (int i = 0; i < 8; i++)
        k[i] = load_le32(key + 4 * i);
    xchacha_xor(k, iv, rounds, src, dst, len);
    OPENSSL_cleanse(k, sizeof(k));
}

/* ---------------------------------------------------------------------------------------- */
/* Poly1305 as an ε-almost-Δ-universal hash                                                 */
/*                                                                                          */
/* h = (((h + m_1) r + m_2) r + ...) mod p, p = 2^130 - 5, each m_i a 16-byte block read    */
/* little-endian plus 2^128 (every block here is whole: the callers pad).  Unlike the MAC,  */
/* no "s" is added at the end: Adiantum takes h mod p, truncated to 128 bits (kernel:      */
/* poly1305_core_emit with no nonce).  Numbers are three limbs of 44, 44 and 42 bits; a     */
/* product's parts at 2^130 and above fold back times 5 (2^130 = 5 mod p), hence the        */
/* precomputed r1 * 20 and r2 * 20 (= 5 * 4: those parts sit 2 bits above the limb         */
/* boundary).                                                                               */

#define M44 ((UINT64_C(1) << 44) - 1)
#define M42 ((UINT64_C(1) << 42) - 1)

/* r = the 16 bytes, little-endian, with Poly1305's clamp: r &= 0x0ffffffc0ffffffc0ffffffc0fffffff
 * (Bernstein's Poly1305 paper; the kernel's poly1305_core_setkey applies the same). */
static void poly1305_setkey(struct adiantum_poly1305_key *key, const uint8_t raw[16])
{
    uint64_t t0 = load_le64(raw), t1 = load_le64(raw + 8);

    /* The clamp mask split into the limbs: 0xffc0fffffff, 0xfffffc0ffff, 0xffffffc0f. */
    key->r[0] = t0 & UINT64_C(0xffc0fffffff);
    key->r[1] = ((t0 >> 44) | (t1 << 20)) & UINT64_C(0xfffffc0ffff);
    key->r[2] = (t1 >> 24) & UINT64_C(0xffffffc0f);
    key->s[0] = key->r[1] * 20;
    key->s[1] = key->r[2] * 20;
}

/* Absorb nblocks whole 16-byte blocks into h (three limbs, kept partially reduced). */
static void poly1305_blocks(uint64_t h[3], const struct adiantum_poly1305_key *key,
                            const uint8_t *m, size_t nblocks)
{
    const uint64_t r0 = key->r[0], r1 = key->r[1], r2 = key->r[2];
    const uint64_t s1 = key->s[0], s2 = key->s[1];
    uint64_t h0 = h[0], h1 = h[1], h2 = h[2], c;

    while (nblocks--) {
        uint64_t t0 = load_le64(m), t1 = load_le64(m + 8);

        /* h += m + 2^128 (2^128 is bit 40 of the top limb, which starts at bit 88) */
        h0 += t0 & M44;
        h1 += ((t0 >> 44) | (t1 << 20)) & M44;
        h2 += (t1 >> 24) | (UINT64_C(1) << 40);

        /* h *= r mod p: schoolbook on limbs, the wrapped terms pre-multiplied by 20 */
        u128 d0 = (u128)h0 * r0 + (u128)h1 * s2 + (u128)h2 * s1;
        u128 d1 = (u128)h0 * r1 + (u128)h1 * r0 + (u128)h2 * s2;
        u128 d2 = (u128)h0 * r2 + (u128)h1 * r1 + (u128)h2 * r0;

        /* carry back into 44/44/42 bits; what passes 2^130 re-enters the bottom times 5 */
        c = (uint64_t)(d0 >> 44);
        h0 = (uint64_t)d0 & M44;
        d1 += c;
        c = (uint64_t)(d1 >> 44);
        h1 = (uint64_t)d1 & M44;
        d2 += c;
        c = (uint64_t)(d2 >> 42);
        h2 = (uint64_t)d2 & M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        h1 += c;
        m += 16;
    }
    h[0] = h0;
    h[1] = h1;
    h[2] = h2;
}

/* h fully reduced mod p, as a 128-bit number (the bits at 2^128 and 2^129 dropped). */
static u128 poly1305_emit(const uint64_t h[3])
{
    uint64_t h0 = h[0], h1 = h[1], h2 = h[2], g0, g1, g2, c, mask;

    /* two full carry passes: h < 2^130 + a little */
    for (int pass = 0; pass < 2; pass++) {
        c = h1 >> 44;
        h1 &= M44;
        h2 += c;
        c = h2 >> 42;
        h2 &= M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        h1 += c;
    }
    /* g = h + 5 - 2^130; if that is not negative, h >= p and h - p = g is the residue */
    g0 = h0 + 5;
    c = g0 >> 44;
    g0 &= M44;
    g1 = h1 + c;
    c = g1 >> 44;
    g1 &= M44;
    g2 = h2 + c - (UINT64_C(1) << 42);
    mask = (g2 >> 63) - 1;          /* all ones when g >= 0 (take g), zero when negative */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    h2 = (h2 & ~mask) | (g2 & mask);

    return (u128)(h0 | h1 << 44) | (u128)((h1 >> 20) | h2 << 24) << 64;
}

/* ---------------------------------------------------------------------------------------- */
/* NH and NHPoly1305 (paper §6.3 and §6.4; kernel: crypto/nhpoly1305.c)                     */
/*                                                                                          */
/* NH over a message of 16-byte units m = (m0, m1, m2, m3) (32-bit little-endian words),    */
/* with the kernel's parameters (include/crypto/nhpoly1305.h: stride 2, 4 passes):          */
/*   pass p, unit i:  sum_p += (m0 + k[4i+4p]) * (m2 + k[4i+4p+2])                          */
/*                           + (m1 + k[4i+4p+1]) * (m3 + k[4i+4p+3])                        */
/* additions mod 2^32, products and sums mod 2^64; the key of pass p is the key of pass 0   */
/* shifted by 16 bytes (a Toeplitz iteration), for ε = 2^-128.  The 32-byte output is the   */
/* four sums little-endian.                                                                 */

/* NH of nunits units, the first being unit `first` of its chunk, added to sums.  With the key
 * rearranged (adiantum.h) the loop over passes is four independent lanes the compiler
 * vectorises (SSE2: 32-bit adds and pmuludq widening multiplies). */
static void nh_units(const uint32_t (*key)[4][4], size_t first, const uint8_t *msg,
                     size_t nunits, uint64_t sums[4])
{
    uint64_t s[4] = { sums[0], sums[1], sums[2], sums[3] };

    for (size_t i = first; i < first + nunits; i++, msg += 16) {
        const uint32_t m0 = load_le32(msg), m1 = load_le32(msg + 4);
        const uint32_t m2 = load_le32(msg + 8), m3 = load_le32(msg + 12);

        for (int p = 0; p < 4; p++)
            s[p] += (uint64_t)(uint32_t)(m0 + key[i][0][p]) * (uint32_t)(m2 + key[i][2][p])
                    + (uint64_t)(uint32_t)(m1 + key[i][1][p]) * (uint32_t)(m3 + key[i][3][p]);
    }
    for (int p = 0; p < 4; p++)
        sums[p] = s[p];
}

/* The NH output of one chunk (up to 1024 bytes, the last one padded with zeros to a whole
 * unit) goes through Poly1305 as two 16-byte blocks. */
static void nh_then_poly(const struct adiantum_nhpoly1305_key *key, const uint8_t *chunk,
                         size_t len, uint64_t h[3])
{
    uint64_t sums[4] = { 0, 0, 0, 0 };
    uint8_t out[32];
    size_t whole = len / 16;

    nh_units(key->nh, 0, chunk, whole, sums);
    if (len % 16) {
        /* kernel: crypto_nhpoly1305_final_helper zero-pads the partial unit */
        uint8_t unit[16] = { 0 };

        memcpy(unit, chunk + 16 * whole, len % 16);
        nh_units(key->nh, whole, unit, 1, sums);
    }
    for (int p = 0; p < 4; p++)
        store_le64(out + 8 * p, sums[p]);
    poly1305_blocks(h, &key->poly, out, 2);
}

/*
 * NHPoly1305 (paper §6.4: H_L = Poly1305_{K_L}(NH_{K_N}(pad_128(L)))): NH over each 1024-byte
 * chunk of the message (the last one shorter), the NH outputs evaluated by Poly1305.  The
 * empty message hashes to 0.  Returns the 128-bit result as a number.
 */
static u128 nhpoly1305(const struct adiantum_nhpoly1305_key *key, const uint8_t *msg,
                       size_t len)
{
    uint64_t h[3] = { 0, 0, 0 };

    while (len) {
        size_t n = len < ADIANTUM_NH_MESSAGE_BYTES ? len : ADIANTUM_NH_MESSAGE_BYTES;

        nh_then_poly(key, msg, n, h);
        msg += n;
        len -= n;
    }
    return poly1305_emit(h);
}

/* NHPoly1305's key: a Poly1305 r, then the NH key words little-endian (kernel:
 * crypto_nhpoly1305_setkey), the latter rearranged as adiantum.h says. */
static void nhpoly1305_setkey(struct adiantum_nhpoly1305_key *key,
                              const uint8_t raw[ADIANTUM_NHPOLY1305_KEY_SIZE])
{
    poly1305_setkey(&key->poly, raw);
    for (int i = 0; i < ADIANTUM_NH_MESSAGE_BYTES / 16; i++)
        for (int c = 0; c < 4; c++)
            for (int p = 0; p < 4; p++)
                key->nh[i][c][p] = load_le32(raw + 16 + 4 * (4 * i + 4 * p + c));
}

void adiantum_nhpoly1305(const uint8_t key[ADIANTUM_NHPOLY1305_KEY_SIZE], const uint8_t *msg,
                         size_t len, uint8_t out[16])
{
    struct adiantum_nhpoly1305_key k;

    nhpoly1305_setkey(&k, key);
    store_le128(out, nhpoly1305(&k, msg, len));
    OPENSSL_cleanse(&k, sizeof(k));
}

/* ---------------------------------------------------------------------------------------- */
/* Adiantum                                                                                 */

/* Bytes of keystream the subkeys take: K_E (AES-256), K_T (header Poly1305 r), then the
 * NHPoly1305 key K_L (its Poly1305 r and the NH key). */
#define DERIVED_BYTES (32 + 16 + ADIANTUM_NHPOLY1305_KEY_SIZE)   /* 1136 */

int adiantum_init(struct adiantum_ctx *ctx, const uint8_t key[ADIANTUM_KEY_SIZE], int rounds)
{
    uint8_t derived[DERIVED_BYTES], iv[32];
    int ok;

    memset(ctx, 0, sizeof(*ctx));
    if (rounds != 12 && rounds != 20) {
        errno = EINVAL;
        return -1;
    }
    ctx->rounds = rounds;
    for (int i = 0; i < 8; i++)
        ctx->stream_key[i] = load_le32(key + 4 * i);

    /*
     * Key derivation (paper §2: K_E || K_H || ... = S_{K_S}(λ), the stream for the empty
     * nonce, S_{K_S}(X) being XChaCha_{K_S}(pad_192(X || 1)), so here the nonce 1 || 0^191:
     * IV byte 0 = 1, every other byte 0, counter 0; kernel: crypto/adiantum.c,
     * adiantum_setkey).  The keystream, the encryption of zeros, is cut into K_E (32 bytes)
     * and K_H, which §6.4 splits into K_T (16), K_L (16) and K_N (1072), the last two being
     * the NHPoly1305 key.
     */
    memset(iv, 0, sizeof(iv));
    iv[0] = 1;
    memset(derived, 0, sizeof(derived));
    xchacha_xor(ctx->stream_key, iv, rounds, derived, derived, sizeof(derived));

    poly1305_setkey(&ctx->header_key, derived + 32);
    nhpoly1305_setkey(&ctx->bulk_key, derived + 48);

    ctx->aes_enc = EVP_CIPHER_CTX_new();
    ctx->aes_dec = EVP_CIPHER_CTX_new();
    ok = ctx->aes_enc && ctx->aes_dec
         && EVP_EncryptInit_ex(ctx->aes_enc, EVP_aes_256_ecb(), NULL, derived, NULL) == 1
         && EVP_DecryptInit_ex(ctx->aes_dec, EVP_aes_256_ecb(), NULL, derived, NULL) == 1
         && EVP_CIPHER_CTX_set_padding(ctx->aes_enc, 0) == 1
         && EVP_CIPHER_CTX_set_padding(ctx->aes_dec, 0) == 1;
    OPENSSL_cleanse(derived, sizeof(derived));
    if (!ok) {
        int enomem = !ctx->aes_enc || !ctx->aes_dec;

        adiantum_wipe(ctx);
        errno = enomem ? ENOMEM : EIO;
        return -1;
    }
    return 0;
}

void adiantum_wipe(struct adiantum_ctx *ctx)
{
    EVP_CIPHER_CTX_free(ctx->aes_enc);    /* frees and cleanses the key schedule; NULL ok */
    EVP_CIPHER_CTX_free(ctx->aes_dec);
    OPENSSL_cleanse(ctx, sizeof(*ctx));
}

/* AES-256 on one 16-byte block in place (encrypt: C_M = E_{K_E}(P_M); decrypt: the inverse),
 * through a copy of the keyed template so concurrent calls never share an EVP context. */
static int aes_block(const struct evp_cipher_ctx_st *tmpl, int encrypt, uint8_t block[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t out[16];
    int outl = 0, ok;

    if (!c) {
        errno = ENOMEM;
        return -1;
    }
    ok = EVP_CIPHER_CTX_copy(c, tmpl) == 1
         && (encrypt ? EVP_EncryptUpdate(c, out, &outl, block, 16)
                     : EVP_DecryptUpdate(c, out, &outl, block, 16)) == 1
         && outl == 16;
    EVP_CIPHER_CTX_free(c);
    if (!ok) {
        errno = EIO;
        return -1;
    }
    memcpy(block, out, 16);
    OPENSSL_cleanse(out, sizeof(out));
    return 0;
}

/*
 * H_T = Poly1305_{K_T}(bin_128(|L|) || T) (paper §6.4; kernel: adiantum_hash_header): the
 * bulk's length in bits as a 64-bit little-endian number padded to one 16-byte block, then
 * the 32-byte tweak as two blocks.  Computed once, used by both hash steps.
 */
static u128 hash_header(const struct adiantum_ctx *ctx, size_t bulk_len,
                        const uint8_t tweak[ADIANTUM_TWEAK_SIZE])
{
    uint8_t header[16 + ADIANTUM_TWEAK_SIZE];
    uint64_t h[3] = { 0, 0, 0 };

    memset(header, 0, 16);
    store_le64(header, (uint64_t)bulk_len * 8);
    memcpy(header + 16, tweak, ADIANTUM_TWEAK_SIZE);
    poly1305_blocks(h, &ctx->header_key, header, sizeof(header) / 16);
    return poly1305_emit(h);
}

/*
 * The HBSH steps (paper §2, HBSHEncrypt and HBSHDecrypt, with H_{K_H}(T, L) = H_T ⊞ H_L of
 * §6.4; kernel: adiantum_crypt, adiantum_finish), the message split as P = P_L || P_R, P_R
 * its last 16 bytes:
 *
 *   encrypt                                      decrypt
 *   P_M = P_R ⊞ (H_T ⊞ H_{K_L}(P_L))             C_M = C_R ⊞ (H_T ⊞ H_{K_L}(C_L))
 *   C_M = AES_{K_E}(P_M)
 *   C_L = P_L ⊕ XChaCha_{K_S}(C_M || 1 || 0...)   P_L = C_L ⊕ XChaCha_{K_S}(C_M || 1 || 0...)
 *                                                P_M = AES^-1_{K_E}(C_M)
 *   C_R = C_M ⊟ (H_T ⊞ H_{K_L}(C_L))             P_R = P_M ⊟ (H_T ⊞ H_{K_L}(P_L))
 *
 * ⊞/⊟: addition/subtraction mod 2^128 of little-endian numbers.  The stream is §2's
 * S_{K_S}(C_M) = XChaCha_{K_S}(pad_192(C_M || 1)): as the kernel's 32-byte XChaCha IV,
 * C_M || 01 00 ... 00 (nonce C_M || 1 || 0^63, block counter 0).
 */
int adiantum_crypt(const struct adiantum_ctx *ctx, int encrypt, const uint8_t *src, uint8_t *dst,
                   size_t len, const uint8_t tweak[ADIANTUM_TWEAK_SIZE])
{
    uint8_t right[16], iv[32];
    size_t bulk_len;
    u128 header_hash, r;

    if (len < ADIANTUM_MIN_LEN || !ctx->aes_enc) {
        errno = EINVAL;
        return -1;
    }
    bulk_len = len - 16;

    /* First hash step, over the input's bulk (read before dst may overwrite it). */
    header_hash = hash_header(ctx, bulk_len, tweak);
    r = load_le128(src + bulk_len) + header_hash + nhpoly1305(&ctx->bulk_key, src, bulk_len);
    store_le128(right, r);

    if (encrypt && aes_block(ctx->aes_enc, 1, right))
        goto fail;

    /* right is now C_M either way: the XChaCha nonce */
    memcpy(iv, right, 16);
    memset(iv + 16, 0, 16);
    iv[16] = 1;
    xchacha_xor(ctx->stream_key, iv, ctx->rounds, src, dst, bulk_len);

    if (!encrypt && aes_block(ctx->aes_dec, 0, right))
        goto fail;

    /* Second hash step, over the output's bulk. */
    r = load_le128(right) - (header_hash + nhpoly1305(&ctx->bulk_key, dst, bulk_len));
    store_le128(dst + bulk_len, r);

    OPENSSL_cleanse(right, sizeof(right));
    OPENSSL_cleanse(iv, sizeof(iv));
    return 0;

fail:   /* errno set by aes_block */
    OPENSSL_cleanse(right, sizeof(right));
    OPENSSL_cleanse(iv, sizeof(iv));
    return -1;
}
