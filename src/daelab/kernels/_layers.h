/* The layer kernels of the fused MLP step, written once for both precisions of its activations.
 *
 * A template, included by _fused.c (ACT_T uint16_t: bf16, the names of _fused.h's bf16 kernels) and
 * by _fused32.c (ACT_T float: the same kernels with an _f32 suffix), each of which first defines
 *   ACT_T          the element type of the activations and their gradients,
 *   LOAD_ACT(v)    an ACT_T as float, and STORE_ACT(f) a float as ACT_T (bf16: round to nearest even),
 *   KERNEL(name)   the exported name of kernel `name`,
 * and includes _fused.h and _philox.h. Statistics, parameters and Adam state are fp32 in both; so
 * the arithmetic is the same float arithmetic, and the fp32 kernels differ from the bf16 ones only
 * in skipping the rounding at each load and store. Not part of the interface (that is _fused.h):
 * every definition here is declared there, for both precisions, and the build rejects any that is not.
 */
#if !defined(ACT_T) || !defined(LOAD_ACT) || !defined(STORE_ACT) || !defined(KERNEL)
#error "_layers.h needs ACT_T, LOAD_ACT, STORE_ACT and KERNEL defined"
#endif

#ifndef REQUIRE
#define REQUIRE DAELAB_REQUIRE /* checks before any work: see _fused.h */
#endif

/* Gather rows `index` of `data` (n_rows, dim) into `clean` (batch, dim) and write
 * noisy = clip(clean + sigma * N(0, 1), 0, 1) as ACT_T. Normals from normal_chunk (_philox.h);
 * `stream` separates draws that share a seed. */
int KERNEL(gather_gaussian)(const float *data, int64_t n_rows, const int64_t *index, int64_t batch, int64_t dim,
                            float sigma, uint64_t seed, uint32_t stream, float *clean, ACT_T *noisy) {
    REQUIRE(n_rows >= 0 && batch >= 0 && dim >= 0, DAELAB_BAD_SIZE);
    REQUIRE(data && index && clean && noisy, DAELAB_NULL_ARRAY);
#ifdef DAELAB_DEBUG
    for (int64_t r = 0; r < batch; r++) REQUIRE(index[r] >= 0 && index[r] < n_rows, DAELAB_BAD_INDEX);
#endif
    const int64_t n = batch * dim, chunks = (n + 4 * CHUNK - 1) / (4 * CHUNK);
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < batch; r++)
            memcpy(clean + r * dim, data + index[r] * dim, (size_t)dim * sizeof(float));
        #pragma omp for schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            float z[4 * CHUNK];
            normal_chunk(c, stream, seed, z);
            const int64_t e0 = c * 4 * CHUNK, m = n - e0 < 4 * CHUNK ? n - e0 : 4 * CHUNK;
            #pragma omp simd
            for (int64_t k = 0; k < m; k++) {
                float v = clean[e0 + k] + sigma * z[k];
                v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                noisy[e0 + k] = STORE_ACT(v);
            }
        }
    }
    return DAELAB_OK;
}


#define COLS 64 /* columns per work item */

/* The column-block kernels below give each thread whole blocks of COLS features, so per-feature
 * sums over the batch need no reduction across threads (and do not depend on the thread count).
 * A block walks the batch down its columns: COLS = 64 reads 256 contiguous bytes of each fp32 row
 * (128 of bf16) per step down, where 32 read half that; on activations that are no longer in cache
 * (as in the training step) that made bn_backward about 1.4x faster on a 512-wide layer. Each
 * column's sums still run down the rows in order, so the results are those of COLS = 32 (60 of the
 * study's steps checked bit for bit, bf16 and fp32, native and AVX2 builds; the scalar build's fp32
 * results moved in the last bits, as -ffast-math let the compiler vectorize its loops differently). */
static inline int64_t col_blocks(int64_t feat) { return (feat + COLS - 1) / COLS; }
static inline int64_t col_width(int64_t feat, int64_t c0) { return feat - c0 < COLS ? feat - c0 : COLS; }

/* Training-mode BatchNorm over the batch, then dropout (keep may be NULL), then LeakyReLU.
 * z: (batch, feat) ACT_T pre-activations (without the Linear bias, which BatchNorm cancels).
 * Writes act (ACT_T), mean and rstd per feature, and updates the running statistics the way
 * torch.nn.BatchNorm1d does (running_mean sees the bias; running_var is unbiased). */
int KERNEL(bn_forward)(const ACT_T *z, int64_t batch, int64_t feat, const float *bias, const float *gamma,
               const float *beta, float eps, float momentum, float *running_mean, float *running_var,
               const uint8_t *keep, float keep_scale, float slope, ACT_T *act, float *mean_out,
               float *rstd_out) {
    REQUIRE(batch >= 1 && feat >= 0, DAELAB_BAD_SIZE);
    REQUIRE(z && bias && gamma && beta && running_mean && running_var && act && mean_out && rstd_out,
            DAELAB_NULL_ARRAY);
    const int64_t blocks = col_blocks(feat);
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t c0 = b * COLS, width = col_width(feat, c0);
        float sum[COLS] = {0}, sq[COLS] = {0}, mean[COLS], scale[COLS], shift[COLS];
        for (int64_t r = 0; r < batch; r++) {
            const ACT_T *row = z + r * feat + c0;
            for (int64_t j = 0; j < width; j++) sum[j] += LOAD_ACT(row[j]);
        }
        for (int64_t j = 0; j < width; j++) mean[j] = sum[j] / (float)batch;
        for (int64_t r = 0; r < batch; r++) {
            const ACT_T *row = z + r * feat + c0;
            for (int64_t j = 0; j < width; j++) {
                float d = LOAD_ACT(row[j]) - mean[j];
                sq[j] += d * d;
            }
        }
        for (int64_t j = 0; j < width; j++) {
            int64_t c = c0 + j;
            float var = sq[j] / (float)batch, rstd = 1.0f / sqrtf(var + eps);
            mean_out[c] = mean[j];
            rstd_out[c] = rstd;
            scale[j] = gamma[c] * rstd;
            shift[j] = beta[c] - mean[j] * scale[j];
            running_mean[c] += momentum * (mean[j] + bias[c] - running_mean[c]);
            running_var[c] += momentum * (sq[j] / (float)(batch > 1 ? batch - 1 : 1) - running_var[c]);
        }
        for (int64_t r = 0; r < batch; r++) {
            const ACT_T *row = z + r * feat + c0;
            ACT_T *out = act + r * feat + c0;
            const uint8_t *mask = keep ? keep + r * feat + c0 : 0;
            for (int64_t j = 0; j < width; j++) {
                float u = LOAD_ACT(row[j]) * scale[j] + shift[j];
                if (mask) u *= mask[j] ? keep_scale : 0.0f;
                out[j] = STORE_ACT(u > 0.0f ? u : slope * u);
            }
        }
    }
    return DAELAB_OK;
}

/* d(BatchNorm output) of one value: d(act) back through LeakyReLU (its slope read off the sign of
 * act; slope > 0 keeps the sign) and dropout (keep may be NULL). */
static inline float bn_out_grad(ACT_T dact, ACT_T act, const uint8_t *keep, int64_t o, float keep_scale,
                                float slope) {
    float du = LOAD_ACT(dact) * (LOAD_ACT(act) > 0.0f ? 1.0f : slope);
    return keep ? du * (keep[o] ? keep_scale : 0.0f) : du;
}

/* Backward of bn_forward: from d(act) to d(z) (ACT_T, for the matrix products), d(gamma), d(beta).
 * Two passes over the batch (column sums, then d(z)) that recompute du and zhat rather than store them. */
int KERNEL(bn_backward)(const ACT_T *dact, const ACT_T *act, const ACT_T *z, int64_t batch, int64_t feat,
                const uint8_t *keep, float keep_scale, float slope, const float *gamma, const float *mean,
                const float *rstd, ACT_T *dz, float *dgamma, float *dbeta) {
    REQUIRE(batch >= 1 && feat >= 0, DAELAB_BAD_SIZE);
    REQUIRE(dact && act && z && gamma && mean && rstd && dz && dgamma && dbeta, DAELAB_NULL_ARRAY);
    const int64_t blocks = col_blocks(feat);
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t c0 = b * COLS, width = col_width(feat, c0);
        float sum_du[COLS] = {0}, sum_duz[COLS] = {0}, k1[COLS], k2[COLS], k3[COLS];
        for (int64_t r = 0; r < batch; r++) {
            const int64_t o = r * feat + c0;
            for (int64_t j = 0; j < width; j++) {
                float du = bn_out_grad(dact[o + j], act[o + j], keep, o + j, keep_scale, slope);
                float zhat = (LOAD_ACT(z[o + j]) - mean[c0 + j]) * rstd[c0 + j];
                sum_du[j] += du;
                sum_duz[j] += du * zhat;
            }
        }
        for (int64_t j = 0; j < width; j++) {
            int64_t c = c0 + j;
            dgamma[c] = sum_duz[j];
            dbeta[c] = sum_du[j];
            /* dz = gamma * rstd * (du - mean(du) - zhat * mean(du * zhat)) */
            k1[j] = gamma[c] * rstd[c];
            k2[j] = sum_du[j] / (float)batch;
            k3[j] = sum_duz[j] / (float)batch;
        }
        for (int64_t r = 0; r < batch; r++) {
            const int64_t o = r * feat + c0;
            for (int64_t j = 0; j < width; j++) {
                float du = bn_out_grad(dact[o + j], act[o + j], keep, o + j, keep_scale, slope);
                float zhat = (LOAD_ACT(z[o + j]) - mean[c0 + j]) * rstd[c0 + j];
                dz[o + j] = STORE_ACT(k1[j] * (du - k2[j] - zhat * k3[j]));
            }
        }
    }
    return DAELAB_OK;
}

/* Output layer: y = sigmoid(z + bias); writes sum((y - clean)^2) into *total,
 * dz = grad_scale * 2 (y - clean) y (1 - y) as ACT_T and dbias = column sums of dz (fp32). */
int KERNEL(sigmoid_mse)(const ACT_T *z, const float *bias, const float *clean, int64_t batch, int64_t feat,
                float grad_scale, ACT_T *dz, float *dbias, double *total_out) {
    REQUIRE(batch >= 0 && feat >= 0, DAELAB_BAD_SIZE);
    REQUIRE(z && bias && clean && dz && dbias && total_out, DAELAB_NULL_ARRAY);
    const int64_t blocks = col_blocks(feat);
    double total = 0.0;
    #pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t c0 = b * COLS, width = col_width(feat, c0);
        float db[COLS] = {0}, sq[COLS] = {0};
        for (int64_t r = 0; r < batch; r++) {
            const int64_t o = r * feat + c0;
            for (int64_t j = 0; j < width; j++) {
                float y = 1.0f / (1.0f + expf(-(LOAD_ACT(z[o + j]) + bias[c0 + j])));
                float diff = y - clean[o + j];
                float g = grad_scale * 2.0f * diff * y * (1.0f - y);
                dz[o + j] = STORE_ACT(g);
                db[j] += g;
                sq[j] += diff * diff;
            }
        }
        double part = 0.0;
        for (int64_t j = 0; j < width; j++) {
            dbias[c0 + j] = db[j];
            part += sq[j];
        }
        total += part;
    }
    *total_out = total;
    return DAELAB_OK;
}
