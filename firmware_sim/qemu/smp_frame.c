/* The SMP console framing (see smp_frame.h). Every length is bounded by the buffer it fills
 * before a byte is stored. */
#include "smp_frame.h"

static uint8_t line[SMP_LINE_MAX];
static uint32_t line_len;
static int line_overlong;
static uint8_t packet[SMP_PACKET_MAX];
static uint32_t packet_len, packet_expected;

uint16_t smp_crc16(const uint8_t *p, uint32_t n) {
    uint16_t crc = 0;
    for (uint32_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(uint8_t c) {
    for (int i = 0; i < 64; i++)
        if ((uint8_t)B64[i] == c)
            return i;
    return -1;
}

/* Decode a base64 line body into packet[]; -1 if malformed or past the buffer. */
static int b64_decode_into_packet(const uint8_t *s, uint32_t n) {
    if (n % 4)
        return -1;
    for (uint32_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (pad || (v[j] = b64_value(s[i + j])) < 0) {
                return -1;
            }
        }
        uint32_t bits = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | v[3];
        for (int j = 0; j < 3 - pad; j++) {
            if (packet_len >= SMP_PACKET_MAX)
                return -1;
            packet[packet_len++] = (uint8_t)(bits >> (16 - 8 * j));
        }
    }
    return 0;
}

static void drop_packet(void) {
    packet_len = 0;
    packet_expected = 0;
}

void smp_frame_reset(void) {
    line_len = 0;
    line_overlong = 0;
    drop_packet();
}

const uint8_t *smp_frame_packet(void) { return packet; }

/* A whole line arrived: the length of the packet it completed, else 0. */
static uint32_t line_done(void) {
    if (line_len < 2)
        return 0;
    int start = line[0] == 0x06 && line[1] == 0x09;
    int next = line[0] == 0x04 && line[1] == 0x14;
    if (line_overlong) {
        if (start || next)
            drop_packet();
        return 0;
    }
    if (!start && !next)
        return 0; /* console text, not SMP */
    if (start)
        drop_packet();
    else if (!packet_expected)
        return 0; /* a continuation without a packet */
    if (b64_decode_into_packet(line + 2, line_len - 2)) {
        drop_packet();
        return 0;
    }
    if (start) {
        if (packet_len < 2) {
            drop_packet();
            return 0;
        }
        packet_expected = (uint32_t)packet[0] << 8 | packet[1];
        if (packet_expected <= 2 || packet_expected > SMP_PACKET_MAX - 2) {
            drop_packet();
            return 0;
        }
        for (uint32_t i = 2; i < packet_len; i++)
            packet[i - 2] = packet[i];
        packet_len -= 2;
    }
    if (packet_len < packet_expected)
        return 0;
    uint32_t n = packet_expected - 2;
    int good = packet_len == packet_expected &&
               smp_crc16(packet, n) == ((uint32_t)packet[n] << 8 | packet[n + 1]);
    drop_packet();
    return good ? n : 0;
}

uint32_t smp_frame_byte(uint8_t c) {
    if (c == '\n') {
        uint32_t n = line_done();
        line_len = 0;
        line_overlong = 0;
        return n;
    }
    if (line_len + 1 < SMP_LINE_MAX)
        line[line_len++] = c;
    else
        line_overlong = 1;
    return 0;
}

void smp_frame_send(const uint8_t *p, uint32_t n, void (*write)(const uint8_t *data, size_t len)) {
    static uint8_t raw[SMP_SEND_MAX + 4];
    static uint8_t enc[(SMP_SEND_MAX + 4 + 2) / 3 * 4];
    static uint8_t out[SMP_OUT_LINE];
    if (n > SMP_SEND_MAX)
        return;
    raw[0] = (uint8_t)((n + 2) >> 8);
    raw[1] = (uint8_t)(n + 2);
    for (uint32_t i = 0; i < n; i++)
        raw[2 + i] = p[i];
    uint16_t crc = smp_crc16(p, n);
    raw[2 + n] = (uint8_t)(crc >> 8);
    raw[3 + n] = (uint8_t)crc;
    uint32_t total = n + 4, text = 0;
    for (uint32_t i = 0; i < total; i += 3) {
        uint32_t left = total - i;
        uint32_t bits = (uint32_t)raw[i] << 16 | (left > 1 ? (uint32_t)raw[i + 1] << 8 : 0) |
                        (left > 2 ? raw[i + 2] : 0);
        enc[text++] = (uint8_t)B64[bits >> 18 & 63];
        enc[text++] = (uint8_t)B64[bits >> 12 & 63];
        enc[text++] = left > 1 ? (uint8_t)B64[bits >> 6 & 63] : '=';
        enc[text++] = left > 2 ? (uint8_t)B64[bits & 63] : '=';
    }
    const uint32_t per_line = (SMP_OUT_LINE - 3) / 4 * 4;
    for (uint32_t at = 0; at < text; at += per_line) {
        uint32_t len = 0, chunk = text - at < per_line ? text - at : per_line;
        out[len++] = at ? 0x04 : 0x06;
        out[len++] = at ? 0x14 : 0x09;
        for (uint32_t i = 0; i < chunk; i++)
            out[len++] = enc[at + i];
        out[len++] = '\n';
        write(out, len);
    }
}
