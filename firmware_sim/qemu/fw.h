/* edgefleet MCU firmware for QEMU mps2-an385: shared declarations. */
#ifndef FW_H
#define FW_H

#include <stddef.h>
#include <stdint.h>

/* Flash layout: [primary: SLOT_SECTORS][secondary: SLOT_SECTORS][scratch], as in layout.py. */
#define SECTOR_SIZE 4096u
#define SLOT_SECTORS 16u
#define WRITE_ALIGN 8u
#define SECTOR_COUNT (2u * SLOT_SECTORS + 1u)
#define FLASH_SIZE (SECTOR_SIZE * SECTOR_COUNT)
#define IMAGE_SECTORS (SLOT_SECTORS - 1u)
#define SLOT_CAPACITY (IMAGE_SECTORS * SECTOR_SIZE)

enum slot { PRIMARY = 0, SECONDARY = 1 };

/* hal.c: UART, semihosting-backed flash (a host file), reset. */
void uart_init(void);
int uart_getc(void);
void uart_write(const uint8_t *data, size_t len);
int flash_open(void);
const uint8_t *flash_mem(void);
int flash_erase(uint32_t sector);
int flash_write(uint32_t offset, const uint8_t *data, uint32_t len);
int flash_is_erased(uint32_t offset, uint32_t len);
void system_reset(void);

/* sha256.c */
typedef struct {
    uint32_t state[8];
    uint64_t length;
    uint8_t block[64];
    uint32_t used;
} sha256_ctx;
void sha256_init(sha256_ctx *ctx);
void sha256_update(sha256_ctx *ctx, const uint8_t *data, size_t len);
void sha256_final(sha256_ctx *ctx, uint8_t out[32]);
void sha256(const uint8_t *data, size_t len, uint8_t out[32]);
uint32_t crc32(const uint8_t *data, size_t len);

/* sha512.c */
typedef struct {
    uint64_t state[8];
    uint64_t length;
    uint8_t block[128];
    uint32_t used;
} sha512_ctx;
void sha512_init(sha512_ctx *ctx);
void sha512_update(sha512_ctx *ctx, const uint8_t *data, size_t len);
void sha512_final(sha512_ctx *ctx, uint8_t out[64]);

/* ed25519.c: 1 if ``signature`` is ``public_key``'s signature of ``message``, else 0. */
int ed25519_verify(const uint8_t signature[64], const uint8_t public_key[32],
                   const uint8_t *message, size_t len);

/* boot.c: MCUboot-style trailers, swap, image check (hash and Ed25519 signature). */
enum swap_type { SWAP_NONE = 0, SWAP_TEST = 1, SWAP_REVERT = 2 };

struct trailers {
    int swap_type;
    uint32_t swap_sectors;
    int copy_done;
    int image_ok;
    int request;
};

struct image_info {
    int valid;
    uint8_t version[8];
    uint32_t header_size;
    uint32_t image_size;
    uint32_t total_size;
    uint8_t hash[32]; /* SHA-256 of the covered bytes: the SHA-256 TLV's value */
};

uint32_t slot_base(int slot);
uint32_t trailer_offset(int slot);
uint32_t slot_sector(int slot, uint32_t index);
void read_trailers(struct trailers *t);
int on_trial(const struct trailers *t);
/* IMAGE_UNTRUSTED: well formed, hash right (version, sizes, hash filled), no trusted signature. */
enum image_check { IMAGE_MALFORMED = 0, IMAGE_VALID = 1, IMAGE_UNTRUSTED = 2 };
int check_image(int slot, struct image_info *info);
int boot(void);
int request_swap(int kind);
int confirm_image(void);
int read_upload_record(uint32_t *size, uint8_t sha[32]);
int write_upload_record(uint32_t size, const uint8_t sha[32]);
int uploaded_flag(uint32_t index);
int set_uploaded_flag(uint32_t index);

/* upload.c: the image upload into the secondary slot, resumable after a power cut. MAX_CHUNK is
 * the most one upload_accept takes (and the chunk the edgefleet protocol offers at most). */
#define MAX_CHUNK 1024u
enum upload_result { UPLOAD_TAKEN = 0, UPLOAD_IGNORED = 1, UPLOAD_FLASH_ERROR = -1 };
int upload_begin(uint32_t size, const uint8_t sha[32], int restart);
int upload_accept(uint32_t offset, const uint8_t *data, uint32_t n);
int upload_active(void);
uint32_t upload_size(void);
uint32_t upload_received(void);
const uint8_t *upload_sha(void);
void upload_end(void);

/* mem.c: what gcc may call for struct copies and clears in a freestanding build. */
void *memset(void *dst, int value, size_t len);
void *memcpy(void *dst, const void *src, size_t len);

#endif
