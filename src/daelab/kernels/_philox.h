/* daelab's random numbers for the fused kernels: Philox4x32-10 words in chunks, and normals from them.
 *
 * Internal to the kernels (static inline; no part of the interface, which is _fused.h): included by
 * _fused.c (the bf16 step, dropout masks) and _fused32.c (the fp32 step), so both precisions draw
 * the same words. Philox4x32-10 (Salmon et al., SC'11) is counter-based: the value for element e
 * depends only on (seed, stream, e), never on the thread count, so a resumed run draws exactly what
 * an uninterrupted one would.
 *
 * Three variants of philox_chunk, chosen at compile time by the build's ISA flags (daelab.kernels.
 * _loader builds one library per variant): AVX-512 (16 counters per instruction), AVX2 (8), and the
 * portable scalar loop (any CPU). All three give the same 32-bit words: the arithmetic is integer.
 */
#ifndef DAELAB_PHILOX_H
#define DAELAB_PHILOX_H

#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX512F__)
#include <immintrin.h>
#define DAELAB_AVX512 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define DAELAB_AVX2 1
#endif
#endif

/* Philox4x32-10's round multipliers and key increments (Salmon et al.), shared by every variant. */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Philox4x32-10 of counter (c0, stream, 0, 0) under key (k0, k1); a macro-free inline function
 * with scalar outputs so that loops over c0 vectorise. */
static inline void philox(uint32_t c0, uint32_t stream, uint32_t k0, uint32_t k1, uint32_t *o0, uint32_t *o1,
                          uint32_t *o2, uint32_t *o3) {
    uint32_t x0 = c0, x1 = stream, x2 = 0, x3 = 0;
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * x0, p1 = (uint64_t)PHILOX_M1 * x2;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0, y2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
        x1 = (uint32_t)p1;
        x3 = (uint32_t)p0;
        x0 = y0;
        x2 = y2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    *o0 = x0; *o1 = x1; *o2 = x2; *o3 = x3;
}

static inline float open_unit(uint32_t bits) { /* uniform on (0, 1): never 0, so log() is finite */
    return ((float)(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

#define CHUNK 64 /* Philox groups per vectorised chunk: 256 values */

#ifdef DAELAB_AVX512
/* High and low halves of the 32x32-bit products a * m, lane by lane: vpmuludq on the even and the
 * odd lanes. (Left to itself, GCC widens to 64-bit lanes and multiplies with vpmullq: the masks
 * and the noise took twice as long.) */
static inline void mul_hi_lo(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#endif

#ifdef DAELAB_AVX2
/* The same on 8 lanes: AVX2 has vpmuludq (even lanes, 32x32 -> 64) but no 64-bit vpmullq to fall
 * back on, so the products are split the same way and blended with vpblendd. */
static inline void mul_hi_lo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif

/* The 4 * CHUNK random words of chunk c: words[q * CHUNK + j] is word q of counter c * CHUNK + j,
 * so value e0 + k of the chunk starting at e0 = c * 4 * CHUNK reads words[k] (contiguous stores,
 * so the callers' loops vectorise). Up to 2^34 values per (seed, stream). */
static inline void philox_chunk(int64_t c, uint32_t stream, uint64_t seed, uint32_t words[4 * CHUNK]) {
    const uint32_t g0 = (uint32_t)(c * CHUNK), k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#if defined(DAELAB_AVX512)
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int j = 0; j < CHUNK; j += 16) {
        __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32((int)(g0 + (uint32_t)j)), lanes);
        __m512i x1 = _mm512_set1_epi32((int)stream), x2 = _mm512_setzero_si512(), x3 = _mm512_setzero_si512();
        uint32_t a = k0, b = k1;
        for (int r = 0; r < 10; r++) {
            __m512i hi0, lo0, hi1, lo1;
            mul_hi_lo(x0, m0, &hi0, &lo0);
            mul_hi_lo(x2, m1, &hi1, &lo1);
            x0 = _mm512_xor_si512(_mm512_xor_si512(hi1, x1), _mm512_set1_epi32((int)a));
            x2 = _mm512_xor_si512(_mm512_xor_si512(hi0, x3), _mm512_set1_epi32((int)b));
            x1 = lo1;
            x3 = lo0;
            a += PHILOX_W0;
            b += PHILOX_W1;
        }
        _mm512_storeu_si512(words + j, x0);
        _mm512_storeu_si512(words + CHUNK + j, x1);
        _mm512_storeu_si512(words + 2 * CHUNK + j, x2);
        _mm512_storeu_si512(words + 3 * CHUNK + j, x3);
    }
#elif defined(DAELAB_AVX2)
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < CHUNK; j += 8) {
        __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32((int)(g0 + (uint32_t)j)), lanes);
        __m256i x1 = _mm256_set1_epi32((int)stream), x2 = _mm256_setzero_si256(), x3 = _mm256_setzero_si256();
        uint32_t a = k0, b = k1;
        for (int r = 0; r < 10; r++) {
            __m256i hi0, lo0, hi1, lo1;
            mul_hi_lo8(x0, m0, &hi0, &lo0);
            mul_hi_lo8(x2, m1, &hi1, &lo1);
            x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)a));
            x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)b));
            x1 = lo1;
            x3 = lo0;
            a += PHILOX_W0;
            b += PHILOX_W1;
        }
        _mm256_storeu_si256((__m256i *)(words + j), x0);
        _mm256_storeu_si256((__m256i *)(words + CHUNK + j), x1);
        _mm256_storeu_si256((__m256i *)(words + 2 * CHUNK + j), x2);
        _mm256_storeu_si256((__m256i *)(words + 3 * CHUNK + j), x3);
    }
#else
    #pragma omp simd
    for (int j = 0; j < CHUNK; j++)
        philox(g0 + (uint32_t)j, stream, k0, k1, &words[j], &words[CHUNK + j], &words[2 * CHUNK + j],
               &words[3 * CHUNK + j]);
#endif
}

/* The 4 * CHUNK standard normals of chunk c, in the order of philox_chunk's words: Box-Muller on
 * pairs of words. logf/cosf are vectorised by the compiler (libmvec), whose AVX-512, AVX2 and SSE
 * forms may differ in the last fp32 bit: the variants draw the same words, not always the same floats. */
static inline void normal_chunk(int64_t c, uint32_t stream, uint64_t seed, float z[4 * CHUNK]) {
    uint32_t w[4 * CHUNK];
    philox_chunk(c, stream, seed, w);
    #pragma omp simd
    for (int j = 0; j < CHUNK; j++) {
        float r0 = sqrtf(-2.0f * logf(open_unit(w[j]))), t0 = 6.2831853f * open_unit(w[CHUNK + j]);
        float r1 = sqrtf(-2.0f * logf(open_unit(w[2 * CHUNK + j])));
        float t1 = 6.2831853f * open_unit(w[3 * CHUNK + j]);
        z[j] = r0 * cosf(t0);
        z[CHUNK + j] = r0 * cosf(t0 - 1.5707963f); /* sin, written as a cos: GCC would fuse */
        z[2 * CHUNK + j] = r1 * cosf(t1);
        z[3 * CHUNK + j] = r1 * cosf(t1 - 1.5707963f); /* sinf+cosf into sincosf, which has no SIMD form */
    }
}

#endif
