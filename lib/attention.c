/*
 * attention.c: the multi-head self-attention core of the ViT engine, forward and
 * backward.  Attention is the only layer that mixes information across tokens;
 * the qkv and output projections around it are ordinary linears (layers.c).
 *
 * B = images, T = tokens per image, D = channels, H = heads, hd = D/H.
 * qkv [B, T, 3D] holds q (heads in order, hd channels each), then k, then v,
 * as timm's packed qkv weight [3D, D] produces them.
 *
 * Each (image, head) pair is one work item for emoe_parallel_for and does its
 * matrix products with cblas_sgemm on one thread; items write disjoint memory, so
 * the results do not depend on the thread count.
 */
#include "config.h"
#include "internal.h"
#include "nnmath.h"

#include <cblas.h>
#include <math.h>

struct att_ctx {
    float *out, *att, *dqkv, *scratch;
    const float *qkv, *dout, *catt;
    int t, d, h;
};

/* Softmax of each row in place (exp through nnmath.h's vectorised emoe_nn_exp4). */
static void softmax_rows(float *a, int rows, int cols)
{
    for (int i = 0; i < rows; i++) {
        float *r = a + (size_t)i * cols;
        float m = r[0];
        for (int j = 1; j < cols; j++)
            m = r[j] > m ? r[j] : m;
        float s = 0.0f;
        int j = 0;
#ifdef EMOE_NN_VECTOR
        emoe_v4f acc = {0};
        for (; j + 4 <= cols; j += 4) {
            emoe_v4f e = emoe_nn_exp4(emoe_nn_load(r + j) - m);
            emoe_nn_store(r + j, e);
            acc += e;
        }
        if (j < cols) {
            size_t k = (size_t)(cols - j);
            emoe_v4f e = emoe_nn_exp4(emoe_nn_load_tail(r + j, k) - m);
            emoe_nn_store_tail(r + j, e, k);
            for (size_t l = 0; l < k; l++)
                s += e[l];
            j = cols;
        }
        s += (acc[0] + acc[1]) + (acc[2] + acc[3]);
#endif
        for (; j < cols; j++) {
            r[j] = expf(r[j] - m);
            s += r[j];
        }
        float inv = 1.0f / s;
        for (j = 0; j < cols; j++)
            r[j] *= inv;
    }
}

static void att_forward_item(void *vctx, size_t item)
{
    struct att_ctx *c = vctx;
    int T = c->t, D = c->d, H = c->h, hd = D / H;
    size_t b = item / (size_t)H, h = item % (size_t)H;
    const float *q = c->qkv + b * (size_t)T * 3 * D + h * hd;
    const float *k = q + D, *v = q + 2 * D;
    float *a = c->att + item * (size_t)T * T;
    float *o = c->out + b * (size_t)T * D + h * hd;
    float scale = 1.0f / sqrtf((float)hd);
    /* a [T,T] = scale q [T,hd] k^T [hd,T] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, 3 * D, k, 3 * D,
                0.0f, a, T);
    softmax_rows(a, T, T);
    /* o [T,hd] = a [T,T] v [T,hd] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, v, 3 * D,
                0.0f, o, D);
}

void emoe_attention_forward(float *out, float *att, const float *qkv, int B, int T, int D,
                            int H)
{
    if (B <= 0 || T <= 0 || D <= 0 || H <= 0 || D % H != 0)
        return;
    struct att_ctx c = {0};
    c.out = out;
    c.att = att;
    c.qkv = qkv;
    c.t = T;
    c.d = D;
    c.h = H;
    emoe_parallel_for((size_t)B * H, att_forward_item, &c);
}

static void att_backward_item(void *vctx, size_t item)
{
    struct att_ctx *c = vctx;
    int T = c->t, D = c->d, H = c->h, hd = D / H;
    size_t b = item / (size_t)H, h = item % (size_t)H;
    size_t off = b * (size_t)T * 3 * D + h * hd;
    const float *q = c->qkv + off, *k = q + D, *v = q + 2 * D;
    float *dq = c->dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
    const float *a = c->catt + item * (size_t)T * T;
    const float *go = c->dout + b * (size_t)T * D + h * hd;
    float *da = c->scratch + item * (size_t)T * T;
    float scale = 1.0f / sqrtf((float)hd);
    /* da [T,T] = dout [T,hd] v^T [hd,T] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, go, D, v, 3 * D, 0.0f,
                da, T);
    /* dv [T,hd] += a^T [T,T] dout [T,hd] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, a, T, go, D, 1.0f, dv,
                3 * D);
    /* softmax backward in place: ds = a (da - sum_j a da) */
    for (int i = 0; i < T; i++) {
        const float *ar = a + (size_t)i * T;
        float *dr = da + (size_t)i * T;
        float s = 0.0f;
        for (int j = 0; j < T; j++)
            s += ar[j] * dr[j];
        for (int j = 0; j < T; j++)
            dr[j] = ar[j] * (dr[j] - s);
    }
    /* dq [T,hd] += scale ds [T,T] k [T,hd];  dk [T,hd] += scale ds^T q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, da, T, k, 3 * D,
                1.0f, dq, 3 * D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, da, T, q, 3 * D, 1.0f,
                dk, 3 * D);
}

void emoe_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int D, int H)
{
    if (B <= 0 || T <= 0 || D <= 0 || H <= 0 || D % H != 0)
        return;
    struct att_ctx c = {0};
    c.dqkv = dqkv;
    c.scratch = scratch;
    c.dout = dout;
    c.qkv = qkv;
    c.catt = att;
    c.t = T;
    c.d = D;
    c.h = H;
    emoe_parallel_for((size_t)B * H, att_backward_item, &c);
}
