/* The WAL's fsync, on a thread that never takes the GIL. quotaflow.store.walsync wraps it (and
 * holds the same logic in Python for an interpreted install); its docstring says why the store
 * syncs the WAL itself.
 *
 * Why native: the event loop runs compiled code that never offers the GIL, so a Python thread
 * back from fdatasync waited for the loop to go idle before it could say so, and the answers
 * waiting on that sync waited with it. This thread needs nothing from Python: it syncs, then
 * writes a byte to a pipe that the loop watches.
 *
 * The caller asks for a sync (`request`, which numbers it) after writing a commit; the thread
 * runs one fdatasync for every request made before it started, then publishes the last number
 * it covered (`synced`). A failed sync is sticky: every later `synced` raises its errno, since
 * after a failed fsync the kernel may have dropped the pages it could not write.
 *
 * Before each sync the path is checked against the file held open: SQLite keeps one WAL per
 * database while a connection is open, but should the file ever be replaced, the new one is
 * opened (and its directory synced, for its name) rather than an old inode synced in vain.
 * That check asks statx(2) for the inode number alone: a stat(2) reads the file's times, and
 * on a file system with multigrain timestamps (ext4, XFS, tmpfs, ... from Linux 6.13) a time
 * that was read makes the next write stamp a new fine-grained mtime. The WAL's inode was then
 * dirtied by every commit, and on ext4 without a journal (as on our hosts) each fdatasync wrote
 * it too: a second synchronous write per commit (docs/PERFORMANCE.md, session 20). Where statx
 * is refused (ENOSYS, or EPERM from an older container's seccomp profile) or does not report
 * the inode, fstatat is used as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int running;         /* the thread was started and not joined */
    int stop;            /* under mu */
    int error;           /* under mu: errno of the first failed sync, sticky */
    uint64_t requested;  /* under mu: the last request's number */
    uint64_t synced;     /* under mu: every request up to it is covered by a completed sync */
    uint64_t syncs;      /* under mu: fdatasync calls that succeeded */
    uint64_t reopens;    /* under mu: times the path named another file */
    int fd;              /* the WAL, read-only; the thread's alone once it runs */
    dev_t dev;
    ino_t ino;
    int notify_r, notify_w; /* a byte per finished sync, read end watched by the loop */
    char *path;
} WalSync;

/* open(2), and fsync or fdatasync, retried on EINTR (a failure would be sticky). */
static int open_retrying(const char *path) {
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static int sync_retrying(int fd, int data_only) {
    while ((data_only ? fdatasync(fd) : fsync(fd)) != 0) {
        if (errno != EINTR)
            return errno;
    }
    return 0;
}

static int sync_dir_of(const char *path) {
    char *copy = strdup(path);
    if (copy == NULL)
        return ENOMEM;
    int dfd = open_retrying(dirname(copy));
    free(copy);
    if (dfd < 0)
        return errno;
    int rc = sync_retrying(dfd, 0);
    close(dfd);
    return rc;
}

/* The device and inode of `path` (relative to `dirfd`; "" for `dirfd` itself): 0, or -1 and
 * errno. Without the file's times where the kernel allows: see the top of this file. */
static int identity_of(int dirfd, const char *path, dev_t *dev, ino_t *ino) {
    int flags = path[0] == '\0' ? AT_EMPTY_PATH : 0;
#ifdef STATX_INO
    struct statx stx;
    if (statx(dirfd, path, flags, STATX_INO, &stx) == 0) {
        if (stx.stx_mask & STATX_INO) {
            *dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
            *ino = (ino_t)stx.stx_ino;
            return 0;
        }
    } else if (errno != ENOSYS && errno != EPERM) {
        return -1;
    }
#endif
    struct stat st;
    if (fstatat(dirfd, path, &st, flags) != 0)
        return -1;
    *dev = st.st_dev;
    *ino = st.st_ino;
    return 0;
}

/* Opens `path` as the file to sync; 0 or an errno. */
static int open_target(WalSync *w) {
    int fd = open_retrying(w->path);
    if (fd < 0)
        return errno;
    dev_t dev;
    ino_t ino;
    if (identity_of(fd, "", &dev, &ino) != 0) {
        int rc = errno;
        close(fd);
        return rc;
    }
    if (w->fd >= 0)
        close(w->fd);
    w->fd = fd;
    w->dev = dev;
    w->ino = ino;
    return sync_dir_of(w->path);
}

static int sync_once(WalSync *w) {
    dev_t dev;
    ino_t ino;
    int rc;
    do {
        rc = identity_of(AT_FDCWD, w->path, &dev, &ino);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0)
        return errno; /* the WAL is gone while the store is open: nothing to vouch for */
    if (dev != w->dev || ino != w->ino) {
        rc = open_target(w);
        if (rc != 0)
            return rc;
        pthread_mutex_lock(&w->mu);
        w->reopens++;
        pthread_mutex_unlock(&w->mu);
    }
    return sync_retrying(w->fd, 1);
}

static void *run(void *arg) {
    WalSync *w = (WalSync *)arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && (w->error != 0 || w->requested == w->synced))
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        uint64_t target = w->requested; /* every write before this request is in the file */
        pthread_mutex_unlock(&w->mu);
        int rc = sync_once(w);
        pthread_mutex_lock(&w->mu);
        if (rc != 0) {
            w->error = rc;
        } else {
            w->synced = target;
            w->syncs++;
        }
        pthread_mutex_unlock(&w->mu);
        /* A full pipe already holds a wake-up the loop has not read: nothing is lost. */
        ssize_t ignored = write(w->notify_w, "s", 1);
        (void)ignored;
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void stop_thread(WalSync *w) {
    if (!w->running)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(w->thread, NULL);
    Py_END_ALLOW_THREADS
    w->running = 0;
}

static void close_fds(WalSync *w) {
    int *fds[] = {&w->fd, &w->notify_r, &w->notify_w};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    }
}

static PyObject *WalSync_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&", kwlist, PyUnicode_FSConverter, &path_obj))
        return NULL;
    WalSync *w = (WalSync *)type->tp_alloc(type, 0);
    if (w == NULL) {
        Py_DECREF(path_obj);
        return NULL;
    }
    w->fd = w->notify_r = w->notify_w = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->path = strdup(PyBytes_AS_STRING(path_obj));
    Py_DECREF(path_obj);
    if (w->path == NULL) {
        Py_DECREF(w);
        return PyErr_NoMemory();
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = open_target(w);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, w->path);
        Py_DECREF(w);
        return NULL;
    }
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(w);
        return NULL;
    }
    w->notify_r = pipe_fds[0];
    w->notify_w = pipe_fds[1];
    /* The thread takes no signal: Python's handlers belong on the main thread, and a signal
     * here would only interrupt a sync. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w->thread, NULL, run, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(w);
        return NULL;
    }
    w->running = 1;
#ifdef __linux__
    pthread_setname_np(w->thread, "quotaflow-wal"); /* in top -H, perf, /proc */
#endif
    return (PyObject *)w;
}

static void WalSync_dealloc(WalSync *w) {
    stop_thread(w);
    close_fds(w);
    free(w->path);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *WalSync_request(WalSync *w, PyObject *unused) {
    if (!w->running) {
        PyErr_SetString(PyExc_ValueError, "WalSync is closed");
        return NULL;
    }
    pthread_mutex_lock(&w->mu);
    uint64_t number = ++w->requested;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return PyLong_FromUnsignedLongLong(number);
}

static PyObject *WalSync_synced(WalSync *w, PyObject *unused) {
    char drain[64];
    while (w->notify_r >= 0 && read(w->notify_r, drain, sizeof drain) > 0) {
    }
    pthread_mutex_lock(&w->mu);
    int error = w->error;
    uint64_t synced = w->synced;
    pthread_mutex_unlock(&w->mu);
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, w->path);
    }
    return PyLong_FromUnsignedLongLong(synced);
}

static PyObject *WalSync_fileno(WalSync *w, PyObject *unused) {
    return PyLong_FromLong(w->notify_r);
}

static PyObject *WalSync_close(WalSync *w, PyObject *unused) {
    stop_thread(w);
    close_fds(w);
    Py_RETURN_NONE;
}

static PyObject *WalSync_get_counter(WalSync *w, void *which) {
    pthread_mutex_lock(&w->mu);
    uint64_t value = which == NULL ? w->syncs : w->reopens;
    pthread_mutex_unlock(&w->mu);
    return PyLong_FromUnsignedLongLong(value);
}

static PyMethodDef WalSync_methods[] = {
    {"request", (PyCFunction)WalSync_request, METH_NOARGS,
     PyDoc_STR("request() -> int: ask for a sync of everything written so far; its number.")},
    {"synced", (PyCFunction)WalSync_synced, METH_NOARGS,
     PyDoc_STR("synced() -> int: the last request covered by a finished sync (OSError after a "
               "failed one); also drains the wake-up pipe.")},
    {"fileno", (PyCFunction)WalSync_fileno, METH_NOARGS,
     PyDoc_STR("fileno() -> int: readable after each finished sync.")},
    {"close", (PyCFunction)WalSync_close, METH_NOARGS,
     PyDoc_STR("close(): stop the thread (after the sync under way) and close the files.")},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef WalSync_getset[] = {
    {"syncs", (getter)WalSync_get_counter, NULL, PyDoc_STR("fdatasync calls that succeeded"),
     NULL},
    {"reopens", (getter)WalSync_get_counter, NULL,
     PyDoc_STR("times the path was found to name another file"), (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WalSyncType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quotaflow.store._walsync.WalSync",
    .tp_basicsize = sizeof(WalSync),
    .tp_dealloc = (destructor)WalSync_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("WalSync(path): fdatasync of the file at path on a thread without the "
                        "GIL, on request."),
    .tp_methods = WalSync_methods,
    .tp_getset = WalSync_getset,
    .tp_new = WalSync_new,
};

static struct PyModuleDef walsync_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quotaflow.store._walsync",
    .m_doc = PyDoc_STR("The WAL's fsync on a thread without the GIL (see walsync.py)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__walsync(void) {
    if (PyType_Ready(&WalSyncType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&walsync_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WalSyncType);
    if (PyModule_AddObject(m, "WalSync", (PyObject *)&WalSyncType) < 0) {
        Py_DECREF(&WalSyncType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
