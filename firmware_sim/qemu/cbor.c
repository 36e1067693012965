/* A minimal CBOR reader and writer for SMP. Every length read from the wire is checked
 * against the bytes that remain before it is used; indefinite lengths, 64-bit arguments and
 * deep nesting are refused as malformed. */
#include "cbor.h"

#define MAX_DEPTH 4

struct reader {
    const uint8_t *p;
    uint32_t left;
};

/* The head of the next item: major type and argument. -1 if malformed or unsupported. */
static int head(struct reader *r, uint32_t *arg) {
    if (!r->left)
        return -1;
    uint8_t b = *r->p++;
    r->left--;
    uint32_t info = b & 0x1f, n;
    if (info < 24) {
        *arg = info;
        return b >> 5;
    }
    if (info == 24)
        n = 1;
    else if (info == 25)
        n = 2;
    else if (info == 26)
        n = 4;
    else
        return -1;
    if (r->left < n)
        return -1;
    *arg = 0;
    for (uint32_t i = 0; i < n; i++)
        *arg = *arg << 8 | r->p[i];
    r->p += n;
    r->left -= n;
    return b >> 5;
}

/* Read one item; strings and scalars are returned in ``out``, containers skipped whole. */
static int item(struct reader *r, struct cbor_item *out, int depth) {
    uint32_t arg;
    int major = head(r, &arg);
    out->kind = CBOR_OTHER;
    switch (major) {
    case 0:
        out->kind = CBOR_UINT;
        out->value = arg;
        return 0;
    case 1:
        return 0;
    case 2:
    case 3:
        if (arg > r->left)
            return -1;
        out->kind = major == 2 ? CBOR_BYTES : CBOR_TEXT;
        out->data = r->p;
        out->len = arg;
        r->p += arg;
        r->left -= arg;
        return 0;
    case 4:
    case 5: {
        if (depth >= MAX_DEPTH || arg > r->left)
            return -1;
        uint32_t count = major == 5 ? 2 * arg : arg;
        struct cbor_item skip;
        for (uint32_t i = 0; i < count; i++)
            if (item(r, &skip, depth + 1))
                return -1;
        out->kind = CBOR_OTHER;
        return 0;
    }
    case 6:
        return item(r, out, depth + 1);
    case 7:
        if (arg == 20 || arg == 21) {
            out->kind = CBOR_BOOL;
            out->value = arg == 21;
        }
        return arg < 24 || arg == 26 ? 0 : -1; /* simple values, null, float32 */
    default:
        return -1;
    }
}

int cbor_map_get(const uint8_t *buf, uint32_t len, const char *key, struct cbor_item *out) {
    struct reader r = {buf, len};
    uint32_t pairs;
    if (head(&r, &pairs) != 5 || pairs > len)
        return -1;
    int found = 0;
    for (uint32_t i = 0; i < pairs; i++) {
        struct cbor_item k, v;
        if (item(&r, &k, 1) || item(&r, &v, 1))
            return -1;
        if (found || k.kind != CBOR_TEXT)
            continue;
        uint32_t n = 0;
        while (key[n] && n < k.len && key[n] == (char)k.data[n])
            n++;
        if (n == k.len && !key[n]) {
            *out = v;
            found = 1;
        }
    }
    return r.left ? -1 : found;
}

static void put(struct cbor_out *o, const uint8_t *p, uint32_t n) {
    if (o->overflow || n > o->cap - o->len) {
        o->overflow = 1;
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        o->buf[o->len + i] = p[i];
    o->len += n;
}

static void put_head(struct cbor_out *o, uint32_t major, uint32_t v) {
    uint8_t h[5];
    uint32_t n;
    if (v < 24) {
        h[0] = (uint8_t)(major << 5 | v);
        n = 1;
    } else if (v < 0x100) {
        h[0] = (uint8_t)(major << 5 | 24);
        h[1] = (uint8_t)v;
        n = 2;
    } else if (v < 0x10000) {
        h[0] = (uint8_t)(major << 5 | 25);
        h[1] = (uint8_t)(v >> 8);
        h[2] = (uint8_t)v;
        n = 3;
    } else {
        h[0] = (uint8_t)(major << 5 | 26);
        for (int i = 0; i < 4; i++)
            h[1 + i] = (uint8_t)(v >> (24 - 8 * i));
        n = 5;
    }
    put(o, h, n);
}

void cbor_map(struct cbor_out *o, uint32_t pairs) { put_head(o, 5, pairs); }
void cbor_array(struct cbor_out *o, uint32_t items) { put_head(o, 4, items); }
void cbor_uint(struct cbor_out *o, uint32_t v) { put_head(o, 0, v); }

void cbor_text_n(struct cbor_out *o, const uint8_t *s, uint32_t n) {
    put_head(o, 3, n);
    put(o, s, n);
}

void cbor_text(struct cbor_out *o, const char *s) {
    uint32_t n = 0;
    while (s[n])
        n++;
    cbor_text_n(o, (const uint8_t *)s, n);
}

void cbor_bytes(struct cbor_out *o, const uint8_t *p, uint32_t n) {
    put_head(o, 2, n);
    put(o, p, n);
}

void cbor_bool(struct cbor_out *o, int v) {
    uint8_t b = v ? 0xf5 : 0xf4;
    put(o, &b, 1);
}
