// A program that never opens /dev/kvm: file I/O, dup, fcntl, ioctl and mmap
// on ordinary descriptors behave as without the preload library.
#include "kvmtest.h"
#include <sys/stat.h>

int main(int argc, char **argv) {
    char path[] = "/tmp/plainioXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK((int)write(fd, "hello\n", 6));
    int copy = dup(fd);
    CHECK(copy >= 0);
    CHECK(fcntl(copy, F_DUPFD_CLOEXEC, 50) >= 50);
    CHECK(dup2(fd, 40));
    CHECK(close(40));
    int opened = open(path, O_RDONLY);
    char *mapped = mmap(NULL, 6, PROT_READ, MAP_SHARED, opened, 0);
    printf("mapped: %.5s\n", mapped);
    int bytes = -1;
    CHECK(ioctl(opened, FIONREAD, &bytes));
    printf("FIONREAD %d\n", bytes);
    CHECK(ioctl(opened, 0x4B3A /* KDSETMODE */, 0));
    CHECK(openat(AT_FDCWD, "/nonexistent/file", O_RDONLY));
    CHECK(open(path, O_RDONLY | O_CREAT, 0600) >= 0);
    CHECK(munmap(mapped, 6));
    CHECK(close(opened));
    CHECK(close(opened));
    unlink(path);
    return argc > 1 ? atoi(argv[1]) : 0;
}
