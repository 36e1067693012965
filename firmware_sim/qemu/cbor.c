/* A minimal CBOR reader and writer for SMP. Every length read from the wire is checked
 * against the bytes that remain before it is used; indefinite lengths and deep nesting are
 * refused as malformed. Values the firmware has no use for (negative or 64-bit integers,
 * floats, simple values, tags) are well formed and read as CBOR_OTHER. */
#include "cbor.h"

#define MAX_DEPTH 4

struct reader {
    const uint8_t *p;
    uint32_t left;
};

/* The head of the next item: major type, additional information and argument. -1 if
 * malformed or indefinite. */
static int head(struct reader *r, uint32_t *info, uint64_t *arg) {
    if (!r->left)
        return -1;
    uint8_t b = *r->p++;
    r->left--;
    uint32_t n;
    *info = b & 0x1f;
    if (*info < 24) {
        *arg = *info;
        return b >> 5;
    }
    if (*info > 27)
        return -1;
    n = 1u << (*info - 24);
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
    uint32_t info;
    uint64_t arg;
    int major = head(r, &info, &arg);
    out->kind = CBOR_OTHER;
    switch (major) {
    case 0:
        if (arg <= 0xFFFFFFFFu) {
            out->kind = CBOR_UINT;
            out->value = (uint32_t)arg;
        }
        return 0;
    case 1:
        return 0;
    case 2:
    case 3:
        if (arg > r->left)
            return -1;
        out->kind = major == 2 ? CBOR_BYTES : CBOR_TEXT;
        out->data = r->p;
        out->len = (uint32_t)arg;
        r->p += arg;
        r->left -= (uint32_t)arg;
        return 0;
    case 4:
    case 5: {
        if (depth >= MAX_DEPTH || arg > r->left)
            return -1;
        uint32_t count = major == 5 ? 2 * (uint32_t)arg : (uint32_t)arg;
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
        if (info == 20 || info == 21) {
            out->kind = CBOR_BOOL;
            out->value = info == 21;
        }
        /* a one-byte simple value below 32 is not well formed (RFC 8949 section 3.3) */
        return info == 24 && arg < 32 ? -1 : 0;
    default:
        return -1;
    }
}

int cbor_map_get(const uint8_t *buf, uint32_t len, const char *key, struct cbor_item *out) {
    struct reader r = {buf, len};
    uint32_t info;
    uint64_t pairs;
    if (head(&r, &info, &pairs) != 5 || pairs > len)
        return -1;
    int found = 0;
    for (uint64_t i = 0; i < pairs; i++) {
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
