/* The operation-id table's storage, in C: id -> (operation, fingerprint, first answer, clock
 * value), oldest first. quotaflow.ledger._opids wraps it (and holds the same logic in Python
 * for an interpreted install); its docstring says what an entry means.
 *
 * Why native: in a CPython dict of millions of str keys, each lookup of a new id (a miss, the
 * common case) reads the index, then the entry, then the key string to get its hash, each a
 * cache miss; and each remembered id kept four objects (the id, a tuple, the fingerprint, the
 * answer) for the allocator to place, the cyclic collector to scan and eviction to free cold.
 * The ledger benchmark ran 30% faster with nothing remembered at all.
 *
 * Here an entry is one record appended to a chain of 1 MiB chunks, in arrival order, holding
 * the id's hash, clock value, operation (an index into a short list of names), fingerprint, and
 * the id and answer as UTF-8. Forgetting walks the chain from the front, so a chunk is freed
 * (or kept for reuse) once every record in it is gone. The index is open addressing with
 * linear probing over (hash, record) slots: a miss compares inline hashes within a cache line
 * or two and touches no record, and removal shifts the following slots back (no tombstones).
 *
 * Not tracked by the cyclic collector: it holds only str names and, in the rare case of an
 * answer that is not kept as text, that answer (a ledger result of plain values).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define FP_MAX 17 /* a fingerprint: 16 bytes, or 17 for one restored with its scheme's prefix */
#define OP_NONE 0xFFFF
#define OPS_MAX 0xFFFF
#define CHUNK_BYTES ((size_t)1 << 20)
#define SPARE_CHUNKS 4
#define SLOTS_MIN 1024
#define SLOTS_PRESIZED_MAX ((size_t)1 << 25)

typedef struct Rec {
    uint64_t hash;
    int64_t at_ms;
    PyObject *obj; /* the answer when it is not kept as text (owned), else NULL */
    uint32_t key_len;
    uint32_t answer_len;
    uint16_t op;
    uint8_t fp_len;
    uint8_t fp[FP_MAX];
} Rec; /* followed by the id's bytes, then the answer's */

#define REC_KEY(r) ((const char *)(r) + sizeof(Rec))
#define REC_ANSWER(r) (REC_KEY(r) + (r)->key_len)

typedef struct Chunk {
    struct Chunk *next;
    size_t used;
    size_t cap;
    char data[];
} Chunk;

typedef struct {
    uint64_t hash;
    Rec *rec; /* NULL: empty */
} Slot;

typedef struct {
    PyObject_HEAD
    Py_ssize_t entries_max;
    size_t presized_max; /* the most slots the first growth jumps to (see slots_for) */
    Py_ssize_t count;
    /* ids added since the table began, its restored ones included (or as renumbered): the
     * oldest kept is number added - count. A snapshot stores only the ids numbered from the
     * last one's end (store/snapshot_files.py). */
    uint64_t added;
    Slot *slots;
    size_t mask; /* slots - 1, a power of two less one */
    Chunk *head; /* the oldest record is at head->data + head_off */
    size_t head_off;
    Chunk *tail;
    Chunk *spare;
    int spare_count;
    PyObject *ops;      /* list of operation names */
    PyObject *op_index; /* name -> its index in ops */
} IdTable;

static size_t rec_size(size_t key_len, size_t answer_len) {
    return (sizeof(Rec) + key_len + answer_len + 7) & ~(size_t)7;
}

/* The UTF-8 of a str; lone surrogates pass (their bytes are invalid UTF-8, so they cannot equal
 * any other string's). *tmp holds a new reference when the bytes are not the str's own. */
static int utf8_of(PyObject *s, const char **p, Py_ssize_t *n, PyObject **tmp) {
    *tmp = NULL;
    *p = PyUnicode_AsUTF8AndSize(s, n);
    if (*p != NULL)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear();
    *tmp = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (*tmp == NULL)
        return -1;
    *p = PyBytes_AS_STRING(*tmp);
    *n = PyBytes_GET_SIZE(*tmp);
    return 0;
}

static PyObject *str_of(const char *p, size_t n) {
    return PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "surrogatepass");
}

static Py_ssize_t find(IdTable *t, uint64_t hash, const char *key, size_t key_len) {
    size_t i = hash & t->mask;
    for (;;) {
        Slot *s = &t->slots[i];
        if (s->rec == NULL)
            return -1;
        if (s->hash == hash && s->rec->key_len == key_len &&
            memcmp(REC_KEY(s->rec), key, key_len) == 0)
            return (Py_ssize_t)i;
        i = (i + 1) & t->mask;
    }
}

static void place(Slot *slots, size_t mask, uint64_t hash, Rec *rec) {
    size_t i = hash & mask;
    while (slots[i].rec != NULL)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].rec = rec;
}

/* The index starts at SLOTS_MIN and, the first time it fills, goes at once to the size
 * entries_max needs (at most 5/8 full), up to presized_max slots (SLOTS_PRESIZED_MAX by
 * default, 512 MiB); past that it doubles. Doubling all the way rehashed every id each time:
 * a pause of 54 ms at 1.3 million ids, during which no answer goes out; the one jump rehashes
 * 640. A table that keeps few ids (a test's, a ledger replaced at restore) stays small, and
 * calloc maps the large index untouched: a page costs memory once an id lands on it. */
static size_t slots_for(Py_ssize_t entries_max, size_t presized_max) {
    size_t n = SLOTS_MIN;
    while (n * 5 < ((size_t)entries_max + 1) * 8 && n * 2 <= presized_max)
        n *= 2;
    return n;
}

static int grow(IdTable *t) {
    size_t old_n = t->mask + 1, n = old_n * 2;
    size_t sized = slots_for(t->entries_max, t->presized_max);
    if (sized > n)
        n = sized;
    Slot *slots = PyMem_RawCalloc(n, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < old_n; i++)
        if (t->slots[i].rec != NULL)
            place(slots, n - 1, t->slots[i].hash, t->slots[i].rec);
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->mask = n - 1;
    return 0;
}

/* Empty slot i, shifting back the slots after it that probed past it. */
static void remove_slot(IdTable *t, size_t i) {
    size_t j = i, mask = t->mask;
    for (;;) {
        j = (j + 1) & mask;
        if (t->slots[j].rec == NULL)
            break;
        size_t home = t->slots[j].hash & mask;
        /* slot j stays where it is when its home lies cyclically in (i, j] */
        int stays = j > i ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].rec = NULL;
}

static Chunk *new_chunk(IdTable *t, size_t need) {
    Chunk *c;
    if (need <= CHUNK_BYTES && t->spare != NULL) {
        c = t->spare;
        t->spare = c->next;
        t->spare_count--;
    } else {
        size_t cap = need > CHUNK_BYTES ? need : CHUNK_BYTES;
        c = PyMem_RawMalloc(sizeof(Chunk) + cap);
        if (c == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        c->cap = cap;
    }
    c->next = NULL;
    c->used = 0;
    return c;
}

static void recycle(IdTable *t, Chunk *c) {
    if (c->cap == CHUNK_BYTES && t->spare_count < SPARE_CHUNKS) {
        c->next = t->spare;
        t->spare = c;
        t->spare_count++;
    } else {
        PyMem_RawFree(c);
    }
}

static Rec *append(IdTable *t, size_t size) {
    if (t->tail == NULL) {
        t->head = t->tail = new_chunk(t, size);
        t->head_off = 0;
        if (t->tail == NULL)
            return NULL;
    } else if (t->tail->cap - t->tail->used < size) {
        Chunk *c = new_chunk(t, size);
        if (c == NULL)
            return NULL;
        t->tail->next = c;
        t->tail = c;
    }
    Rec *r = (Rec *)(t->tail->data + t->tail->used);
    t->tail->used += size;
    return r;
}

/* Moves the front past spent chunks; NULL when the table is empty. */
static Rec *oldest(IdTable *t) {
    if (t->head == NULL)
        return NULL;
    while (t->head_off >= t->head->used) {
        if (t->head == t->tail) { /* all gone: reuse the chunk from its start */
            t->head->used = 0;
            t->head_off = 0;
            return NULL;
        }
        Chunk *spent = t->head;
        t->head = spent->next;
        t->head_off = 0;
        recycle(t, spent);
    }
    return (Rec *)(t->head->data + t->head_off);
}

static void drop_oldest(IdTable *t) {
    Rec *r = oldest(t);
    if (r == NULL)
        return;
    size_t i = r->hash & t->mask;
    while (t->slots[i].rec != r)
        i = (i + 1) & t->mask;
    remove_slot(t, i);
    t->head_off += rec_size(r->key_len, r->answer_len);
    t->count--;
    Py_CLEAR(r->obj);
}

static PyObject *op_name(IdTable *t, uint16_t op) {
    if (op == OP_NONE)
        Py_RETURN_NONE;
    PyObject *name = PyList_GET_ITEM(t->ops, op);
    Py_INCREF(name);
    return name;
}

static PyObject *answer_of(const Rec *r) {
    if (r->obj != NULL) {
        Py_INCREF(r->obj);
        return r->obj;
    }
    return str_of(REC_ANSWER(r), r->answer_len);
}

/* ------------------------------------------------------------------ the type */

static PyObject *IdTable_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"entries_max", "presized_slots_max", NULL};
    Py_ssize_t entries_max, presized_max = (Py_ssize_t)SLOTS_PRESIZED_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|$n", kwlist, &entries_max, &presized_max))
        return NULL;
    if (entries_max < 0) {
        PyErr_SetString(PyExc_ValueError, "entries_max must be at least 0");
        return NULL;
    }
    if (presized_max < SLOTS_MIN || presized_max > (Py_ssize_t)SLOTS_PRESIZED_MAX) {
        PyErr_Format(PyExc_ValueError, "presized_slots_max must be %d..%zu", SLOTS_MIN,
                     SLOTS_PRESIZED_MAX);
        return NULL;
    }
    IdTable *t = (IdTable *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->entries_max = entries_max;
    t->presized_max = (size_t)presized_max;
    t->slots = PyMem_RawCalloc(SLOTS_MIN, sizeof(Slot));
    t->mask = SLOTS_MIN - 1;
    t->ops = PyList_New(0);
    t->op_index = PyDict_New();
    if (t->slots == NULL || t->ops == NULL || t->op_index == NULL) {
        if (t->slots == NULL)
            PyErr_NoMemory();
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static void IdTable_dealloc(IdTable *t) {
    while (t->count > 0)
        drop_oldest(t);
    for (Chunk *c = t->head; c != NULL;) {
        Chunk *next = c->next;
        PyMem_RawFree(c);
        c = next;
    }
    for (Chunk *c = t->spare; c != NULL;) {
        Chunk *next = c->next;
        PyMem_RawFree(c);
        c = next;
    }
    PyMem_RawFree(t->slots);
    Py_XDECREF(t->ops);
    Py_XDECREF(t->op_index);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t IdTable_len(IdTable *t) { return t->count; }

static int key_of(PyObject *op_id, uint64_t *hash, const char **p, Py_ssize_t *n,
                  PyObject **tmp) {
    if (!PyUnicode_CheckExact(op_id)) { /* a subclass's __hash__ could call into the table */
        PyErr_SetString(PyExc_TypeError, "an operation id is a str");
        return -1;
    }
    Py_hash_t h = PyObject_Hash(op_id);
    if (h == -1)
        return -1;
    *hash = (uint64_t)h;
    return utf8_of(op_id, p, n, tmp);
}

PyDoc_STRVAR(get_doc, "get(op_id) -> (operation, fingerprint, answer) or None");

static PyObject *IdTable_get(IdTable *t, PyObject *op_id) {
    uint64_t hash;
    const char *key;
    Py_ssize_t key_len;
    PyObject *tmp;
    if (key_of(op_id, &hash, &key, &key_len, &tmp) < 0)
        return NULL;
    Py_ssize_t i = find(t, hash, key, (size_t)key_len);
    Py_XDECREF(tmp);
    if (i < 0)
        Py_RETURN_NONE;
    /* Everything is read from the record before the tuple is made: making a tuple may start
     * a collection, whose finalizers may prune or add and so free or reuse the record's chunk.
     * (A bytes or str object is not tracked by the collector: making one starts none.) */
    const Rec *r = t->slots[i].rec;
    PyObject *op = op_name(t, r->op);
    PyObject *fp = PyBytes_FromStringAndSize((const char *)r->fp, r->fp_len);
    PyObject *answer = answer_of(r);
    PyObject *entry = NULL;
    if (fp != NULL && answer != NULL)
        entry = PyTuple_Pack(3, op, fp, answer);
    Py_DECREF(op);
    Py_XDECREF(fp);
    Py_XDECREF(answer);
    return entry;
}

PyDoc_STRVAR(prefetch_doc, "prefetch(op_id): start loading the index slot where a get of this "
                           "id will look, so that work done before the get hides the wait");

static PyObject *IdTable_prefetch(IdTable *t, PyObject *op_id) {
    if (PyUnicode_CheckExact(op_id)) {
        Py_hash_t h = PyObject_Hash(op_id); /* kept in the str: the get does not hash again */
        if (h == -1)
            return NULL;
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(&t->slots[(uint64_t)h & t->mask]);
#endif
    }
    Py_RETURN_NONE;
}

static int op_code(IdTable *t, PyObject *op, uint16_t *code) {
    if (op == Py_None) {
        *code = OP_NONE;
        return 0;
    }
    if (!PyUnicode_CheckExact(op)) {
        PyErr_SetString(PyExc_TypeError, "an operation is a str or None");
        return -1;
    }
    PyObject *known = PyDict_GetItemWithError(t->op_index, op);
    if (known != NULL) {
        *code = (uint16_t)PyLong_AsLong(known);
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(t->ops);
    if (n >= OPS_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct operations");
        return -1;
    }
    PyObject *index = PyLong_FromSsize_t(n);
    if (index == NULL)
        return -1;
    int failed = PyDict_SetItem(t->op_index, op, index) < 0 || PyList_Append(t->ops, op) < 0;
    Py_DECREF(index);
    if (failed)
        return -1;
    *code = (uint16_t)n;
    return 0;
}

PyDoc_STRVAR(add_doc, "add(op_id, op, fingerprint, answer, at_ms): remember a new id (one not in "
                      "the table), then forget the oldest while more than entries_max remain. "
                      "The answer is kept as text when it is a str or bytes of UTF-8 (given "
                      "back as str), else as the object.");

static PyObject *IdTable_add(IdTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "add takes 5 arguments");
        return NULL;
    }
    PyObject *op_id = args[0], *op = args[1], *fp = args[2], *answer = args[3];
    int64_t at_ms = PyLong_AsLongLong(args[4]);
    if (at_ms == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_Check(fp) || PyBytes_GET_SIZE(fp) > FP_MAX) {
        PyErr_Format(PyExc_ValueError, "a fingerprint is bytes of at most %d", FP_MAX);
        return NULL;
    }
    if (op != Py_None && !PyUnicode_CheckExact(op)) {
        PyErr_SetString(PyExc_TypeError, "an operation is a str or None");
        return NULL;
    }
    uint16_t code;
    uint64_t hash;
    const char *key;
    Py_ssize_t key_len;
    PyObject *key_tmp, *answer_tmp = NULL;
    if (key_of(op_id, &hash, &key, &key_len, &key_tmp) < 0)
        return NULL;
    const char *text = NULL;
    Py_ssize_t text_len = 0;
    PyObject *result = NULL;
    if (find(t, hash, key, (size_t)key_len) >= 0) {
        PyErr_SetString(PyExc_KeyError, "operation id already remembered");
        goto fail;
    }
    if (PyUnicode_Check(answer)) {
        if (utf8_of(answer, &text, &text_len, &answer_tmp) < 0)
            goto fail;
    } else if (PyBytes_Check(answer)) { /* UTF-8 already (orjson's): copied as it is */
        text = PyBytes_AS_STRING(answer);
        text_len = PyBytes_GET_SIZE(answer);
    } else {
        result = answer;
    }
    if ((uint64_t)key_len > UINT32_MAX || (uint64_t)text_len > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "operation id or answer too long");
        goto fail;
    }
    /* the name is registered only now, when nothing else can refuse the add */
    if (op_code(t, op, &code) < 0)
        goto fail;
    if ((size_t)(t->count + 1) * 8 > (t->mask + 1) * 5 && grow(t) < 0)
        goto fail;
    Rec *r = append(t, rec_size((size_t)key_len, (size_t)text_len));
    if (r == NULL)
        goto fail;
    r->hash = hash;
    r->at_ms = at_ms;
    r->obj = result;
    Py_XINCREF(result);
    r->key_len = (uint32_t)key_len;
    r->answer_len = (uint32_t)text_len;
    r->op = code;
    r->fp_len = (uint8_t)PyBytes_GET_SIZE(fp);
    memcpy(r->fp, PyBytes_AS_STRING(fp), r->fp_len);
    memcpy((char *)REC_KEY(r), key, (size_t)key_len);
    if (text_len)
        memcpy((char *)REC_ANSWER(r), text, (size_t)text_len);
    place(t->slots, t->mask, hash, r);
    t->count++;
    t->added++;
    Py_XDECREF(key_tmp);
    Py_XDECREF(answer_tmp);
    while (t->count > t->entries_max)
        drop_oldest(t);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(key_tmp);
    Py_XDECREF(answer_tmp);
    return NULL;
}

PyDoc_STRVAR(prune_doc, "prune(horizon_ms) -> int: forget ids from the front while they came "
                        "before horizon_ms; stops at the first that came later.");

static PyObject *IdTable_prune(IdTable *t, PyObject *arg) {
    int64_t horizon = PyLong_AsLongLong(arg);
    if (horizon == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t dropped = 0;
    Rec *r;
    while ((r = oldest(t)) != NULL && r->at_ms < horizon) {
        drop_oldest(t);
        dropped++;
    }
    return PyLong_FromSsize_t(dropped);
}

/* Calls fn on each record after the oldest `skip`, oldest first; stops on error. */
static int each(IdTable *t, uint64_t skip, int (*fn)(IdTable *, const Rec *, void *),
                void *arg) {
    oldest(t);
    for (Chunk *c = t->head; c != NULL; c = c->next) {
        size_t off = c == t->head ? t->head_off : 0;
        while (off < c->used) {
            const Rec *r = (const Rec *)(c->data + off);
            if (skip > 0)
                skip--;
            else if (fn(t, r, arg) < 0)
                return -1;
            off += rec_size(r->key_len, r->answer_len);
        }
    }
    return 0;
}

static int append_row(IdTable *t, const Rec *r, void *list) {
    PyObject *row = Py_BuildValue("(NNy#NL)", str_of(REC_KEY(r), r->key_len), op_name(t, r->op),
                                  (const char *)r->fp, (Py_ssize_t)r->fp_len, answer_of(r),
                                  (long long)r->at_ms);
    if (row == NULL)
        return -1;
    int failed = PyList_Append((PyObject *)list, row);
    Py_DECREF(row);
    return failed;
}

static int append_id(IdTable *t, const Rec *r, void *list) {
    PyObject *op_id = str_of(REC_KEY(r), r->key_len);
    if (op_id == NULL)
        return -1;
    int failed = PyList_Append((PyObject *)list, op_id);
    Py_DECREF(op_id);
    return failed;
}

/* The oldest records to skip to reach the one numbered `start` (see added); -1 on error. A
 * skip of count or more: none left. */
static int skip_to(IdTable *t, PyObject *start_obj, uint64_t *skip) {
    long long start = PyLong_AsLongLong(start_obj);
    if (start == -1 && PyErr_Occurred())
        return -1;
    uint64_t first = t->added - (uint64_t)t->count;
    *skip = start > 0 && (uint64_t)start > first ? (uint64_t)start - first : 0;
    return 0;
}

static PyObject *collect(IdTable *t, uint64_t skip,
                         int (*fn)(IdTable *, const Rec *, void *)) {
    PyObject *list = PyList_New(0);
    if (list != NULL && each(t, skip, fn, list) < 0)
        Py_CLEAR(list);
    return list;
}

PyDoc_STRVAR(rows_doc, "rows(start=0) -> [(op_id, op, fingerprint, answer, at_ms)], oldest "
                       "first, of the ids numbered start or later (see added)");

static PyObject *IdTable_rows(IdTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "rows takes at most 1 argument");
        return NULL;
    }
    uint64_t skip = 0;
    if (nargs == 1) {
        if (skip_to(t, args[0], &skip) < 0)
            return NULL;
        if (skip >= (uint64_t)t->count)
            return PyList_New(0); /* none: no walk over every record to find it out */
    }
    /* Each row is a tuple, whose making may start a collection, and a finalizer run by it may
     * prune or add, freeing or reusing the chunk being walked: no collection during the walk. */
    int was_enabled = PyGC_Disable();
    PyObject *rows = collect(t, skip, append_row);
    if (was_enabled)
        PyGC_Enable();
    return rows;
}

/* ------------------------------------------------------------------ dump: a snapshot's ids file
 *
 * The rows of OperationIds.to_json, written as JSON straight from the records to a file: a
 * forked snapshot child serialised them through Python objects (ten or so per id), at about
 * 2 us and 1 KiB of fresh memory per id; here they are copied. */

typedef struct {
    int fd;
    char *buf;
    size_t used, cap;
    PyObject *encode; /* encodes an answer kept as an object (rare) */
    const char *scheme; /* the fingerprints' scheme, written with this release's entries */
    Py_ssize_t scheme_len;
    Py_ssize_t rows; /* written so far */
} Out;

static int out_flush(Out *o) {
    size_t done = 0;
    while (done < o->used) {
        ssize_t n = write(o->fd, o->buf + done, o->used - done);
        if (n < 0 && errno == EINTR) {
            if (PyErr_CheckSignals() < 0) /* a handler raised (KeyboardInterrupt) */
                return -1;
            continue;
        }
        if (n <= 0) { /* 0: nothing written of a regular file's write, taken as an error */
            if (n == 0)
                errno = EIO;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        done += (size_t)n;
    }
    o->used = 0;
    return 0;
}

static int out_put(Out *o, const char *p, size_t n) {
    while (n > 0) {
        if (o->used == o->cap && out_flush(o) < 0)
            return -1;
        size_t room = o->cap - o->used, take = n < room ? n : room;
        memcpy(o->buf + o->used, p, take);
        o->used += take;
        p += take;
        n -= take;
    }
    return 0;
}

/* A JSON string of UTF-8 bytes. Those of a lone surrogate (kept by surrogatepass) are no
 * UTF-8: refused, as orjson refuses such a str. */
static int out_string(Out *o, const char *p, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (out_put(o, "\"", 1) < 0)
        return -1;
    size_t run = 0; /* bytes copied as they are, pending */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == 0xED && i + 1 < n && (unsigned char)p[i + 1] >= 0xA0) {
            PyErr_SetString(PyExc_ValueError, "an operation id or name is not valid UTF-8");
            return -1;
        }
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (out_put(o, p + run, i - run) < 0)
            return -1;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            if (out_put(o, esc, 2) < 0)
                return -1;
        } else if (out_put(o, esc, 6) < 0) {
            return -1;
        }
        run = i + 1;
    }
    if (out_put(o, p + run, n - run) < 0)
        return -1;
    return out_put(o, "\"", 1);
}

static int out_name(Out *o, IdTable *t, uint16_t op) {
    if (op == OP_NONE)
        return out_put(o, "null", 4);
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(t->ops, op), &n);
    return p == NULL ? -1 : out_string(o, p, (size_t)n);
}

/* [op_id, fingerprint hex, result, clock value, operation, scheme] for an entry of this
 * release; one restored from an older snapshot as it was read, without the scheme (to_json). */
static int dump_row(IdTable *t, const Rec *r, void *arg) {
    static const char hex[] = "0123456789abcdef";
    Out *o = arg;
    int current = r->fp_len == FP_MAX - 1 && r->op != OP_NONE;
    const uint8_t *fp = r->fp + (r->fp_len > FP_MAX - 1 ? r->fp_len - (FP_MAX - 1) : 0);
    size_t fp_n = r->fp_len < FP_MAX - 1 ? r->fp_len : FP_MAX - 1;
    char fp_hex[2 * FP_MAX + 2];
    fp_hex[0] = ',';
    fp_hex[1] = '"';
    for (size_t i = 0; i < fp_n; i++) {
        fp_hex[2 + 2 * i] = hex[fp[i] >> 4];
        fp_hex[3 + 2 * i] = hex[fp[i] & 15];
    }
    char at[32];
    int at_n = snprintf(at, sizeof at, ",%lld,", (long long)r->at_ms);
    int later = o->rows++ > 0;
    if (out_put(o, later ? ",[" : "[", later ? 2 : 1) < 0 || out_string(o, REC_KEY(r), r->key_len) < 0 ||
        out_put(o, fp_hex, 2 + 2 * fp_n) < 0 || out_put(o, "\",", 2) < 0)
        return -1;
    if (r->obj != NULL) {
        /* held: the call runs Python code, which must not free it under the call */
        PyObject *obj = r->obj;
        Py_INCREF(obj);
        PyObject *encoded = PyObject_CallOneArg(o->encode, obj);
        Py_DECREF(obj);
        if (encoded == NULL)
            return -1;
        if (!PyBytes_Check(encoded)) {
            Py_DECREF(encoded);
            PyErr_SetString(PyExc_TypeError, "encode must return bytes");
            return -1;
        }
        int failed = out_put(o, PyBytes_AS_STRING(encoded), (size_t)PyBytes_GET_SIZE(encoded));
        Py_DECREF(encoded);
        if (failed)
            return -1;
    } else if (out_put(o, REC_ANSWER(r), r->answer_len) < 0) {
        return -1;
    }
    if (out_put(o, at, (size_t)at_n) < 0 || out_name(o, t, r->op) < 0)
        return -1;
    if (current && (out_put(o, ",", 1) < 0 || out_string(o, o->scheme, (size_t)o->scheme_len) < 0))
        return -1;
    return out_put(o, "]", 1);
}

PyDoc_STRVAR(dump_doc, "dump(start, fd, encode, scheme) -> int: write to the file descriptor "
                       "fd, as a JSON array, the rows OperationIds.to_json gives of the ids "
                       "numbered start or later (scheme: its SCHEME); encode(answer) -> bytes "
                       "for answers not kept as text. Returns how many rows.");

static PyObject *IdTable_dump(IdTable *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "dump takes 4 arguments");
        return NULL;
    }
    Py_ssize_t scheme_len;
    const char *scheme = PyUnicode_Check(args[3]) ? PyUnicode_AsUTF8AndSize(args[3], &scheme_len)
                                                  : NULL;
    if (scheme == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "scheme is a str");
        return NULL;
    }
    uint64_t skip;
    if (skip_to(t, args[0], &skip) < 0)
        return NULL;
    int fd = PyObject_AsFileDescriptor(args[1]);
    if (fd < 0)
        return NULL;
    Out o = {fd, PyMem_RawMalloc(1 << 20), 0, 1 << 20, args[2], scheme, scheme_len, 0};
    if (o.buf == NULL)
        return PyErr_NoMemory();
    /* As rows(): an encode call may start a collection, whose finalizers could change the
     * table under the walk. */
    int was_enabled = PyGC_Disable();
    int failed = out_put(&o, "[", 1) < 0 ||
                 (skip < (uint64_t)t->count && each(t, skip, dump_row, &o) < 0) ||
                 out_put(&o, "]", 1) < 0 || out_flush(&o) < 0;
    if (was_enabled)
        PyGC_Enable();
    PyMem_RawFree(o.buf);
    return failed ? NULL : PyLong_FromSsize_t(o.rows);
}

PyDoc_STRVAR(ids_doc, "ids() -> [op_id], oldest first");

static PyObject *IdTable_ids(IdTable *t, PyObject *unused) { return collect(t, 0, append_id); }

static PyObject *IdTable_get_entries_max(IdTable *t, void *closure) {
    return PyLong_FromSsize_t(t->entries_max);
}

static PyMethodDef IdTable_methods[] = {
    {"get", (PyCFunction)IdTable_get, METH_O, get_doc},
    {"prefetch", (PyCFunction)IdTable_prefetch, METH_O, prefetch_doc},
    {"add", (PyCFunction)(void (*)(void))IdTable_add, METH_FASTCALL, add_doc},
    {"prune", (PyCFunction)IdTable_prune, METH_O, prune_doc},
    {"rows", (PyCFunction)(void (*)(void))IdTable_rows, METH_FASTCALL, rows_doc},
    {"ids", (PyCFunction)IdTable_ids, METH_NOARGS, ids_doc},
    {"dump", (PyCFunction)(void (*)(void))IdTable_dump, METH_FASTCALL, dump_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *IdTable_get_index_slots(IdTable *t, void *closure) {
    return PyLong_FromSize_t(t->mask + 1);
}

static PyObject *IdTable_get_added(IdTable *t, void *closure) {
    return PyLong_FromUnsignedLongLong(t->added);
}

static int IdTable_set_added(IdTable *t, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "added cannot be deleted");
        return -1;
    }
    long long added = PyLong_AsLongLong(value);
    if (added == -1 && PyErr_Occurred())
        return -1;
    if (added < (long long)t->count) {
        PyErr_SetString(PyExc_ValueError, "added cannot be less than the ids kept");
        return -1;
    }
    t->added = (uint64_t)added;
    return 0;
}

static PyGetSetDef IdTable_getset[] = {
    {"entries_max", (getter)IdTable_get_entries_max, NULL, "most ids kept", NULL},
    {"added", (getter)IdTable_get_added, (setter)IdTable_set_added,
     "ids added since the table began (settable, to number a restored table on)", NULL},
    {"index_slots", (getter)IdTable_get_index_slots, NULL, "slots of the index", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods IdTable_as_sequence = {
    .sq_length = (lenfunc)IdTable_len,
};

static PyTypeObject IdTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quotaflow.ledger._idtable.IdTable",
    .tp_basicsize = sizeof(IdTable),
    .tp_dealloc = (destructor)IdTable_dealloc,
    .tp_as_sequence = &IdTable_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("IdTable(entries_max): operation ids and their first answers, oldest "
                        "first"),
    .tp_methods = IdTable_methods,
    .tp_getset = IdTable_getset,
    .tp_new = IdTable_new,
};

static struct PyModuleDef idtable_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quotaflow.ledger._idtable",
    .m_doc = "The operation-id table's storage in C (see quotaflow.ledger._opids).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__idtable(void) {
    if (PyType_Ready(&IdTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&idtable_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&IdTableType);
    if (PyModule_AddObject(m, "IdTable", (PyObject *)&IdTableType) < 0) {
        Py_DECREF(&IdTableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
