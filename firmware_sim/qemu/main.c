/* The application: boots through the bootloader, then speaks the edgefleet serial protocol.
 *
 * Frames are COBS(type | seq | payload | CRC32) 0x00, as in protocol/serial. This target checks
 * image hashes and Ed25519 signatures but has no model runtime: HELLO says so in its features.
 */
#include "fw.h"

#define PROTOCOL_VERSION 1
#define WINDOW 8u
#define MAX_FRAME (4096u + 64u)
#define FEATURE_RESUME 0x1u
#define FEATURE_SIGNATURE 0x2u
#define ARENA_SIZE (64u * 1024u)
#define MODEL_UNSUPPORTED 4

enum msg {
    HELLO = 0x01, INFO = 0x02, BEGIN = 0x03, DATA = 0x04, FINISH = 0x05, TEST = 0x06,
    CONFIRM = 0x07, REVERT = 0x08, REBOOT = 0x09, INFER = 0x0A, OK = 0x80,
    HELLO_REPLY = 0x81, INFO_REPLY = 0x82, BEGIN_REPLY = 0x83, ACK = 0x84, ERROR = 0xFF
};

enum err {
    E_UNSUPPORTED_VERSION = 1, E_BAD_REQUEST = 2, E_BAD_STATE = 3, E_TOO_LARGE = 4,
    E_HASH_MISMATCH = 5, E_IMAGE_INVALID = 6, E_SIGNATURE = 7, E_NO_IMAGE = 8, E_BUSY = 9, E_FLASH = 10,
    E_UNSUPPORTED = 12
};

static const char DEVICE[] = "edgefleet-qemu-mps2";

static uint8_t rx[MAX_FRAME + 8];
static uint32_t rx_len;
static int rx_overflow;
static uint8_t frame[MAX_FRAME + 8];
static uint8_t reply[256];
static uint8_t wire[300];

static uint32_t chunk_size;
static int booted_valid;

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void wr16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v) {
    wr16(p, v);
    wr16(p + 2, v >> 16);
}
static int same(const uint8_t *a, const uint8_t *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static void send(uint8_t type, uint32_t seq, const uint8_t *payload, uint32_t len) {
    uint8_t body[300];
    body[0] = type;
    wr16(body + 1, seq);
    memcpy(body + 3, payload, len);
    wr32(body + 3 + len, crc32(body, 3 + len));
    uint32_t n = 7 + len, out = 1, code_at = 0;
    uint8_t code = 1;
    for (uint32_t i = 0; i < n; i++) {
        if (body[i] == 0) {
            wire[code_at] = code;
            code_at = out++;
            code = 1;
            continue;
        }
        wire[out++] = body[i];
        if (++code == 0xFF) {
            wire[code_at] = code;
            code_at = out++;
            code = 1;
        }
    }
    wire[code_at] = code;
    wire[out++] = 0;
    uart_write(wire, out);
}

static void send_error(uint32_t seq, uint8_t code, const char *text) {
    uint32_t n = 0;
    reply[n++] = code;
    while (*text && n < 200)
        reply[n++] = (uint8_t)*text++;
    send(ERROR, seq, reply, n);
}

static void send_ok(uint32_t seq) { send(OK, seq, 0, 0); }

static int trial(void) {
    struct trailers t;
    read_trailers(&t);
    return on_trial(&t);
}

static uint32_t slot_info(int slot, uint8_t flags, uint8_t *out) {
    struct image_info info;
    memset(out, 0, 46);
    out[1] = flags;
    if (flash_is_erased(slot_base(slot), 32))
        return 46;
    if (check_image(slot, &info) != IMAGE_VALID) {
        out[0] = 2;
        return 46;
    }
    out[0] = 1;
    memcpy(out + 2, info.version, 8);
    wr32(out + 10, info.total_size);
    sha256(flash_mem() + slot_base(slot), info.total_size, out + 14);
    return 46;
}

static void on_hello(uint32_t seq, const uint8_t *p, uint32_t len) {
    if (len != 9)
        return send_error(seq, E_BAD_REQUEST, "HELLO payload");
    if (p[0] > PROTOCOL_VERSION || p[1] < PROTOCOL_VERSION)
        return send_error(seq, E_UNSUPPORTED_VERSION, "this MCU speaks version 1");
    uint32_t offer = p[2] | (uint32_t)p[3] << 8, chunk = 16;
    if (offer > MAX_CHUNK)
        offer = MAX_CHUNK;
    if (offer < 16)
        return send_error(seq, E_BAD_REQUEST, "chunk size below 16 bytes");
    while (chunk * 2 <= offer)
        chunk *= 2;
    chunk_size = chunk;
    uint32_t window = p[4] < WINDOW ? p[4] : WINDOW;
    reply[0] = PROTOCOL_VERSION;
    wr16(reply + 1, chunk);
    reply[3] = (uint8_t)(window ? window : 1);
    wr32(reply + 4, (FEATURE_RESUME | FEATURE_SIGNATURE) & rd32(p + 5));
    memcpy(reply + 8, DEVICE, sizeof(DEVICE) - 1);
    send(HELLO_REPLY, seq, reply, 8 + sizeof(DEVICE) - 1);
}

static void on_info(uint32_t seq) {
    struct trailers t;
    read_trailers(&t);
    wr32(reply, SLOT_SECTORS * SECTOR_SIZE);
    wr32(reply + 4, SLOT_CAPACITY);
    wr16(reply + 8, WRITE_ALIGN);
    wr32(reply + 10, SECTOR_SIZE);
    wr32(reply + 14, ARENA_SIZE);
    reply[18] = MODEL_UNSUPPORTED;
    uint8_t primary = 0x1 | (on_trial(&t) ? 0 : 0x2);
    uint8_t secondary = (t.request == SWAP_TEST ? 0x4 : 0) | (t.request == SWAP_REVERT ? 0x8 : 0);
    slot_info(PRIMARY, primary, reply + 19);
    slot_info(SECONDARY, secondary, reply + 65);
    send(INFO_REPLY, seq, reply, 111);
}

static void on_begin(uint32_t seq, const uint8_t *p, uint32_t len) {
    if (len != 37)
        return send_error(seq, E_BAD_REQUEST, "BEGIN payload");
    if (trial())
        return send_error(seq, E_BUSY, "running image is on trial: confirm or revert first");
    uint32_t size = rd32(p);
    if (size > SLOT_CAPACITY)
        return send_error(seq, E_TOO_LARGE, "image larger than the slot");
    if (size == 0)
        return send_error(seq, E_BAD_REQUEST, "empty image");
    if (upload_begin(size, p + 4, p[36] & 1))
        return send_error(seq, E_FLASH, "flash write failed");
    wr32(reply, upload_received());
    sha256(flash_mem() + slot_base(SECONDARY), upload_received(), reply + 4);
    send(BEGIN_REPLY, seq, reply, 36);
}

static void on_data(uint32_t seq, const uint8_t *p, uint32_t len) {
    if (len < 5)
        return send_error(seq, E_BAD_REQUEST, "DATA payload");
    if (!upload_active())
        return send_error(seq, E_BAD_STATE, "DATA before BEGIN");
    uint32_t offset = rd32(p), n = len - 4;
    if (n > chunk_size)
        return send_error(seq, E_BAD_REQUEST, "chunk larger than negotiated");
    if (offset == upload_received() && offset + n > upload_size())
        return send_error(seq, E_BAD_REQUEST, "DATA past the announced size");
    if (upload_accept(offset, p + 4, n) == UPLOAD_FLASH_ERROR)
        return send_error(seq, E_FLASH, "flash write failed");
    wr32(reply, upload_received());
    send(ACK, seq, reply, 4);
}

static void on_finish(uint32_t seq) {
    struct image_info info;
    uint8_t digest[32];
    if (!upload_active() || upload_received() != upload_size())
        return send_error(seq, E_BAD_STATE, "upload not complete");
    sha256(flash_mem() + slot_base(SECONDARY), upload_size(), digest);
    if (!same(digest, upload_sha(), 32))
        return send_error(seq, E_HASH_MISMATCH, "uploaded bytes do not match the hash");
    int verdict = check_image(SECONDARY, &info);
    if (verdict == IMAGE_UNTRUSTED)
        return send_error(seq, E_SIGNATURE, "no trusted Ed25519 key signed this image");
    if (verdict != IMAGE_VALID)
        return send_error(seq, E_IMAGE_INVALID, "not a valid MCUboot image");
    send_ok(seq);
}

static void on_test(uint32_t seq) {
    struct image_info info;
    if (trial())
        return send_error(seq, E_BUSY, "running image is on trial: confirm or revert first");
    int verdict = check_image(SECONDARY, &info);
    if (verdict == IMAGE_UNTRUSTED)
        return send_error(seq, E_SIGNATURE, "no trusted Ed25519 key signed this image");
    if (verdict != IMAGE_VALID)
        return send_error(seq, E_NO_IMAGE, "secondary slot holds no valid image");
    if (request_swap(SWAP_TEST))
        return send_error(seq, E_FLASH, "flash write failed");
    send_ok(seq);
}

static void on_confirm(uint32_t seq) {
    if (!booted_valid)
        return send_error(seq, E_NO_IMAGE, "no verified image is running");
    if (confirm_image())
        return send_error(seq, E_FLASH, "flash write failed");
    send_ok(seq);
}

static void on_revert(uint32_t seq) {
    struct image_info info;
    uint32_t size;
    uint8_t sha[32];
    if (trial())
        return send_ok(seq);
    if (read_upload_record(&size, sha))
        return send_error(seq, E_NO_IMAGE,
                          "secondary slot holds a new upload, not the previous image");
    if (check_image(SECONDARY, &info) != IMAGE_VALID)
        return send_error(seq, E_NO_IMAGE, "no previous image to revert to");
    if (request_swap(SWAP_REVERT))
        return send_error(seq, E_FLASH, "flash write failed");
    send_ok(seq);
}

static void dispatch(uint8_t type, uint32_t seq, const uint8_t *p, uint32_t len) {
    if (!chunk_size && type != HELLO)
        return send_error(seq, E_BAD_STATE, "HELLO first");
    switch (type) {
    case HELLO: return on_hello(seq, p, len);
    case INFO: return on_info(seq);
    case BEGIN: return on_begin(seq, p, len);
    case DATA: return on_data(seq, p, len);
    case FINISH: return on_finish(seq);
    case TEST: return on_test(seq);
    case CONFIRM: return on_confirm(seq);
    case REVERT: return on_revert(seq);
    case REBOOT:
        send_ok(seq);
        for (volatile int i = 0; i < 200000; i++) {
        }
        system_reset();
        return;
    case INFER: return send_error(seq, E_UNSUPPORTED, "no model runtime on this target");
    default: return send_error(seq, E_BAD_REQUEST, "not a request");
    }
}

/* Unstuff rx[0..rx_len) into frame[], check the CRC, dispatch. Bad frames are dropped. */
static void on_frame(void) {
    uint32_t in = 0, out = 0;
    while (in < rx_len) {
        uint8_t code = rx[in];
        if (code == 0 || in + code > rx_len)
            return;
        for (uint32_t i = 1; i < code; i++)
            frame[out++] = rx[in + i];
        in += code;
        if (code != 0xFF && in < rx_len)
            frame[out++] = 0;
    }
    if (out < 7 || crc32(frame, out - 4) != rd32(frame + out - 4))
        return;
    dispatch(frame[0], frame[1] | (uint32_t)frame[2] << 8, frame + 3, out - 7);
}

int main(void) {
    uart_init();
    if (flash_open() == 0 && boot() == 0) {
        struct image_info info;
        booted_valid = check_image(PRIMARY, &info) == IMAGE_VALID;
    }
    for (;;) {
        int c = uart_getc();
        if (c < 0)
            continue;
        if (c == 0) {
            if (!rx_overflow && rx_len)
                on_frame();
            rx_len = 0;
            rx_overflow = 0;
        } else if (rx_len < sizeof(rx)) {
            rx[rx_len++] = (uint8_t)c;
        } else {
            rx_overflow = 1;
        }
    }
}
