/*
 * backends._native: the Python binding of the native multi data unit core (core.h, core.c).
 *
 * One call converts a whole bio: every data unit of a buffer, each with its own IV derived by
 * the core (dm-crypt's IV modes), through OpenSSL EVP.  The GIL is released for the whole
 * loop, so other threads run meanwhile, and a large bio can be split over a few worker
 * threads.  The core is also handed to the native data plane (cryptfs/fuse/_plane.c) as a
 * capsule, so the plane converts with this very key schedule and core.c is linked once.
 *
 * Core(chain, key, ivmode, essiv_hash=None)
 *     chain: "xts" or "cbc" (or "null": dm-crypt's cipher_null-ecb, output = input, the key
 *     ignored - the data plane's no-crypto ceiling; or "adiantum12" / "adiantum20": Adiantum,
 *     a 32-byte key, IV modes plain, plain64 and null, the IV zero-padded to the tweak); key: the volume key (XTS: both halves);
 *     ivmode: plain, plain64, plain64be, essiv, benbi or null; essiv_hash: ESSIV's digest
 *     name.  Keys every context once and keeps no copy of the key bytes.  ValueError for a key
 *     or mode OpenSSL refuses.
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
 * Core.capsule()
 *     A PyCapsule named "cryptfs.backends._native.core" holding a struct core_api (core.h):
 *     the core, with a reference of its own that the capsule's destructor drops, and the
 *     core's functions.  For another extension; ValueError if closed or never keyed.
 * Core.close()
 *     Drops this object's reference: later calls raise ValueError.  When no capsule user holds
 *     the core any more, waits for calls in flight and frees (so cleanses) every key schedule.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"
#include "engine.h"

static PyObject *NativeError;

typedef struct {
    PyObject_HEAD
    struct core *core;      /* this object's reference; NULL when never keyed or closed */
    int closed;
} Core;

/* Only ever changed and read with the GIL held: that orders close against crypt's taking of
 * its own reference, so the core cannot go between the check and the reference. */
static struct core *usable(Core *self)
{
    if (!self->core)
        PyErr_SetString(PyExc_ValueError, self->closed ? "this core is closed"
                                                       : "this core was never keyed");
    return self->core;
}

static int Core_init(Core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"chain", "key", "ivmode", "essiv_hash", NULL};
    const char *chain, *ivmode, *essiv_hash = NULL;
    Py_buffer key;
    char error[128];
    if (self->core || self->closed) {
        PyErr_SetString(PyExc_ValueError, "a Core is keyed once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sy*s|z", kwlist, &chain, &key, &ivmode,
                                     &essiv_hash))
        return -1;
    self->core = core_new(chain, key.buf, (size_t)key.len, ivmode, essiv_hash, error,
                          sizeof error);
    PyBuffer_Release(&key);
    if (!self->core) {
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
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
    /* The core refuses all of these too (EINVAL); here they get their own message. */
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
    struct core *core = NULL;
    if (error)
        PyErr_SetString(PyExc_ValueError, error);
    else if ((core = usable(self)))
        core_ref(core);         /* a concurrent close() must not free it under this call */
    if (!core) {
        PyBuffer_Release(&iv);
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    int failed, err;
    Py_BEGIN_ALLOW_THREADS
    failed = core_crypt(core, encrypt, s, d, (size_t)src.len, iv.buf, (size_t)du,
                        (uint64_t)step, (int)threads);
    err = errno;
    core_unref(core);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&iv);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (failed) {
        PyErr_SetString(NativeError, err == ENOMEM
                        ? "out of memory for an OpenSSL context"
                        : "OpenSSL failed to convert a data unit (or out of memory)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static void capsule_free(PyObject *capsule)
{
    struct core_api *api = PyCapsule_GetPointer(capsule, CORE_CAPSULE_NAME);
    if (!api) {
        PyErr_Clear();
        return;
    }
    core_unref(api->core);
    free(api);
}

static PyObject *Core_capsule(Core *self, PyObject *unused)
{
    (void)unused;
    struct core *core = usable(self);
    if (!core)
        return NULL;
    struct core_api *api = malloc(sizeof *api);
    if (!api)
        return PyErr_NoMemory();
    *api = (struct core_api){
        .version = CORE_API_VERSION, .core = core, .ref = core_ref, .unref = core_unref,
        .crypt = core_crypt, .crypt_sectors = core_crypt_sectors,
    };
    core_ref(core);
    PyObject *capsule = PyCapsule_New(api, CORE_CAPSULE_NAME, capsule_free);
    if (!capsule) {
        core_unref(core);
        free(api);
    }
    return capsule;
}

static PyObject *Core_close(Core *self, PyObject *unused)
{
    (void)unused;
    struct core *core = self->core;
    self->core = NULL;
    if (core)
        self->closed = 1;
    Py_BEGIN_ALLOW_THREADS
    core_unref(core);           /* may wait for calls in flight */
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void Core_dealloc(Core *self)
{
    core_unref(self->core);     /* no call of this object can be in flight any more */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Core_methods[] = {
    {"crypt", (PyCFunction)(void (*)(void))Core_crypt, METH_FASTCALL,
     "crypt(encrypt, src, dst, iv, data_unit_size, iv_step=1, threads=1): convert every data "
     "unit of src into dst (see the module documentation)."},
    {"capsule", (PyCFunction)Core_capsule, METH_NOARGS,
     "A PyCapsule \"" CORE_CAPSULE_NAME "\" holding this core (with its own reference) and "
     "its C functions, for another extension (core.h: struct core_api)."},
    {"close", (PyCFunction)Core_close, METH_NOARGS,
     "Drop this object's reference; the last one waits for calls in flight, then frees and "
     "cleanses every key schedule."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cryptfs.backends._native.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A keyed AES-XTS or AES-CBC multi data unit converter (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

/* --- Engine: the simulated asynchronous engine (engine.h) ------------------------------ */

typedef struct {
    PyObject_HEAD
    struct engine *engine;  /* NULL when closed */
} Engine;

/* One crypt() call's request: its own copy of the data (the engine may hold it past a
 * timeout, after the caller's buffers are gone), freed by whichever of the caller and the
 * engine lets go last. */
struct call {
    struct engine_req req;
    pthread_mutex_t mu;
    pthread_cond_t done_cv;
    int done, err, refs;
    unsigned char data[];
};

static void call_put(struct call *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL))
        return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->done_cv);
    free(c);
}

static void call_complete(struct engine_req *r, int err)
{
    struct call *c = (struct call *)r;
    if (err == ENGINE_RESTART)
        return;
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    c->err = err;
    pthread_cond_signal(&c->done_cv);
    pthread_mutex_unlock(&c->mu);
    call_put(c);
}

static void call_forget(struct engine_req *r)
{
    call_put((struct call *)r);
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "core", "queue_depth", "channels", "setup_us", "per_unit_us", "throughput_mbps",
        "native_multi_du", "error_rate", "lost_rate", "busy_storm_every", "busy_storm_length",
        "nomem_rate", "corrupt", "seed", NULL,
    };
    Core *core;
    struct engine_options o;
    int native_multi_du, corrupt;
    unsigned long long seed;
    if (self->engine) {
        PyErr_SetString(PyExc_ValueError, "an Engine is made once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!$IIdddpddIIdpK", kwlist, &CoreType, &core,
                                     &o.queue_depth, &o.channels, &o.setup_us, &o.per_unit_us,
                                     &o.throughput_mbps, &native_multi_du, &o.error_rate,
                                     &o.lost_rate, &o.busy_storm_every, &o.busy_storm_length,
                                     &o.nomem_rate, &corrupt, &seed))
        return -1;
    o.native_multi_du = native_multi_du;
    o.corrupt = corrupt;
    o.seed = seed;
    struct core *c = usable(core);
    if (!c)
        return -1;
    char error[128];
    self->engine = engine_new(c, &o, error, sizeof error);
    if (!self->engine) {
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    return 0;
}

static struct engine *engine_of(Engine *self)
{
    if (!self->engine)
        PyErr_SetString(PyExc_ValueError, "this engine is closed");
    return self->engine;
}

/* crypt(encrypt, src, dst, first_iv_sector, data_unit_size, iv_step, timeout) */
static PyObject *Engine_crypt(Engine *self, PyObject *args)
{
    int encrypt;
    Py_buffer src, dst;
    unsigned long long sector, step;
    Py_ssize_t du;
    double timeout;
    if (!PyArg_ParseTuple(args, "py*w*KnKd", &encrypt, &src, &dst, &sector, &du, &step,
                          &timeout))
        return NULL;
    const char *error = NULL;
    if (du < 16 || du > 65536 || (du & (du - 1)))
        error = "data_unit_size must be a power of two from 16 to 65536";
    else if (src.len != dst.len || !src.len || src.len % du)
        error = "src and dst must have equal lengths, a positive multiple of data_unit_size";
    else if (!(timeout > 0))
        error = "timeout must be positive";
    struct engine *e = error ? NULL : engine_of(self);
    struct call *c = e ? malloc(sizeof *c + 2 * (size_t)src.len) : NULL;
    if (!c) {
        if (error)
            PyErr_SetString(PyExc_ValueError, error);
        else if (e)
            PyErr_NoMemory();
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    memcpy(c->data, src.buf, (size_t)src.len);
    c->req = (struct engine_req){
        .encrypt = encrypt, .src = c->data, .dst = c->data + src.len, .len = (size_t)src.len,
        .du = (size_t)du, .first_iv_sector = sector, .step = step,
        .complete = call_complete, .forget = call_forget,
    };
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->done_cv, &attr);
    pthread_condattr_destroy(&attr);
    c->done = 0;
    c->err = 0;
    c->refs = 2;                /* the caller's, the engine's */
    int done, err;
    engine_ref(e);              /* with the GIL: a concurrent close() cannot free it first */
    Py_BEGIN_ALLOW_THREADS
    engine_submit(e, &c->req);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    double end = (double)until.tv_sec + (double)until.tv_nsec / 1e9 + timeout;
    until.tv_sec = (time_t)end;
    until.tv_nsec = (long)((end - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&c->mu);
    while (!c->done && pthread_cond_timedwait(&c->done_cv, &c->mu, &until) != ETIMEDOUT)
        ;
    done = c->done;
    err = c->err;
    pthread_mutex_unlock(&c->mu);
    if (done && !err)
        memcpy(dst.buf, c->req.dst, (size_t)src.len);
    engine_unref(e);
    Py_END_ALLOW_THREADS
    call_put(c);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!done || err) {
        int code = done ? -err : ETIMEDOUT;
        PyObject *exc = PyObject_CallFunction(NativeError, "si",
                                              done ? "the engine failed the request"
                                                   : "the engine did not complete the request "
                                                     "in time", code);
        if (exc) {
            PyErr_SetObject(NativeError, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    Py_RETURN_NONE;
}

static void engine_capsule_free(PyObject *capsule)
{
    struct engine_api *api = PyCapsule_GetPointer(capsule, ENGINE_CAPSULE_NAME);
    if (!api) {
        PyErr_Clear();
        return;
    }
    engine_unref(api->engine);
    free(api);
}

static PyObject *Engine_capsule(Engine *self, PyObject *unused)
{
    (void)unused;
    struct engine *e = engine_of(self);
    if (!e)
        return NULL;
    struct engine_api *api = malloc(sizeof *api);
    if (!api)
        return PyErr_NoMemory();
    *api = (struct engine_api){
        .version = ENGINE_API_VERSION, .engine = e, .ref = engine_ref, .unref = engine_unref,
        .submit = engine_submit,
    };
    engine_ref(e);
    PyObject *capsule = PyCapsule_New(api, ENGINE_CAPSULE_NAME, engine_capsule_free);
    if (!capsule) {
        engine_unref(e);
        free(api);
    }
    return capsule;
}

static PyObject *Engine_statistics(Engine *self, PyObject *unused)
{
    (void)unused;
    struct engine *e = engine_of(self);
    if (!e)
        return NULL;
    struct engine_stats st;
    engine_statistics(e, &st);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsKsdsdsdsdsdsd}",
        "requests", st.requests, "data_units", st.data_units, "bytes", st.bytes,
        "errors", st.errors, "busy", st.busy, "backlog_high_water", st.backlog_high_water,
        "completed", st.completed, "errors_injected", st.errors_injected, "lost", st.lost,
        "nomem_injected", st.nomem_injected, "overruns", st.overruns,
        "in_flight", st.in_flight, "backlog", st.backlog,
        "engine_busy_s", st.engine_busy_s, "engine_compute_cpu_s", st.engine_compute_cpu_s,
        "engine_wait_cpu_s", st.engine_wait_cpu_s, "engine_thread_cpu_s",
        st.engine_thread_cpu_s, "latency_mean_us", st.latency_mean_us,
        "latency_max_us", st.latency_max_us);
}

static PyObject *Engine_close(Engine *self, PyObject *unused)
{
    (void)unused;
    struct engine *e = self->engine;
    self->engine = NULL;
    Py_BEGIN_ALLOW_THREADS
    engine_unref(e);            /* the last reference joins the engine's threads */
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void Engine_dealloc(Engine *self)
{
    Py_BEGIN_ALLOW_THREADS
    engine_unref(self->engine);
    Py_END_ALLOW_THREADS
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Engine_methods[] = {
    {"crypt", (PyCFunction)Engine_crypt, METH_VARARGS,
     "crypt(encrypt, src, dst, first_iv_sector, data_unit_size, iv_step, timeout): one "
     "request through the engine, waited for (see the module documentation)."},
    {"capsule", (PyCFunction)Engine_capsule, METH_NOARGS,
     "A PyCapsule \"" ENGINE_CAPSULE_NAME "\" holding this engine (with its own reference) and "
     "its C functions, for the native plane (engine.h: struct engine_api)."},
    {"statistics", (PyCFunction)Engine_statistics, METH_NOARGS,
     "The engine's counters and timings, as a dict."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS,
     "Drop this object's reference; the last one stops the engine."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cryptfs.backends._native.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A simulated asynchronous crypto engine over a Core (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* has_digest(name): whether the core's OpenSSL has the digest ESSIV would name. */
static PyObject *has_digest(PyObject *module, PyObject *arg)
{
    (void)module;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    return PyBool_FromLong(EVP_get_digestbyname(name) != NULL);
}

static PyMethodDef module_methods[] = {
    {"has_digest", has_digest, METH_O,
     "has_digest(name): whether the core can hash with `name` (ESSIV's hash)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cryptfs.backends._native",
    .m_doc = "The native multi data unit core: whole bios through OpenSSL, IVs derived per "
             "unit, the GIL released.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    /* A failure is the backend contract's CryptoFailure: callers need no translation. */
    PyObject *base = PyImport_ImportModule("cryptfs.backends.base");
    PyObject *failure = base ? PyObject_GetAttrString(base, "CryptoFailure") : NULL;
    Py_XDECREF(base);
    NativeError = failure ? PyErr_NewException("cryptfs.backends._native.NativeError", failure,
                                               NULL)
                          : NULL;
    Py_XDECREF(failure);
    if (!NativeError || PyModule_AddObjectRef(m, "NativeError", NativeError) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddStringConstant(m, "openssl_version",
                                   OpenSSL_version(OPENSSL_VERSION)) < 0 ||
        PyModule_AddStringConstant(m, "CAPSULE_NAME", CORE_CAPSULE_NAME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
