/*
 * dataset_read.c: reading a dataset .npz (METHOD.md section 8) into struct
 * emoe_dataset, with the checks every consumer needs: images u8 [N, H, W, C] or
 * volumes [N, D, H, W, C], labels of the same length (class ids in range, or finite
 * regression targets), optional class names and per-channel statistics.
 */
#include "config.h"
#include "emoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Class names from the npz's single-allocation string array into separately
 * malloc'd strings (what emoe_dataset_free releases). */
static int copy_classes(struct emoe_dataset *d, char **strs, size_t n, const char *path,
                        struct emoe_error *err)
{
    d->classes = calloc(n ? n : 1, sizeof *d->classes);
    if (!d->classes)
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory for %zu class names",
                              path, n);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        d->classes[i] = malloc(len + 1);
        if (!d->classes[i]) {
            d->nclasses = i; /* so that emoe_dataset_free frees what was made */
            return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory for class names",
                                  path);
        }
        memcpy(d->classes[i], strs[i], len + 1);
    }
    d->nclasses = n;
    return EMOE_OK;
}

static int read_images(struct emoe_npz *z, const char *path, struct emoe_dataset *d,
                       struct emoe_error *err)
{
    struct emoe_npy_info info;
    int rc = emoe_npz_info(z, "images", &info, err);
    if (rc == EMOE_ENOTFOUND)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: no member 'images' (not a dataset)",
                              path);
    if (rc != EMOE_OK)
        return rc;
    if (info.is_string || (info.dtype != EMOE_U8 && info.dtype != EMOE_F32))
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: member 'images': dtype %s, expected u8 or f32", path,
                              info.is_string ? "bytes" : emoe_dtype_name(info.dtype));
    if (info.ndim != 4 && info.ndim != 5) {
        char s[128];
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: member 'images': shape %s, expected [N, H, W, C] or "
                              "[N, D, H, W, C]",
                              path, emoe_shape_format(info.ndim, info.shape, s, sizeof s));
    }
    int64_t c = info.shape[info.ndim - 1];
    if (c < 1 || c > 4)
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: member 'images': %lld channels, expected 1 to 4", path,
                              (long long)c);
    return emoe_npz_read(z, "images", &d->images, err);
}

static int read_labels(struct emoe_npz *z, const char *path, struct emoe_dataset *d,
                       struct emoe_error *err)
{
    struct emoe_npy_info info;
    int rc = emoe_npz_info(z, "labels", &info, err);
    if (rc == EMOE_ENOTFOUND)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: no member 'labels' (not a dataset)",
                              path);
    if (rc != EMOE_OK)
        return rc;
    if (info.is_string ||
        (info.dtype != EMOE_I32 && info.dtype != EMOE_I64 && info.dtype != EMOE_F32))
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: member 'labels': dtype %s, expected int32, int64 or "
                              "float32",
                              path, info.is_string ? "bytes" : emoe_dtype_name(info.dtype));
    int64_t n = d->images->shape[0];
    if (info.ndim != 1 || info.shape[0] != n) {
        char s[128];
        return emoe_error_set(err, EMOE_EFORMAT,
                              "%s: member 'labels': shape %s, expected (%lld,) as 'images'",
                              path, emoe_shape_format(info.ndim, info.shape, s, sizeof s),
                              (long long)n);
    }
    struct emoe_tensor *t;
    rc = emoe_npz_read(z, "labels", &t, err);
    if (rc != EMOE_OK)
        return rc;
    if (info.dtype == EMOE_F32) {
        const float *v = t->data;
        for (size_t i = 0; i < t->nelem; i++)
            if (!isfinite(v[i])) {
                emoe_tensor_free(t);
                return emoe_error_set(err, EMOE_EFORMAT,
                                      "%s: member 'labels': non-finite target at index %zu",
                                      path, i);
            }
        d->labels = t;
        return EMOE_OK;
    }
    if (info.dtype == EMOE_I32) {
        struct emoe_tensor *w;
        rc = emoe_tensor_convert(t, EMOE_I64, &w, err);
        emoe_tensor_free(t);
        if (rc != EMOE_OK)
            return rc;
        t = w;
    }
    const int64_t *v = t->data;
    int64_t hi = d->classes ? (int64_t)d->nclasses : (int64_t)INT32_MAX;
    for (size_t i = 0; i < t->nelem; i++)
        if (v[i] < 0 || v[i] >= hi) {
            long long bad = (long long)v[i];
            emoe_tensor_free(t);
            if (d->classes)
                return emoe_error_set(err, EMOE_ERANGE,
                                      "%s: member 'labels': label %lld at index %zu is not "
                                      "in [0, %zu) ('classes' has %zu names)",
                                      path, bad, i, d->nclasses, d->nclasses);
            return emoe_error_set(err, EMOE_ERANGE,
                                  "%s: member 'labels': label %lld at index %zu is out of "
                                  "range",
                                  path, bad, i);
        }
    d->labels = t;
    return EMOE_OK;
}

/* mean and std: f32 [C] both or neither, C the images' channels. */
static int read_stats(struct emoe_npz *z, const char *path, struct emoe_dataset *d,
                      struct emoe_error *err)
{
    static const char *const names[2] = {"mean", "std"};
    struct emoe_npy_info info[2];
    int have[2];
    for (int k = 0; k < 2; k++) {
        int rc = emoe_npz_info(z, names[k], &info[k], err);
        if (rc != EMOE_OK && rc != EMOE_ENOTFOUND)
            return rc;
        have[k] = rc == EMOE_OK;
    }
    if (!have[0] && !have[1])
        return EMOE_OK;
    if (have[0] != have[1])
        return emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s' without '%s'", path,
                              have[0] ? "mean" : "std", have[0] ? "std" : "mean");
    int64_t c = d->images->shape[d->images->ndim - 1];
    float *dst[2] = {d->mean, d->std};
    for (int k = 0; k < 2; k++) {
        if (info[k].is_string || info[k].dtype != EMOE_F32 || info[k].ndim != 1 ||
            info[k].shape[0] != c)
            return emoe_error_set(err, EMOE_EFORMAT,
                                  "%s: member '%s': expected float32 [%lld] (one value per "
                                  "channel)",
                                  path, names[k], (long long)c);
        struct emoe_tensor *t;
        int rc = emoe_npz_read(z, names[k], &t, err);
        if (rc != EMOE_OK)
            return rc;
        const float *v = t->data;
        for (int64_t i = 0; i < c; i++) {
            if (!isfinite(v[i]) || (k == 1 && v[i] < 0)) {
                emoe_tensor_free(t);
                return emoe_error_set(err, EMOE_EFORMAT, "%s: member '%s': bad value %g",
                                      path, names[k], (double)v[i]);
            }
            dst[k][i] = v[i];
        }
        emoe_tensor_free(t);
    }
    d->stats_channels = (int)c;
    d->has_stats = 1;
    return EMOE_OK;
}

int emoe_dataset_read(const char *path, struct emoe_dataset **out, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_npz *z;
    int rc = emoe_npz_open(path, &z, err);
    if (rc != EMOE_OK)
        return rc;
    const char *name = strcmp(path, "-") == 0 ? "<stdin>" : path;
    struct emoe_dataset *d = calloc(1, sizeof *d);
    if (!d) {
        emoe_npz_close(z);
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
    }
    rc = read_images(z, name, d, err);
    if (rc == EMOE_OK) {
        struct emoe_npy_info info;
        int has = emoe_npz_info(z, "classes", &info, NULL) == EMOE_OK;
        if (has && !info.is_string) {
            rc = emoe_error_set(err, EMOE_EFORMAT,
                                "%s: member 'classes': dtype %s, expected byte strings "
                                "('|S<n>')",
                                name, emoe_dtype_name(info.dtype));
        } else if (has) {
            char **strs;
            size_t n;
            rc = emoe_npz_read_strings(z, "classes", &strs, &n, err);
            if (rc == EMOE_OK) {
                if (n == 0)
                    rc = emoe_error_set(err, EMOE_EFORMAT, "%s: member 'classes' is empty",
                                        name);
                else
                    rc = copy_classes(d, strs, n, name, err);
                emoe_npy_strings_free(strs);
            }
        }
    }
    if (rc == EMOE_OK)
        rc = read_labels(z, name, d, err);
    if (rc == EMOE_OK && d->classes && d->labels->dtype != EMOE_I64)
        rc = emoe_error_set(err, EMOE_EFORMAT,
                            "%s: member 'classes' given with float32 (regression) 'labels'",
                            name);
    if (rc == EMOE_OK)
        rc = read_stats(z, name, d, err);
    emoe_npz_close(z);
    if (rc != EMOE_OK) {
        emoe_dataset_free(d);
        return rc;
    }
    *out = d;
    return EMOE_OK;
}
