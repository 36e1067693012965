/* The application of the SMP build: boots through the bootloader, then serves SMP (mcumgr) on
 * the UART as a Zephyr application does, with the semantics of firmware_sim/smp_server.py.
 *
 * Packets come and go through the console framing of smp_frame.c. Groups: image (state read
 * and write, upload with resume, erase) and OS (echo, reset, params).
 */
#include "cbor.h"
#include "fw.h"
#include "smp_frame.h"

#define HDR 8u
#define BUF_COUNT 4u

enum { OP_READ = 0, OP_READ_RSP = 1, OP_WRITE = 2, OP_WRITE_RSP = 3 };
enum { GROUP_OS = 0, GROUP_IMAGE = 1 };
enum { IMG_STATE = 0, IMG_UPLOAD = 1, IMG_ERASE = 5 };
enum { OS_ECHO = 0, OS_RESET = 5, OS_PARAMS = 6 };
/* MGMT_ERR (rc) and IMG_MGMT_ERR (err.rc) codes, as the smp package numbers them. */
enum { MGMT_EUNKNOWN = 1, MGMT_EINVAL = 3, MGMT_EBADSTATE = 6, MGMT_ENOTSUP = 8 };
enum {
    IMG_INVALID_TLV = 5, IMG_HASH_NOT_FOUND = 8, IMG_NO_FREE_SLOT = 9,
    IMG_FLASH_WRITE_FAILED = 12, IMG_INVALID_SLOT = 14, IMG_INVALID_LENGTH = 21,
    IMG_INVALID_IMAGE_HEADER = 22, IMG_INVALID_HASH = 24, IMG_ALREADY_PENDING = 28,
    IMG_TOO_LARGE = 30, IMG_DATA_OVERRUN = 31, IMG_CONFIRMATION_DENIED = 32,
    IMG_TEST_TO_ACTIVE_DENIED = 33
};
enum next_boot { NORMAL, TEST, REVERT, PERMANENT };

static uint8_t body[SMP_SEND_MAX];

static int reset_pending;
static int upload_has_sha;

/* -- replies ------------------------------------------------------------------------ */

struct request {
    uint8_t op, version, seq, command;
    uint16_t group;
    const uint8_t *cbor;
    uint32_t len;
};

static struct cbor_out reply;

static void reply_start(void) {
    reply.buf = body + HDR;
    reply.cap = sizeof(body) - HDR;
    reply.len = 0;
    reply.overflow = 0;
}

static void reply_send(const struct request *rq) {
    if (reply.overflow) { /* never expected: answer that the reply did not fit */
        reply_start();
        cbor_map(&reply, 1);
        cbor_text(&reply, "rc");
        cbor_uint(&reply, MGMT_EUNKNOWN);
    }
    body[0] = (uint8_t)(rq->version << 3 | (rq->op == OP_READ ? OP_READ_RSP : OP_WRITE_RSP));
    body[1] = 0;
    body[2] = (uint8_t)(reply.len >> 8);
    body[3] = (uint8_t)reply.len;
    body[4] = (uint8_t)(rq->group >> 8);
    body[5] = (uint8_t)rq->group;
    body[6] = rq->seq;
    body[7] = rq->command;
    smp_frame_send(body, HDR + reply.len, uart_write);
}

static void mgmt_error(const struct request *rq, uint32_t rc) {
    reply_start();
    cbor_map(&reply, 1);
    cbor_text(&reply, "rc");
    cbor_uint(&reply, rc);
    reply_send(rq);
}

static void group_error(const struct request *rq, uint32_t rc) {
    reply_start();
    cbor_map(&reply, 1);
    cbor_text(&reply, "err");
    cbor_map(&reply, 2);
    cbor_text(&reply, "group");
    cbor_uint(&reply, rq->group);
    cbor_text(&reply, "rc");
    cbor_uint(&reply, rc);
    reply_send(rq);
}

/* -- image group: state ------------------------------------------------------------- */

static int next_boot(void) {
    struct trailers t;
    read_trailers(&t);
    if (on_trial(&t))
        return REVERT;
    if (t.request == SWAP_TEST)
        return TEST;
    return t.request == SWAP_REVERT ? PERMANENT : NORMAL;
}

static void version_text(struct cbor_out *o, const uint8_t v[8]) {
    uint8_t text[32];
    uint32_t n = 0, parts[4] = {v[0], v[1], (uint32_t)v[2] | (uint32_t)v[3] << 8,
                                 v[4] | (uint32_t)v[5] << 8 | (uint32_t)v[6] << 16 |
                                     (uint32_t)v[7] << 24};
    for (int i = 0; i < (parts[3] ? 4 : 3); i++) {
        uint8_t digits[10];
        int d = 0;
        uint32_t x = parts[i];
        do {
            digits[d++] = (uint8_t)('0' + x % 10);
            x /= 10;
        } while (x);
        if (i)
            text[n++] = '.';
        while (d)
            text[n++] = digits[--d];
    }
    cbor_text_n(o, text, n);
}

static int slot_image(int slot, struct image_info *info) {
    return check_image(slot, info) != IMAGE_MALFORMED;
}

static void state_reply(const struct request *rq) {
    struct image_info info[2];
    int present[2], kind = next_boot();
    present[0] = slot_image(PRIMARY, &info[0]);
    present[1] = slot_image(SECONDARY, &info[1]);
    reply_start();
    cbor_map(&reply, 2);
    cbor_text(&reply, "images");
    cbor_array(&reply, (uint32_t)(present[0] + present[1]));
    for (int slot = 0; slot < 2; slot++) {
        if (!present[slot])
            continue;
        int primary = slot == PRIMARY;
        cbor_map(&reply, 8);
        cbor_text(&reply, "slot");
        cbor_uint(&reply, (uint32_t)slot);
        cbor_text(&reply, "version");
        version_text(&reply, info[slot].version);
        cbor_text(&reply, "hash");
        cbor_bytes(&reply, info[slot].hash, 32);
        cbor_text(&reply, "bootable");
        cbor_bool(&reply, 1);
        cbor_text(&reply, "pending");
        cbor_bool(&reply, !primary && (kind == TEST || kind == PERMANENT));
        cbor_text(&reply, "confirmed");
        cbor_bool(&reply, primary ? kind != REVERT : kind == REVERT);
        cbor_text(&reply, "active");
        cbor_bool(&reply, primary);
        cbor_text(&reply, "permanent");
        cbor_bool(&reply, !primary && kind == PERMANENT);
    }
    cbor_text(&reply, "splitStatus");
    cbor_uint(&reply, 0);
    reply_send(rq);
}

static void state_write(const struct request *rq) {
    struct cbor_item hash, confirm;
    int has_hash = cbor_map_get(rq->cbor, rq->len, "hash", &hash);
    int has_confirm = cbor_map_get(rq->cbor, rq->len, "confirm", &confirm);
    if (has_hash < 0 || has_confirm < 0 || (has_hash && hash.kind != CBOR_BYTES) ||
        (has_confirm && confirm.kind != CBOR_BOOL))
        return mgmt_error(rq, MGMT_EINVAL);
    int conf = has_confirm && confirm.value;
    int slot = PRIMARY;
    if (!has_hash || !hash.len) {
        if (!conf)
            return group_error(rq, IMG_INVALID_HASH);
    } else {
        struct image_info info;
        if (hash.len != 32)
            return group_error(rq, IMG_INVALID_HASH);
        slot = -1;
        for (int s = PRIMARY; s <= SECONDARY && slot < 0; s++) {
            int i = 0;
            if (slot_image(s, &info))
                while (i < 32 && info.hash[i] == hash.data[i])
                    i++;
            if (i == 32)
                slot = s;
        }
        if (slot < 0)
            return group_error(rq, IMG_HASH_NOT_FOUND);
    }
    int kind = next_boot();
    if (!conf && slot == PRIMARY)
        return group_error(rq, IMG_TEST_TO_ACTIVE_DENIED);
    if (kind == TEST) {
        if (conf)
            return group_error(rq, IMG_ALREADY_PENDING);
    } else if (kind == REVERT) {
        if (!conf)
            return group_error(rq, IMG_ALREADY_PENDING);
        if (slot == PRIMARY && confirm_image())
            return group_error(rq, IMG_FLASH_WRITE_FAILED);
    } else if (kind == PERMANENT) {
        if (slot == PRIMARY || !conf)
            return group_error(rq, IMG_ALREADY_PENDING);
    } else if (conf && slot == SECONDARY) {
        return group_error(rq, IMG_CONFIRMATION_DENIED);
    } else if (!conf) {
        struct image_info info;
        int verdict = check_image(SECONDARY, &info);
        if (verdict == IMAGE_UNTRUSTED)
            return group_error(rq, IMG_INVALID_TLV);
        if (verdict != IMAGE_VALID)
            return group_error(rq, IMG_INVALID_IMAGE_HEADER);
        if (request_swap(SWAP_TEST))
            return group_error(rq, IMG_FLASH_WRITE_FAILED);
    }
    state_reply(rq);
}

/* -- image group: upload and erase -------------------------------------------------- */

static int slot_in_use(void) { return next_boot() != NORMAL; }

static void offset_reply(const struct request *rq, int match) {
    reply_start();
    cbor_map(&reply, match < 0 ? 1 : 2);
    cbor_text(&reply, "off");
    cbor_uint(&reply, upload_received());
    if (match >= 0) {
        cbor_text(&reply, "match");
        cbor_bool(&reply, match);
    }
    reply_send(rq);
}

/* Offset 0 with a length: start, or resume what flash holds of the same length and SHA-256. */
static int upload_start(const struct cbor_item *len, const struct cbor_item *sha, int has_sha) {
    static const uint8_t zero[32];
    if (slot_in_use())
        return IMG_NO_FREE_SLOT;
    if (has_sha && sha->len != 32)
        return IMG_INVALID_HASH;
    if (upload_active() && upload_size() == len->value && upload_has_sha == has_sha) {
        const uint8_t *held = upload_sha();
        int i = 0;
        while (has_sha && i < 32 && held[i] == sha->data[i])
            i++;
        if (!has_sha || i == 32)
            return 0; /* the same upload begun again: carry on where it is */
    }
    if (len->value > SLOT_CAPACITY)
        return IMG_TOO_LARGE;
    if (len->value == 0)
        return IMG_INVALID_LENGTH;
    if (upload_begin(len->value, has_sha ? sha->data : zero, !has_sha))
        return IMG_FLASH_WRITE_FAILED;
    upload_has_sha = has_sha;
    return 0;
}

static void upload(const struct request *rq) {
    struct cbor_item image, off, len, sha, data;
    int has_image = cbor_map_get(rq->cbor, rq->len, "image", &image);
    int has_off = cbor_map_get(rq->cbor, rq->len, "off", &off);
    int has_len = cbor_map_get(rq->cbor, rq->len, "len", &len);
    int has_sha = cbor_map_get(rq->cbor, rq->len, "sha", &sha);
    int has_data = cbor_map_get(rq->cbor, rq->len, "data", &data);
    if (has_image < 0 || has_off < 0 || has_len < 0 || has_sha < 0 || has_data < 0 ||
        !has_off || off.kind != CBOR_UINT || (has_len && len.kind != CBOR_UINT) ||
        (has_sha && sha.kind != CBOR_BYTES) || (has_data && data.kind != CBOR_BYTES))
        return mgmt_error(rq, MGMT_EINVAL);
    if (has_image && (image.kind != CBOR_UINT || image.value != 0))
        return group_error(rq, IMG_INVALID_SLOT);
    if (off.value == 0) {
        if (has_len) {
            int rc = upload_start(&len, &sha, has_sha);
            if (rc)
                return group_error(rq, (uint32_t)rc);
        } else if (!upload_active()) {
            return group_error(rq, IMG_INVALID_LENGTH);
        }
    }
    if (!upload_active())
        return group_error(rq, IMG_INVALID_LENGTH);
    uint32_t n = has_data ? data.len : 0;
    if (off.value != upload_received() || !n)
        return offset_reply(rq, -1);
    if (off.value + n > upload_size())
        return group_error(rq, IMG_DATA_OVERRUN);
    if (upload_accept(off.value, data.data, n) == UPLOAD_FLASH_ERROR)
        return group_error(rq, IMG_FLASH_WRITE_FAILED);
    if (upload_received() < upload_size() || !upload_has_sha)
        return offset_reply(rq, -1);
    uint8_t digest[32];
    sha256(flash_mem() + slot_base(SECONDARY), upload_size(), digest);
    const uint8_t *want = upload_sha();
    int match = 1;
    for (int i = 0; i < 32; i++)
        match &= digest[i] == want[i];
    offset_reply(rq, match);
    upload_end();
}

static void erase(const struct request *rq) {
    struct cbor_item slot;
    int has_slot = cbor_map_get(rq->cbor, rq->len, "slot", &slot);
    if (has_slot < 0)
        return mgmt_error(rq, MGMT_EINVAL);
    if (has_slot && (slot.kind != CBOR_UINT || slot.value != 1))
        return group_error(rq, IMG_INVALID_SLOT);
    if (slot_in_use())
        return mgmt_error(rq, MGMT_EBADSTATE);
    for (uint32_t i = 0; i < SLOT_SECTORS; i++) {
        uint32_t sector = slot_sector(SECONDARY, i);
        if (!flash_is_erased(sector * SECTOR_SIZE, SECTOR_SIZE) && flash_erase(sector))
            return group_error(rq, IMG_FLASH_WRITE_FAILED);
    }
    upload_end();
    reply_start();
    cbor_map(&reply, 0);
    reply_send(rq);
}

/* -- OS group ----------------------------------------------------------------------- */

static void echo(const struct request *rq) {
    struct cbor_item d;
    if (cbor_map_get(rq->cbor, rq->len, "d", &d) != 1 || d.kind != CBOR_TEXT)
        return mgmt_error(rq, MGMT_EINVAL);
    reply_start();
    cbor_map(&reply, 1);
    cbor_text(&reply, "r");
    cbor_text_n(&reply, d.data, d.len);
    reply_send(rq);
}

static void params(const struct request *rq) {
    reply_start();
    cbor_map(&reply, 2);
    cbor_text(&reply, "buf_size");
    cbor_uint(&reply, SMP_PACKET_MAX);
    cbor_text(&reply, "buf_count");
    cbor_uint(&reply, BUF_COUNT);
    reply_send(rq);
}

static void dispatch(const uint8_t *p, uint32_t n) {
    if (n < HDR)
        return; /* nothing trustworthy to answer to: Zephyr drops it too */
    struct request rq = {
        .op = p[0] & 7, .version = p[0] >> 3 & 3, .seq = p[6], .command = p[7],
        .group = (uint16_t)(p[4] << 8 | p[5]), .cbor = p + HDR, .len = n - HDR,
    };
    if ((uint32_t)(p[2] << 8 | p[3]) != n - HDR)
        return mgmt_error(&rq, MGMT_EINVAL);
    struct cbor_item unused;
    if (cbor_map_get(rq.cbor, rq.len, "", &unused) < 0)
        return mgmt_error(&rq, MGMT_EINVAL);
    int write = rq.op == OP_WRITE, read = rq.op == OP_READ;
    if (rq.group == GROUP_IMAGE && rq.command == IMG_STATE && read)
        return state_reply(&rq);
    if (rq.group == GROUP_IMAGE && rq.command == IMG_STATE && write)
        return state_write(&rq);
    if (rq.group == GROUP_IMAGE && rq.command == IMG_UPLOAD && write)
        return upload(&rq);
    if (rq.group == GROUP_IMAGE && rq.command == IMG_ERASE && write)
        return erase(&rq);
    if (rq.group == GROUP_OS && rq.command == OS_ECHO && write)
        return echo(&rq);
    if (rq.group == GROUP_OS && rq.command == OS_RESET && write) {
        reset_pending = 1;
        reply_start();
        cbor_map(&reply, 0);
        return reply_send(&rq);
    }
    if (rq.group == GROUP_OS && rq.command == OS_PARAMS && read)
        return params(&rq);
    mgmt_error(&rq, MGMT_ENOTSUP);
}

int main(void) {
    uart_init();
    if (flash_open() == 0)
        boot();
    smp_frame_reset();
    for (;;) {
        int c = uart_getc();
        if (c < 0)
            continue;
        uint32_t n = smp_frame_byte((uint8_t)c);
        if (n)
            dispatch(smp_frame_packet(), n);
        if (c == '\n' && reset_pending) {
            for (volatile int i = 0; i < 200000; i++) {
            }
            system_reset();
        }
    }
}
