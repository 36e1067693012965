/* MCUboot-style bootloader: the same trailers and swap as firmware_sim/bootloader.py.
 *
 * Primary trailer: swap header record at 0, copy_done at 32, image_ok at 48, swap status from
 * 64 (three flags per sector). Secondary trailer: swap request at 0, upload record at 32,
 * "sector uploaded" flags from 128. A record is payload | CRC32 (a torn one reads as absent);
 * a flag counts as set once any byte of it is written, because it is written after its work.
 */
#include "fw.h"
#include "trusted_keys.h"

/* DER SubjectPublicKeyInfo of an Ed25519 key, up to the 32 key bytes (RFC 8410). */
static const uint8_t SPKI_PREFIX[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                        0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

#define OFF_SWAP_HEADER 0u
#define OFF_COPY_DONE 32u
#define OFF_IMAGE_OK 48u
#define OFF_STATUS 64u
#define OFF_REQUEST 0u
#define OFF_UPLOAD 32u
#define OFF_UPLOADED 128u
#define RECORD_ROOM 32u

#define IMAGE_MAGIC 0x96f3b83du
#define TLV_INFO_MAGIC 0x6907u
#define TLV_PROT_INFO_MAGIC 0x6908u
#define TLV_KEYHASH 0x01u
#define TLV_PUBKEY 0x02u
#define TLV_SHA256 0x10u
#define TLV_ED25519 0x24u
#define TLV_SIG_PURE 0x25u

static const uint8_t BOOT_MAGIC[16] = {0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f,
                                       0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80};

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint32_t slot_sector(int slot, uint32_t index) { return (uint32_t)slot * SLOT_SECTORS + index; }
uint32_t slot_base(int slot) { return slot_sector(slot, 0) * SECTOR_SIZE; }
static uint32_t trailer_sector(int slot) { return slot_sector(slot, IMAGE_SECTORS); }
uint32_t trailer_offset(int slot) { return trailer_sector(slot) * SECTOR_SIZE; }
static uint32_t scratch_sector(void) { return 2u * SLOT_SECTORS; }

static int flag_set(uint32_t offset) { return !flash_is_erased(offset, WRITE_ALIGN); }

static int set_flag(uint32_t offset) {
    static const uint8_t ones[WRITE_ALIGN] = {1, 1, 1, 1, 1, 1, 1, 1};
    return flag_set(offset) ? 0 : flash_write(offset, ones, WRITE_ALIGN);
}

/* A record's payload if its CRC matches, else NULL. */
static const uint8_t *read_record(uint32_t offset, uint32_t size) {
    const uint8_t *raw = flash_mem() + offset;
    return crc32(raw, size) == rd32(raw + size) ? raw : 0;
}

static int write_record(uint32_t offset, const uint8_t *payload, uint32_t size) {
    uint8_t buf[48];
    uint32_t total = (size + 4 + WRITE_ALIGN - 1) / WRITE_ALIGN * WRITE_ALIGN;
    for (uint32_t i = 0; i < total; i++)
        buf[i] = i < size ? payload[i] : 0;
    wr32(buf + size, crc32(payload, size));
    return flash_write(offset, buf, total);
}

static int magic_ok(const uint8_t *rec) {
    for (int i = 0; i < 16; i++)
        if (rec[i] != BOOT_MAGIC[i])
            return 0;
    return rec[16] == SWAP_TEST || rec[16] == SWAP_REVERT;
}

void read_trailers(struct trailers *t) {
    uint32_t primary = trailer_offset(PRIMARY);
    const uint8_t *header = read_record(primary + OFF_SWAP_HEADER, 20);
    t->swap_type = SWAP_NONE;
    t->swap_sectors = 0;
    if (header && magic_ok(header)) {
        t->swap_type = header[16];
        t->swap_sectors = rd16(header + 18);
        if (t->swap_sectors > IMAGE_SECTORS)
            t->swap_sectors = IMAGE_SECTORS;
    }
    const uint8_t *request = read_record(trailer_offset(SECONDARY) + OFF_REQUEST, 17);
    t->request = request && magic_ok(request) ? request[16] : SWAP_NONE;
    t->copy_done = flag_set(primary + OFF_COPY_DONE);
    t->image_ok = flag_set(primary + OFF_IMAGE_OK);
}

int on_trial(const struct trailers *t) {
    return t->swap_type == SWAP_TEST && t->copy_done && !t->image_ok;
}

static int same(const uint8_t *a, const uint8_t *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* KEYHASH as imgtool writes it: SHA-256 of the key's DER SubjectPublicKeyInfo. */
static void key_hash(const uint8_t key[32], uint8_t out[32]) {
    sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, SPKI_PREFIX, sizeof(SPKI_PREFIX));
    sha256_update(&ctx, key, 32);
    sha256_final(&ctx, out);
}

/* As firmware_sim/mcuboot_image.py: every trusted key is a candidate until a KEYHASH (or
 * PUBKEY) TLV names one; an ED25519 TLV then counts if a candidate's signature checks out. */
#if TRUSTED_KEY_COUNT == 0
static int signed_by_trusted(const uint8_t *d, uint32_t start, uint32_t end, const uint8_t *msg,
                             uint32_t msg_len) {
    (void)d, (void)start, (void)end, (void)msg, (void)msg_len, (void)key_hash;
    return 0; /* built without TRUSTED_KEY: no image is trusted */
}
#else
static int signed_by_trusted(const uint8_t *d, uint32_t start, uint32_t end, const uint8_t *msg,
                             uint32_t msg_len) {
    uint32_t candidates = (1u << TRUSTED_KEY_COUNT) - 1u;
    for (uint32_t cur = start; cur < end;) {
        uint32_t kind = d[cur], len = rd16(d + cur + 2);
        const uint8_t *value = d + cur + 4;
        cur += 4 + len;
        for (int k = 0; k < TRUSTED_KEY_COUNT; k++) {
            uint8_t id[32];
            if (kind == TLV_KEYHASH) {
                key_hash(TRUSTED_KEYS[k], id);
                if (len != 32 || !same(id, value, 32))
                    candidates &= ~(1u << k);
            } else if (kind == TLV_PUBKEY) {
                if (len != sizeof(SPKI_PREFIX) + 32 ||
                    !same(value, SPKI_PREFIX, sizeof(SPKI_PREFIX)) ||
                    !same(value + sizeof(SPKI_PREFIX), TRUSTED_KEYS[k], 32))
                    candidates &= ~(1u << k);
            } else if (kind == TLV_ED25519 && len == 64 && candidates >> k & 1 &&
                       ed25519_verify(value, TRUSTED_KEYS[k], msg, msg_len)) {
                return 1;
            }
        }
    }
    return 0;
}
#endif

/* Parse an imgtool image in ``slot``: its SHA-256 TLV must match and (MCUboot's rule) a trusted
 * key must have signed the digest, or with SIG_PURE the covered bytes themselves. */
int check_image(int slot, struct image_info *info) {
    const uint8_t *d = flash_mem() + slot_base(slot);
    info->valid = 0;
    if (rd32(d) != IMAGE_MAGIC)
        return IMAGE_MALFORMED;
    uint32_t hdr = rd16(d + 8), prot = rd16(d + 10), size = rd32(d + 12);
    if (hdr < 32 || size > SLOT_CAPACITY || hdr + size + prot + 4 > SLOT_CAPACITY)
        return IMAGE_MALFORMED;
    uint32_t off = hdr + size;
    if (prot && (rd16(d + off) != TLV_PROT_INFO_MAGIC || rd16(d + off + 2) != prot))
        return IMAGE_MALFORMED;
    off += prot;
    uint32_t covered = off;
    if (rd16(d + off) != TLV_INFO_MAGIC)
        return IMAGE_MALFORMED;
    uint32_t end = off + rd16(d + off + 2);
    if (end > SLOT_CAPACITY || end < off + 4)
        return IMAGE_MALFORMED;
    int hash_ok = 0, pure = 0;
    uint8_t digest[32];
    sha256(d, covered, digest);
    for (uint32_t cur = off + 4; cur < end;) {
        if (cur + 4 > end)
            return IMAGE_MALFORMED;
        uint32_t kind = d[cur], len = rd16(d + cur + 2);
        cur += 4;
        if (cur + len > end)
            return IMAGE_MALFORMED;
        if (kind == TLV_SHA256) {
            if (len != 32 || !same(digest, d + cur, 32))
                return IMAGE_MALFORMED;
            hash_ok = 1;
        }
        pure |= kind == TLV_SIG_PURE;
        cur += len;
    }
    if (!hash_ok && !pure)
        return IMAGE_MALFORMED;
    for (int i = 0; i < 8; i++)
        info->version[i] = d[20 + i];
    for (int i = 0; i < 32; i++)
        info->hash[i] = digest[i];
    info->header_size = hdr;
    info->image_size = size;
    info->total_size = end;
    if (!(pure ? signed_by_trusted(d, off + 4, end, d, covered)
               : signed_by_trusted(d, off + 4, end, digest, 32)))
        return IMAGE_UNTRUSTED;
    info->valid = 1;
    return IMAGE_VALID;
}

static int copy_sector(uint32_t source, uint32_t target) {
    static uint8_t buf[SECTOR_SIZE];
    const uint8_t *src = flash_mem() + source * SECTOR_SIZE;
    int blank = 1;
    for (uint32_t i = 0; i < SECTOR_SIZE; i++) {
        buf[i] = src[i];
        blank &= src[i] == 0xFF;
    }
    if (flash_erase(target))
        return -1;
    return blank ? 0 : flash_write(target * SECTOR_SIZE, buf, SECTOR_SIZE);
}

static int run_swap(int kind, uint32_t sectors) {
    for (uint32_t i = 0; i < sectors; i++) {
        uint32_t src[3] = {slot_sector(SECONDARY, i), slot_sector(PRIMARY, i), scratch_sector()};
        uint32_t dst[3] = {scratch_sector(), slot_sector(SECONDARY, i), slot_sector(PRIMARY, i)};
        for (uint32_t step = 0; step < 3; step++) {
            uint32_t status = trailer_offset(PRIMARY) + OFF_STATUS + (3 * i + step) * WRITE_ALIGN;
            if (flag_set(status))
                continue;
            if (copy_sector(src[step], dst[step]) || set_flag(status))
                return -1;
        }
    }
    if (set_flag(trailer_offset(PRIMARY) + OFF_COPY_DONE))
        return -1;
    return kind == SWAP_REVERT ? set_flag(trailer_offset(PRIMARY) + OFF_IMAGE_OK) : 0;
}

static int start_swap(int kind) {
    struct image_info incoming, current;
    if (check_image(SECONDARY, &incoming) != IMAGE_VALID) {
        if (flash_erase(trailer_sector(SECONDARY)))
            return -1;
        return kind == SWAP_REVERT ? set_flag(trailer_offset(PRIMARY) + OFF_IMAGE_OK) : 0;
    }
    uint32_t extent =
        check_image(PRIMARY, &current) == IMAGE_VALID ? current.total_size : SLOT_CAPACITY;
    if (incoming.total_size > extent)
        extent = incoming.total_size;
    uint32_t sectors = (extent + SECTOR_SIZE - 1) / SECTOR_SIZE;
    uint8_t header[20] = {0};
    for (int i = 0; i < 16; i++)
        header[i] = BOOT_MAGIC[i];
    header[16] = (uint8_t)kind;
    header[18] = (uint8_t)sectors;
    header[19] = (uint8_t)(sectors >> 8);
    if (flash_erase(trailer_sector(PRIMARY)) ||
        write_record(trailer_offset(PRIMARY) + OFF_SWAP_HEADER, header, 20) ||
        flash_erase(trailer_sector(SECONDARY)))
        return -1;
    return run_swap(kind, sectors);
}

int request_swap(int kind) {
    struct trailers t;
    read_trailers(&t);
    if (t.request == kind)
        return 0;
    uint32_t offset = trailer_offset(SECONDARY) + OFF_REQUEST;
    if (!flash_is_erased(offset, RECORD_ROOM) && flash_erase(trailer_sector(SECONDARY)))
        return -1;
    uint8_t rec[17];
    for (int i = 0; i < 16; i++)
        rec[i] = BOOT_MAGIC[i];
    rec[16] = (uint8_t)kind;
    return write_record(offset, rec, 17);
}

int confirm_image(void) {
    struct trailers t;
    read_trailers(&t);
    return on_trial(&t) ? set_flag(trailer_offset(PRIMARY) + OFF_IMAGE_OK) : 0;
}

int boot(void) {
    struct trailers t;
    read_trailers(&t);
    if (t.swap_type != SWAP_NONE && !t.copy_done) {
        if (!flash_is_erased(trailer_offset(SECONDARY), SECTOR_SIZE) &&
            flash_erase(trailer_sector(SECONDARY)))
            return -1;
        return run_swap(t.swap_type, t.swap_sectors);
    }
    if (t.request != SWAP_NONE)
        return start_swap(t.request);
    if (on_trial(&t)) {
        if (request_swap(SWAP_REVERT))
            return -1;
        return start_swap(SWAP_REVERT);
    }
    return 0;
}

int read_upload_record(uint32_t *size, uint8_t sha[32]) {
    const uint8_t *rec = read_record(trailer_offset(SECONDARY) + OFF_UPLOAD, 36);
    if (!rec)
        return 0;
    *size = rd32(rec);
    for (int i = 0; i < 32; i++)
        sha[i] = rec[4 + i];
    return 1;
}

int write_upload_record(uint32_t size, const uint8_t sha[32]) {
    uint8_t rec[36];
    wr32(rec, size);
    for (int i = 0; i < 32; i++)
        rec[4 + i] = sha[i];
    return write_record(trailer_offset(SECONDARY) + OFF_UPLOAD, rec, 36);
}

int uploaded_flag(uint32_t index) {
    return flag_set(trailer_offset(SECONDARY) + OFF_UPLOADED + index * WRITE_ALIGN);
}

int set_uploaded_flag(uint32_t index) {
    return set_flag(trailer_offset(SECONDARY) + OFF_UPLOADED + index * WRITE_ALIGN);
}
