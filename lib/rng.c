/*
 * rng.c: counter-based random numbers (Philox4x32-10, Salmon et al., SC'11, as in
 * Random123) and the small helpers built on them.
 *
 * A generator is (seed, stream, pos): the 32-bit value number pos of a stream is
 * lane pos % 4 of philox(counter = {pos/4 low, pos/4 high, stream low, stream
 * high}, key = seed).  Nothing depends on call order across streams, so parallel
 * loops give each work item its own stream and stay deterministic.
 */
#include "config.h"
#include "internal.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void emoe_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void emoe_rng_init(struct emoe_rng *r, uint64_t seed, uint64_t stream)
{
    r->seed = seed;
    r->stream = stream;
    r->pos = 0;
}

uint32_t emoe_rng_u32(struct emoe_rng *r)
{
    uint64_t block = r->pos >> 2;
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)r->stream,
                       (uint32_t)(r->stream >> 32)};
    uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    uint32_t out[4];
    emoe_philox4x32(ctr, key, out);
    return out[r->pos++ & 3];
}

uint64_t emoe_rng_u64(struct emoe_rng *r)
{
    uint64_t lo = emoe_rng_u32(r);
    return lo | (uint64_t)emoe_rng_u32(r) << 32;
}

float emoe_rng_uniform(struct emoe_rng *r)
{
    return (float)(emoe_rng_u32(r) >> 8) * (1.0f / 16777216.0f);
}

double emoe_rng_uniform_double(struct emoe_rng *r)
{
    return (double)(emoe_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

uint32_t emoe_rng_below(struct emoe_rng *r, uint32_t n)
{
    if (n <= 1)
        return 0;
    uint32_t limit = (uint32_t)(-n) % n; /* values below this are rejected */
    for (;;) {
        uint64_t m = (uint64_t)emoe_rng_u32(r) * n;
        if ((uint32_t)m >= limit)
            return (uint32_t)(m >> 32);
    }
}

float emoe_rng_normal(struct emoe_rng *r)
{
    /* Box-Muller with u1 in (0, 1]; one value per two uniforms (no cached second). */
    double u1 = 1.0 - emoe_rng_uniform_double(r);
    double u2 = emoe_rng_uniform_double(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t emoe_seed_derive(uint64_t seed, uint64_t tag)
{
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (tag + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void emoe_rng_shuffle(size_t *idx, size_t n, uint64_t seed, uint64_t stream)
{
    struct emoe_rng r;
    emoe_rng_init(&r, seed, stream);
    for (size_t i = n; i > 1; i--) {
        size_t j = (i <= UINT32_MAX) ? emoe_rng_below(&r, (uint32_t)i)
                                         : (size_t)(emoe_rng_u64(&r) % i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
