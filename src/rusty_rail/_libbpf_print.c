/*
 * libbpf's messages, formatted in C for rusty_rail/dataplane/libbpf/_messages.py (loaded
 * with ctypes, like model/_maglevc.c).
 *
 * libbpf hands its print callback a printf format and a va_list. A va_list is a different
 * thing on every ABI (a 24-byte struct on x86-64, a 32-byte struct on arm64, a plain pointer
 * on others), so Python cannot format it portably; vsnprintf here can. Each message reaches
 * Python as one formatted string through the callback given to rr_libbpf_print_install.
 *
 * No link against libbpf: Python passes the address of libbpf_set_print from the libbpf.so.1
 * it loaded, so the callback is installed in that very copy of the library.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* enum libbpf_print_level and libbpf_print_fn_t, as <bpf/libbpf.h> declares them. */
typedef int (*rr_libbpf_print_fn)(int level, const char *format, va_list args);
typedef rr_libbpf_print_fn (*rr_libbpf_set_print_fn)(rr_libbpf_print_fn print);

/* What Python receives: libbpf's level and the message, NUL-terminated. */
typedef void (*rr_line_fn)(int level, const char *line);

int rr_libbpf_print_install(rr_libbpf_set_print_fn set_print, rr_line_fn line);

/* Most messages fit; a verifier log is printed a line at a time, so longer is rare. */
#define SMALL_MESSAGE 1024

static rr_line_fn deliver;

static int format_and_deliver(int level, const char *format, va_list args)
{
	char small[SMALL_MESSAGE];
	va_list measured;
	int length;

	va_copy(measured, args);
	length = vsnprintf(small, sizeof(small), format, measured);
	va_end(measured);
	if (length < 0)
		return 0;
	if ((size_t)length < sizeof(small)) {
		deliver(level, small);
		return length;
	}
	char *large = malloc((size_t)length + 1);
	if (large == NULL) {
		deliver(level, small); /* truncated beats lost */
		return length;
	}
	vsnprintf(large, (size_t)length + 1, format, args);
	deliver(level, large);
	free(large);
	return length;
}

/* Route every libbpf message to ``line`` (NULL: back to libbpf's default, stderr). */
int rr_libbpf_print_install(rr_libbpf_set_print_fn set_print, rr_line_fn line)
{
	if (set_print == NULL)
		return -1;
	deliver = line;
	set_print(line != NULL ? format_and_deliver : NULL);
	return 0;
}
