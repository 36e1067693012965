/* SMP over a console UART, as Zephyr's CONFIG_MCUMGR_TRANSPORT_UART frames it: a packet travels
 * as base64(length:u16be | packet | crc16:u16be) in lines that start with 0x06 0x09 (first) or
 * 0x04 0x14 (next) and end with '\n'; the length counts packet and CRC; CRC16-XMODEM over the
 * packet. No hardware here: the firmware feeds UART bytes in and passes its UART writer. */
#ifndef SMP_FRAME_H
#define SMP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define SMP_LINE_MAX 128u   /* line buffer, newline included (CONFIG_UART_MCUMGR_RX_BUF_SIZE) */
#define SMP_PACKET_MAX 384u /* reassembly buffer (CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE) */
#define SMP_OUT_LINE 127u   /* longest line sent, newline included */
#define SMP_SEND_MAX (SMP_PACKET_MAX + 128u) /* longest packet smp_frame_send frames */

uint16_t smp_crc16(const uint8_t *p, uint32_t n);

/* Forget any partial line and packet. */
void smp_frame_reset(void);

/* One byte from the UART: the length of the packet (SMP header and body, CRC checked) that it
 * completed, else 0; the packet is at smp_frame_packet() until the next byte. A line longer than
 * SMP_LINE_MAX or a packet longer than SMP_PACKET_MAX is dropped; lines without a marker are
 * console text and are skipped. */
uint32_t smp_frame_byte(uint8_t c);
const uint8_t *smp_frame_packet(void);

/* Frame ``packet[0..n)`` into lines passed to ``write``; nothing if n > SMP_SEND_MAX. */
void smp_frame_send(const uint8_t *packet, uint32_t n,
                    void (*write)(const uint8_t *data, size_t len));

#endif
