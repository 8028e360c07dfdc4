/*
 * backends._native: the native multi data unit core.
 *
 * One call converts a whole bio: every data unit of a buffer, each with its own IV derived
 * here (dm-crypt's IV modes), through one keyed OpenSSL EVP context that is only re-IVed per
 * unit.  The GIL is released for the whole loop, so other threads run meanwhile, and a large
 * bio can be split over a few worker threads (each with its own context).
 *
 * Why C: the per-unit loop is the hot loop of the device.  In Python (ctypes) it costs about a
 * microsecond per unit; here it runs at OpenSSL's speed.  Nothing here is cryptography of its
 * own: AES-XTS and AES-CBC are OpenSSL's, ESSIV's salt is OpenSSL's digest.
 *
 * Core(chain, key, ivmode, essiv_hash=None)
 *     chain: "xts" or "cbc"; key: the volume key (XTS: both halves); ivmode: plain, plain64,
 *     plain64be, essiv, benbi or null; essiv_hash: ESSIV's digest name.  Keys every context
 *     once and keeps no copy of the key bytes.  ValueError for a key or mode OpenSSL refuses.
 * Core.crypt(encrypt, src, dst, iv, data_unit_size, iv_step=1, threads=1)   (positional)
 *     src and dst: equal lengths, a multiple of data_unit_size (a power of two, 16..65536);
 *     dst may be src itself (in place), never a partial overlap.  iv: 16 bytes, the first
 *     unit's IV as the backend contract defines it (backends/base.py): for plain64 and
 *     plain64be a 128-bit counter (little- and big-endian) stepped by iv_step per unit; for
 *     plain a 32-bit counter that wraps as dm-crypt's does; for essiv, benbi and null the
 *     plain64 IV of the first unit, from which each unit's IV is derived as dm-crypt derives
 *     it (64-bit sector).  threads > 1 splits the units over that many threads (the caller
 *     decides when a bio is worth it: waking a worker has a cost).
 *     Raises NativeError (a backends.base.CryptoFailure) if OpenSSL fails; dst is then not to
 *     be trusted.
 * Core.close()
 *     Waits for calls in flight, frees (and so cleanses) every key schedule.  Later calls
 *     raise ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

typedef unsigned __int128 u128;

enum ivmode { IV_PLAIN, IV_PLAIN64, IV_PLAIN64BE, IV_ESSIV, IV_BENBI, IV_NULL };
static const char *const IVMODE_NAMES[] = {"plain", "plain64", "plain64be", "essiv", "benbi",
                                           "null", NULL};
/* IVs are derived (and ESSIV-encrypted) this many units at a time. */
#define IV_BATCH 64
/* benbi counts 16-byte cipher blocks from 1: shift = 9 - log2(16) (dm-crypt). */
#define BENBI_SHIFT 5
#define MAX_THREADS 64

static PyObject *NativeError;

/* One thread's contexts: the data cipher both ways, and ESSIV's IV cipher. */
typedef struct ctxset {
    EVP_CIPHER_CTX *enc, *dec, *essiv;
    struct ctxset *next;
} ctxset;

/* Every Core's context pool, the worker pool's queue and the fork handlers share this lock:
 * it is only ever held for a few pointer moves. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    PyObject_HEAD
    int ivmode;
    ctxset *keyed;          /* the template every other context set is copied from */
    ctxset *idle;           /* context sets not in use */
    int users;              /* calls in flight */
    int closed;
    int ready;              /* keyed once, and quiet initialised */
    pthread_cond_t quiet;   /* users reached 0 */
} Core;

static void ctxset_free(ctxset *s)
{
    if (!s)
        return;
    EVP_CIPHER_CTX_free(s->enc);    /* frees and cleanses the key schedules */
    EVP_CIPHER_CTX_free(s->dec);
    EVP_CIPHER_CTX_free(s->essiv);
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

/* A context set for this call: an idle one, or a fresh copy of the keyed template. */
static ctxset *ctxset_get(Core *core)
{
    pthread_mutex_lock(&lock);
    ctxset *s = core->idle;
    if (s)
        core->idle = s->next;
    pthread_mutex_unlock(&lock);
    return s ? s : ctxset_copy(core->keyed);
}

static void ctxset_put(Core *core, ctxset *s)
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

/* The counter a request's first IV stands for (see the module comment). */
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

/* The IVs of `n` units from counter `c`, stepping by `step`, into out[n][16]. */
static int derive_ivs(int ivmode, EVP_CIPHER_CTX *essiv, u128 c, u128 step, size_t n,
                      unsigned char (*out)[16])
{
    memset(out, 0, n * 16);
    for (size_t i = 0; i < n; i++, c += step) {
        switch (ivmode) {
        case IV_PLAIN:
            store_le(out[i], (uint32_t)c, 4);
            break;
        case IV_PLAIN64:
            store_le(out[i], c, 16);
            break;
        case IV_PLAIN64BE:
            store_be(out[i], c, 16);
            break;
        case IV_ESSIV:
            store_le(out[i], (uint64_t)c, 8);
            break;
        case IV_BENBI:
            store_be(out[i] + 8, (uint64_t)(((uint64_t)c << BENBI_SHIFT) + 1), 8);
            break;
        default:        /* null */
            break;
        }
    }
    if (ivmode == IV_ESSIV) {
        int len;
        if (!EVP_CipherUpdate(essiv, out[0], &len, out[0], (int)(n * 16)) ||
            len != (int)(n * 16))
            return 0;
    }
    return 1;
}

/* --- the loop ---------------------------------------------------------------------------- */

typedef struct batch batch;

/* A run of consecutive units: what one thread converts. */
typedef struct piece {
    Core *core;
    int encrypt;
    const unsigned char *src;
    unsigned char *dst;
    size_t units, du;
    u128 counter, step;
    int ok;
    batch *batch;
    struct piece *next;
} piece;

static void run_piece(piece *p)
{
    unsigned char ivs[IV_BATCH][16];
    ctxset *s = ctxset_get(p->core);
    p->ok = 0;
    if (!s)
        return;
    EVP_CIPHER_CTX *ctx = p->encrypt ? s->enc : s->dec;
    u128 c = p->counter;
    int len;
    for (size_t first = 0; first < p->units; first += IV_BATCH) {
        size_t n = p->units - first < IV_BATCH ? p->units - first : IV_BATCH;
        if (!derive_ivs(p->core->ivmode, s->essiv, c, p->step, n, ivs))
            goto out;
        c += p->step * n;
        for (size_t i = 0; i < n; i++) {
            size_t at = (first + i) * p->du;
            if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, ivs[i], -1) ||
                !EVP_CipherUpdate(ctx, p->dst + at, &len, p->src + at, (int)p->du) ||
                len != (int)p->du)
                goto out;
        }
    }
    p->ok = 1;
out:
    OPENSSL_cleanse(ivs, sizeof ivs);
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

/* Convert `units` units in `pieces` pieces: the caller runs the first, workers the rest. */
static int run_split(piece *whole, int pieces)
{
    piece parts[MAX_THREADS];
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
        return whole->ok;
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
    int ok = 1;
    for (int i = 0; i < pieces; i++)
        ok &= parts[i].ok;
    return ok;
}

/* --- the Python type --------------------------------------------------------------------- */

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

static int Core_init(Core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"chain", "key", "ivmode", "essiv_hash", NULL};
    const char *chain, *ivmode, *essiv_hash = NULL;
    Py_buffer key;
    if (self->ready) {
        PyErr_SetString(PyExc_ValueError, "a Core is keyed once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sy*s|z", kwlist, &chain, &key, &ivmode,
                                     &essiv_hash))
        return -1;
    const char *error = NULL;
    const EVP_CIPHER *cipher = NULL;
    int xts = strcmp(chain, "xts") == 0;
    size_t bits = (size_t)key.len * 8 / (xts ? 2 : 1);
    if (xts)
        cipher = bits == 128 ? EVP_aes_128_xts() : bits == 256 ? EVP_aes_256_xts() : NULL;
    else if (strcmp(chain, "cbc") == 0)
        cipher = bits == 128 ? EVP_aes_128_cbc() : bits == 192 ? EVP_aes_192_cbc()
               : bits == 256 ? EVP_aes_256_cbc() : NULL;
    else
        error = "chain mode must be xts or cbc";
    if (!error && !cipher)
        error = "key size not valid for this chain mode";
    self->ivmode = -1;
    for (int i = 0; !error && IVMODE_NAMES[i]; i++)
        if (strcmp(ivmode, IVMODE_NAMES[i]) == 0)
            self->ivmode = i;
    if (!error && self->ivmode < 0)
        error = "unknown IV mode";
    if (!error && (self->ivmode == IV_ESSIV) != (essiv_hash != NULL))
        error = "essiv_hash goes with (and only with) the essiv IV mode";
    if (!error)
        self->keyed = keyed_set(cipher, key.buf, (size_t)key.len, essiv_hash, &error);
    PyBuffer_Release(&key);
    if (!self->keyed) {
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    pthread_cond_init(&self->quiet, NULL);
    self->ready = 1;
    return 0;
}

/* Positional arguments parsed by hand (METH_FASTCALL): this is called once per bio, and
 * PyArg_ParseTupleAndKeywords costs as much as converting a 512-byte unit. */
static PyObject *Core_crypt(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 5 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "crypt(encrypt, src, dst, iv, data_unit_size, "
                                         "iv_step=1, threads=1)");
        return NULL;
    }
    int encrypt = PyObject_IsTrue(args[0]);
    Py_ssize_t du = PyLong_AsSsize_t(args[4]);
    unsigned long long step = nargs > 5 ? PyLong_AsUnsignedLongLong(args[5]) : 1;
    long threads = nargs > 6 ? PyLong_AsLong(args[6]) : 1;
    if (encrypt < 0 || PyErr_Occurred())
        return NULL;
    Py_buffer src, dst, iv;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &dst, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &iv, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    const char *error = NULL;
    const unsigned char *s = src.buf;
    unsigned char *d = dst.buf;
    if (iv.len != 16)
        error = "iv must be 16 bytes";
    else if (du < 16 || du > 65536 || (du & (du - 1)))
        error = "data_unit_size must be a power of two from 16 to 65536";
    else if (src.len != dst.len || src.len % du)
        error = "src and dst must have equal lengths, a multiple of data_unit_size";
    else if (s != d && s < d + dst.len && d < s + src.len)
        error = "src and dst overlap without being the same buffer";
    else if (threads < 1 || threads > INT_MAX)
        error = "threads must be at least 1";
    piece whole = {0};
    if (!error) {
        whole.core = self;
        whole.encrypt = encrypt;
        whole.src = s;
        whole.dst = d;
        whole.units = (size_t)(src.len / du);
        whole.du = (size_t)du;
        whole.counter = first_counter(self->ivmode, iv.buf);
        whole.step = step;
        pthread_mutex_lock(&lock);
        if (self->closed)
            error = "this core is closed";
        else if (!self->ready)
            error = "this core was never keyed";
        else
            self->users++;
        pthread_mutex_unlock(&lock);
    }
    PyBuffer_Release(&iv);
    if (error) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    int pieces = threads > MAX_THREADS ? MAX_THREADS : (int)threads;
    if ((size_t)pieces > whole.units)
        pieces = (int)whole.units;
    if (pieces > 1) {
        ok = run_split(&whole, pieces);
    } else {
        run_piece(&whole);
        ok = whole.ok;
    }
    pthread_mutex_lock(&lock);
    if (--self->users == 0)
        pthread_cond_broadcast(&self->quiet);
    pthread_mutex_unlock(&lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!ok) {
        PyErr_SetString(NativeError, "OpenSSL failed to convert a data unit (or out of memory)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static void core_release(Core *self)
{
    pthread_mutex_lock(&lock);
    self->closed = 1;
    while (self->users)
        pthread_cond_wait(&self->quiet, &lock);
    ctxset *idle = self->idle, *keyed = self->keyed;
    self->idle = self->keyed = NULL;
    pthread_mutex_unlock(&lock);
    while (idle) {
        ctxset *next = idle->next;
        ctxset_free(idle);
        idle = next;
    }
    ctxset_free(keyed);
}

static PyObject *Core_close(Core *self, PyObject *unused)
{
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    core_release(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void Core_dealloc(Core *self)
{
    if (self->ready) {
        core_release(self);
        pthread_cond_destroy(&self->quiet);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Core_methods[] = {
    {"crypt", (PyCFunction)(void (*)(void))Core_crypt, METH_FASTCALL,
     "crypt(encrypt, src, dst, iv, data_unit_size, iv_step=1, threads=1): convert every data "
     "unit of src into dst (see the module documentation)."},
    {"close", (PyCFunction)Core_close, METH_NOARGS,
     "Wait for calls in flight, then free and cleanse every key schedule."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "backends._native.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A keyed AES-XTS or AES-CBC multi data unit converter (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "backends._native",
    .m_doc = "The native multi data unit core: whole bios through OpenSSL, IVs derived per "
             "unit, the GIL released.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    /* A failure is the backend contract's CryptoFailure: callers need no translation. */
    PyObject *base = PyImport_ImportModule("backends.base");
    PyObject *failure = base ? PyObject_GetAttrString(base, "CryptoFailure") : NULL;
    Py_XDECREF(base);
    NativeError = failure ? PyErr_NewException("backends._native.NativeError", failure, NULL)
                          : NULL;
    Py_XDECREF(failure);
    if (!NativeError || PyModule_AddObjectRef(m, "NativeError", NativeError) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddStringConstant(m, "openssl_version", OpenSSL_version(OPENSSL_VERSION));
    static int fork_handlers;
    if (!fork_handlers++)
        pthread_atfork(fork_prepare, fork_parent, fork_child);
    return m;
}
