/* The CBOR (RFC 8949) the SMP image and OS groups need: definite-length items only. */
#ifndef CBOR_H
#define CBOR_H

#include <stddef.h>
#include <stdint.h>

enum cbor_kind { CBOR_NONE = 0, CBOR_UINT, CBOR_BYTES, CBOR_TEXT, CBOR_BOOL, CBOR_OTHER };

struct cbor_item {
    int kind;
    uint32_t value; /* CBOR_UINT, CBOR_BOOL */
    const uint8_t *data; /* CBOR_BYTES, CBOR_TEXT */
    uint32_t len;
};

/* The value of text key ``key`` in the top-level map ``buf[0..len)``: 1 if found, 0 if not,
 * -1 if the bytes are not a well-formed definite-length map (nesting at most 4 deep). */
int cbor_map_get(const uint8_t *buf, uint32_t len, const char *key, struct cbor_item *out);

/* Writer into a fixed buffer; once full it stops writing and ``overflow`` is set. */
struct cbor_out {
    uint8_t *buf;
    uint32_t cap, len;
    int overflow;
};
void cbor_map(struct cbor_out *o, uint32_t pairs);
void cbor_array(struct cbor_out *o, uint32_t items);
void cbor_uint(struct cbor_out *o, uint32_t v);
void cbor_text(struct cbor_out *o, const char *s);
void cbor_text_n(struct cbor_out *o, const uint8_t *s, uint32_t n);
void cbor_bytes(struct cbor_out *o, const uint8_t *p, uint32_t n);
void cbor_bool(struct cbor_out *o, int v);

#endif
