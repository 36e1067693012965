/* Hardware access: CMSDK UART0, the flash kept in a host file via semihosting, system reset.
 *
 * The flash lives in RAM (reads) and in the host file "mcu-flash.bin" (every erase and write is
 * written through at once), so killing QEMU at any moment is a power cut and starting it again
 * is the next power-on. Writes follow the same rules as the Python flash model.
 *
 * Power cuts for tests: if the host file "power-cut" exists it holds three u32 (cut at operation
 * number, torn, operations so far). Every erase and write goes through ``operation``, which
 * counts (persisting the count across reboots) and, at the chosen one, stops QEMU, optionally
 * after doing half of the operation.
 */
#include "fw.h"

#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t *)(UART0_BASE + 0x00))
#define UART_STATE (*(volatile uint32_t *)(UART0_BASE + 0x04))
#define UART_CTRL (*(volatile uint32_t *)(UART0_BASE + 0x08))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART0_BASE + 0x10))
#define STATE_TX_FULL 0x1u
#define STATE_RX_FULL 0x2u
#define AIRCR (*(volatile uint32_t *)0xE000ED0Cu)

#define SYS_OPEN 0x01
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_SEEK 0x0A
#define SYS_FLEN 0x0C
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define MODE_RB_PLUS 3
#define MODE_WB_PLUS 7

static uint8_t mirror[FLASH_SIZE];
static int handle = -1;
static int fault_handle = -1;
static uint32_t fault[3]; /* cut at, torn, operations so far */

static int semihost(int op, void *args) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void uart_init(void) {
    UART_BAUDDIV = 16;
    UART_CTRL = 0x3;
    /* A read of DATA is what tells QEMU's UART model to take bytes that arrived while the
     * receiver was off (before this point, or across a reset); the buffer is empty here. */
    (void)UART_DATA;
}

int uart_getc(void) {
    if (!(UART_STATE & STATE_RX_FULL))
        return -1;
    return (int)(UART_DATA & 0xFF);
}

void uart_write(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        while (UART_STATE & STATE_TX_FULL) {
        }
        UART_DATA = data[i];
    }
}

static int write_at(int file, uint32_t offset, const void *data, uint32_t len) {
    uint32_t seek[2] = {(uint32_t)file, offset};
    if (semihost(SYS_SEEK, seek) != 0)
        return -1;
    uint32_t args[3] = {(uint32_t)file, (uint32_t)data, len};
    return semihost(SYS_WRITE, args) == 0 ? 0 : -1;
}

static int file_write(uint32_t offset, const uint8_t *data, uint32_t len) {
    return write_at(handle, offset, data, len);
}

static void fault_open(void) {
    static const char name[] = "power-cut";
    uint32_t open_args[3] = {(uint32_t)name, MODE_RB_PLUS, sizeof(name) - 1};
    fault_handle = semihost(SYS_OPEN, open_args);
    if (fault_handle == -1)
        return;
    uint32_t read_args[3] = {(uint32_t)fault_handle, (uint32_t)fault, sizeof(fault)};
    if (semihost(SYS_READ, read_args) != 0)
        fault_handle = -1;
}

/* The one choke point: apply an erase (data == 0) or a write, unless the power goes first. */
static int operation(uint32_t offset, const uint8_t *data, uint32_t len) {
    int cut = 0;
    if (fault_handle != -1) {
        fault[2]++;
        write_at(fault_handle, 8, &fault[2], 4);
        cut = fault[2] == fault[0];
        if (cut && !fault[1])
            semihost(SYS_EXIT, (void *)ADP_STOPPED_APPLICATION_EXIT);
        if (cut)
            len = data ? len / 2 / WRITE_ALIGN * WRITE_ALIGN : len / 2;
    }
    for (uint32_t i = 0; i < len; i++)
        mirror[offset + i] = data ? data[i] : 0xFF;
    int result = file_write(offset, mirror + offset, len);
    if (cut)
        semihost(SYS_EXIT, (void *)ADP_STOPPED_APPLICATION_EXIT);
    return result;
}

int flash_open(void) {
    static const char name[] = "mcu-flash.bin";
    uint32_t open_args[3] = {(uint32_t)name, MODE_RB_PLUS, sizeof(name) - 1};
    handle = semihost(SYS_OPEN, open_args);
    if (handle == -1) {
        open_args[1] = MODE_WB_PLUS;
        handle = semihost(SYS_OPEN, open_args);
        if (handle == -1)
            return -1;
    }
    fault_open();
    uint32_t flen_args[1] = {(uint32_t)handle};
    if (semihost(SYS_FLEN, flen_args) != (int)FLASH_SIZE) {
        for (uint32_t i = 0; i < FLASH_SIZE; i++)
            mirror[i] = 0xFF;
        return file_write(0, mirror, FLASH_SIZE);
    }
    uint32_t seek[2] = {(uint32_t)handle, 0};
    semihost(SYS_SEEK, seek);
    uint32_t read_args[3] = {(uint32_t)handle, (uint32_t)mirror, FLASH_SIZE};
    return semihost(SYS_READ, read_args) == 0 ? 0 : -1;
}

const uint8_t *flash_mem(void) { return mirror; }

int flash_is_erased(uint32_t offset, uint32_t len) {
    for (uint32_t i = 0; i < len; i++)
        if (mirror[offset + i] != 0xFF)
            return 0;
    return 1;
}

int flash_erase(uint32_t sector) {
    if (sector >= SECTOR_COUNT)
        return -1;
    return operation(sector * SECTOR_SIZE, 0, SECTOR_SIZE);
}

int flash_write(uint32_t offset, const uint8_t *data, uint32_t len) {
    if (offset % WRITE_ALIGN || len % WRITE_ALIGN || offset + len > FLASH_SIZE)
        return -1;
    if (!flash_is_erased(offset, len))
        return -1;
    return operation(offset, data, len);
}

void system_reset(void) {
    __asm__ volatile("dsb");
    AIRCR = 0x05FA0004u;
    for (;;) {
    }
}
