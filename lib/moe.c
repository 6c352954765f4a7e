/*
 * moe.c: the MoE branch of METHOD.md section 2: configuration and block sets,
 * parameters, sparse dispatch and combine (forward and backward), routing
 * statistics (section 5), the eigenbasis from data, and the hook that puts the
 * branches into a model.  The routers are in router_*.c behind router.h.
 *
 * Letters: B images, T tokens per image, D width, N routed tokens (B*(T-1) with
 * the class token left out, else B*T), E experts, k experts per token (E in soft
 * mode), F expert bottleneck, A dispatched (token, expert) rows, L branches.
 *
 * Sparse execution: the (token, expert) pairs chosen by the top-k selection are
 * sorted by expert (a counting sort, tokens in order within an expert), the
 * tokens are gathered into one matrix per expert, the expert runs as two GEMMs
 * (down [F, D], GELU, up [D, F]) on its rows only, and each token sums its rows
 * back.  Backward reverses it with the same grouping.  Our loops are split into
 * fixed chunks and sums are taken in a fixed order, so a given thread count gives
 * the same results every run (OpenBLAS's sgemm itself may round differently for
 * different thread counts).
 *
 * Activations of the last forward (the branch input, the gathered rows, the
 * expert pre-activations and outputs) are kept in the branch for ONE backward;
 * backward overwrites some of them.
 *
 * Top-k ties: the lowest expert index wins (a strict > scan).  Capacity (factor C):
 * capacity = ceil(N k C / E) rows per expert, granted by slot first (all first
 * choices, then all second choices), tokens in order; a refused pair is dropped
 * (its term is 0, the token still gets its residual).
 */
#include "config.h"
#include "router.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAR_MIN_ELEMS 32768
#define CHUNK_ROWS 256

static void run(size_t nitems, size_t total_elems, emoe_parallel_fn fn, void *ctx)
{
    if (total_elems < PAR_MIN_ELEMS || nitems < 2) {
        for (size_t i = 0; i < nitems; i++)
            fn(ctx, i);
    } else {
        emoe_parallel_for(nitems, fn, ctx);
    }
}

/* ------------------------------------------------------------- config */

static const char *const router_names[] = {"none", "eigen", "ermoe", "softmax"};

const char *emoe_router_name(enum emoe_router_kind k)
{
    if ((int)k < 0 || (size_t)k >= sizeof router_names / sizeof *router_names)
        return "unknown";
    return router_names[k];
}

int emoe_router_from_name(const char *name, enum emoe_router_kind *out,
                          struct emoe_error *err)
{
    for (size_t i = 0; i < sizeof router_names / sizeof *router_names; i++)
        if (name && strcmp(name, router_names[i]) == 0) {
            *out = (enum emoe_router_kind)i;
            return EMOE_OK;
        }
    return emoe_error_set(err, EMOE_EINVAL,
                          "unknown router '%s' (expected eigen, ermoe, softmax or none)",
                          name ? name : "(null)");
}

void emoe_moe_config_init(struct emoe_moe_config *c)
{
    memset(c, 0, sizeof *c);
    c->router = EMOE_ROUTER_EIGEN;
    c->experts = 8;
    c->rank = 128;
    c->bottleneck = 192;
    c->top_k = 1;
    c->tau = 1.0f;
    c->alpha = 1.0f;
    strcpy(c->blocks, "last6");
    c->patches_only = 1;
    c->lambda_ortho = 5e-4f;
}

/* A non-negative decimal integer filling [s, end); -1 when malformed or too large. */
static long parse_uint(const char *s, const char *end)
{
    if (s == end)
        return -1;
    long v = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9' || v > 100000000)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int emoe_moe_parse_blocks(const char *spec, int depth, int *idx, int *n,
                          struct emoe_error *err)
{
    *n = 0;
    if (!spec || !*spec)
        return emoe_error_set(err, EMOE_EINVAL, "empty block set");
    if (depth <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "block set '%s': depth %d", spec, depth);
    size_t len = strlen(spec);
    if (strcmp(spec, "all") == 0) {
        for (int i = 0; i < depth; i++)
            idx[i] = i;
        *n = depth;
        return EMOE_OK;
    }
    if (len > 4 && strncmp(spec, "last", 4) == 0) {
        long v = parse_uint(spec + 4, spec + len);
        if (v <= 0)
            return emoe_error_set(err, EMOE_EINVAL, "malformed block set '%s'", spec);
        int m = v < depth ? (int)v : depth;
        for (int i = 0; i < m; i++)
            idx[i] = depth - m + i;
        *n = m;
        return EMOE_OK;
    }
    if (len > 5 && strncmp(spec, "every", 5) == 0) {
        long v = parse_uint(spec + 5, spec + len);
        if (v <= 0)
            return emoe_error_set(err, EMOE_EINVAL, "malformed block set '%s'", spec);
        int m = 0;
        for (long i = v - 1; i < depth; i += v)
            idx[m++] = (int)i;
        if (m == 0)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "block set '%s' selects no block of %d", spec, depth);
        *n = m;
        return EMOE_OK;
    }
    int m = 0;
    const char *s = spec;
    for (;;) {
        const char *e = strchr(s, ',');
        if (!e)
            e = s + strlen(s);
        long v = parse_uint(s, e);
        if (v < 0)
            return emoe_error_set(err, EMOE_EINVAL, "malformed block set '%s'", spec);
        if (v >= depth)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "block set '%s': block %ld out of range (depth %d)", spec,
                                  v, depth);
        for (int i = 0; i < m; i++)
            if (idx[i] == (int)v)
                return emoe_error_set(err, EMOE_EINVAL, "block set '%s': block %ld twice",
                                      spec, v);
        idx[m++] = (int)v;
        if (!*e)
            break;
        s = e + 1;
    }
    qsort(idx, (size_t)m, sizeof *idx, cmp_int);
    *n = m;
    return EMOE_OK;
}

int emoe_moe_config_check(const struct emoe_moe_config *c, int D, int depth,
                          struct emoe_error *err)
{
    if (c->router == EMOE_ROUTER_NONE)
        return EMOE_OK;
    if (c->router != EMOE_ROUTER_EIGEN && c->router != EMOE_ROUTER_ERMOE &&
        c->router != EMOE_ROUTER_SOFTMAX)
        return emoe_error_set(err, EMOE_EINVAL, "unknown router %d", (int)c->router);
    if (D <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "width %d", D);
    if (c->experts < 1 || c->experts > 4096)
        return emoe_error_set(err, EMOE_EINVAL, "experts %d out of range (1 to 4096)",
                              c->experts);
    if (c->top_k < 0 || c->top_k > c->experts)
        return emoe_error_set(err, EMOE_EINVAL, "top_k %d out of range (0 to %d experts)",
                              c->top_k, c->experts);
    if (c->router != EMOE_ROUTER_SOFTMAX && (c->rank < 1 || c->rank > D))
        return emoe_error_set(err, EMOE_EINVAL, "rank %d out of range (1 to width %d)",
                              c->rank, D);
    if (c->router != EMOE_ROUTER_ERMOE && (c->bottleneck < 1 || c->bottleneck > 65536))
        return emoe_error_set(err, EMOE_EINVAL, "bottleneck %d out of range (1 to 65536)",
                              c->bottleneck);
    if (!(c->tau > 0.0f) || !isfinite(c->tau))
        return emoe_error_set(err, EMOE_EINVAL, "tau %g must be positive", (double)c->tau);
    if (!isfinite(c->alpha) || !(c->lambda_ortho >= 0.0f) || !(c->switch_loss >= 0.0f) ||
        !(c->importance_loss >= 0.0f) || !(c->load_loss >= 0.0f) || !(c->z_loss >= 0.0f) ||
        !(c->capacity >= 0.0f) || !isfinite(c->threshold))
        return emoe_error_set(err, EMOE_EINVAL, "loss weights and capacity must be >= 0");
    if (c->load_loss > 0.0f && !c->noise)
        return emoe_error_set(err, EMOE_EINVAL, "the load loss needs router noise");
    if (c->eigen_batches < 0 || c->eigen_refresh < 0)
        return emoe_error_set(err, EMOE_EINVAL, "eigen_batches and eigen_refresh must be >= 0");
    if (c->eigen_batches > 0 && c->router != EMOE_ROUTER_EIGEN)
        return emoe_error_set(err, EMOE_EINVAL, "eigenbasis from data needs the eigen router");
    if (c->eigen_refresh > 0 && c->eigen_refresh < c->eigen_batches)
        return emoe_error_set(err, EMOE_EINVAL, "eigen_refresh %d is below eigen_batches %d",
                              c->eigen_refresh, c->eigen_batches);
    if (depth > 0) {
        int *idx = malloc((size_t)depth * sizeof *idx), n;
        if (!idx)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        int rc = emoe_moe_parse_blocks(c->blocks, depth, idx, &n, err);
        free(idx);
        if (rc)
            return rc;
    }
    return EMOE_OK;
}

/* ------------------------------------------------------------ helpers */

int moe_grow(void **p, size_t *cap, size_t n, size_t sz, struct emoe_error *err)
{
    if (n <= *cap && *p)
        return EMOE_OK;
    size_t bytes;
    if (emoe_size_mul(&bytes, n ? n : 1, sz))
        return emoe_error_set(err, EMOE_ERANGE, "branch buffer of %zu elements overflows", n);
    void *q = emoe_alloc_aligned(bytes);
    if (!q)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory (%zu bytes)", bytes);
    emoe_free_aligned(*p);
    *p = q;
    *cap = n;
    return EMOE_OK;
}

int moe_add_slot(struct emoe_moe_branch *b, const char *name, int ndim, int64_t d0,
                 int64_t d1, enum slot_init init, float value, int no_decay,
                 struct emoe_error *err)
{
    if (b->nslots == b->cap_slots) {
        size_t nc = b->cap_slots ? 2 * b->cap_slots : 16;
        struct moe_slot *s = realloc(b->slots, nc * sizeof *s);
        if (!s)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        b->slots = s;
        b->cap_slots = nc;
    }
    struct moe_slot *s = &b->slots[b->nslots++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->numel = (size_t)(ndim >= 1 ? d0 : 1) * (size_t)(ndim >= 2 ? d1 : 1);
    s->init = init;
    s->value = value;
    s->no_decay = no_decay;
    return EMOE_OK;
}

struct moe_slot *moe_find_slot(struct emoe_moe_branch *b, const char *name)
{
    for (size_t i = 0; i < b->nslots; i++)
        if (strcmp(b->slots[i].name, name) == 0)
            return &b->slots[i];
    return NULL;
}

int moe_qr_retract(float *q, int M, int R, int sign_fix, struct emoe_error *err)
{
    /* LAPACK is column-major: A = Q as [M, R] column-major is the transpose of our
     * row-major storage, so copy in and out. */
    int lwork = -1, info = 0;
    size_t n = (size_t)M * R;
    float *a = malloc((n + 2 * (size_t)R) * sizeof *a);
    if (!a)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    float *tau = a + n, *diag = tau + R, wq = 0.0f;
    sgeqrf_(&M, &R, a, &M, tau, &wq, &lwork, &info);
    int lw1 = (int)wq;
    sorgqr_(&M, &R, &R, a, &M, tau, &wq, &lwork, &info);
    int lw2 = (int)wq;
    lwork = (lw1 > lw2 ? lw1 : lw2) + 64 * R;
    float *work = malloc((size_t)lwork * sizeof *work);
    if (!work) {
        free(a);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < R; j++)
            a[(size_t)j * M + i] = q[(size_t)i * R + j];
    sgeqrf_(&M, &R, a, &M, tau, work, &lwork, &info);
    if (info == 0) {
        for (int j = 0; j < R; j++)
            diag[j] = a[(size_t)j * M + j];
        sorgqr_(&M, &R, &R, a, &M, tau, work, &lwork, &info);
    }
    free(work);
    if (info != 0) {
        free(a);
        return emoe_error_set(err, EMOE_ENUMERIC, "QR retraction failed (LAPACK info %d)",
                              info);
    }
    int bad = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < R; j++) {
            float v = a[(size_t)j * M + i];
            if (sign_fix && diag[j] < 0.0f)
                v = -v;
            bad |= !isfinite(v);
            q[(size_t)i * R + j] = v;
        }
    free(a);
    if (bad)
        return emoe_error_set(err, EMOE_ENUMERIC, "QR retraction: the basis is not finite");
    return EMOE_OK;
}

double moe_ortho_penalty(const float *q, float *grad, float scale, int M, int R, float *gram)
{
    /* gram = Q^T Q - I [R, R]; penalty ||gram||_F^2; d/dQ = 4 Q gram. */
    emoe_sgemm(CblasTrans, CblasNoTrans, R, R, M, 1.0f, q, R, q, R, 0.0f,
                gram, R);
    double s = 0.0;
    for (int i = 0; i < R; i++) {
        gram[(size_t)i * R + i] -= 1.0f;
        for (int j = 0; j < R; j++) {
            double g = gram[(size_t)i * R + j];
            s += g * g;
        }
    }
    if (grad && scale != 0.0f)
        emoe_sgemm(CblasNoTrans, CblasNoTrans, M, R, R, 4.0f * scale, q, R,
                    gram, R, 1.0f, grad, R);
    return s;
}

void moe_softmax_rows(float *y, const float *x, int n, int m, float inv_tau)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * m;
        float *yi = y + (size_t)i * m;
        float mx = xi[0] * inv_tau;
        for (int j = 1; j < m; j++)
            if (xi[j] * inv_tau > mx)
                mx = xi[j] * inv_tau;
        float s = 0.0f;
        for (int j = 0; j < m; j++) {
            yi[j] = expf(xi[j] * inv_tau - mx);
            s += yi[j];
        }
        float inv = 1.0f / s;
        for (int j = 0; j < m; j++)
            yi[j] *= inv;
    }
}

/* ---------------------------------------------------------- the branch */

static const struct router_ops *router_ops_for(enum emoe_router_kind k)
{
    switch (k) {
    case EMOE_ROUTER_EIGEN:
        return &moe_router_eigen;
    case EMOE_ROUTER_ERMOE:
        return &moe_router_ermoe;
    case EMOE_ROUTER_SOFTMAX:
        return &moe_router_softmax;
    default:
        return NULL;
    }
}

/* Slots of a new branch (not yet bound to memory). */
static int branch_create(const struct emoe_moe_config *c, int D, int index,
                         struct emoe_moe_branch **out, struct emoe_error *err)
{
    *out = NULL;
    int rc = emoe_moe_config_check(c, D, 0, err);
    if (rc)
        return rc;
    if (c->router == EMOE_ROUTER_NONE)
        return emoe_error_set(err, EMOE_EINVAL, "router 'none' has no branch");
    struct emoe_moe_branch *b = calloc(1, sizeof *b);
    if (!b)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    b->cfg = *c;
    b->ops = router_ops_for(c->router);
    b->index = index;
    b->D = D;
    b->E = c->experts;
    b->r = c->rank;
    b->F = c->bottleneck;
    b->soft = c->top_k == 0 || c->top_k >= c->experts;
    b->k = b->soft ? b->E : c->top_k;
    b->std_experts = 1;
    size_t E = (size_t)b->E;
    b->down_w = calloc(E, sizeof *b->down_w);
    b->down_g = calloc(E, sizeof *b->down_g);
    b->up_w = calloc(E, sizeof *b->up_w);
    b->up_g = calloc(E, sizeof *b->up_g);
    b->slot_down = calloc(E, sizeof *b->slot_down);
    b->slot_up = calloc(E, sizeof *b->slot_up);
    if (!b->down_w || !b->down_g || !b->up_w || !b->up_g || !b->slot_down || !b->slot_up) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto fail;
    }
    /* noise of training forward 0 (emoe_moe_branch_set_train_forwards) */
    emoe_rng_init(&b->rng, emoe_seed_derive(c->seed, 0x6e6f697365ull /* "noise" */),
                  (uint64_t)index);
    b->slot_alpha = 0;
    rc = moe_add_slot(b, "alpha", 0, 0, 0, INIT_CONST, c->alpha, 1, err);
    if (!rc)
        rc = b->ops->add_slots(b, err);
    if (rc)
        goto fail;
    if (b->std_experts) {
        char name[64];
        for (int e = 0; e < b->E && !rc; e++) {
            snprintf(name, sizeof name, "experts.%d.down.weight", e);
            rc = moe_add_slot(b, name, 2, b->F, D, INIT_KAIMING, 0.0f, 0, err);
        }
        for (int e = 0; e < b->E && !rc; e++) {
            snprintf(name, sizeof name, "experts.%d.up.weight", e);
            rc = moe_add_slot(b, name, 2, D, b->F, INIT_KAIMING, 0.0f, 0, err);
        }
        if (rc)
            goto fail;
    }
    *out = b;
    return EMOE_OK;
fail:
    emoe_moe_branch_free(b);
    return rc;
}

/* Point the experts' GEMM weights at their slots (again after the slots moved). */
static void branch_sync_experts(struct emoe_moe_branch *b)
{
    for (int e = 0; e < b->E; e++) {
        if (b->slot_down[e] != SIZE_MAX) {
            b->down_w[e] = b->slots[b->slot_down[e]].data;
            b->down_g[e] = b->slots[b->slot_down[e]].grad;
        }
        if (b->slot_up[e] != SIZE_MAX) {
            b->up_w[e] = b->slots[b->slot_up[e]].data;
            b->up_g[e] = b->slots[b->slot_up[e]].grad;
        }
    }
}

static size_t slot_index(struct emoe_moe_branch *b, const char *name)
{
    struct moe_slot *s = moe_find_slot(b, name);
    return s ? (size_t)(s - b->slots) : SIZE_MAX;
}

/* After the slots have memory: expert pointers and router state. */
static int branch_bind(struct emoe_moe_branch *b, struct emoe_error *err)
{
    char name[64];
    for (int e = 0; e < b->E; e++) {
        snprintf(name, sizeof name, "experts.%d.down.weight", e);
        b->slot_down[e] = slot_index(b, name);
        snprintf(name, sizeof name, b->std_experts ? "experts.%d.up.weight"
                                                   : "experts.%d.out.weight", e);
        b->slot_up[e] = slot_index(b, name);
    }
    branch_sync_experts(b);
    return b->ops->bind ? b->ops->bind(b, err) : EMOE_OK;
}

/* Initialise every slot (METHOD.md section 2, "Init") from the stream (seed, index). */
static int branch_init_params(struct emoe_moe_branch *b, uint64_t seed, struct emoe_error *err)
{
    struct emoe_rng rng;
    emoe_rng_init(&rng, emoe_seed_derive(seed, 0x6d6f65ull /* "moe" */), (uint64_t)b->index);
    for (size_t i = 0; i < b->nslots; i++) {
        struct moe_slot *s = &b->slots[i];
        switch (s->init) {
        case INIT_ZERO:
            memset(s->data, 0, s->numel * sizeof *s->data);
            break;
        case INIT_CONST:
            for (size_t j = 0; j < s->numel; j++)
                s->data[j] = s->value;
            break;
        case INIT_NORMAL:
            for (size_t j = 0; j < s->numel; j++)
                s->data[j] = emoe_rng_normal(&rng);
            break;
        case INIT_KAIMING: {
            float bound = 1.0f / sqrtf((float)s->shape[1]);
            for (size_t j = 0; j < s->numel; j++)
                s->data[j] = (2.0f * emoe_rng_uniform(&rng) - 1.0f) * bound;
            break;
        }
        case INIT_ORTHO: {
            for (size_t j = 0; j < s->numel; j++)
                s->data[j] = emoe_rng_normal(&rng);
            int rc = moe_qr_retract(s->data, (int)s->shape[0], (int)s->shape[1], 1, err);
            if (rc)
                return rc;
            break;
        }
        }
    }
    return EMOE_OK;
}

int emoe_moe_branch_new(const struct emoe_moe_config *c, int D, int index,
                        struct emoe_moe_branch **out, struct emoe_error *err)
{
    *out = NULL;
    struct emoe_moe_branch *b;
    int rc = branch_create(c, D, index, &b, err);
    if (rc)
        return rc;
    size_t total = 0;
    for (size_t i = 0; i < b->nslots; i++)
        if (emoe_size_add(&total, total, b->slots[i].numel)) {
            rc = emoe_error_set(err, EMOE_ERANGE, "branch parameters overflow");
            goto fail;
        }
    rc = moe_grow((void **)&b->arena, &(size_t){0}, total, 2 * sizeof(float), err);
    if (rc)
        goto fail;
    memset(b->arena, 0, 2 * total * sizeof(float));
    size_t off = 0;
    for (size_t i = 0; i < b->nslots; i++) {
        b->slots[i].data = b->arena + off;
        b->slots[i].grad = b->arena + total + off;
        off += b->slots[i].numel;
    }
    rc = branch_bind(b, err);
    if (!rc)
        rc = branch_init_params(b, c->seed, err);
    if (rc)
        goto fail;
    *out = b;
    return EMOE_OK;
fail:
    emoe_moe_branch_free(b);
    *out = NULL;
    return rc;
}

void emoe_moe_branch_free(struct emoe_moe_branch *b)
{
    if (!b)
        return;
    if (b->ops && b->ops->free)
        b->ops->free(b);
    free(b->slots);
    free(b->down_w);
    free(b->down_g);
    free(b->up_w);
    free(b->up_g);
    free(b->slot_down);
    free(b->slot_up);
    free(b->bound);
    emoe_free_aligned(b->arena);
    float *bufs[] = {b->h, b->acc, b->p, b->row_w, b->xg, b->act, b->gel, b->yg, b->dyg,
                     b->dgel, b->dp, b->dh};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        emoe_free_aligned(bufs[i]);
    emoe_free_aligned(b->elig);
    emoe_free_aligned(b->choice);
    emoe_free_aligned(b->row);
    emoe_free_aligned(b->top1);
    emoe_free_aligned(b->offset);
    emoe_free_aligned(b->row_tok);
    emoe_free_aligned(b->cov);
    free(b);
}

size_t emoe_moe_branch_param_count(const struct emoe_moe_branch *b)
{
    return b->nslots;
}

const char *emoe_moe_branch_param(struct emoe_moe_branch *b, size_t i, int *ndim,
                                  int64_t *shape, float **data, float **grad)
{
    if (i >= b->nslots)
        return NULL;
    struct moe_slot *s = &b->slots[i];
    if (ndim)
        *ndim = s->ndim;
    if (shape)
        for (int d = 0; d < s->ndim; d++)
            shape[d] = s->shape[d];
    if (data)
        *data = s->data;
    if (grad)
        *grad = s->grad;
    return s->name;
}

void emoe_moe_branch_zero_grad(struct emoe_moe_branch *b)
{
    for (size_t i = 0; i < b->nslots; i++)
        if (b->slots[i].grad)
            memset(b->slots[i].grad, 0, b->slots[i].numel * sizeof(float));
}

double emoe_moe_branch_extra_loss(const struct emoe_moe_branch *b)
{
    return b->extra_loss;
}

double emoe_moe_branch_loss_term(const struct emoe_moe_branch *b, enum emoe_loss_term t)
{
    return (unsigned)t < EMOE_LOSS_TERMS ? b->loss_terms[t] : 0.0;
}

static const char *const loss_term_names[EMOE_LOSS_TERMS][2] = {
    [EMOE_LOSS_ORTHO] = {"ortho_loss", "orthonormality loss"},
    [EMOE_LOSS_SWITCH] = {"lbl_loss", "Switch load-balancing loss"},
    [EMOE_LOSS_IMPORTANCE] = {"importance_loss", "importance loss"},
    [EMOE_LOSS_LOAD] = {"load_loss", "load loss"},
    [EMOE_LOSS_Z] = {"z_loss", "router z-loss"},
};

const char *emoe_loss_term_name(enum emoe_loss_term t)
{
    return (unsigned)t < EMOE_LOSS_TERMS ? loss_term_names[t][0] : NULL;
}

const char *emoe_loss_term_description(enum emoe_loss_term t)
{
    return (unsigned)t < EMOE_LOSS_TERMS ? loss_term_names[t][1] : NULL;
}

int emoe_loss_term_active(const struct emoe_moe_config *c, enum emoe_loss_term t)
{
    int softmax = c->router == EMOE_ROUTER_SOFTMAX;
    switch (t) {
    case EMOE_LOSS_ORTHO:
        return (c->router == EMOE_ROUTER_EIGEN || c->router == EMOE_ROUTER_ERMOE) &&
               c->lambda_ortho != 0.0f;
    case EMOE_LOSS_SWITCH: return softmax && c->switch_loss != 0.0f;
    case EMOE_LOSS_IMPORTANCE: return softmax && c->importance_loss != 0.0f;
    case EMOE_LOSS_LOAD: return softmax && c->load_loss != 0.0f;
    case EMOE_LOSS_Z: return softmax && c->z_loss != 0.0f;
    }
    return 0;
}

int emoe_moe_branch_tokens(const struct emoe_moe_branch *b)
{
    return b->N;
}

const float *emoe_moe_branch_probs(const struct emoe_moe_branch *b)
{
    return b->p;
}

const int32_t *emoe_moe_branch_choices(const struct emoe_moe_branch *b, int *k)
{
    if (k)
        *k = b->k;
    return b->choice;
}

const int32_t *emoe_moe_branch_top1(const struct emoe_moe_branch *b)
{
    return b->top1;
}

/* Buffers for N tokens and A rows. */
static int reserve_tokens(struct emoe_moe_branch *b, size_t N, struct emoe_error *err)
{
    size_t D = (size_t)b->D, E = (size_t)b->E, k = (size_t)b->k, nd, ne, nk;
    if (emoe_size_mul(&nd, N, D) || emoe_size_mul(&ne, N, E) || emoe_size_mul(&nk, N, k) ||
        nk > INT32_MAX)
        return emoe_error_set(err, EMOE_ERANGE, "branch: %zu tokens overflow", N);
    if (N <= b->cap_n && b->h)
        return EMOE_OK;
    size_t c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0, c8 = 0, c9 = 0;
    int rc = moe_grow((void **)&b->h, &c1, nd, sizeof(float), err);
    c1 = 0;
    if (!rc)
        rc = moe_grow((void **)&b->acc, &c1, nd, sizeof(float), err);
    c1 = 0;
    if (!rc)
        rc = moe_grow((void **)&b->dh, &c1, nd, sizeof(float), err);
    if (!rc)
        rc = moe_grow((void **)&b->p, &c2, ne, sizeof(float), err);
    if (!rc)
        rc = moe_grow((void **)&b->dp, &c3, ne, sizeof(float), err);
    if (!rc)
        rc = moe_grow((void **)&b->elig, &c4, ne, 1, err);
    if (!rc)
        rc = moe_grow((void **)&b->choice, &c5, nk, sizeof(int32_t), err);
    if (!rc)
        rc = moe_grow((void **)&b->row, &c6, nk, sizeof(int32_t), err);
    if (!rc)
        rc = moe_grow((void **)&b->top1, &c7, N, sizeof(int32_t), err);
    if (!rc)
        rc = moe_grow((void **)&b->offset, &c8, E + 1, sizeof(int64_t), err);
    (void)c9;
    if (rc)
        return rc;
    b->cap_n = N;
    return EMOE_OK;
}

static int reserve_rows(struct emoe_moe_branch *b, size_t A, struct emoe_error *err)
{
    size_t D = (size_t)b->D, F = (size_t)b->F, ad, af;
    if (emoe_size_mul(&ad, A, D) || emoe_size_mul(&af, A, F))
        return emoe_error_set(err, EMOE_ERANGE, "branch: %zu rows overflow", A);
    if (A <= b->cap_a && b->xg)
        return EMOE_OK;
    size_t c = 0;
    int rc = moe_grow((void **)&b->row_tok, &c, A, sizeof(int32_t), err);
    c = 0;
    if (!rc)
        rc = moe_grow((void **)&b->row_w, &c, A, sizeof(float), err);
    float **bd[] = {&b->xg, &b->yg, &b->dyg};
    float **bf[] = {&b->act, &b->gel, &b->dgel};
    for (int i = 0; i < 3 && !rc; i++) {
        c = 0;
        rc = moe_grow((void **)bd[i], &c, ad, sizeof(float), err);
        c = 0;
        if (!rc)
            rc = moe_grow((void **)bf[i], &c, af, sizeof(float), err);
    }
    if (rc)
        return rc;
    b->cap_a = A;
    return EMOE_OK;
}

/* Top-k of p over eligible experts (ties: lowest index), then top1. */
static void select_experts(struct emoe_moe_branch *b)
{
    int N = b->N, E = b->E, k = b->k;
    for (int n = 0; n < N; n++) {
        const float *p = b->p + (size_t)n * E;
        const unsigned char *el = b->use_elig ? b->elig + (size_t)n * E : NULL;
        int32_t *ch = b->choice + (size_t)n * k;
        if (b->soft) {
            int best = 0;
            for (int e = 0; e < E; e++) {
                ch[e] = e;
                if (p[e] > p[best])
                    best = e;
            }
            b->top1[n] = best;
            continue;
        }
        int any = 0;
        if (el)
            for (int e = 0; e < E && !any; e++)
                any = el[e] != 0;
        if (!any)
            el = NULL; /* no eligible expert: all are */
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                if (el && !el[e])
                    continue;
                int taken = 0;
                for (int i = 0; i < j; i++)
                    taken |= ch[i] == e;
                if (taken)
                    continue;
                if (best < 0 || p[e] > p[best])
                    best = e;
            }
            ch[j] = best; /* -1 when fewer than k experts are eligible */
        }
        b->top1[n] = ch[0];
    }
}

/* Capacity, the counting sort by expert and the row weights. */
static void dispatch(struct emoe_moe_branch *b, int64_t *count)
{
    int N = b->N, E = b->E, k = b->k;
    int64_t cap = INT64_MAX;
    if (b->cfg.capacity > 0.0f && !b->soft)
        cap = (int64_t)ceil((double)N * k * b->cfg.capacity / E);
    memset(count, 0, (size_t)E * sizeof *count);
    b->dropped = 0;
    for (int j = 0; j < k; j++)
        for (int n = 0; n < N; n++) {
            int32_t e = b->choice[(size_t)n * k + j];
            int32_t *r = &b->row[(size_t)n * k + j];
            if (e < 0) {
                *r = -1;
            } else if (count[e] >= cap) {
                *r = -1;
                b->dropped++;
            } else {
                count[e]++;
                *r = 0; /* accepted; numbered below */
            }
        }
    b->offset[0] = 0;
    for (int e = 0; e < E; e++)
        b->offset[e + 1] = b->offset[e] + count[e];
    b->A = (int)b->offset[E];
    memcpy(count, b->offset, (size_t)E * sizeof *count); /* cursors */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) {
            size_t i = (size_t)n * k + j;
            if (b->row[i] < 0)
                continue;
            int32_t e = b->choice[i];
            int64_t r = count[e]++;
            b->row[i] = (int32_t)r;
            b->row_tok[r] = n;
            b->row_w[r] = b->p[(size_t)n * E + e];
        }
}

struct rows_ctx {
    struct emoe_moe_branch *b;
    const float *dy;        /* backward: [N, D] gradient of the output */
    double *dalpha_part;    /* [chunks] */
    float alpha;
    float *x;               /* forward: [B, T, D] the block output, routed rows replaced */
};

/* Routed token n of the branch is row (n / Tr) T + first + n % Tr of x [B, T, D]. */
static size_t token_row(const struct emoe_moe_branch *b, size_t n)
{
    size_t Tr = (size_t)(b->T - b->first);
    return (n / Tr) * (size_t)b->T + (size_t)b->first + n % Tr;
}

/* h rows of one chunk of tokens from x. */
static void copy_in_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    struct emoe_moe_branch *b = c->b;
    size_t D = (size_t)b->D, n0 = item * CHUNK_ROWS, n1 = n0 + CHUNK_ROWS;
    if (n1 > (size_t)b->N)
        n1 = (size_t)b->N;
    for (size_t n = n0; n < n1; n++)
        memcpy(b->h + n * D, c->x + token_row(b, n) * D, D * sizeof(float));
}

static void gather_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    struct emoe_moe_branch *b = c->b;
    size_t D = (size_t)b->D, r0 = item * CHUNK_ROWS, r1 = r0 + CHUNK_ROWS;
    if (r1 > (size_t)b->A)
        r1 = (size_t)b->A;
    for (size_t r = r0; r < r1; r++)
        memcpy(b->xg + r * D, b->h + (size_t)b->row_tok[r] * D, D * sizeof(float));
}

/* acc_n = sum over n's rows of w * yg, and the output row x = h + alpha acc. */
static void combine_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    struct emoe_moe_branch *b = c->b;
    size_t D = (size_t)b->D, k = (size_t)b->k, n0 = item * CHUNK_ROWS, n1 = n0 + CHUNK_ROWS;
    if (n1 > (size_t)b->N)
        n1 = (size_t)b->N;
    float alpha = c->alpha;
    for (size_t n = n0; n < n1; n++) {
        float *acc = b->acc + n * D;
        memset(acc, 0, D * sizeof *acc);
        for (size_t j = 0; j < k; j++) {
            int32_t r = b->row[n * k + j];
            if (r < 0)
                continue;
            float w = b->row_w[r];
            const float *y = b->yg + (size_t)r * D;
            for (size_t d = 0; d < D; d++)
                acc[d] += w * y[d];
        }
        float *xo = c->x + token_row(b, n) * D;
        const float *h = b->h + n * D;
        for (size_t d = 0; d < D; d++)
            xo[d] = h[d] + alpha * acc[d];
    }
}

/* Backward, per token: dalpha part, dp, dyg rows = alpha w dy, dh = dy. */
static void unscatter_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    struct emoe_moe_branch *b = c->b;
    size_t D = (size_t)b->D, E = (size_t)b->E, k = (size_t)b->k;
    size_t n0 = item * CHUNK_ROWS, n1 = n0 + CHUNK_ROWS;
    if (n1 > (size_t)b->N)
        n1 = (size_t)b->N;
    double da = 0.0;
    for (size_t n = n0; n < n1; n++) {
        const float *dy = c->dy + n * D, *acc = b->acc + n * D;
        float s = 0.0f;
        for (size_t d = 0; d < D; d++)
            s += dy[d] * acc[d];
        da += s;
        memcpy(b->dh + n * D, dy, D * sizeof(float));
        float *dp = b->dp + n * E;
        memset(dp, 0, E * sizeof *dp);
        for (size_t j = 0; j < k; j++) {
            int32_t r = b->row[n * k + j];
            if (r < 0)
                continue;
            const float *y = b->yg + (size_t)r * D;
            float *dyg = b->dyg + (size_t)r * D, aw = c->alpha * b->row_w[r], t = 0.0f;
            for (size_t d = 0; d < D; d++) {
                t += dy[d] * y[d];
                dyg[d] = aw * dy[d];
            }
            dp[b->choice[n * k + j]] += c->alpha * t;
        }
    }
    c->dalpha_part[item] = da;
}

/* dh_n += sum over n's rows of dxg (held in dyg after the experts' backward). */
static void scatter_back_item(void *vctx, size_t item)
{
    struct rows_ctx *c = vctx;
    struct emoe_moe_branch *b = c->b;
    size_t D = (size_t)b->D, k = (size_t)b->k, n0 = item * CHUNK_ROWS, n1 = n0 + CHUNK_ROWS;
    if (n1 > (size_t)b->N)
        n1 = (size_t)b->N;
    for (size_t n = n0; n < n1; n++) {
        float *dh = b->dh + n * D;
        for (size_t j = 0; j < k; j++) {
            int32_t r = b->row[n * k + j];
            if (r < 0)
                continue;
            const float *dx = b->dyg + (size_t)r * D;
            for (size_t d = 0; d < D; d++)
                dh[d] += dx[d];
        }
    }
}

static int check_dims(const struct emoe_moe_branch *b, int B, int T, int D,
                      struct emoe_error *err)
{
    if (D != b->D)
        return emoe_error_set(err, EMOE_EINVAL, "branch %d: width %d, expected %d", b->index,
                              D, b->D);
    if (B < 0 || T < 1 || (b->cfg.patches_only && T < 2))
        return emoe_error_set(err, EMOE_EINVAL, "branch %d: bad batch shape (%d, %d)",
                              b->index, B, T);
    return EMOE_OK;
}

int emoe_moe_branch_forward(struct emoe_moe_branch *b, float *x, int B, int T, int D,
                            int train, struct emoe_error *err)
{
    int rc = check_dims(b, B, T, D, err);
    if (rc)
        return rc;
    int first = b->cfg.patches_only ? 1 : 0, Tr = T - first;
    size_t N = (size_t)B * Tr;
    if (N > INT32_MAX / (size_t)(b->k > 0 ? b->k : 1))
        return emoe_error_set(err, EMOE_ERANGE, "branch %d: %zu tokens", b->index, N);
    rc = reserve_tokens(b, N, err);
    if (rc)
        return rc;
    b->B = B;
    b->T = T;
    b->first = first;
    b->N = (int)N;
    b->train = train;
    b->have_acts = 0;
    b->use_elig = 0;
    b->A = 0;
    size_t Dz = (size_t)D;
    struct rows_ctx c = {b, NULL, NULL, b->slots[b->slot_alpha].data[0], x};
    run((N + CHUNK_ROWS - 1) / CHUNK_ROWS, N * Dz, copy_in_item, &c);
    b->extra_loss = 0.0;
    memset(b->loss_terms, 0, sizeof b->loss_terms);
    rc = b->ops->forward(b, train, err);
    if (rc)
        return rc;
    select_experts(b);
    int64_t *count = malloc((size_t)b->E * sizeof *count);
    if (!count)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    size_t A = N * (size_t)b->k;
    rc = reserve_rows(b, A, err);
    if (rc) {
        free(count);
        return rc;
    }
    dispatch(b, count);
    free(count);
    if (b->ops->after_select)
        b->ops->after_select(b);
    run(((size_t)b->A + CHUNK_ROWS - 1) / CHUNK_ROWS, (size_t)b->A * Dz, gather_item, &c);
    int F = b->F;
    for (int e = 0; e < b->E; e++) {
        int64_t o = b->offset[e], ne = b->offset[e + 1] - o;
        if (ne == 0)
            continue;
        float *act = b->act + o * F, *gel = b->gel + o * F;
        emoe_linear_forward(act, b->xg + o * D, b->down_w[e], NULL, (int)ne, D, F);
        emoe_gelu_forward(gel, act, (size_t)ne * F);
        emoe_linear_forward(b->yg + o * D, gel, b->up_w[e], NULL, (int)ne, F, D);
    }
    run((N + CHUNK_ROWS - 1) / CHUNK_ROWS, N * Dz, combine_item, &c);
    if (!isfinite(b->extra_loss)) {
        for (int t = 0; t < EMOE_LOSS_TERMS; t++)
            if (!isfinite(b->loss_terms[t]))
                return emoe_error_set(err, EMOE_ENUMERIC, "branch %d: the %s is not finite",
                                      b->index, emoe_loss_term_description(t));
        return emoe_error_set(err, EMOE_ENUMERIC, "branch %d: extra loss is not finite",
                              b->index);
    }
    b->have_acts = 1;
    return EMOE_OK;
}

int emoe_moe_branch_backward(struct emoe_moe_branch *b, float *dx, int B, int T, int D,
                             struct emoe_error *err)
{
    int rc = check_dims(b, B, T, D, err);
    if (rc)
        return rc;
    if (B != b->B || T != b->T || !b->have_acts)
        return emoe_error_set(err, EMOE_EINVAL,
                              "branch %d: backward shape (%d, %d) differs from forward", b->index,
                              B, T);
    int first = b->first, Tr = T - first;
    size_t N = (size_t)b->N, Dz = (size_t)D;
    /* dy of the routed tokens: gather into dh's place via acc-sized copy in dxg form. */
    float *dy = malloc(N * Dz * sizeof *dy);
    size_t nchunks = (N + CHUNK_ROWS - 1) / CHUNK_ROWS;
    double *part = malloc((nchunks ? nchunks : 1) * sizeof *part);
    if (!dy || !part) {
        free(dy);
        free(part);
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    }
    for (int i = 0; i < B; i++)
        memcpy(dy + (size_t)i * Tr * Dz, dx + ((size_t)i * T + first) * Dz,
               (size_t)Tr * Dz * sizeof(float));
    struct moe_slot *sa = &b->slots[b->slot_alpha];
    struct rows_ctx c = {b, dy, part, sa->data[0], NULL};
    run(nchunks, N * Dz, unscatter_item, &c);
    if (sa->grad) {
        double da = 0.0;
        for (size_t i = 0; i < nchunks; i++)
            da += part[i];
        sa->grad[0] += (float)da;
    }
    int F = b->F;
    for (int e = 0; e < b->E; e++) {
        int64_t o = b->offset[e], ne = b->offset[e + 1] - o;
        if (ne == 0)
            continue;
        float *act = b->act + o * F, *gel = b->gel + o * F, *dgel = b->dgel + o * F;
        float *dyg = b->dyg + o * D, *xg = b->xg + o * D;
        size_t nf = (size_t)ne * F;
        memset(dgel, 0, nf * sizeof *dgel);
        emoe_linear_backward(dgel, b->up_g[e], NULL, dyg, gel, b->up_w[e], (int)ne, F, D);
        memset(gel, 0, nf * sizeof *gel); /* now d(act) */
        emoe_gelu_backward(gel, dgel, act, nf);
        memset(dyg, 0, (size_t)ne * Dz * sizeof *dyg); /* now d(xg) */
        emoe_linear_backward(dyg, b->down_g[e], NULL, gel, xg, b->down_w[e], (int)ne, D, F);
    }
    if (b->ops->experts_backward)
        b->ops->experts_backward(b);
    run(nchunks, N * Dz, scatter_back_item, &c);
    rc = b->ops->backward(b, b->dp, b->dh, err);
    if (!rc)
        for (int i = 0; i < B; i++)
            memcpy(dx + ((size_t)i * T + first) * Dz, b->dh + (size_t)i * Tr * Dz,
                   (size_t)Tr * Dz * sizeof(float));
    free(dy);
    free(part);
    /* The activations were overwritten: a second backward needs a new forward. */
    b->have_acts = 0;
    return rc;
}

/* ---------------------------------------------------------- statistics */

void emoe_routing_summarize(const int64_t *counts, int E, int64_t assignments, int64_t dropped,
                            struct emoe_routing_summary *s)
{
    memset(s, 0, sizeof *s);
    s->experts = E;
    s->assignments = assignments;
    s->dropped = dropped;
    s->dropped_frac = assignments > 0 ? (double)dropped / (double)assignments : 0.0;
    int64_t tot = 0;
    for (int e = 0; e < E; e++) {
        tot += counts[e];
        s->unused += counts[e] == 0;
    }
    s->tokens = tot;
    if (tot <= 0 || E <= 0)
        return;
    double mean = 1.0 / E, var = 0.0, h = 0.0, mx = 0.0, mn = 1.0;
    for (int e = 0; e < E; e++) {
        double p = (double)counts[e] / (double)tot;
        var += (p - mean) * (p - mean);
        if (p > 0.0)
            h -= p * log(p);
        if (p > mx)
            mx = p;
        if (p < mn)
            mn = p;
    }
    var /= E;
    s->cv = sqrt(var) / mean;
    s->entropy = E > 1 ? h / log((double)E) : 1.0;
    s->peak = mx * E;
    s->min_share = mn;
}

void emoe_moe_branch_stats(const struct emoe_moe_branch *b, int64_t *counts,
                           struct emoe_routing_summary *s)
{
    memset(counts, 0, (size_t)b->E * sizeof *counts);
    int64_t assign = 0;
    for (int n = 0; n < b->N; n++) {
        if (b->top1[n] >= 0)
            counts[b->top1[n]]++;
        for (int j = 0; j < b->k; j++)
            assign += b->choice[(size_t)n * b->k + j] >= 0;
    }
    if (s)
        emoe_routing_summarize(counts, b->E, assign, b->dropped, s);
}

/* ------------------------------------------------- eigenbasis from data */

int emoe_moe_branch_cov_add(struct emoe_moe_branch *b, const float *x, int B, int T, int D,
                            struct emoe_error *err)
{
    int rc = check_dims(b, B, T, D, err);
    if (rc)
        return rc;
    if (!moe_find_slot(b, "router.basis.Q"))
        return emoe_error_set(err, EMOE_EINVAL,
                              "branch %d: router '%s' has no eigenbasis Q", b->index,
                              b->ops->name);
    size_t DD = (size_t)D * D;
    if (!b->cov) {
        b->cov = emoe_alloc_aligned(DD * sizeof *b->cov);
        if (!b->cov)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        memset(b->cov, 0, DD * sizeof *b->cov);
        b->cov_tokens = 0;
    }
    float *tmp = calloc(DD, sizeof *tmp);
    if (!tmp)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    int first = b->cfg.patches_only ? 1 : 0, Tr = T - first;
    for (int i = 0; i < B; i++) /* upper triangle (row-major) of sum h h^T */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, D, Tr, 1.0f,
                    x + ((size_t)i * T + first) * D, D, 1.0f, tmp, D);
    for (int i = 0; i < D; i++)
        for (int j = i; j < D; j++)
            b->cov[(size_t)i * D + j] += tmp[(size_t)i * D + j];
    b->cov_tokens += (int64_t)B * Tr;
    free(tmp);
    return EMOE_OK;
}

int emoe_moe_branch_cov_apply(struct emoe_moe_branch *b, struct emoe_error *err)
{
    struct moe_slot *sq = moe_find_slot(b, "router.basis.Q");
    if (!sq)
        return emoe_error_set(err, EMOE_EINVAL,
                              "branch %d: router '%s' has no eigenbasis Q", b->index,
                              b->ops->name);
    if (!b->cov || b->cov_tokens <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "branch %d: no tokens for the covariance",
                              b->index);
    int D = b->D, r = b->r, il = D - r + 1, iu = D, m = 0, info = 0, lwork = -1,
        liwork = -1, iwq = 0;
    float vl = 0.0f, vu = 0.0f, abstol = 0.0f, wq = 0.0f;
    size_t DD = (size_t)D * D;
    float *a = malloc((DD + (size_t)D + DD) * sizeof *a);
    int *isuppz = malloc(2 * (size_t)D * sizeof *isuppz);
    float *work = NULL;
    int *iwork = NULL;
    int rc = EMOE_OK;
    if (!a || !isuppz) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    float *w = a + DD, *z = w + D;
    double inv = 1.0 / (double)b->cov_tokens;
    for (int i = 0; i < D; i++)
        for (int j = i; j < D; j++) {
            float v = (float)(b->cov[(size_t)i * D + j] * inv);
            a[(size_t)i * D + j] = v;
            a[(size_t)j * D + i] = v;
        }
    ssyevr_("V", "I", "U", &D, a, &D, &vl, &vu, &il, &iu, &abstol, &m, w, z, &D, isuppz, &wq,
            &lwork, &iwq, &liwork, &info, 1, 1, 1);
    lwork = (int)wq + 1;
    liwork = iwq + 1;
    work = malloc((size_t)lwork * sizeof *work);
    iwork = malloc((size_t)liwork * sizeof *iwork);
    if (!work || !iwork) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto done;
    }
    ssyevr_("V", "I", "U", &D, a, &D, &vl, &vu, &il, &iu, &abstol, &m, w, z, &D, isuppz, work,
            &lwork, iwork, &liwork, &info, 1, 1, 1);
    if (info != 0 || m != r) {
        rc = emoe_error_set(err, EMOE_ENUMERIC,
                            "branch %d: eigen decomposition failed (LAPACK info %d, %d of %d)",
                            b->index, info, m, r);
        goto done;
    }
    /* z column c (column-major) has the c-th smallest of the r eigenvalues. */
    for (int j = 0; j < r; j++) {
        const float *v = z + (size_t)(r - 1 - j) * D;
        int imax = 0;
        for (int i = 1; i < D; i++)
            if (fabsf(v[i]) > fabsf(v[imax]))
                imax = i;
        float sgn = v[imax] < 0.0f ? -1.0f : 1.0f;
        for (int i = 0; i < D; i++)
            sq->data[(size_t)i * r + j] = sgn * v[i];
    }
    emoe_free_aligned(b->cov);
    b->cov = NULL;
    b->cov_tokens = 0;
done:
    free(a);
    free(isuppz);
    free(work);
    free(iwork);
    return rc;
}

/* ------------------------------------------------------ in a model */

struct emoe_moe {
    struct emoe_moe_config cfg;
    struct emoe_model *m;
    int depth, L, E;
    int *blocks;                /* [L] block index of each branch */
    int *layer_of;              /* [depth] branch of each block, -1 */
    struct emoe_moe_branch **br; /* [L] */
    int64_t *acc_counts;        /* [L, E] accumulated top-1 counts */
    int64_t *acc_assign, *acc_dropped; /* [L] */
    int K;                      /* classes of class_counts (0 until the first labels) */
    float *class_counts;        /* [L, E, K] */
    int64_t train_forwards;     /* training forwards seen (eigenbasis refresh) */
    int collecting;             /* emoe_moe_cov_begin .. _end */
    unsigned char *pending;     /* [L] a collected basis waits for the next forward */
};

/* Build the (unbound) branches of c for a model of width D and depth. */
static int make_branches(const struct emoe_moe_config *c, int D, int depth, int **blocks,
                         int *L, struct emoe_moe_branch ***br, struct emoe_error *err)
{
    *blocks = NULL;
    *br = NULL;
    *L = 0;
    int rc = emoe_moe_config_check(c, D, depth, err);
    if (rc || c->router == EMOE_ROUTER_NONE)
        return rc;
    int *idx = malloc((size_t)depth * sizeof *idx), n = 0;
    if (!idx)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    rc = emoe_moe_parse_blocks(c->blocks, depth, idx, &n, err);
    struct emoe_moe_branch **b = rc ? NULL : calloc((size_t)n, sizeof *b);
    if (!rc && !b)
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++)
        rc = branch_create(c, D, idx[i], &b[i], err);
    if (rc) {
        if (b)
            for (int i = 0; i < n; i++)
                emoe_moe_branch_free(b[i]);
        free(b);
        free(idx);
        return rc;
    }
    *blocks = idx;
    *br = b;
    *L = n;
    return EMOE_OK;
}

int emoe_moe_param_specs(const struct emoe_moe_config *c, int D, int depth,
                         struct emoe_param_spec **specs, size_t *n, struct emoe_error *err)
{
    *specs = NULL;
    *n = 0;
    int *blocks, L;
    struct emoe_moe_branch **br;
    int rc = make_branches(c, D, depth, &blocks, &L, &br, err);
    if (rc)
        return rc;
    size_t total = 0;
    for (int l = 0; l < L; l++)
        total += br[l]->nslots;
    struct emoe_param_spec *s = calloc(total ? total : 1, sizeof *s);
    if (!s)
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    size_t k = 0;
    for (int l = 0; l < L && !rc; l++)
        for (size_t i = 0; i < br[l]->nslots; i++, k++) {
            const struct moe_slot *sl = &br[l]->slots[i];
            snprintf(s[k].name, sizeof s[k].name, "branches.%d.%s", blocks[l], sl->name);
            s[k].ndim = sl->ndim;
            for (int d = 0; d < sl->ndim; d++)
                s[k].shape[d] = sl->shape[d];
            s[k].flags = sl->no_decay ? EMOE_PARAM_NO_DECAY : 0;
        }
    for (int l = 0; l < L; l++)
        emoe_moe_branch_free(br[l]);
    free(br);
    free(blocks);
    if (rc) {
        free(s);
        return rc;
    }
    *specs = s;
    *n = total;
    return EMOE_OK;
}

/* Re-read the model's param pointers (freezing lays the gradient arena out again). */
static void branch_sync(struct emoe_moe_branch *b)
{
    if (!b->bound)
        return;
    for (size_t i = 0; i < b->nslots; i++) {
        b->slots[i].data = b->bound[i]->data;
        b->slots[i].grad = b->bound[i]->grad;
    }
    branch_sync_experts(b);
}

static void stats_accumulate(struct emoe_moe *moe, int l)
{
    struct emoe_moe_branch *b = moe->br[l];
    int64_t *acc = moe->acc_counts + (size_t)l * moe->E;
    int64_t assign = 0;
    for (int n = 0; n < b->N; n++) {
        if (b->top1[n] >= 0)
            acc[b->top1[n]]++;
        for (int j = 0; j < b->k; j++)
            assign += b->choice[(size_t)n * b->k + j] >= 0;
    }
    moe->acc_assign[l] += assign;
    moe->acc_dropped[l] += b->dropped;
}

static int hook_forward(void *ctx, int block, float *x, int B, int T, int D, int train,
                        struct emoe_error *err)
{
    struct emoe_moe *moe = ctx;
    if (block < 0 || block >= moe->depth || moe->layer_of[block] < 0)
        return EMOE_OK;
    int l = moe->layer_of[block], rc;
    struct emoe_moe_branch *b = moe->br[l];
    branch_sync(b);
    /* Automatic eigenbasis: training forwards phase 0..M-1 (of every refresh period)
     * collect; the new Q takes effect at the branch's next forward, so the backward
     * of the last collecting batch still sees the Q its forward used. */
    int M = moe->cfg.eigen_batches, R = moe->cfg.eigen_refresh;
    int64_t phase = R > 0 ? moe->train_forwards % R : moe->train_forwards;
    int auto_cov = train && M > 0 && phase < M;
    if (moe->pending[l]) {
        moe->pending[l] = 0;
        if ((rc = emoe_moe_branch_cov_apply(b, err)))
            return rc;
    }
    if (moe->collecting || auto_cov) {
        if ((rc = emoe_moe_branch_cov_add(b, x, B, T, D, err)))
            return rc;
        if (auto_cov && phase == M - 1)
            moe->pending[l] = 1;
    }
    if ((rc = emoe_moe_branch_forward(b, x, B, T, D, train, err)))
        return rc;
    stats_accumulate(moe, l);
    if (train && l == moe->L - 1)
        moe->train_forwards++;
    return EMOE_OK;
}

static int hook_backward(void *ctx, int block, float *dx, int B, int T, int D,
                         struct emoe_error *err)
{
    struct emoe_moe *moe = ctx;
    if (block < 0 || block >= moe->depth || moe->layer_of[block] < 0)
        return EMOE_OK;
    struct emoe_moe_branch *b = moe->br[moe->layer_of[block]];
    branch_sync(b);
    return emoe_moe_branch_backward(b, dx, B, T, D, err);
}

static double hook_extra_loss(void *ctx)
{
    struct emoe_moe *moe = ctx;
    double s = 0.0;
    for (int l = 0; l < moe->L; l++)
        s += moe->br[l]->extra_loss;
    return s;
}

int emoe_moe_new(const struct emoe_moe_config *c, struct emoe_model *m, struct emoe_moe **out,
                 struct emoe_error *err)
{
    *out = NULL;
    const struct emoe_vit_config *vc = emoe_model_config(m);
    struct emoe_moe *moe = calloc(1, sizeof *moe);
    if (!moe)
        return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
    moe->cfg = *c;
    moe->m = m;
    moe->depth = vc->depth;
    moe->E = c->experts;
    int rc = make_branches(c, vc->embed_dim, vc->depth, &moe->blocks, &moe->L, &moe->br, err);
    if (rc)
        goto fail;
    moe->layer_of = malloc((size_t)moe->depth * sizeof *moe->layer_of);
    size_t le = (size_t)moe->L * (moe->E > 0 ? moe->E : 1);
    moe->acc_counts = calloc(le ? le : 1, sizeof *moe->acc_counts);
    moe->acc_assign = calloc((size_t)moe->L + 1, sizeof *moe->acc_assign);
    moe->acc_dropped = calloc((size_t)moe->L + 1, sizeof *moe->acc_dropped);
    moe->pending = calloc((size_t)moe->L + 1, 1);
    if (!moe->layer_of || !moe->acc_counts || !moe->acc_assign || !moe->acc_dropped ||
        !moe->pending) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < moe->depth; i++)
        moe->layer_of[i] = -1;
    uint64_t seed = c->seed ? c->seed : emoe_model_seed(m);
    for (int l = 0; l < moe->L; l++) {
        struct emoe_moe_branch *b = moe->br[l];
        moe->layer_of[moe->blocks[l]] = l;
        b->bound = calloc(b->nslots, sizeof *b->bound);
        if (!b->bound) {
            rc = emoe_error_set(err, EMOE_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < b->nslots; i++) {
            char name[128];
            snprintf(name, sizeof name, "branches.%d.%s", b->index, b->slots[i].name);
            struct emoe_param *p = emoe_model_param(m, name);
            if (!p) {
                rc = emoe_error_set(err, EMOE_ENOTFOUND,
                                    "model has no parameter '%s' (create it with the specs "
                                    "of emoe_moe_param_specs)", name);
                goto fail;
            }
            if (p->numel != b->slots[i].numel) {
                rc = emoe_error_set(err, EMOE_EINVAL,
                                    "parameter '%s' has %zu elements, expected %zu", name,
                                    p->numel, b->slots[i].numel);
                goto fail;
            }
            b->bound[i] = p;
        }
        branch_sync(b);
        /* noise of training forward 0 (emoe_moe_branch_set_train_forwards) */
        emoe_rng_init(&b->rng, emoe_seed_derive(seed, 0x6e6f697365ull /* "noise" */),
                      (uint64_t)b->index);
        if ((rc = branch_bind(b, err)) || (rc = branch_init_params(b, seed, err)))
            goto fail;
    }
    if (moe->L > 0) {
        struct emoe_block_hook h = {moe, hook_forward, hook_backward, hook_extra_loss};
        emoe_model_set_block_hook(m, &h);
    }
    *out = moe;
    return EMOE_OK;
fail:
    emoe_moe_free(moe);
    return rc;
}

void emoe_moe_free(struct emoe_moe *moe)
{
    if (!moe)
        return;
    if (moe->m && moe->L > 0)
        emoe_model_set_block_hook(moe->m, NULL);
    for (int l = 0; l < moe->L && moe->br; l++)
        emoe_moe_branch_free(moe->br[l]);
    free(moe->br);
    free(moe->blocks);
    free(moe->layer_of);
    free(moe->acc_counts);
    free(moe->acc_assign);
    free(moe->acc_dropped);
    free(moe->pending);
    free(moe->class_counts);
    free(moe);
}

int emoe_moe_layers(const struct emoe_moe *moe)
{
    return moe->L;
}

int emoe_moe_layer_block(const struct emoe_moe *moe, int l)
{
    return l >= 0 && l < moe->L ? moe->blocks[l] : -1;
}

struct emoe_moe_branch *emoe_moe_layer_branch(struct emoe_moe *moe, int l)
{
    return l >= 0 && l < moe->L ? moe->br[l] : NULL;
}

/* The router noise of training forward n comes from the Philox stream (key,
 * index + n * 2^32) read from its start (router_softmax.c), so it depends only on
 * (seed, branch, n): b->rng holds the stream of the next training forward. */
void emoe_moe_branch_set_train_forwards(struct emoe_moe_branch *b, int64_t n)
{
    b->rng.stream = (uint64_t)(uint32_t)b->index | (uint64_t)n << 32;
    b->rng.pos = 0;
}

void emoe_moe_set_train_forwards(struct emoe_moe *moe, int64_t n)
{
    moe->train_forwards = n;
    for (int l = 0; l < moe->L; l++)
        emoe_moe_branch_set_train_forwards(moe->br[l], n);
}

void emoe_moe_stats_reset(struct emoe_moe *moe)
{
    size_t le = (size_t)moe->L * moe->E;
    if (le)
        memset(moe->acc_counts, 0, le * sizeof *moe->acc_counts);
    memset(moe->acc_assign, 0, (size_t)moe->L * sizeof *moe->acc_assign);
    memset(moe->acc_dropped, 0, (size_t)moe->L * sizeof *moe->acc_dropped);
    if (moe->class_counts)
        memset(moe->class_counts, 0, le * moe->K * sizeof *moe->class_counts);
}

int emoe_moe_layer_stats(const struct emoe_moe *moe, int l, int accumulated, int64_t *counts,
                         struct emoe_routing_summary *s, struct emoe_error *err)
{
    if (l < 0 || l >= moe->L)
        return emoe_error_set(err, EMOE_EINVAL, "MoE layer %d out of range (%d layers)", l,
                              moe->L);
    if (!accumulated) {
        emoe_moe_branch_stats(moe->br[l], counts, s);
        return EMOE_OK;
    }
    memcpy(counts, moe->acc_counts + (size_t)l * moe->E, (size_t)moe->E * sizeof *counts);
    if (s)
        emoe_routing_summarize(counts, moe->E, moe->acc_assign[l], moe->acc_dropped[l], s);
    return EMOE_OK;
}

int emoe_moe_stats_add_labels(struct emoe_moe *moe, const int32_t *labels, int B, int K,
                              struct emoe_error *err)
{
    if (moe->L == 0)
        return EMOE_OK;
    if (K <= 0 || (moe->K && K != moe->K))
        return emoe_error_set(err, EMOE_EINVAL, "class counts: %d classes, expected %d", K,
                              moe->K);
    if (!moe->class_counts) {
        size_t n;
        if (emoe_size_mul(&n, (size_t)moe->L * moe->E, (size_t)K))
            return emoe_error_set(err, EMOE_ERANGE, "class counts: %d classes", K);
        moe->class_counts = calloc(n, sizeof *moe->class_counts);
        if (!moe->class_counts)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        moe->K = K;
    }
    for (int l = 0; l < moe->L; l++) {
        const struct emoe_moe_branch *b = moe->br[l];
        if (b->N <= 0)
            continue;
        if (b->B != B)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "class counts: %d labels for a batch of %d", B, b->B);
        int per = b->N / B;
        for (int n = 0; n < b->N; n++) {
            int32_t y = labels[n / per], e = b->top1[n];
            if (y < 0 || y >= K)
                return emoe_error_set(err, EMOE_EINVAL, "class counts: label %d out of range "
                                      "(%d classes)", (int)y, K);
            if (e >= 0)
                moe->class_counts[((size_t)l * moe->E + e) * K + y] += 1.0f;
        }
    }
    return EMOE_OK;
}

const float *emoe_moe_class_counts(const struct emoe_moe *moe, int *K)
{
    if (K)
        *K = moe->K;
    return moe->class_counts;
}

void emoe_moe_cov_begin(struct emoe_moe *moe)
{
    for (int l = 0; l < moe->L; l++) {
        emoe_free_aligned(moe->br[l]->cov);
        moe->br[l]->cov = NULL;
        moe->br[l]->cov_tokens = 0;
    }
    moe->collecting = 1;
    memset(moe->pending, 0, (size_t)moe->L);
}

int emoe_moe_cov_end(struct emoe_moe *moe, struct emoe_error *err)
{
    moe->collecting = 0;
    for (int l = 0; l < moe->L; l++) {
        struct emoe_moe_branch *b = moe->br[l];
        branch_sync(b);
        int rc = emoe_moe_branch_cov_apply(b, err);
        if (rc)
            return rc;
    }
    return EMOE_OK;
}

/* ------------------------------------------------- checkpoint metadata */

int emoe_moe_metadata(const struct emoe_moe_config *c, int depth, struct emoe_moe_meta *out,
                      size_t *n, struct emoe_error *err)
{
    *n = 0;
    memset(out, 0, sizeof *out);
    static const char *const keys[] = {"moe.router", "moe.experts", "moe.rank",
                                       "moe.bottleneck", "moe.top_k", "moe.tau",
                                       "moe.blocks", "moe.patches_only"};
    snprintf(out->text[0], sizeof out->text[0], "%s", emoe_router_name(c->router));
    size_t k = 1;
    if (c->router != EMOE_ROUTER_NONE) {
        int *idx = depth > 0 ? malloc((size_t)depth * sizeof *idx) : NULL, nb;
        if (depth > 0 && !idx)
            return emoe_error_set(err, EMOE_ENOMEM, "out of memory");
        int rc = emoe_moe_parse_blocks(c->blocks, depth, idx, &nb, err);
        if (rc) {
            free(idx);
            return rc;
        }
        snprintf(out->text[1], sizeof out->text[1], "%d", c->experts);
        snprintf(out->text[2], sizeof out->text[2], "%d", c->rank);
        snprintf(out->text[3], sizeof out->text[3], "%d", c->bottleneck);
        snprintf(out->text[4], sizeof out->text[4], "%d", c->top_k);
        snprintf(out->text[5], sizeof out->text[5], "%.9g", (double)c->tau);
        size_t len = 0;
        for (int i = 0; i < nb && len < sizeof out->text[6]; i++)
            len += (size_t)snprintf(out->text[6] + len, sizeof out->text[6] - len, "%s%d",
                                    i ? "," : "", idx[i]);
        free(idx);
        if (len >= sizeof out->text[6])
            return emoe_error_set(err, EMOE_ERANGE, "block list too long for the metadata");
        snprintf(out->text[7], sizeof out->text[7], "%d", c->patches_only ? 1 : 0);
        k = 8;
    }
    for (size_t i = 0; i < k; i++) {
        out->kv[i].key = keys[i];
        out->kv[i].value = out->text[i];
    }
    *n = k;
    return EMOE_OK;
}

static int meta_int(struct emoe_safetensors *st, const char *path, const char *key, long lo,
                    long hi, int *out, struct emoe_error *err)
{
    const char *v = emoe_safetensors_metadata_get(st, key);
    if (!v)
        return EMOE_ENOTFOUND;
    long x = parse_uint(v, v + strlen(v));
    if (x < lo || x > hi)
        return emoe_error_set(err, EMOE_EFORMAT, "%s: metadata '%s': bad value '%s'", path, key,
                              v);
    *out = (int)x;
    return EMOE_OK;
}

/* Shape dimension d of tensor name, or -1. */
static int64_t tensor_dim(struct emoe_safetensors *st, const char *name, int d)
{
    struct emoe_tensor *t;
    struct emoe_error e2;
    if (emoe_safetensors_get(st, name, &t, &e2))
        return -1;
    int64_t v = d < t->ndim ? t->shape[d] : -1;
    emoe_tensor_free(t);
    return v;
}

int emoe_moe_config_from_checkpoint(const char *path, struct emoe_moe_config *c,
                                    struct emoe_error *err)
{
    emoe_moe_config_init(c);
    struct emoe_safetensors *st;
    int rc = emoe_safetensors_open(path, &st, err);
    if (rc)
        return rc;
    /* branch indices and the router kind from the tensor names */
    int blocks[1024], nb = 0, first = -1;
    enum emoe_router_kind kind = EMOE_ROUTER_NONE;
    size_t cnt = emoe_safetensors_count(st);
    for (size_t i = 0; i < cnt; i++) {
        const char *name = emoe_safetensors_name(st, i);
        if (strncmp(name, "model.", 6) == 0)
            name += 6;
        if (strncmp(name, "branches.", 9) != 0)
            continue;
        const char *s = name + 9, *e = strchr(s, '.');
        long bi = e ? parse_uint(s, e) : -1;
        if (bi < 0 || bi >= 1024)
            continue;
        int seen = 0;
        for (int j = 0; j < nb; j++)
            seen |= blocks[j] == (int)bi;
        if (!seen)
            blocks[nb++] = (int)bi;
        if (first < 0 || bi < first)
            first = (int)bi;
        if (strcmp(e, ".router.basis.Q") == 0)
            kind = EMOE_ROUTER_EIGEN;
        else if (strcmp(e, ".router.weight") == 0)
            kind = EMOE_ROUTER_SOFTMAX;
        else if (kind == EMOE_ROUTER_NONE && strstr(e, ".basis") && strstr(e, ".experts."))
            kind = EMOE_ROUTER_ERMOE;
    }
    const char *v = emoe_safetensors_metadata_get(st, "moe.router");
    if (v) {
        if ((rc = emoe_router_from_name(v, &c->router, err))) {
            emoe_error_prefix(err, path);
            goto done;
        }
    } else {
        c->router = kind;
    }
    if (c->router == EMOE_ROUTER_NONE)
        goto done;
    qsort(blocks, (size_t)nb, sizeof *blocks, cmp_int);
    v = emoe_safetensors_metadata_get(st, "moe.blocks");
    if (v) {
        if (strlen(v) >= sizeof c->blocks) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: metadata 'moe.blocks' too long", path);
            goto done;
        }
        strcpy(c->blocks, v);
    } else if (nb > 0) {
        size_t len = 0;
        for (int i = 0; i < nb && len < sizeof c->blocks; i++)
            len += (size_t)snprintf(c->blocks + len, sizeof c->blocks - len, "%s%d",
                                    i ? "," : "", blocks[i]);
        if (len >= sizeof c->blocks) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: too many branches", path);
            goto done;
        }
    } else {
        rc = emoe_error_set(err, EMOE_EFORMAT, "%s: router '%s' but no branch tensors", path,
                            emoe_router_name(c->router));
        goto done;
    }
    /* sizes: metadata first, else the shapes of branch `first` ("model." prefix too) */
    char pre[48], name[128];
    snprintf(pre, sizeof pre, "%sbranches.%d.",
             emoe_safetensors_count(st) && !strncmp(emoe_safetensors_name(st, 0), "model.", 6)
                 ? "model."
                 : "",
             first);
    int64_t dim;
    if ((rc = meta_int(st, path, "moe.experts", 1, 4096, &c->experts, err)) == EMOE_ENOTFOUND) {
        int E = 0;
        for (;; E++) {
            snprintf(name, sizeof name, "%sexperts.%d.%s", pre, E,
                     c->router == EMOE_ROUTER_ERMOE ? "basis" : "down.weight");
            if (tensor_dim(st, name, 0) < 0)
                break;
        }
        c->experts = E > 0 ? E : c->experts;
        rc = EMOE_OK;
    }
    if (rc)
        goto done;
    if ((rc = meta_int(st, path, "moe.rank", 1, 1 << 20, &c->rank, err)) == EMOE_ENOTFOUND) {
        if (c->router == EMOE_ROUTER_EIGEN)
            snprintf(name, sizeof name, "%srouter.basis.Q", pre);
        else
            snprintf(name, sizeof name, "%sexperts.0.basis", pre);
        if ((dim = tensor_dim(st, name, 1)) > 0)
            c->rank = (int)dim;
        rc = EMOE_OK;
    }
    if (rc)
        goto done;
    if ((rc = meta_int(st, path, "moe.bottleneck", 1, 1 << 20, &c->bottleneck, err)) ==
        EMOE_ENOTFOUND) {
        snprintf(name, sizeof name, "%sexperts.0.down.weight", pre);
        if ((dim = tensor_dim(st, name, 0)) > 0)
            c->bottleneck = (int)dim;
        rc = EMOE_OK;
    }
    if (rc)
        goto done;
    if ((rc = meta_int(st, path, "moe.top_k", 0, 4096, &c->top_k, err)) == EMOE_ENOTFOUND)
        rc = EMOE_OK;
    if (rc)
        goto done;
    int po = 1;
    if ((rc = meta_int(st, path, "moe.patches_only", 0, 1, &po, err)) == EMOE_ENOTFOUND)
        rc = EMOE_OK;
    if (rc)
        goto done;
    c->patches_only = po;
    v = emoe_safetensors_metadata_get(st, "moe.tau");
    if (v) {
        char *end;
        double t = strtod(v, &end);
        if (end == v || *end || !(t > 0.0) || !isfinite(t)) {
            rc = emoe_error_set(err, EMOE_EFORMAT, "%s: metadata 'moe.tau': bad value '%s'",
                                path, v);
            goto done;
        }
        c->tau = (float)t;
    }
done:
    emoe_safetensors_close(st);
    return rc;
}
