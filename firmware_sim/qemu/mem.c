/* memset and memcpy for a freestanding build: gcc emits calls to them for struct copies. */
#include "fw.h"

void *memset(void *dst, int value, size_t len) {
    uint8_t *d = dst;
    while (len--)
        *d++ = (uint8_t)value;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t len) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (len--)
        *d++ = *s++;
    return dst;
}
