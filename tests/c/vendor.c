// The CPU vendor of KVM_GET_SUPPORTED_CPUID leaf 0: it tells which KVM
// served the program (SoftKVM's CPU is "SoftKVMSwift").
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    struct {
        struct kvm_cpuid2 header;
        struct kvm_cpuid_entry2 entries[100];
    } cpuid = {.header.nent = 100};
    must("KVM_GET_SUPPORTED_CPUID", ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid));
    for (unsigned i = 0; i < cpuid.header.nent; i++) {
        struct kvm_cpuid_entry2 *e = &cpuid.entries[i];
        if (e->function != 0) continue;
        char vendor[13] = {0};
        memcpy(vendor, &e->ebx, 4);
        memcpy(vendor + 4, &e->edx, 4);
        memcpy(vendor + 8, &e->ecx, 4);
        printf("vendor %s\n", vendor);
    }
    return 0;
}
