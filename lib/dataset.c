/*
 * dataset.c: the in-memory dataset (images, labels, class names, statistics) and the
 * collector the readers fill: a growing pixel store, items sorted into a
 * deterministic order, selection (classes, per-class few-shot, limit) applied in
 * place.
 */
#define _GNU_SOURCE /* mremap */
#include "config.h"
#include "data.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <zlib.h>

void emoe_dataset_free(struct emoe_dataset *d)
{
    if (!d)
        return;
    emoe_tensor_free(d->images);
    emoe_tensor_free(d->labels);
    prep_free_strings(d->classes, d->nclasses);
    free(d);
}

int emoe_dataset_compute_stats(struct emoe_dataset *d, struct emoe_error *err)
{
    const struct emoe_tensor *t = d->images;
    if (!t || t->ndim < 2)
        return emoe_error_set(err, EMOE_EINVAL, "dataset has no images");
    int c = (int)t->shape[t->ndim - 1];
    if (c < 1 || c > 4)
        return emoe_error_set(err, EMOE_EUNSUPPORTED, "statistics need 1 to 4 channels, not %d",
                              c);
    size_t npix = c ? t->nelem / (size_t)c : 0;
    double mean[4] = {0}, var[4] = {0};
    if (npix > 0 && t->dtype == EMOE_U8) {
        /* exact integer sums, in chunks so that uint64 cannot overflow */
        const unsigned char *p = t->data;
        uint64_t s[4] = {0}, q[4] = {0};
        for (size_t i = 0; i < npix; i++, p += c)
            for (int k = 0; k < c; k++) {
                s[k] += p[k];
                q[k] += (uint64_t)p[k] * p[k];
            }
        for (int k = 0; k < c; k++) {
            mean[k] = (double)s[k] / (double)npix;
            var[k] = (double)q[k] / (double)npix - mean[k] * mean[k];
            mean[k] /= 255.0;
            var[k] /= 255.0 * 255.0;
        }
    } else if (npix > 0 && t->dtype == EMOE_F32) {
        const float *p = t->data;
        double s[4] = {0};
        for (size_t i = 0; i < npix; i++, p += c)
            for (int k = 0; k < c; k++)
                s[k] += p[k];
        for (int k = 0; k < c; k++)
            mean[k] = s[k] / (double)npix;
        p = t->data;
        for (size_t i = 0; i < npix; i++, p += c)
            for (int k = 0; k < c; k++) {
                double e = p[k] - mean[k];
                var[k] += e * e;
            }
        for (int k = 0; k < c; k++)
            var[k] /= (double)npix;
    } else if (npix > 0) {
        return emoe_error_set(err, EMOE_EUNSUPPORTED, "statistics of %s images",
                              emoe_dtype_name(t->dtype));
    }
    for (int k = 0; k < c; k++) {
        d->mean[k] = (float)mean[k];
        d->std[k] = (float)(var[k] > 0 ? sqrt(var[k]) : 0.0);
    }
    d->stats_channels = c;
    d->has_stats = 1;
    return EMOE_OK;
}

/* ------------------------------------------------------------- collector */

/*
 * The pixel store is an anonymous mapping (an EMOE_BUFFER_MMAP buffer, so the dataset
 * that ends up owning it unmaps it), grown in place or moved by mremap without a copy
 * where the system has it.  Transparent huge pages are asked for: the store is written
 * once, slot by slot, and first touching it 4 KiB page by page costs a page fault every
 * 4 KiB (a large share of the time for small images; one fault per 2 MiB instead).  For
 * the huge pages to line up, every mapping is a whole number of MAP_ALIGN bytes and
 * starts on such a boundary, also where mremap moves it: a mapping of any other length,
 * moved to wherever the system puts it, left up to 2 MiB of 4 KiB pages at each growth.
 * Measured reading both CIFAR-10 splits from the zip (store and read-ahead buffers, which
 * are such mappings too): 2,375 page faults before, 93 after (one thread; 3,228 and 163
 * on two), and about 3% less time; 1,197 and 26 for the 200 photos to 32x32, 12% less.
 */
#define MAP_ALIGN ((size_t)2 << 20) /* a huge page on x86-64 */

static void store_advise(void *p, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: failure is harmless */
#else
    (void)p;
    (void)bytes;
#endif
}

/* An address range of bytes starting on a MAP_ALIGN boundary, reserved (no access, no
 * memory) for a mapping to be placed on; NULL when there is no such range. */
static void *reserve_aligned(size_t bytes)
{
    if (bytes > SIZE_MAX - MAP_ALIGN)
        return NULL;
    char *q = mmap(NULL, bytes + MAP_ALIGN, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (q == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)q + MAP_ALIGN - 1) & ~(uintptr_t)(MAP_ALIGN - 1));
    if (a > q)
        munmap(q, (size_t)(a - q));
    size_t tail = (size_t)(q + bytes + MAP_ALIGN - (a + bytes));
    if (tail)
        munmap(a + bytes, tail);
    return a;
}

void *prep_map_grow(void *old, size_t old_bytes, size_t used, size_t *bytes)
{
    size_t want = *bytes;
    if (want > SIZE_MAX - MAP_ALIGN)
        return NULL;
    want = (want + MAP_ALIGN - 1) / MAP_ALIGN * MAP_ALIGN;
    void *p, *at;
#ifdef MREMAP_MAYMOVE
    if (old && old_bytes) {
        p = mremap(old, old_bytes, want, 0); /* in place, else to an aligned range */
#ifdef MREMAP_FIXED
        if (p == MAP_FAILED && (at = reserve_aligned(want)) != NULL) {
            p = mremap(old, old_bytes, want, MREMAP_MAYMOVE | MREMAP_FIXED, at);
            if (p == MAP_FAILED)
                munmap(at, want);
        }
#endif
        if (p == MAP_FAILED)
            p = mremap(old, old_bytes, want, MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return NULL;
        store_advise(p, want);
        *bytes = want;
        return p;
    }
#endif
    at = reserve_aligned(want);
    p = mmap(at, want, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED : 0), -1, 0);
    if (p == MAP_FAILED) {
        if (at)
            munmap(at, want);
        return NULL;
    }
    store_advise(p, want);
    if (old) {
        memcpy(p, old, used);
        munmap(old, old_bytes);
    }
    *bytes = want;
    return p;
}

int collector_init(struct collector *c, enum emoe_dtype dtype, int ndim, const int64_t *dims,
                   struct emoe_error *err)
{
    memset(c, 0, sizeof *c);
    if (ndim < 1 || ndim > 4)
        return emoe_error_set(err, EMOE_EINVAL, "bad item rank %d", ndim);
    c->dtype = dtype;
    c->ndim = ndim;
    memcpy(c->dims, dims, sizeof(int64_t) * (size_t)ndim);
    int rc = emoe_shape_check(dtype, ndim, dims, NULL, &c->item_bytes, err);
    if (rc != EMOE_OK)
        return rc;
    c->buf = malloc(sizeof *c->buf);
    if (!c->buf)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    c->buf->base = NULL; /* mapped at the first reserve */
    c->buf->size = 0;
    c->buf->kind = EMOE_BUFFER_MMAP;
    atomic_init(&c->buf->refs, 1);
    return EMOE_OK;
}

void collector_free(struct collector *c)
{
    emoe_buffer_unref(c->buf);
    for (size_t i = 0; i < c->nitems; i++) {
        free(c->items[i].cls);
        free(c->items[i].key);
    }
    free(c->items);
    prep_free_strings(c->names, c->nnames);
    memset(c, 0, sizeof *c);
}

int collector_reserve(struct collector *c, size_t n, size_t *first, struct emoe_error *err)
{
    size_t need;
    if (emoe_size_add(&need, c->nslots, n) != EMOE_OK)
        return emoe_error_set(err, EMOE_ERANGE, "too many images");
    if (need > c->cap || !c->buf->base) {
        size_t cap = c->cap ? c->cap : 64, bytes;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        if (c->item_bytes && cap > SIZE_MAX / 2 / c->item_bytes)
            cap = need;
        if (emoe_size_mul(&bytes, cap, c->item_bytes) != EMOE_OK || bytes > SIZE_MAX / 2)
            return emoe_error_set(err, EMOE_ERANGE, "dataset of %zu images is too large",
                                  need);
        if (bytes == 0)
            bytes = 1;
        /* new slots are not cleared: every slot in the dataset is written before use */
        void *p = prep_map_grow(c->buf->base, c->buf->size, c->nslots * c->item_bytes, &bytes);
        if (!p)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory for %zu images", need);
        c->buf->base = p;
        c->buf->size = bytes; /* rounded up: room for more slots */
        c->cap = c->item_bytes ? bytes / c->item_bytes : cap;
    }
    *first = c->nslots;
    c->nslots = need;
    return EMOE_OK;
}

static char *dupstr(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* The item, taking cls and key (freed when out of memory). */
static int add_item(struct collector *c, char *cls, char *key, uint64_t sub, int64_t label,
                    size_t slot, struct prep_item **out, struct emoe_error *err)
{
    if (c->nitems == c->items_cap) {
        size_t cap = c->items_cap ? c->items_cap * 2 : 256;
        struct prep_item *p = realloc(c->items, cap * sizeof *p);
        if (!p) {
            free(cls);
            free(key);
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        }
        c->items = p;
        c->items_cap = cap;
    }
    struct prep_item *it = &c->items[c->nitems];
    memset(it, 0, sizeof *it);
    it->cls = cls;
    it->key = key;
    it->sub = sub;
    it->label = label;
    it->slot = slot;
    c->nitems++;
    if (out)
        *out = it;
    return EMOE_OK;
}

int collector_add(struct collector *c, const char *cls, const char *key, uint64_t sub,
                  int64_t label, size_t slot, struct prep_item **out, struct emoe_error *err)
{
    char *cd = dupstr(cls), *kd = dupstr(key);
    if ((cls && !cd) || (key && !kd)) {
        free(cd);
        free(kd);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    return add_item(c, cd, kd, sub, label, slot, out, err);
}

int collector_add_key(struct collector *c, char *key, size_t slot, struct prep_item **out,
                      struct emoe_error *err)
{
    return add_item(c, NULL, key, 0, 0, slot, out, err);
}

int collector_set_names(struct collector *c, char *const *names, size_t n,
                        struct emoe_error *err)
{
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if (!(v[i] = dupstr(names[i]))) {
            prep_free_strings(v, i);
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        }
    prep_free_strings(c->names, c->nnames);
    c->names = v;
    c->nnames = n;
    return EMOE_OK;
}

static int strcmp_null(const char *a, const char *b)
{
    if (!a || !b)
        return a ? 1 : b ? -1 : 0;
    return strcmp(a, b);
}

static int cmp_items(const void *pa, const void *pb)
{
    const struct prep_item *a = pa, *b = pb;
    int r = strcmp_null(a->cls, b->cls);
    if (r)
        return r;
    r = strcmp_null(a->key, b->key);
    if (r)
        return r;
    if (a->sub != b->sub)
        return a->sub < b->sub ? -1 : 1;
    return a->slot < b->slot ? -1 : a->slot > b->slot;
}

/* splitmix64, for the seeded few-shot choice */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Split "a,b,c" into names (copied). */
static int split_list(const char *list, char ***out, size_t *n, struct emoe_error *err)
{
    size_t cap = 1;
    for (const char *p = list; *p; p++)
        cap += *p == ',';
    char **v = calloc(cap, sizeof *v);
    if (!v)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    size_t k = 0;
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len) {
            for (size_t i = 0; i < k; i++)
                if (strlen(v[i]) == len && !memcmp(v[i], p, len)) {
                    prep_free_strings(v, k);
                    return emoe_error_set(err, EMOE_EINVAL, "class '%.*s' is listed twice",
                                          (int)len, p);
                }
            v[k] = malloc(len + 1);
            if (!v[k]) {
                prep_free_strings(v, k);
                return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            }
            memcpy(v[k], p, len);
            v[k++][len] = 0;
        }
        if (!e)
            break;
        p = e + 1;
    }
    if (k == 0) {
        prep_free_strings(v, k);
        return emoe_error_set(err, EMOE_EINVAL, "empty class list");
    }
    *out = v;
    *n = k;
    return EMOE_OK;
}

/* Move slot contents so that slot i holds what slot src[i] held, for i < n (src distinct),
 * in place with one spare item: src is extended to a permutation of all slots (the
 * unselected ones after it) and the cycles are followed. */
static int permute_slots(struct collector *c, const size_t *src, size_t n,
                         struct emoe_error *err)
{
    size_t m = c->nslots, sz = c->item_bytes;
    size_t *perm = malloc((m ? m : 1) * sizeof *perm);
    unsigned char *done = calloc(m ? m : 1, 1);
    unsigned char *tmp = malloc(sz ? sz : 1);
    if (!perm || !done || !tmp) {
        free(perm);
        free(done);
        free(tmp);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        perm[i] = src[i];
        done[src[i]] = 1; /* used as "selected" for now */
    }
    for (size_t i = 0, k = n; i < m; i++)
        if (!done[i])
            perm[k++] = i;
    memset(done, 0, m);
    unsigned char *base = c->buf->base;
    for (size_t i = 0; i < m; i++) {
        if (done[i] || perm[i] == i) {
            done[i] = 1;
            continue;
        }
        memcpy(tmp, base + i * sz, sz);
        size_t j = i;
        for (;;) {
            size_t k = perm[j];
            done[j] = 1;
            if (k == i) {
                memcpy(base + j * sz, tmp, sz);
                break;
            }
            memcpy(base + j * sz, base + k * sz, sz);
            j = k;
        }
    }
    free(perm);
    free(done);
    free(tmp);
    return EMOE_OK;
}

int collector_finish(struct collector *c, const struct emoe_prep_options *o,
                     struct emoe_dataset **out, struct emoe_error *err)
{
    *out = NULL;
    int rc = EMOE_OK;
    char **classes = NULL, **want = NULL;
    size_t ncls = 0, nwant = 0, nsel = 0;
    size_t *sel = NULL, *src = NULL;
    int64_t *lab = NULL;
    float *tgt = NULL;
    struct emoe_dataset *d = NULL;

    /* readers mostly give the items in order already (archives sorted by name): a pass
     * that finds them so costs far less than the sort */
    size_t unsorted = 1;
    while (unsorted < c->nitems && cmp_items(&c->items[unsorted - 1], &c->items[unsorted]) <= 0)
        unsorted++;
    if (unsorted < c->nitems)
        qsort(c->items, c->nitems, sizeof *c->items, cmp_items);

    /* class names: from the items' names (sorted, unique) or given by the reader.
     * Taken before corrupt images are dropped, so a class whose images all failed
     * to decode keeps its label (and the labels after it do not shift). */
    int named = c->nitems > 0 && c->items[0].cls != NULL;
    if (named) {
        classes = malloc(c->nitems * sizeof *classes);
        if (!classes) {
            named = 0;
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < c->nitems; i++)
            if (ncls == 0 || strcmp(classes[ncls - 1], c->items[i].cls) != 0) {
                if (!(classes[ncls] = dupstr(c->items[i].cls))) {
                    rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                    goto done;
                }
                ncls++;
            }
    }

    /* drop bad items (the order of the rest is kept) */
    size_t k = 0;
    for (size_t i = 0; i < c->nitems; i++) {
        if (c->items[i].bad) {
            free(c->items[i].cls);
            free(c->items[i].key);
        } else {
            c->items[k++] = c->items[i];
        }
    }
    c->nitems = k;
    if (!named && c->names) {
        classes = c->names;
        ncls = c->nnames;
    }
    lab = malloc((c->nitems ? c->nitems : 1) * sizeof *lab);
    sel = malloc((c->nitems ? c->nitems : 1) * sizeof *sel);
    if (!lab || !sel) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0, ci = 0; i < c->nitems; i++) {
        if (named) {
            while (strcmp(classes[ci], c->items[i].cls) != 0)
                ci++;
            lab[i] = (int64_t)ci;
        } else {
            lab[i] = c->items[i].label;
        }
        sel[i] = i;
    }
    nsel = c->nitems;

    /* --classes: keep those, labels renumbered in the order given */
    char **out_classes = classes;
    size_t out_ncls = ncls;
    if (o->classes && !c->regression) {
        rc = split_list(o->classes, &want, &nwant, err);
        if (rc != EMOE_OK)
            goto done;
        if (!classes) {
            rc = emoe_error_set(err, EMOE_EINVAL, "--classes: this dataset has no class names");
            goto done;
        }
        int64_t *map = malloc((ncls ? ncls : 1) * sizeof *map);
        if (!map) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < ncls; i++)
            map[i] = -1;
        for (size_t w = 0; w < nwant; w++) {
            size_t i = 0;
            while (i < ncls && strcmp(classes[i], want[w]) != 0)
                i++;
            if (i == ncls) {
                free(map);
                rc = emoe_error_set(err, EMOE_ENOTFOUND, "no class '%s' in the dataset",
                                    want[w]);
                goto done;
            }
            map[i] = (int64_t)w;
        }
        size_t m = 0;
        for (size_t i = 0; i < nsel; i++) {
            int64_t l = lab[sel[i]];
            if (l >= 0 && (size_t)l < ncls && map[l] >= 0) {
                lab[sel[i]] = map[l];
                sel[m++] = sel[i];
            }
        }
        nsel = m;
        free(map);
        out_classes = want;
        out_ncls = nwant;
        /* keep the selected order grouped by new label (stable: sorted order within) */
        size_t *tmp = malloc((nsel ? nsel : 1) * sizeof *tmp), t = 0;
        if (!tmp) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t w = 0; w < nwant; w++)
            for (size_t i = 0; i < nsel; i++)
                if (lab[sel[i]] == (int64_t)w)
                    tmp[t++] = sel[i];
        memcpy(sel, tmp, nsel * sizeof *sel);
        free(tmp);
    }

    /* --per-class K --seed S: K random images of each class (classes in label order, each
     * drawing from the generator in turn), kept in dataset order */
    if (o->per_class > 0 && !c->regression && nsel > 0) {
        uint64_t rng = o->seed;
        int64_t maxl = -1;
        for (size_t i = 0; i < nsel; i++)
            if (lab[sel[i]] > maxl)
                maxl = lab[sel[i]];
        size_t *pos = malloc(nsel * sizeof *pos);
        unsigned char *keep = calloc(nsel, 1);
        if (!pos || !keep) {
            free(pos);
            free(keep);
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        for (int64_t l = 0; l <= maxl; l++) {
            size_t cnt = 0;
            for (size_t i = 0; i < nsel; i++)
                if (lab[sel[i]] == l)
                    pos[cnt++] = i;
            if (cnt == 0)
                continue;
            if (cnt < o->per_class) {
                const char *nm = out_classes && (size_t)l < out_ncls ? out_classes[l] : "?";
                free(pos);
                free(keep);
                rc = emoe_error_set(err, EMOE_EINVAL,
                                    "class '%s' has %zu images, fewer than --per-class %zu",
                                    nm, cnt, o->per_class);
                goto done;
            }
            for (size_t q = 0; q < o->per_class; q++) { /* partial Fisher-Yates */
                size_t r = q + (size_t)(next_rand(&rng) % (cnt - q));
                size_t t = pos[q];
                pos[q] = pos[r];
                pos[r] = t;
                keep[pos[q]] = 1;
            }
        }
        size_t m = 0;
        for (size_t i = 0; i < nsel; i++)
            if (keep[i])
                sel[m++] = sel[i];
        nsel = m;
        free(pos);
        free(keep);
    }
    if (o->limit > 0 && nsel > o->limit)
        nsel = o->limit;
    if (nsel == 0) {
        rc = emoe_error_set(err, EMOE_EFORMAT, "no images selected");
        goto done;
    }

    /* pixels into final order, in place */
    src = malloc(nsel * sizeof *src);
    if (!src) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nsel; i++)
        src[i] = c->items[sel[i]].slot;
    rc = permute_slots(c, src, nsel, err);
    if (rc != EMOE_OK)
        goto done;

    d = calloc(1, sizeof *d);
    if (!d) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    int64_t shape[EMOE_MAX_DIMS];
    shape[0] = (int64_t)nsel;
    memcpy(shape + 1, c->dims, sizeof(int64_t) * (size_t)c->ndim);
    rc = emoe_tensor_view(c->buf, c->buf->base, c->dtype, c->ndim + 1, shape, &d->images, err);
    if (rc != EMOE_OK)
        goto done;
    int64_t n1 = (int64_t)nsel;
    if (c->regression) {
        rc = emoe_tensor_new(EMOE_F32, 1, &n1, &d->labels, err);
        if (rc != EMOE_OK)
            goto done;
        tgt = d->labels->data;
        for (size_t i = 0; i < nsel; i++)
            tgt[i] = c->items[sel[i]].target;
    } else {
        rc = emoe_tensor_new(EMOE_I64, 1, &n1, &d->labels, err);
        if (rc != EMOE_OK)
            goto done;
        int64_t *l = d->labels->data;
        for (size_t i = 0; i < nsel; i++)
            l[i] = lab[sel[i]];
    }
    if (out_classes && !c->regression) {
        d->classes = calloc(out_ncls ? out_ncls : 1, sizeof *d->classes);
        if (!d->classes) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto done;
        }
        d->nclasses = out_ncls;
        for (size_t i = 0; i < out_ncls; i++)
            if (!(d->classes[i] = dupstr(out_classes[i]))) {
                rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
                goto done;
            }
    }
    *out = d;
    d = NULL;
done:
    emoe_dataset_free(d);
    if (named)
        prep_free_strings(classes, ncls); /* our copies */
    prep_free_strings(want, nwant);
    free(lab);
    free(sel);
    free(src);
    collector_free(c);
    return rc;
}

/* crc32 of n bytes, in pieces zlib's uInt length can take */
static uLong crc_bytes(uLong crc, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n > 0) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, b, k);
        b += k;
        n -= k;
    }
    return crc;
}

void emoe_dataset_fingerprint(const struct emoe_dataset *d, char *buf, size_t size)
{
    const struct emoe_tensor *t = d->images;
    uLong crc = crc32(0L, Z_NULL, 0);
    int n = 0;
    if (t) {
        crc = crc_bytes(crc, t->data, t->nbytes);
        n = snprintf(buf, size, "%lld x %s[", t->ndim ? (long long)t->shape[0] : 0LL,
                     emoe_dtype_name(t->dtype));
        for (int i = 1; i < t->ndim && n >= 0 && (size_t)n < size; i++)
            n += snprintf(buf + n, size - (size_t)n, "%s%lld", i > 1 ? "," : "",
                          (long long)t->shape[i]);
    } else {
        n = snprintf(buf, size, "no images [");
    }
    if (d->labels)
        crc = crc_bytes(crc, d->labels->data, d->labels->nbytes);
    if (n >= 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, "], crc32 %08lx", (unsigned long)crc);
}
