/* Cortex-M3 reset: zero .bss, run main. The vector table holds the stack top and this. */
#include <stdint.h>

extern uint32_t __bss_start__, __bss_end__, __stack_top__;
int main(void);

void reset_handler(void) {
    for (uint32_t *p = &__bss_start__; p < &__bss_end__; p++)
        *p = 0;
    main();
    for (;;) {
    }
}

static void fault_handler(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&__stack_top__, reset_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler,
    fault_handler,
};
