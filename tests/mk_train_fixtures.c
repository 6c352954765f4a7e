/*
 * mk_train_fixtures.c: writes a small separable dataset .npz for the emoe-train
 * shell tests (tests/tools/train.sh), so that they need neither Python nor emoe-prep.
 *
 *   mk_train_fixtures OUT.npz PER_CLASS SEED [SIZE [CHANNELS]]
 *   mk_train_fixtures --bare|--state-dict IN.safetensors OUT.safetensors
 *
 * 8 classes; image i (label i % 8) is noise in [0, 96) from the stream (SEED, i) with
 * a bright square (a quarter of the side) in grid cell 2c of a 4x4 grid, coloured by
 * the bits of c (the same images as tests/check_train.c).  Class names "c0".."c7".
 * --bare writes the vit.* tensors of a checkpoint under bare timm names, --state-dict
 * all its tensors, both without metadata (as a reference state_dict saved as
 * safetensors).
 */
#include "config.h"
#include "emoe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int strip(const char *mode, const char *in, const char *out)
{
    struct emoe_safetensors *st;
    struct emoe_error err = {0};
    if (emoe_safetensors_open(in, &st, &err)) {
        fprintf(stderr, "mk_train_fixtures: %s\n", err.msg);
        return 1;
    }
    int bare = strcmp(mode, "--bare") == 0, rc = 0;
    size_t n = emoe_safetensors_count(st), k = 0;
    struct emoe_named_tensor *nt = calloc(n + 1, sizeof *nt);
    struct emoe_tensor **ts = calloc(n + 1, sizeof *ts);
    for (size_t i = 0; nt && ts && i < n && !rc; i++) {
        const char *name = emoe_safetensors_name(st, i);
        if (bare && strncmp(name, "vit.", 4) != 0)
            continue;
        rc = emoe_safetensors_get(st, name, &ts[k], &err);
        nt[k].name = bare ? name + 4 : name;
        nt[k].tensor = ts[k];
        k++;
    }
    if (!rc)
        rc = emoe_safetensors_write(out, nt, k, NULL, 0, &err);
    for (size_t i = 0; ts && i < k; i++)
        emoe_tensor_free(ts[i]);
    free(ts);
    free(nt);
    emoe_safetensors_close(st);
    if (rc)
        fprintf(stderr, "mk_train_fixtures: %s\n", err.msg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && (strcmp(argv[1], "--bare") == 0 || strcmp(argv[1], "--state-dict") == 0))
        return strip(argv[1], argv[2], argv[3]);
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: mk_train_fixtures OUT.npz PER_CLASS SEED [SIZE [CHANNELS]]\n");
        return 2;
    }
    long per = atol(argv[2]), size = argc > 4 ? atol(argv[4]) : 16;
    long C = argc > 5 ? atol(argv[5]) : 3;
    uint64_t seed = strtoull(argv[3], NULL, 10);
    if (per < 1 || per > 100000 || size < 4 || size > 512 || size % 4 || C < 1 || C > 3) {
        fprintf(stderr, "mk_train_fixtures: bad arguments\n");
        return 2;
    }
    struct emoe_dataset d;
    memset(&d, 0, sizeof d);
    int64_t N = 8 * per, ishape[4] = {N, size, size, C};
    struct emoe_error err = {0};
    if (emoe_tensor_new(EMOE_U8, 4, ishape, &d.images, &err) ||
        emoe_tensor_new(EMOE_I64, 1, &N, &d.labels, &err)) {
        fprintf(stderr, "mk_train_fixtures: %s\n", err.msg);
        return 1;
    }
    unsigned char *px = d.images->data;
    int64_t *lab = d.labels->data;
    long q = size / 4;
    for (int64_t i = 0; i < N; i++) {
        struct emoe_rng r;
        emoe_rng_init(&r, seed, (uint64_t)i);
        int c = (int)(i % 8), gy = 2 * c / 4, gx = 2 * c % 4;
        unsigned char *im = px + i * size * size * C;
        for (long k = 0; k < size * size * C; k++)
            im[k] = (unsigned char)emoe_rng_below(&r, 96);
        for (long y = 0; y < q; y++)
            for (long x = 0; x < q; x++)
                for (long ch = 0; ch < C; ch++)
                    im[((gy * q + y) * size + gx * q + x) * C + ch] =
                        (c >> ch & 1) || C == 1 ? 240 - (C == 1 ? 10 * c : 0) : 140;
        lab[i] = c;
    }
    char names[8][4], *cls[8];
    for (int c = 0; c < 8; c++) {
        snprintf(names[c], sizeof names[c], "c%d", c);
        cls[c] = names[c];
    }
    d.classes = cls;
    d.nclasses = 8;
    int rc = emoe_dataset_write(argv[1], &d, &err);
    emoe_tensor_free(d.images);
    emoe_tensor_free(d.labels);
    if (rc) {
        fprintf(stderr, "mk_train_fixtures: %s\n", err.msg);
        return 1;
    }
    return 0;
}
