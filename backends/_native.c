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
#include <errno.h>
#include <limits.h>

#include "core.h"

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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cryptfs.backends._native",
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
    PyObject *base = PyImport_ImportModule("cryptfs.backends.base");
    PyObject *failure = base ? PyObject_GetAttrString(base, "CryptoFailure") : NULL;
    Py_XDECREF(base);
    NativeError = failure ? PyErr_NewException("cryptfs.backends._native.NativeError", failure,
                                               NULL)
                          : NULL;
    Py_XDECREF(failure);
    if (!NativeError || PyModule_AddObjectRef(m, "NativeError", NativeError) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddStringConstant(m, "openssl_version",
                                   OpenSSL_version(OPENSSL_VERSION)) < 0 ||
        PyModule_AddStringConstant(m, "CAPSULE_NAME", CORE_CAPSULE_NAME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
