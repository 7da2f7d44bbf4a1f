/* Runs every kernel of daelab/kernels/_fused.h once on fixed inputs and writes what each returned.
 *
 * tests/test_kernels_foreign.py builds this file with the kernels for another CPU architecture
 * (aarch64, cross-compiled, run under qemu) and for this machine's portable scalar variant, and
 * compares the two outputs: the same Philox words and masks bit for bit, the floating-point results
 * to rounding. The inputs come from a fixed splitmix64 stream, so both builds see the same numbers.
 *
 * Output, to stdout, one record per array: a line "name kind count\n" (kind: u8, u16, f32 or f64),
 * then count little-endian values of that kind; then a line "end 0 0\n". Exit status: 0, or 1 when
 * a kernel refused its call (its name and status go to stderr).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_fused.h"

static uint64_t state = 0x5eedf00dULL;

static uint64_t next_word(void) { /* splitmix64 */
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static float uniform(void) { return (float)(next_word() >> 40) / 16777216.0f; } /* [0, 1), 24 bits */

static float *floats(int64_t n, float lo, float hi) {
    float *a = malloc((size_t)n * sizeof *a);
    for (int64_t i = 0; i < n; i++) a[i] = lo + (hi - lo) * uniform();
    return a;
}

static void *zeros(int64_t n, size_t size) { return calloc((size_t)n, size); }

static void emit(const char *name, const char *kind, const void *values, int64_t count) {
    size_t size = kind[1] == '8' ? 1 : kind[1] == '1' ? 2 : kind[1] == '3' ? 4 : 8;
    printf("%s %s %lld\n", name, kind, (long long)count);
    fflush(stdout);
    fwrite(values, size, (size_t)count, stdout);
    fflush(stdout);
}

static int failed = 0;

static void check(const char *kernel, int status) {
    if (status != DAELAB_OK) {
        fprintf(stderr, "%s refused its call: status %d\n", kernel, status);
        failed = 1;
    }
}

/* The MLP step's layer kernels in one precision: bn forward and backward, sigmoid + MSE. */
#define BATCH 64
#define FEAT 48

/* A layer's inputs: pre-activations, the Linear bias, BatchNorm's affine weights and running statistics. */
struct layer {
    float *z, *bias, *gamma, *beta, *rmean, *rvar;
};

static struct layer layer_inputs(void) {
    struct layer in;
    in.z = floats(BATCH * FEAT, -2, 2);
    in.bias = floats(FEAT, -0.1f, 0.1f);
    in.gamma = floats(FEAT, 0.5f, 1.5f);
    in.beta = floats(FEAT, -0.2f, 0.2f);
    in.rmean = floats(FEAT, -0.1f, 0.1f);
    in.rvar = floats(FEAT, 0.5f, 1.5f);
    return in;
}

static void free_layer(struct layer in) {
    free(in.z), free(in.bias), free(in.gamma), free(in.beta), free(in.rmean), free(in.rvar);
}

static void layers_f32(const uint8_t *keep) {
    int64_t n = BATCH * FEAT;
    struct layer in = layer_inputs();
    float *z = in.z, *bias = in.bias, *gamma = in.gamma, *beta = in.beta, *rmean = in.rmean, *rvar = in.rvar;
    float *act = zeros(n, 4), *mean = zeros(FEAT, 4), *rstd = zeros(FEAT, 4);
    check("bn_forward_f32", bn_forward_f32(z, BATCH, FEAT, bias, gamma, beta, 1e-3f, 0.01f, rmean, rvar, keep,
                                           1.25f, 0.3f, act, mean, rstd));
    emit("bn_forward_f32.act", "f32", act, n);
    emit("bn_forward_f32.mean", "f32", mean, FEAT);
    emit("bn_forward_f32.rstd", "f32", rstd, FEAT);
    emit("bn_forward_f32.running_mean", "f32", rmean, FEAT);
    emit("bn_forward_f32.running_var", "f32", rvar, FEAT);
    float *dact = floats(n, -1, 1), *dz = zeros(n, 4), *dgamma = zeros(FEAT, 4), *dbeta = zeros(FEAT, 4);
    check("bn_backward_f32", bn_backward_f32(dact, act, z, BATCH, FEAT, keep, 1.25f, 0.3f, gamma, mean, rstd, dz,
                                             dgamma, dbeta));
    emit("bn_backward_f32.dz", "f32", dz, n);
    emit("bn_backward_f32.dgamma", "f32", dgamma, FEAT);
    emit("bn_backward_f32.dbeta", "f32", dbeta, FEAT);
    float *clean = floats(n, 0, 1), *dz2 = zeros(n, 4), *dbias = zeros(FEAT, 4);
    double total = 0;
    check("sigmoid_mse_f32", sigmoid_mse_f32(z, bias, clean, BATCH, FEAT, 1.0f / (float)n, dz2, dbias, &total));
    emit("sigmoid_mse_f32.dz", "f32", dz2, n);
    emit("sigmoid_mse_f32.dbias", "f32", dbias, FEAT);
    emit("sigmoid_mse_f32.total", "f64", &total, 1);
    free_layer(in), free(act), free(mean), free(rstd);
    free(dact), free(dz), free(dgamma), free(dbeta), free(clean), free(dz2), free(dbias);
}

static uint16_t *bf16_of(const float *values, int64_t n) {
    uint16_t *out = zeros(n, 2);
    check("to_bf16", to_bf16(values, out, n));
    return out;
}

static void layers_bf16(const uint8_t *keep) {
    int64_t n = BATCH * FEAT;
    struct layer in = layer_inputs();
    float *bias = in.bias, *gamma = in.gamma, *beta = in.beta, *rmean = in.rmean, *rvar = in.rvar;
    uint16_t *z = bf16_of(in.z, n), *act = zeros(n, 2);
    emit("to_bf16", "u16", z, n);
    float *mean = zeros(FEAT, 4), *rstd = zeros(FEAT, 4);
    check("bn_forward", bn_forward(z, BATCH, FEAT, bias, gamma, beta, 1e-3f, 0.01f, rmean, rvar, keep, 1.25f, 0.3f,
                                   act, mean, rstd));
    emit("bn_forward.act", "u16", act, n);
    emit("bn_forward.mean", "f32", mean, FEAT);
    emit("bn_forward.rstd", "f32", rstd, FEAT);
    float *dact32 = floats(n, -1, 1), *dgamma = zeros(FEAT, 4), *dbeta = zeros(FEAT, 4);
    uint16_t *dact = bf16_of(dact32, n), *dz = zeros(n, 2);
    check("bn_backward", bn_backward(dact, act, z, BATCH, FEAT, keep, 1.25f, 0.3f, gamma, mean, rstd, dz, dgamma,
                                     dbeta));
    emit("bn_backward.dz", "u16", dz, n);
    emit("bn_backward.dgamma", "f32", dgamma, FEAT);
    float *clean = floats(n, 0, 1), *dbias = zeros(FEAT, 4);
    uint16_t *dz2 = zeros(n, 2);
    double total = 0;
    check("sigmoid_mse", sigmoid_mse(z, bias, clean, BATCH, FEAT, 1.0f / (float)n, dz2, dbias, &total));
    emit("sigmoid_mse.dz", "u16", dz2, n);
    emit("sigmoid_mse.dbias", "f32", dbias, FEAT);
    emit("sigmoid_mse.total", "f64", &total, 1);
    free_layer(in), free(z), free(act), free(mean);
    free(rstd), free(dact32), free(dgamma), free(dbeta), free(dact), free(dz), free(clean), free(dbias), free(dz2);
}

static void noise_and_masks(uint8_t *keep) {
    int64_t rows = 40, dim = 784, batch = 100, n = batch * dim;
    float *data = floats(rows * dim, 0, 1), *clean = zeros(n, 4), *noisy = zeros(n, 4);
    int64_t index[100];
    for (int64_t i = 0; i < batch; i++) index[i] = (i * 7) % rows;
    check("gather_gaussian_f32", gather_gaussian_f32(data, rows, index, batch, dim, 0.1f, 12345, 2, clean, noisy));
    emit("gather_gaussian_f32.clean", "f32", clean, n);
    emit("gather_gaussian_f32.noisy", "f32", noisy, n);
    uint16_t *noisy16 = zeros(n, 2);
    check("gather_gaussian", gather_gaussian(data, rows, index, batch, dim, 0.1f, 12345, 2, clean, noisy16));
    emit("gather_gaussian.noisy", "u16", noisy16, n);
    uint8_t *big = zeros(300007, 1); /* over the kernels' threading threshold, not a multiple of a chunk */
    check("dropout_mask", dropout_mask(0xFFFFFFFFFFFFFFFBULL, 3, 300007, 0x80003039u, big, 0.0f, NULL));
    emit("dropout_mask.keep", "u8", big, 300007);
    float *scaled = zeros(70001, 4);
    check("dropout_mask", dropout_mask(17, 0, 70001, 1u << 30, NULL, 1.5f, scaled));
    emit("dropout_mask.scaled", "f32", scaled, 70001);
    check("dropout_mask", dropout_mask(99, 1, BATCH * FEAT, 0x33333333u, keep, 0.0f, NULL));
    free(data), free(clean), free(noisy), free(noisy16), free(big), free(scaled);
}

static void optimizer(void) {
    int64_t n = 40000; /* over the threading threshold */
    float *param = floats(n, -0.1f, 0.1f), *grad = floats(n, -1e-3f, 1e-3f);
    float *m = floats(n, -1e-4f, 1e-4f), *v = floats(n, 0, 1e-6f);
    uint16_t *shadow = zeros(n, 2);
    check("adam", adam(param, grad, 0, m, v, shadow, n, 0.9f, 0.999f, 1e-7f, 1e-3f, 0.05f));
    uint16_t *grad16 = bf16_of(grad, n);
    check("adam", adam(param, grad16, 1, m, v, NULL, n, 0.9f, 0.999f, 1e-7f, 1e-3f, 0.06f));
    emit("adam.param", "f32", param, n);
    emit("adam.exp_avg", "f32", m, n);
    emit("adam.exp_avg_sq", "f32", v, n);
    emit("adam.shadow", "u16", shadow, n);
    free(param), free(grad), free(m), free(v), free(shadow), free(grad16);
}

static void classifier(void) {
    enum { S = 2, B = 32, H = 24, C = 10 };
    int64_t n = S * B * H;
    float *a = floats(n, -1, 1), *mask = floats(n, 0, 1);
    for (int64_t i = 0; i < n; i++) mask[i] = mask[i] < 0.4f ? 0.0f : 1.0f / 0.6f;
    float *relu = malloc((size_t)n * 4);
    memcpy(relu, a, (size_t)n * 4);
    check("relu_mask", relu_mask(relu, S, B, H, mask, B * H, H));
    emit("relu_mask.a", "f32", relu, n);
    float *dh = floats(n, -1, 1), *dbias = zeros(S * H, 4);
    check("relu_mask_backward", relu_mask_backward(dh, relu, S, B, H, mask, B * H, H, dbias));
    emit("relu_mask_backward.dh", "f32", dh, n);
    emit("relu_mask_backward.dbias", "f32", dbias, S * H);
    int64_t labels[S * B];
    for (int64_t i = 0; i < S * B; i++) labels[i] = (int64_t)(next_word() % C);
    float *gamma = floats(S * H, 0.5f, 1.5f), *beta = floats(S * H, -0.2f, 0.2f), *w3 = floats(S * H * C, -0.3f, 0.3f);
    float *b3 = floats(S * C, -0.1f, 0.1f), *rmean = zeros(S * H, 4), *rvar = floats(S * H, 1, 1);
    float *h = zeros(n, 4), *da2 = zeros(n, 4), *dw3 = zeros(S * H * C, 4), *db3 = zeros(S * C, 4);
    float *dgamma = zeros(S * H, 4), *dbeta = zeros(S * H, 4), *db2 = zeros(S * H, 4);
    float *work = zeros(S * (3 * B * H + 2 * B * C), 4);
    double total = 0;
    check("classifier_tail", classifier_tail(relu, S, B, H, C, mask, B * H, H, labels, B, gamma, beta, w3, b3, 1e-3f,
                                             0.01f, rmean, rvar, h, da2, dw3, db3, dgamma, dbeta, db2, work, &total));
    emit("classifier_tail.h", "f32", h, n);
    emit("classifier_tail.da2", "f32", da2, n);
    emit("classifier_tail.dw3", "f32", dw3, S * H * C);
    emit("classifier_tail.dgamma", "f32", dgamma, S * H);
    emit("classifier_tail.db2", "f32", db2, S * H);
    emit("classifier_tail.running_var", "f32", rvar, S * H);
    emit("classifier_tail.total", "f64", &total, 1);
    free(a), free(mask), free(relu), free(dh), free(dbias), free(gamma), free(beta), free(w3), free(b3), free(rmean);
    free(rvar), free(h), free(da2), free(dw3), free(db3), free(dgamma), free(dbeta), free(db2), free(work);
}

int main(void) {
    uint8_t *keep = zeros(BATCH * FEAT, 1);
    noise_and_masks(keep);
    emit("dropout_mask.layer_keep", "u8", keep, BATCH * FEAT);
    layers_f32(keep);
    layers_bf16(keep);
    optimizer();
    classifier();
    free(keep);
    printf("end 0 0\n");
    return failed;
}
