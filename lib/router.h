/*
 * router.h: private interface between the MoE branch (moe.c) and its routers
 * (router_eigen.c, router_ermoe.c, router_softmax.c).  Not installed.
 *
 * A branch (METHOD.md section 2) sees N routed tokens h [N, D].  The router turns
 * them into probabilities p [N, E] (and, for ERMoE, an eligibility mask and the
 * experts' effective down weights); the branch picks the top-k experts, runs each
 * expert only on the tokens that chose it (one GEMM per expert) and combines
 * h + alpha * sum_{chosen e} p_e expert_e(h).  In backward the branch hands the
 * router dp [N, E], the gradient w.r.t. the probabilities, and the router adds
 * its parameter gradients and its part of dh.
 *
 * Letters: N routed tokens, D width, E experts, r basis rank, F expert bottleneck,
 * k experts per token (E in soft mode), A dispatched rows (token, expert) pairs.
 */
#ifndef EMOE_ROUTER_H
#define EMOE_ROUTER_H

#include "internal.h"

/* LAPACK (Fortran interface of OpenBLAS; Debian ships no lapacke.h with it). */
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work,
             const int *lwork, int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda,
             const float *tau, float *work, const int *lwork, int *info);
void ssyevr_(const char *jobz, const char *range, const char *uplo, const int *n, float *a,
             const int *lda, const float *vl, const float *vu, const int *il, const int *iu,
             const float *abstol, int *m, float *w, float *z, const int *ldz, int *isuppz,
             float *work, const int *lwork, int *iwork, const int *liwork, int *info,
             size_t ljobz, size_t lrange, size_t luplo);

/* How a parameter is initialised (METHOD.md section 2, "Init"). */
enum slot_init {
    INIT_ZERO,
    INIT_CONST,    /* value */
    INIT_ORTHO,    /* [D, r] orthonormal columns (torch.nn.init.orthogonal_) */
    INIT_NORMAL,   /* N(0, 1) */
    INIT_KAIMING,  /* PyTorch Linear default: U(+-1/sqrt(fan_in)), fan_in = shape[1] */
};

/* One parameter tensor of a branch. */
struct moe_slot {
    char name[64];          /* relative to "branches.{i}.", e.g. "router.gamma" */
    int ndim;
    int64_t shape[2];
    size_t numel;
    int no_decay;
    enum slot_init init;
    float value;            /* INIT_CONST */
    float *data;            /* the parameter */
    float *grad;            /* its gradient (accumulated), NULL when frozen */
};

struct emoe_moe_branch;

struct router_ops {
    const char *name;
    /* Append the router's parameter slots (and, for ERMoE, the experts'); set
     * b->std_experts to 0 when the router supplies the experts' down weights. */
    int (*add_slots)(struct emoe_moe_branch *b, struct emoe_error *err);
    /* After the slots are bound to memory: allocate private state. */
    int (*bind)(struct emoe_moe_branch *b, struct emoe_error *err);
    /* Fill b->p [N, E] (and b->elig when used) from b->h [N, D]; train: retraction,
     * noise.  Also adds the router's weighted extra losses that do not depend on the
     * selection with moe_add_loss (the branch zeroes them before). */
    int (*forward)(struct emoe_moe_branch *b, int train, struct emoe_error *err);
    /* After the selection (b->top1, b->choice): selection-dependent losses (Switch),
     * added with moe_add_loss.  May be NULL. */
    void (*after_select)(struct emoe_moe_branch *b);
    /* dp [N, E] (may be modified): add the router's parameter gradients and its part
     * of dh [N, D] (including the gradients of its extra losses). */
    int (*backward)(struct emoe_moe_branch *b, float *dp, float *dh, struct emoe_error *err);
    /* Expert down-weight gradients (ERMoE: map them back to the bases and scales).
     * May be NULL. */
    void (*experts_backward)(struct emoe_moe_branch *b);
    void (*free)(struct emoe_moe_branch *b);
};

extern const struct router_ops moe_router_eigen;
extern const struct router_ops moe_router_ermoe;
extern const struct router_ops moe_router_softmax;

struct emoe_moe_branch {
    struct emoe_moe_config cfg;
    const struct router_ops *ops;
    int index;                  /* block index (names "branches.{index}.") */
    int D, E, r, F;             /* F: expert hidden width (r for ERMoE) */
    int k;                      /* experts per token (E in soft mode) */
    int soft;
    int std_experts;            /* 1: experts.{e}.down/up.weight slots */

    struct moe_slot *slots;
    size_t nslots, cap_slots;
    size_t slot_alpha;
    float *arena;               /* standalone: parameters then gradients */

    /* The experts' weights as the GEMMs use them (router-supplied for ERMoE). */
    float **down_w, **down_g;   /* [E] -> [F, D] */
    float **up_w, **up_g;       /* [E] -> [D, F] */
    size_t *slot_down, *slot_up; /* [E] their slots, SIZE_MAX when router-supplied */
    struct emoe_param **bound;  /* [nslots] model params (NULL when standalone) */

    void *rstate;               /* the router's private state */
    struct emoe_rng rng;        /* noise (softmax router) */

    /* The last forward (sizes in rows; buffers grow as needed). */
    int B, T, first;            /* tokens t = first .. T-1 of each image are routed */
    int N;                      /* routed tokens */
    int train;
    int have_acts;              /* the activations are there for one backward */
    size_t cap_n, cap_a;
    float *h;                   /* [N, D] branch input */
    float *acc;                 /* [N, D] sum_{chosen} p_e expert_e(h) */
    float *p;                   /* [N, E] */
    unsigned char *elig;        /* [N, E] eligibility (ERMoE threshold) or unused */
    int use_elig;
    int32_t *choice;            /* [N, k] chosen experts, by decreasing p */
    int32_t *row;               /* [N, k] dispatched row, -1 when dropped */
    int32_t *top1;              /* [N] arg max p over eligible experts */
    int64_t *offset;            /* [E + 1] first row of each expert */
    int32_t *row_tok;           /* [A] token of each row */
    float *row_w;               /* [A] weight of each row */
    int A;                      /* rows dispatched */
    int64_t dropped;            /* (token, slot) pairs dropped for capacity */
    float *xg, *act, *gel, *yg; /* [A, D], [A, F], [A, F], [A, D] */
    float *dyg, *dgel;          /* backward scratch [A, D], [A, F] */
    float *dp, *dh;             /* backward scratch [N, E], [N, D] */
    double extra_loss;          /* sum of loss_terms, in the order they were added */
    double loss_terms[EMOE_LOSS_TERMS];
    double *cov;                /* [D, D] running H^T H (eigenbasis from data) */
    int64_t cov_tokens;
};

/* Helpers shared by the routers (moe.c). */
/* Adds the weighted extra loss v to term t and to the total b->extra_loss. */
static inline void moe_add_loss(struct emoe_moe_branch *b, enum emoe_loss_term t, double v)
{
    b->loss_terms[t] += v;
    b->extra_loss += v;
}
int moe_add_slot(struct emoe_moe_branch *b, const char *name, int ndim, int64_t d0, int64_t d1,
                 enum slot_init init, float value, int no_decay, struct emoe_error *err);
struct moe_slot *moe_find_slot(struct emoe_moe_branch *b, const char *name);
/* Grow *p to hold n elements of size sz (contents are not kept). */
int moe_grow(void **p, size_t *cap, size_t n, size_t sz, struct emoe_error *err);
/* Q [M, R] row-major, M >= R, replaced by the Q factor of its reduced Householder QR
 * (sgeqrf + sorgqr, as torch.linalg.qr).  sign_fix: multiply column j by sign(R_jj)
 * (torch.nn.init.orthogonal_). */
int moe_qr_retract(float *q, int M, int R, int sign_fix, struct emoe_error *err);
/* ||Q^T Q - I||_F^2 for Q [M, R]; if grad [M, R] is not NULL adds scale * 4 Q (Q^T Q - I).
 * gram: scratch [R, R]. */
double moe_ortho_penalty(const float *q, float *grad, float scale, int M, int R, float *gram);
/* Softmax of each row of x [n, m] into y [n, m] (y may be x), of x * inv_tau. */
void moe_softmax_rows(float *y, const float *x, int n, int m, float inv_tau);

#endif
