/* gate-asker: the agent of the approvals benchmark (bench/src/approvals.rs). No libc: each
 * command costs the syscalls it names and nothing else.
 *
 * Reads commands of three u32 (op, port, n) on stdin; answers each with three 64-bit words on
 * stdout (result, CLOCK_MONOTONIC ns when it was done, ns it took):
 *   op 1: a UDP socket connected once to 127.0.0.1:port, then closed; result: connect's
 *         return (0 or -errno), time: right after connect returned.
 *   op 2: one UDP socket connected n times to 127.0.0.1:port; result: the first failure's
 *         -errno, or 0; ns: the n connects, timed as a whole.
 * Exits at end of file. `cargo xtask bench` builds it (gcc -static -nostdlib). */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

static u64 now(void)
{
	struct { long sec, nsec; } ts;
	sys3(228 /* clock_gettime */, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0);
	return (u64)ts.sec * 1000000000ul + (u64)ts.nsec;
}

static int read_full(void *buf, long len)
{
	char *p = buf;
	while (len > 0) {
		long r = sys3(0 /* read */, 0, (long)p, len);
		if (r <= 0)
			return -1;
		p += r;
		len -= r;
	}
	return 0;
}

struct sin {
	u16 family;
	u16 port;
	u32 addr;
	char zero[8];
};

__attribute__((force_align_arg_pointer, noreturn)) void _start(void)
{
	u32 cmd[3];
	while (read_full(cmd, sizeof cmd) == 0) {
		struct sin a = { 2 /* AF_INET */, (u16)((cmd[1] >> 8) | (cmd[1] << 8)), 0x0100007f, { 0 } };
		long out[3] = { 0, 0, 0 };
		long fd = sys3(41 /* socket */, 2 /* AF_INET */, 2 /* SOCK_DGRAM */, 0);
		if (fd < 0) {
			out[0] = fd;
		} else if (cmd[0] == 1) {
			u64 t0 = now();
			out[0] = sys3(42 /* connect */, fd, (long)&a, sizeof a);
			out[1] = (long)now();
			out[2] = (long)(out[1] - t0);
		} else {
			u64 t0 = now();
			for (u32 i = 0; i < cmd[2]; i++) {
				long r = sys3(42 /* connect */, fd, (long)&a, sizeof a);
				if (r < 0 && out[0] == 0)
					out[0] = r;
			}
			u64 t1 = now();
			out[1] = (long)t1;
			out[2] = (long)(t1 - t0);
		}
		if (fd >= 0)
			sys3(3 /* close */, fd, 0, 0);
		if (sys3(1 /* write */, 1, (long)out, sizeof out) != sizeof out)
			break;
	}
	sys3(60 /* exit */, 0, 0, 0);
	for (;;)
		;
}
