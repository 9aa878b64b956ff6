/* gate-stamp: writes CLOCK_MONOTONIC (ns) at its first instruction as one line on stdout, then
 * waits for end of file on stdin and exits. No libc and no dynamic loader: nothing runs before
 * the clock is read. `cargo xtask bench` builds it (gcc -static -nostdlib) for the measurement of
 * the time from `gate run` to the command's first instruction (bench/src/daemon.rs). */
typedef unsigned long u64;

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

__attribute__((force_align_arg_pointer, noreturn)) void _start(void)
{
	struct { long sec, nsec; } ts;
	sys3(228 /* clock_gettime */, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0);
	u64 ns = (u64)ts.sec * 1000000000ul + (u64)ts.nsec;
	char buf[32];
	int i = sizeof buf;
	buf[--i] = '\n';
	do {
		buf[--i] = (char)('0' + ns % 10);
		ns /= 10;
	} while (ns);
	sys3(1 /* write */, 1, (long)(buf + i), (long)(sizeof buf - i));
	char c;
	while (sys3(0 /* read */, 0, (long)&c, 1) > 0)
		;
	sys3(60 /* exit */, 0, 0, 0);
	for (;;)
		;
}
