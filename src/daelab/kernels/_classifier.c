/* daelab's fused CPU kernels for the probe classifier's training step (daelab/probe/_classifier.py);
 * their interface is _fused.h, shared with the MLP step's kernels in _fused.c, built into the same library.
 *
 * S seed-stacked copies of Dense(64, relu) -> Dropout -> Dense(32, relu) -> Dropout -> BatchNorm
 * -> Dense(10); the two large matrix products stay in PyTorch (bmm). Masks are already scaled by
 * 1 / keep and are read through (seed, row) strides from the epoch's array.
 */
#include <math.h>
#include <stdint.h>

#include "_fused.h"

#define REQUIRE DAELAB_REQUIRE /* checks before any work: see _fused.h */

/* h = relu(a) * mask, in place on a (S, b, width) contiguous. */
int relu_mask(float *a, int64_t seeds, int64_t batch, int64_t width, const float *mask, int64_t mask_seed_stride,
              int64_t mask_row_stride) {
    REQUIRE(seeds >= 0 && batch >= 0 && width >= 0 && mask_seed_stride >= 0 && mask_row_stride >= 0, DAELAB_BAD_SIZE);
    REQUIRE(a && mask, DAELAB_NULL_ARRAY);
    #pragma omp parallel for schedule(static) collapse(2) if (seeds * batch * width > 65536)
    for (int64_t s = 0; s < seeds; s++)
        for (int64_t r = 0; r < batch; r++) {
            float *row = a + (s * batch + r) * width;
            const float *m = mask + s * mask_seed_stride + r * mask_row_stride;
            #pragma omp simd
            for (int64_t j = 0; j < width; j++) row[j] = (row[j] > 0.0f ? row[j] : 0.0f) * m[j];
        }
    return DAELAB_OK;
}

/* Backward of relu_mask: d(a) = d(h) * mask * (h > 0), in place on dh; dbias (S, width) = sums over rows. */
int relu_mask_backward(float *dh, const float *h, int64_t seeds, int64_t batch, int64_t width, const float *mask,
                       int64_t mask_seed_stride, int64_t mask_row_stride, float *dbias) {
    REQUIRE(seeds >= 0 && batch >= 0 && width >= 0 && mask_seed_stride >= 0 && mask_row_stride >= 0, DAELAB_BAD_SIZE);
    REQUIRE(dh && h && mask && dbias, DAELAB_NULL_ARRAY);
    #pragma omp parallel for schedule(static) if (seeds * batch * width > 65536)
    for (int64_t s = 0; s < seeds; s++) {
        float *db = dbias + s * width;
        for (int64_t j = 0; j < width; j++) db[j] = 0.0f;
        for (int64_t r = 0; r < batch; r++) {
            float *row = dh + (s * batch + r) * width;
            const float *hr = h + (s * batch + r) * width;
            const float *m = mask + s * mask_seed_stride + r * mask_row_stride;
            #pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                float d = hr[j] > 0.0f ? row[j] * m[j] : 0.0f;
                row[j] = d;
                db[j] += d;
            }
        }
    }
    return DAELAB_OK;
}

/* From layer 2's pre-activation a2 (S, b, H) to the loss and back to d(a2), per copy:
 * h = relu(a2) * mask; BatchNorm over the batch (biased variance, running statistics lerped by
 * `momentum`); logits = bn(h) @ w3 (S, H, C) + b3; loss = mean cross-entropy against labels (S, b).
 * Writes h (S, b, H) and da2 (S, b, H), gradients dw3 (S, H, C), db3 (S, C), dgamma, dbeta (S, H),
 * db2 (S, H); writes the sum over copies of each copy's mean loss into *total. Work arrays:
 * 3 * b * H + 2 * b * C floats per copy in `work`; H and C at most DAELAB_TAIL_MAX_HIDDEN and
 * DAELAB_TAIL_MAX_CLASSES (the per-copy arrays below), else DAELAB_TOO_LARGE and no work done. */
int classifier_tail(const float *a2, int64_t seeds, int64_t batch, int64_t hidden, int64_t classes,
                    const float *mask, int64_t mask_seed_stride, int64_t mask_row_stride, const int64_t *labels,
                    int64_t label_seed_stride, const float *gamma, const float *beta, const float *w3,
                    const float *b3, float eps, float momentum, float *running_mean, float *running_var,
                    float *h, float *da2, float *dw3, float *db3, float *dgamma, float *dbeta, float *db2,
                    float *work, double *total_out) {
    REQUIRE(seeds >= 0 && batch >= 1 && hidden >= 0 && classes >= 1, DAELAB_BAD_SIZE);
    REQUIRE(mask_seed_stride >= 0 && mask_row_stride >= 0 && label_seed_stride >= 0, DAELAB_BAD_SIZE);
    REQUIRE(hidden <= DAELAB_TAIL_MAX_HIDDEN && classes <= DAELAB_TAIL_MAX_CLASSES, DAELAB_TOO_LARGE);
    REQUIRE(a2 && mask && labels && gamma && beta && w3 && b3 && running_mean && running_var && h && da2 && dw3 &&
            db3 && dgamma && dbeta && db2 && work && total_out, DAELAB_NULL_ARRAY);
#ifdef DAELAB_DEBUG
    for (int64_t s = 0; s < seeds; s++)
        for (int64_t r = 0; r < batch; r++) {
            const int64_t y = labels[s * label_seed_stride + r];
            REQUIRE(y >= 0 && y < classes, DAELAB_BAD_INDEX);
        }
#endif
    double total = 0.0;
    #pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t s = 0; s < seeds; s++) {
        const int64_t B = batch, H = hidden, C = classes;
        float *hn = work + s * (3 * B * H + 2 * B * C), *out = hn + B * H, *dout = out + B * H;
        float *logits = dout + B * H, *dlogits = logits + B * C;
        const float *g = gamma + s * H, *bt = beta + s * H, *w = w3 + s * H * C, *bias3 = b3 + s * C;
        float *hs = h + s * B * H, *da = da2 + s * B * H;
        float mean[DAELAB_TAIL_MAX_HIDDEN], rstd[DAELAB_TAIL_MAX_HIDDEN], sum_do[DAELAB_TAIL_MAX_HIDDEN],
            sum_dohn[DAELAB_TAIL_MAX_HIDDEN];
        /* Every elementwise loop is branch-free and vectorised: with random dropout masks a branch
         * per value mispredicts half the time, which cost more than all the arithmetic here. */
        for (int64_t j = 0; j < H; j++) mean[j] = 0.0f;
        for (int64_t r = 0; r < B; r++) {
            const float *restrict m = mask + s * mask_seed_stride + r * mask_row_stride;
            const float *restrict ar = a2 + (s * B + r) * H;
            float *restrict hr = hs + r * H;
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                float v = fmaxf(ar[j], 0.0f) * m[j];
                hr[j] = v;
                mean[j] += v;
            }
        }
        for (int64_t j = 0; j < H; j++) { mean[j] /= (float)B; rstd[j] = 0.0f; }
        for (int64_t r = 0; r < B; r++) {
            const float *restrict hr = hs + r * H;
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                float d = hr[j] - mean[j];
                rstd[j] += d * d;
            }
        }
        for (int64_t j = 0; j < H; j++) {
            float var = rstd[j] / (float)B;
            running_mean[s * H + j] += momentum * (mean[j] - running_mean[s * H + j]);
            running_var[s * H + j] += momentum * (var - running_var[s * H + j]);
            rstd[j] = 1.0f / sqrtf(var + eps);
        }
        /* The small (H x C) products run with j (H, contiguous) innermost so that they vectorise:
         * wt is w3 transposed (C, H); dwt accumulates d(w3) transposed. */
        float wt[DAELAB_TAIL_MAX_HIDDEN * DAELAB_TAIL_MAX_CLASSES],
            dwt[DAELAB_TAIL_MAX_HIDDEN * DAELAB_TAIL_MAX_CLASSES];
        for (int64_t j = 0; j < H; j++)
            for (int64_t c = 0; c < C; c++) { wt[c * H + j] = w[j * C + c]; dwt[c * H + j] = 0.0f; }
        double loss = 0.0;
        for (int64_t r = 0; r < B; r++) {
            float *restrict lr = logits + r * C, *restrict dl = dlogits + r * C;
            float *restrict zr = hn + r * H, *restrict orow = out + r * H;
            const float *restrict hr = hs + r * H;
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                zr[j] = (hr[j] - mean[j]) * rstd[j];
                orow[j] = zr[j] * g[j] + bt[j];
            }
            for (int64_t c = 0; c < C; c++) {
                float acc = bias3[c];
                const float *restrict wc = wt + c * H;
                #pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < H; j++) acc += orow[j] * wc[j];
                lr[c] = acc;
            }
            float top = lr[0];
            for (int64_t c = 1; c < C; c++) top = lr[c] > top ? lr[c] : top;
            float z = 0.0f;
            for (int64_t c = 0; c < C; c++) { dl[c] = expf(lr[c] - top); z += dl[c]; }
            int64_t y = labels[s * label_seed_stride + r];
            loss += (double)(logf(z) + top - lr[y]);
            for (int64_t c = 0; c < C; c++) dl[c] = dl[c] / z / (float)B;
            dl[y] -= 1.0f / (float)B;
        }
        total += loss / (double)B;
        float *dw = dw3 + s * H * C, *db = db3 + s * C;
        for (int64_t c = 0; c < C; c++) db[c] = 0.0f;
        for (int64_t j = 0; j < H; j++) { sum_do[j] = 0.0f; sum_dohn[j] = 0.0f; }
        for (int64_t r = 0; r < B; r++) {
            const float *restrict dl = dlogits + r * C, *restrict orow = out + r * H, *restrict zr = hn + r * H;
            float *restrict dr = dout + r * H;
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) dr[j] = 0.0f;
            for (int64_t c = 0; c < C; c++) {
                const float d = dl[c];
                const float *restrict wc = wt + c * H;
                float *restrict dwc = dwt + c * H;
                db[c] += d;
                #pragma omp simd
                for (int64_t j = 0; j < H; j++) {
                    dwc[j] += orow[j] * d;
                    dr[j] += d * wc[j];
                }
            }
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                sum_do[j] += dr[j];
                sum_dohn[j] += dr[j] * zr[j];
            }
        }
        for (int64_t j = 0; j < H; j++)
            for (int64_t c = 0; c < C; c++) dw[j * C + c] = dwt[c * H + j];
        float *dg = dgamma + s * H, *dbt = dbeta + s * H, *dbias2 = db2 + s * H;
        for (int64_t j = 0; j < H; j++) { dg[j] = sum_dohn[j]; dbt[j] = sum_do[j]; dbias2[j] = 0.0f; }
        for (int64_t r = 0; r < B; r++) {
            const float *restrict m = mask + s * mask_seed_stride + r * mask_row_stride;
            const float *restrict dr = dout + r * H, *restrict zr = hn + r * H, *restrict hr = hs + r * H;
            float *restrict dar = da + r * H;
            #pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                /* BatchNorm backward with the biased variance, then through dropout and relu */
                float dh = g[j] * rstd[j] * (dr[j] - (sum_do[j] + zr[j] * sum_dohn[j]) / (float)B);
                float d = hr[j] > 0.0f ? dh * m[j] : 0.0f;
                dar[j] = d;
                dbias2[j] += d;
            }
        }
    }
    *total_out = total;
    return DAELAB_OK;
}
