/* daelab's fused CPU kernels for the study MLP's bf16 training step (daelab/kernels/_mlp.py); their
 * interface is _fused.h, shared with the fp32 step's kernels in _fused32.c and the probe classifier's
 * in _classifier.c (the same library).
 *
 * Each function is one pass (or two) over a batch-sized array that PyTorch would walk 4-10 times
 * with separate ops: BatchNorm + dropout + LeakyReLU forward and backward, sigmoid + MSE + their
 * gradient, Gaussian noise with the batch gather (those four are _layers.h, instantiated here for
 * bf16 activations), dropout masks, and Adam with the bf16 shadow write (optional: the fp32 step
 * uses the same kernel without one). Matrix products stay in PyTorch (oneDNN). Arrays are row-major
 * (batch, features); bf16 is stored as uint16 (the top half of an fp32, rounded to nearest even, as
 * PyTorch does).
 *
 * Random numbers come from Philox4x32-10 (_philox.h), counter-based: the value for element e
 * depends only on (seed, e), so results do not depend on the thread count and a resumed run draws
 * exactly what an uninterrupted one would. Threads come from OpenMP; loaded after torch, this
 * library shares torch's libgomp (same soname) and so its thread pool.
 *
 * x86 intrinsics are guarded: the build's ISA flags pick Philox's AVX-512, AVX2 or portable scalar
 * form (the same words), and off x86 Adam leaves the floating-point mode alone.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_fused.h"
#include "_philox.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define DAELAB_X86_CSR 1
#endif

#ifndef DAELAB_HEADER_SHA256
#define DAELAB_HEADER_SHA256 "unknown"
#endif

const char *daelab_header_sha256(void) { return DAELAB_HEADER_SHA256; }

#ifdef DAELAB_DEBUG
int daelab_debug_build(void) { return 1; }
#else
int daelab_debug_build(void) { return 0; }
#endif

#define REQUIRE DAELAB_REQUIRE /* checks before any work: see _fused.h */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* The layer kernels on bf16 activations: gather_gaussian, bn_forward, bn_backward, sigmoid_mse. */
#define ACT_T uint16_t
#define LOAD_ACT bf16_to_f32
#define STORE_ACT f32_to_bf16
#define KERNEL(name) name
#include "_layers.h"

/* Dropout's keep mask: value e is kept with probability 1 - threshold / 2^32. Written as uint8 0/1
 * into `keep` when it is not NULL, else as 0 or `scale` floats into `scaled`. */
int dropout_mask(uint64_t seed, uint32_t stream, int64_t n, uint32_t threshold, uint8_t *keep, float scale,
                 float *scaled) {
    REQUIRE(n >= 0, DAELAB_BAD_SIZE);
    REQUIRE(keep || scaled, DAELAB_NULL_ARRAY);
    const int64_t chunks = (n + 4 * CHUNK - 1) / (4 * CHUNK);
    #pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        uint32_t w[4 * CHUNK];
        philox_chunk(c, stream, seed, w);
        const int64_t e0 = c * 4 * CHUNK, m = n - e0 < 4 * CHUNK ? n - e0 : 4 * CHUNK;
        if (keep) {
            #pragma omp simd
            for (int64_t k = 0; k < m; k++) keep[e0 + k] = w[k] >= threshold;
        } else {
            #pragma omp simd
            for (int64_t k = 0; k < m; k++) scaled[e0 + k] = w[k] >= threshold ? scale : 0.0f;
        }
    }
    return DAELAB_OK;
}

/* One Adam step (torch.optim.Adam, no weight decay, no amsgrad) on n values. The gradient is bf16
 * when grad_bf16 != 0, else fp32. When shadow is not NULL the updated value is also written there
 * as bf16. step_size = lr / (1 - beta1^t); denom = sqrt(v) / sqrt(1 - beta2^t) + eps. */
int adam(float *param, const void *grad, int grad_bf16, float *exp_avg, float *exp_avg_sq, uint16_t *shadow,
         int64_t n, float beta1, float beta2, float eps, float step_size, float bias_correction2_sqrt) {
    REQUIRE(n >= 0, DAELAB_BAD_SIZE);
    REQUIRE(param && grad && exp_avg && exp_avg_sq, DAELAB_NULL_ARRAY);
    const uint16_t *g16 = (const uint16_t *)grad;
    const float *g32 = (const float *)grad;
    #pragma omp parallel if (n > 16384)
    {
        /* Flush denormals to zero in this loop only: a weight whose gradient is (nearly) always 0 --
         * a border pixel's -- has moments that decay into the denormal range, where x86 arithmetic
         * is ~20x slower (measured: 0.13 ms vs 2.9 ms for 250k values). Below 1.2e-38 a moment
         * changes no update. (x86 only: elsewhere the mode is left as it is.) */
#ifdef DAELAB_X86_CSR
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
#endif
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float g = grad_bf16 ? bf16_to_f32(g16[i]) : g32[i];
            float m = exp_avg[i] + (1.0f - beta1) * (g - exp_avg[i]);
            float v = beta2 * exp_avg_sq[i] + (1.0f - beta2) * g * g;
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            float p = param[i] - step_size * m / (sqrtf(v) / bias_correction2_sqrt + eps);
            param[i] = p;
            if (shadow) shadow[i] = f32_to_bf16(p);
        }
#ifdef DAELAB_X86_CSR
        _mm_setcsr(csr);
#endif
    }
    return DAELAB_OK;
}

/* dst (bf16) = src (fp32), rounded to nearest even. */
int to_bf16(const float *src, uint16_t *dst, int64_t n) {
    REQUIRE(n >= 0, DAELAB_BAD_SIZE);
    REQUIRE(src && dst, DAELAB_NULL_ARRAY);
    #pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
    return DAELAB_OK;
}
