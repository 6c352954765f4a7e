/*
 * loss.c: the training losses of the ViT engine with their gradients: softmax
 * cross-entropy with label smoothing (classification) and L1 / MSE (regression,
 * METHOD.md section 7).  Each is the mean over the batch; the gradient, scaled for
 * that mean, is added to the caller's buffer.
 *
 * B = rows (images), K = classes, n = regression outputs.
 */
#include "config.h"
#include "internal.h"

#include <math.h>

int emoe_cross_entropy(double *loss, float *dlogits, int *ncorrect, const float *logits,
                       const int32_t *labels, int B, int K, float smoothing,
                       struct emoe_error *err)
{
    if (B <= 0 || K <= 0)
        return emoe_error_set(err, EMOE_EINVAL, "cross-entropy: bad sizes (%d rows, %d classes)",
                              B, K);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return emoe_error_set(err, EMOE_EINVAL,
                              "cross-entropy: label smoothing %g outside [0, 1]",
                              (double)smoothing);
    for (int b = 0; b < B; b++)
        if (labels[b] < 0 || labels[b] >= K)
            return emoe_error_set(err, EMOE_EINVAL,
                                  "cross-entropy: label %ld of row %d outside [0, %d)",
                                  (long)labels[b], b, K);
    double total = 0.0;
    int correct = 0;
    const float inv_b = 1.0f / (float)B;
    const float off = smoothing / (float)K; /* the smoothed target of every class */
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        int y = labels[b];
        float m = z[0];
        int arg = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > m) {
                m = z[k];
                arg = k;
            }
        if (!isfinite(m))
            return emoe_error_set(err, EMOE_ENUMERIC, "cross-entropy: non-finite logit in row %d",
                                  b);
        double s = 0.0, sz = 0.0;
        for (int k = 0; k < K; k++) {
            s += exp((double)z[k] - m);
            sz += (double)z[k];
        }
        if (!isfinite(sz))
            return emoe_error_set(err, EMOE_ENUMERIC, "cross-entropy: non-finite logit in row %d",
                                  b);
        double lse = m + log(s); /* log sum exp */
        double nll = lse - z[y];
        double smooth = lse - sz / K; /* mean over classes of -log p */
        total += (1.0 - smoothing) * nll + smoothing * smooth;
        correct += arg == y;
        if (dlogits) {
            float *g = dlogits + (size_t)b * K;
            float inv_s = (float)(1.0 / s);
            for (int k = 0; k < K; k++) {
                float p = expf(z[k] - m) * inv_s;
                float target = off + (k == y ? 1.0f - smoothing : 0.0f);
                g[k] += (p - target) * inv_b;
            }
        }
    }
    *loss = total / B;
    if (ncorrect)
        *ncorrect = correct;
    return EMOE_OK;
}

static int check_finite(const float *pred, const float *target, size_t n, const char *name,
                        struct emoe_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(pred[i]) || !isfinite(target[i]))
            return emoe_error_set(err, EMOE_ENUMERIC, "%s: non-finite %s at %zu", name,
                                  isfinite(pred[i]) ? "target" : "prediction", i);
    return EMOE_OK;
}

int emoe_l1_loss(double *loss, float *dpred, const float *pred, const float *target, size_t n,
                 struct emoe_error *err)
{
    if (n == 0)
        return emoe_error_set(err, EMOE_EINVAL, "l1 loss: no values");
    int rc = check_finite(pred, target, n, "l1 loss", err);
    if (rc)
        return rc;
    double s = 0.0;
    float g = 1.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        float d = pred[i] - target[i];
        s += fabs((double)pred[i] - target[i]);
        if (dpred)
            dpred[i] += d > 0.0f ? g : d < 0.0f ? -g : 0.0f;
    }
    *loss = s / (double)n;
    return EMOE_OK;
}

int emoe_mse_loss(double *loss, float *dpred, const float *pred, const float *target, size_t n,
                  struct emoe_error *err)
{
    if (n == 0)
        return emoe_error_set(err, EMOE_EINVAL, "mse loss: no values");
    int rc = check_finite(pred, target, n, "mse loss", err);
    if (rc)
        return rc;
    double s = 0.0;
    float g = 2.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        double d = (double)pred[i] - target[i];
        s += d * d;
        if (dpred)
            dpred[i] += g * (pred[i] - target[i]);
    }
    *loss = s / (double)n;
    return EMOE_OK;
}
