/* Ed25519 signature verification (RFC 8032 section 5.1.7), written for this firmware.
 *
 * Verification handles only public data (key, message, signature), so nothing here is constant
 * time: branches and early exits on values are fine. There is no signing.
 *
 * Field elements mod p = 2^255 - 19 are eight 32-bit little-endian words holding any value below
 * 2^256; 2^256 = 38 (mod p) folds carries back in, and only encoding reduces fully. Points are in
 * extended coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, xy = T/Z, on -x^2 + y^2 = 1 + d x^2 y^2,
 * added with the complete formula of RFC 8032 section 5.1.4 (it doubles too).
 * The check is the cofactorless one: encode([S]B - [k]A) must equal the signature's R bytes.
 */
#include "fw.h"

typedef struct {
    uint32_t w[8];
} fe;

typedef struct {
    fe x, y, z, t;
} point;

/* Little-endian constants: d, 2d, sqrt(-1), the base point B, the group order L, p - 2 and
 * (p - 5) / 8 (exponents for inversion and the square root). */
static const uint8_t D[32] = {0xa3, 0x78, 0x59, 0x13, 0xca, 0x4d, 0xeb, 0x75, 0xab, 0xd8, 0x41,
                              0x41, 0x4d, 0x0a, 0x70, 0x00, 0x98, 0xe8, 0x79, 0x77, 0x79, 0x40,
                              0xc7, 0x8c, 0x73, 0xfe, 0x6f, 0x2b, 0xee, 0x6c, 0x03, 0x52};
static const uint8_t D2[32] = {0x59, 0xf1, 0xb2, 0x26, 0x94, 0x9b, 0xd6, 0xeb, 0x56, 0xb1, 0x83,
                               0x82, 0x9a, 0x14, 0xe0, 0x00, 0x30, 0xd1, 0xf3, 0xee, 0xf2, 0x80,
                               0x8e, 0x19, 0xe7, 0xfc, 0xdf, 0x56, 0xdc, 0xd9, 0x06, 0x24};
static const uint8_t SQRT_M1[32] = {0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f,
                                    0xad, 0x06, 0x18, 0x43, 0x2f, 0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00,
                                    0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};
static const uint8_t BASE_X[32] = {0x1a, 0xd5, 0x25, 0x8f, 0x60, 0x2d, 0x56, 0xc9, 0xb2, 0xa7, 0x25,
                                   0x95, 0x60, 0xc7, 0x2c, 0x69, 0x5c, 0xdc, 0xd6, 0xfd, 0x31, 0xe2,
                                   0xa4, 0xc0, 0xfe, 0x53, 0x6e, 0xcd, 0xd3, 0x36, 0x69, 0x21};
static const uint8_t BASE_Y[32] = {0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                   0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};
static const uint8_t ORDER[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                                  0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10};
static const uint8_t P_MINUS_2[32] = {
    0xeb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
static const uint8_t P_MINUS_5_DIV_8[32] = {
    0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f};

static const fe P = {{0xffffffed, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
                      0xffffffff, 0x7fffffff}};

static void fe_load(fe *r, const uint8_t b[32]) {
    for (int i = 0; i < 8; i++)
        r->w[i] = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                  (uint32_t)b[4 * i + 3] << 24;
}

static void fe_set(fe *r, uint32_t v) {
    r->w[0] = v;
    for (int i = 1; i < 8; i++)
        r->w[i] = 0;
}

/* r += 38 * carry, repeated while the sum still overflows 2^256. */
static void fold(fe *r, uint32_t carry) {
    while (carry) {
        uint64_t acc = (uint64_t)carry * 38;
        for (int i = 0; i < 8; i++) {
            acc += r->w[i];
            r->w[i] = (uint32_t)acc;
            acc >>= 32;
        }
        carry = (uint32_t)acc;
    }
}

static void fe_add(fe *r, const fe *a, const fe *b) {
    uint64_t acc = 0;
    for (int i = 0; i < 8; i++) {
        acc += (uint64_t)a->w[i] + b->w[i];
        r->w[i] = (uint32_t)acc;
        acc >>= 32;
    }
    fold(r, (uint32_t)acc);
}

/* r = a - b; each borrow of 2^256 is paid back by subtracting 38. */
static void fe_sub(fe *r, const fe *a, const fe *b) {
    int64_t acc = 0;
    for (int i = 0; i < 8; i++) {
        acc += (int64_t)a->w[i] - b->w[i];
        r->w[i] = (uint32_t)acc;
        acc >>= 32;
    }
    while (acc) {
        acc = -38;
        for (int i = 0; i < 8; i++) {
            acc += r->w[i];
            r->w[i] = (uint32_t)acc;
            acc >>= 32;
        }
    }
}

static void fe_mul(fe *r, const fe *a, const fe *b) {
    uint32_t t[16] = {0};
    for (int i = 0; i < 8; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < 8; j++) {
            carry += (uint64_t)a->w[i] * b->w[j] + t[i + j];
            t[i + j] = (uint32_t)carry;
            carry >>= 32;
        }
        t[i + 8] = (uint32_t)carry;
    }
    uint64_t acc = 0;
    for (int i = 0; i < 8; i++) {
        acc += (uint64_t)t[i + 8] * 38 + t[i];
        r->w[i] = (uint32_t)acc;
        acc >>= 32;
    }
    fold(r, (uint32_t)acc);
}

/* r = a^e for a little-endian 256-bit exponent e. */
static void fe_pow(fe *r, const fe *a, const uint8_t e[32]) {
    fe acc;
    fe_set(&acc, 1);
    for (int bit = 255; bit >= 0; bit--) {
        fe_mul(&acc, &acc, &acc);
        if (e[bit / 8] >> (bit % 8) & 1)
            fe_mul(&acc, &acc, a);
    }
    *r = acc;
}

/* The unique representative below p. */
static void fe_reduce(fe *r) {
    for (int round = 0; round < 2; round++) {
        fe diff;
        int64_t acc = 0;
        for (int i = 0; i < 8; i++) {
            acc += (int64_t)r->w[i] - P.w[i];
            diff.w[i] = (uint32_t)acc;
            acc >>= 32;
        }
        if (acc == 0)
            *r = diff;
    }
}

static void fe_store(uint8_t b[32], const fe *a) {
    fe v = *a;
    fe_reduce(&v);
    for (int i = 0; i < 32; i++)
        b[i] = (uint8_t)(v.w[i / 4] >> (8 * (i % 4)));
}

static int fe_equal(const fe *a, const fe *b) {
    uint8_t x[32], y[32];
    fe_store(x, a);
    fe_store(y, b);
    for (int i = 0; i < 32; i++)
        if (x[i] != y[i])
            return 0;
    return 1;
}

static int fe_is_odd(const fe *a) {
    uint8_t b[32];
    fe_store(b, a);
    return b[0] & 1;
}

static void fe_neg(fe *r, const fe *a) {
    fe zero;
    fe_set(&zero, 0);
    fe_sub(r, &zero, a);
}

static void point_add(point *r, const point *p, const point *q) {
    fe a, b, c, d, e, f, g, h, t, d2;
    fe_sub(&a, &p->y, &p->x);
    fe_sub(&t, &q->y, &q->x);
    fe_mul(&a, &a, &t);
    fe_add(&b, &p->y, &p->x);
    fe_add(&t, &q->y, &q->x);
    fe_mul(&b, &b, &t);
    fe_load(&d2, D2);
    fe_mul(&c, &p->t, &q->t);
    fe_mul(&c, &c, &d2);
    fe_mul(&d, &p->z, &q->z);
    fe_add(&d, &d, &d);
    fe_sub(&e, &b, &a);
    fe_sub(&f, &d, &c);
    fe_add(&g, &d, &c);
    fe_add(&h, &b, &a);
    fe_mul(&r->x, &e, &f);
    fe_mul(&r->y, &g, &h);
    fe_mul(&r->t, &e, &h);
    fe_mul(&r->z, &f, &g);
}

static void point_from_affine(point *r, const fe *x, const fe *y) {
    r->x = *x;
    r->y = *y;
    fe_set(&r->z, 1);
    fe_mul(&r->t, x, y);
}

static void point_neg(point *r, const point *p) {
    *r = *p;
    fe_neg(&r->x, &p->x);
    fe_neg(&r->t, &p->t);
}

static void point_encode(uint8_t out[32], const point *p) {
    fe inv, x, y;
    fe_pow(&inv, &p->z, P_MINUS_2);
    fe_mul(&x, &p->x, &inv);
    fe_mul(&y, &p->y, &inv);
    fe_store(out, &y);
    out[31] |= (uint8_t)(fe_is_odd(&x) << 7);
}

/* RFC 8032 section 5.1.3: y must be canonical (< p), x is recovered from the curve equation
 * with the square root (p = 5 mod 8), and x = 0 with the sign bit set is refused. */
static int point_decode(point *r, const uint8_t in[32]) {
    uint8_t yb[32];
    for (int i = 0; i < 32; i++)
        yb[i] = in[i];
    int sign = yb[31] >> 7;
    yb[31] &= 0x7f;
    fe y, one, d, u, v, v3, x, check, t;
    fe_load(&y, yb);
    uint8_t canonical[32];
    fe_store(canonical, &y);
    for (int i = 0; i < 32; i++)
        if (canonical[i] != yb[i])
            return 0;
    fe_set(&one, 1);
    fe_load(&d, D);
    fe_mul(&u, &y, &y);
    fe_mul(&v, &u, &d);
    fe_sub(&u, &u, &one); /* u = y^2 - 1 */
    fe_add(&v, &v, &one); /* v = d y^2 + 1 */
    fe_mul(&v3, &v, &v);
    fe_mul(&v3, &v3, &v);            /* v^3 */
    fe_mul(&t, &v3, &v3);            /* v^6 */
    fe_mul(&t, &t, &v);              /* v^7 */
    fe_mul(&t, &t, &u);              /* u v^7 */
    fe_pow(&t, &t, P_MINUS_5_DIV_8); /* (u v^7)^((p-5)/8) */
    fe_mul(&x, &u, &v3);
    fe_mul(&x, &x, &t); /* candidate root of u/v */
    fe_mul(&check, &x, &x);
    fe_mul(&check, &check, &v);
    if (!fe_equal(&check, &u)) {
        fe neg_u, sqrt_m1;
        fe_neg(&neg_u, &u);
        if (!fe_equal(&check, &neg_u))
            return 0;
        fe_load(&sqrt_m1, SQRT_M1);
        fe_mul(&x, &x, &sqrt_m1);
    }
    uint8_t xb[32];
    fe_store(xb, &x);
    int zero = 1;
    for (int i = 0; i < 32; i++)
        zero &= xb[i] == 0;
    if (zero && sign)
        return 0;
    if ((xb[0] & 1) != sign)
        fe_neg(&x, &x);
    point_from_affine(r, &x, &y);
    return 1;
}

/* a < b for little-endian 256-bit numbers. */
static int less_than(const uint8_t *a, const uint8_t *b) {
    for (int i = 31; i >= 0; i--)
        if (a[i] != b[i])
            return a[i] < b[i];
    return 0;
}

/* out = h mod L for a 512-bit little-endian h: shift in one bit at a time, subtracting L
 * whenever the remainder reaches it (the remainder stays below 2L < 2^254). */
static void reduce_mod_order(uint8_t out[32], const uint8_t h[64]) {
    uint8_t r[32] = {0};
    for (int bit = 511; bit >= 0; bit--) {
        uint32_t carry = h[bit / 8] >> (bit % 8) & 1;
        for (int i = 0; i < 32; i++) {
            uint32_t v = (uint32_t)r[i] << 1 | carry;
            r[i] = (uint8_t)v;
            carry = v >> 8;
        }
        if (!less_than(r, ORDER)) {
            int32_t borrow = 0;
            for (int i = 0; i < 32; i++) {
                int32_t v = (int32_t)r[i] - ORDER[i] - borrow;
                borrow = v < 0;
                r[i] = (uint8_t)(v + (borrow << 8));
            }
        }
    }
    for (int i = 0; i < 32; i++)
        out[i] = r[i];
}

/* [s]B + [k]Q, scanning both scalars' bits together (Straus). */
static void double_scalar_mul(point *r, const uint8_t s[32], const uint8_t k[32], const point *q) {
    point base, both, table[4];
    fe bx, by;
    fe_load(&bx, BASE_X);
    fe_load(&by, BASE_Y);
    point_from_affine(&base, &bx, &by);
    point_add(&both, &base, q);
    fe zero, one;
    fe_set(&zero, 0);
    fe_set(&one, 1);
    point_from_affine(&table[0], &zero, &one);
    table[1] = base;
    table[2] = *q;
    table[3] = both;
    *r = table[0];
    for (int bit = 255; bit >= 0; bit--) {
        point_add(r, r, r);
        int index = (s[bit / 8] >> (bit % 8) & 1) | (k[bit / 8] >> (bit % 8) & 1) << 1;
        if (index)
            point_add(r, r, &table[index]);
    }
}

int ed25519_verify(const uint8_t signature[64], const uint8_t public_key[32],
                   const uint8_t *message, size_t len) {
    const uint8_t *s = signature + 32;
    if (!less_than(s, ORDER))
        return 0;
    point a, minus_a, r;
    if (!point_decode(&a, public_key))
        return 0;
    point_neg(&minus_a, &a);
    uint8_t h[64], k[32], encoded[32];
    sha512_ctx ctx;
    sha512_init(&ctx);
    sha512_update(&ctx, signature, 32);
    sha512_update(&ctx, public_key, 32);
    sha512_update(&ctx, message, len);
    sha512_final(&ctx, h);
    reduce_mod_order(k, h);
    double_scalar_mul(&r, s, k, &minus_a);
    point_encode(encoded, &r);
    for (int i = 0; i < 32; i++)
        if (encoded[i] != signature[i])
            return 0;
    return 1;
}
