// /dev/kvm opened in a constructor, before main, as a library's initializer
// may do: the preload library is ready by then.
#include "kvmtest.h"

static int kvm = -1;
static int version = -1;

__attribute__((constructor)) static void open_early(void) {
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    version = ioctl(kvm, KVM_GET_API_VERSION, 0);
}

int main(void) {
    printf("opened before main: %d\n", kvm >= 0);
    printf("API version: %d\n", version);
    CHECK(ioctl(kvm, KVM_CREATE_VM, 0) >= 0);
    return 0;
}
