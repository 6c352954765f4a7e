/*
 * prep_write.c: writing a dataset as the dataset .npz of METHOD.md section 8
 * (images, labels, classes as '|S<n>' bytes, optional mean and std), atomically
 * through the .npz writer.
 */
#include "config.h"
#include "data.h"

int emoe_dataset_write(const char *path, const struct emoe_dataset *d, struct emoe_error *err)
{
    if (!d || !d->images || !d->labels)
        return emoe_error_set(err, EMOE_EINVAL, "%s: dataset without images or labels", path);
    if (d->labels->ndim != 1 || d->images->ndim < 1 || d->labels->shape[0] != d->images->shape[0])
        return emoe_error_set(err, EMOE_EINVAL, "%s: images and labels disagree in length", path);
    struct emoe_npz_writer *w;
    /* stored: images are mostly JPEG-noisy pixels, deflate buys little and costs time */
    int rc = emoe_npz_writer_open(path, EMOE_NPZ_STORED, &w, err);
    if (rc != EMOE_OK)
        return rc;
    rc = emoe_npz_writer_add(w, "images", d->images, err);
    if (rc == EMOE_OK)
        rc = emoe_npz_writer_add(w, "labels", d->labels, err);
    if (rc == EMOE_OK && d->classes && d->nclasses > 0)
        rc = emoe_npz_writer_add_strings(w, "classes", (const char *const *)d->classes,
                                         d->nclasses, err);
    if (rc == EMOE_OK && d->has_stats) {
        int64_t c = d->stats_channels;
        struct emoe_tensor *m = NULL, *s = NULL;
        rc = emoe_tensor_wrap(EMOE_F32, 1, &c, (void *)d->mean, &m, err);
        if (rc == EMOE_OK)
            rc = emoe_tensor_wrap(EMOE_F32, 1, &c, (void *)d->std, &s, err);
        if (rc == EMOE_OK)
            rc = emoe_npz_writer_add(w, "mean", m, err);
        if (rc == EMOE_OK)
            rc = emoe_npz_writer_add(w, "std", s, err);
        emoe_tensor_free(m);
        emoe_tensor_free(s);
    }
    if (rc != EMOE_OK) {
        emoe_npz_writer_abort(w);
        return rc;
    }
    return emoe_npz_writer_commit(w, err);
}
