/* Receiving an image into the secondary slot a sector at a time, so it can resume (as
 * firmware_sim/upload.py): chunks collect in a one-sector RAM buffer; a full sector is erased,
 * written, then flagged "uploaded" in the secondary trailer. After a power cut the flagged
 * sectors are kept and the upload resumes after them. Both application protocols use it.
 */
#include "fw.h"

static struct {
    int active;
    uint32_t size, received, buffered;
    uint8_t sha[32];
    uint8_t buf[SECTOR_SIZE + MAX_CHUNK];
} up;

static int same(const uint8_t *a, const uint8_t *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static uint32_t held(uint32_t size) {
    uint32_t count = 0;
    while (count * SECTOR_SIZE < size && uploaded_flag(count))
        count++;
    return count * SECTOR_SIZE < size ? count * SECTOR_SIZE : size;
}

int upload_begin(uint32_t size, const uint8_t sha[32], int restart) {
    uint32_t old_size;
    uint8_t old_sha[32];
    int keep = !restart && read_upload_record(&old_size, old_sha) && old_size == size &&
               same(old_sha, sha, 32);
    up.active = 0;
    if (!keep && (flash_erase(slot_sector(SECONDARY, IMAGE_SECTORS)) ||
                  write_upload_record(size, sha)))
        return -1;
    up.active = 1;
    up.size = size;
    for (int i = 0; i < 32; i++)
        up.sha[i] = sha[i];
    up.received = held(size);
    up.buffered = 0;
    return 0;
}

int upload_active(void) { return up.active; }
uint32_t upload_size(void) { return up.active ? up.size : 0; }
uint32_t upload_received(void) { return up.active ? up.received : 0; }
const uint8_t *upload_sha(void) { return up.sha; }
void upload_end(void) { up.active = 0; }

static int flush_sector(void) {
    static uint8_t out[SECTOR_SIZE];
    uint32_t n = up.buffered < SECTOR_SIZE ? up.buffered : SECTOR_SIZE;
    uint32_t index = (up.received - up.buffered) / SECTOR_SIZE;
    uint32_t padded = (n + WRITE_ALIGN - 1) / WRITE_ALIGN * WRITE_ALIGN;
    for (uint32_t i = 0; i < padded; i++)
        out[i] = i < n ? up.buf[i] : 0xFF;
    uint32_t sector = slot_sector(SECONDARY, index);
    if (flash_erase(sector) || flash_write(sector * SECTOR_SIZE, out, padded) ||
        set_uploaded_flag(index))
        return -1;
    for (uint32_t i = n; i < up.buffered; i++)
        up.buf[i - n] = up.buf[i];
    up.buffered -= n;
    return 0;
}

int upload_accept(uint32_t offset, const uint8_t *data, uint32_t n) {
    if (!up.active || offset != up.received || n > MAX_CHUNK || offset + n > up.size)
        return UPLOAD_IGNORED;
    for (uint32_t i = 0; i < n; i++)
        up.buf[up.buffered + i] = data[i];
    up.buffered += n;
    up.received += n;
    while (up.buffered >= SECTOR_SIZE || (up.buffered && up.received == up.size))
        if (flush_sector())
            return UPLOAD_FLASH_ERROR;
    return UPLOAD_TAKEN;
}
