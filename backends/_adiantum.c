/*
 * backends._adiantum: a minimal, test-only Python binding of Adiantum (adiantum.h,
 * adiantum.c), so tests/test_adiantum.py can run the kernel's vectors and properties over the
 * C code; also the per-sector reference Adiantum of the software backend and LUKS key slots
 * (backends/aes.py: UnitCipher), the native core linking adiantum.c itself.
 *
 * Adiantum(key, rounds=12)
 *     key: 32 bytes; rounds: 12 (adiantum(xchacha12,aes)) or 20 (adiantum(xchacha20,aes)).
 *     ValueError for a wrong key length or round count.
 * Adiantum.encrypt(data, tweak) / Adiantum.decrypt(data, tweak) -> bytes
 *     data: at least 16 bytes; tweak: 32 bytes (dm-crypt: the plain64 IV, zero-padded).
 * Adiantum.crypt_into(encrypt, src, dst, tweak) -> None
 *     The same into a writable buffer dst of src's length; dst may be src itself (in place),
 *     never a partial overlap.
 * xchacha(key, iv, rounds, data) -> bytes
 *     data XOR the XChaCha keystream; iv: 32 bytes (24-byte nonce, 64-bit LE block counter).
 * nhpoly1305(key, message) -> bytes
 *     NHPoly1305 of message under a 1088-byte key (16 bytes).
 *
 * The GIL is released while the C code runs; one Adiantum object may be used by many threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>

#include "adiantum.h"

typedef struct {
    PyObject_HEAD
    struct adiantum_ctx ctx;
    int keyed;
} Adiantum;

static int Adiantum_init(Adiantum *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "rounds", NULL};
    Py_buffer key;
    int rounds = 12, rc;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|i", kwlist, &key, &rounds))
        return -1;
    if (self->keyed) {
        adiantum_wipe(&self->ctx);
        self->keyed = 0;
    }
    if (key.len != ADIANTUM_KEY_SIZE) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "an Adiantum key is %d bytes", ADIANTUM_KEY_SIZE);
        return -1;
    }
    rc = adiantum_init(&self->ctx, key.buf, rounds);
    PyBuffer_Release(&key);
    if (rc) {
        if (errno == EINVAL)
            PyErr_SetString(PyExc_ValueError, "rounds must be 12 or 20");
        else
            PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->keyed = 1;
    return 0;
}

static void Adiantum_dealloc(Adiantum *self)
{
    if (self->keyed)
        adiantum_wipe(&self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Run adiantum_crypt without the GIL; a Python error on failure. */
static int run(Adiantum *self, int encrypt, const Py_buffer *src, unsigned char *dst,
               const Py_buffer *tweak)
{
    int rc, err;

    if (!self->keyed) {
        PyErr_SetString(PyExc_ValueError, "this Adiantum was never keyed");
        return -1;
    }
    if (tweak->len != ADIANTUM_TWEAK_SIZE) {
        PyErr_Format(PyExc_ValueError, "the tweak is %d bytes", ADIANTUM_TWEAK_SIZE);
        return -1;
    }
    if (src->len < ADIANTUM_MIN_LEN) {
        PyErr_Format(PyExc_ValueError, "Adiantum needs at least %d bytes", ADIANTUM_MIN_LEN);
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = adiantum_crypt(&self->ctx, encrypt, src->buf, dst, (size_t)src->len, tweak->buf);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *crypt_bytes(Adiantum *self, PyObject *args, int encrypt)
{
    Py_buffer src, tweak;
    PyObject *out;

    if (!PyArg_ParseTuple(args, "y*y*", &src, &tweak))
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, src.len);
    if (out && run(self, encrypt, &src, (unsigned char *)PyBytes_AS_STRING(out), &tweak))
        Py_CLEAR(out);
    PyBuffer_Release(&src);
    PyBuffer_Release(&tweak);
    return out;
}

static PyObject *Adiantum_encrypt(Adiantum *self, PyObject *args)
{
    return crypt_bytes(self, args, 1);
}

static PyObject *Adiantum_decrypt(Adiantum *self, PyObject *args)
{
    return crypt_bytes(self, args, 0);
}

static PyObject *Adiantum_crypt_into(Adiantum *self, PyObject *args)
{
    Py_buffer src, dst, tweak;
    int encrypt, rc = -1;

    if (!PyArg_ParseTuple(args, "py*w*y*", &encrypt, &src, &dst, &tweak))
        return NULL;
    if (dst.len != src.len)
        PyErr_SetString(PyExc_ValueError, "dst must be as long as src");
    else
        rc = run(self, encrypt, &src, dst.buf, &tweak);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&tweak);
    if (rc)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Adiantum_methods[] = {
    {"encrypt", (PyCFunction)Adiantum_encrypt, METH_VARARGS, "encrypt(data, tweak) -> bytes"},
    {"decrypt", (PyCFunction)Adiantum_decrypt, METH_VARARGS, "decrypt(data, tweak) -> bytes"},
    {"crypt_into", (PyCFunction)Adiantum_crypt_into, METH_VARARGS,
     "crypt_into(encrypt, src, dst, tweak): into a writable dst (may be src)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AdiantumType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cryptfs.backends._adiantum.Adiantum",
    .tp_doc = "Adiantum(key, rounds=12): the kernel's adiantum(xchacha<rounds>,aes)",
    .tp_basicsize = sizeof(Adiantum),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Adiantum_init,
    .tp_dealloc = (destructor)Adiantum_dealloc,
    .tp_methods = Adiantum_methods,
};

static PyObject *xchacha(PyObject *module, PyObject *args)
{
    Py_buffer key, iv, data;
    int rounds;
    PyObject *out = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*iy*", &key, &iv, &rounds, &data))
        return NULL;
    if (key.len != 32 || iv.len != 32)
        PyErr_SetString(PyExc_ValueError, "XChaCha takes a 32-byte key and a 32-byte IV");
    else if (rounds <= 0 || rounds % 2)
        PyErr_SetString(PyExc_ValueError, "rounds must be a positive even number");
    else if ((out = PyBytes_FromStringAndSize(NULL, data.len))) {
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);

        Py_BEGIN_ALLOW_THREADS
        adiantum_xchacha(key.buf, iv.buf, rounds, data.buf, dst, (size_t)data.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&data);
    return out;
}

static PyObject *nhpoly1305(PyObject *module, PyObject *args)
{
    Py_buffer key, msg;
    unsigned char digest[16];
    PyObject *out = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &msg))
        return NULL;
    if (key.len != ADIANTUM_NHPOLY1305_KEY_SIZE) {
        PyErr_Format(PyExc_ValueError, "an NHPoly1305 key is %d bytes",
                     ADIANTUM_NHPOLY1305_KEY_SIZE);
    } else {
        Py_BEGIN_ALLOW_THREADS
        adiantum_nhpoly1305(key.buf, msg.buf, (size_t)msg.len, digest);
        Py_END_ALLOW_THREADS
        out = PyBytes_FromStringAndSize((const char *)digest, sizeof(digest));
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&msg);
    return out;
}

static PyMethodDef module_methods[] = {
    {"xchacha", xchacha, METH_VARARGS, "xchacha(key, iv, rounds, data) -> bytes"},
    {"nhpoly1305", nhpoly1305, METH_VARARGS, "nhpoly1305(key, message) -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cryptfs.backends._adiantum",
    .m_doc = "Adiantum (the kernel's adiantum(xchacha12/20,aes)) for tests: backends/adiantum.c",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__adiantum(void)
{
    PyObject *m;

    if (PyType_Ready(&AdiantumType) < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    Py_INCREF(&AdiantumType);
    if (PyModule_AddObject(m, "Adiantum", (PyObject *)&AdiantumType) < 0) {
        Py_DECREF(&AdiantumType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "KEY_SIZE", ADIANTUM_KEY_SIZE) < 0
        || PyModule_AddIntConstant(m, "TWEAK_SIZE", ADIANTUM_TWEAK_SIZE) < 0
        || PyModule_AddIntConstant(m, "NHPOLY1305_KEY_SIZE", ADIANTUM_NHPOLY1305_KEY_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
