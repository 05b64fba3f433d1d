// Requests from several threads at once, and from a forked child: a VM
// belongs to the process that made it (EIO elsewhere), the system object does not.
#include "kvmtest.h"
#include <pthread.h>
#include <sys/wait.h>

static int vm;
static int results[8];

static void *create(void *arg) {
    long id = (long)arg;
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, id);
    struct kvm_regs regs;
    results[id] = vcpu >= 0 && ioctl(vcpu, KVM_GET_REGS, &regs) == 0 && regs.rip == 0xfff0;
    return NULL;
}

int main(void) {
    int kvm = open_kvm();
    vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    pthread_t threads[8];
    for (long i = 0; i < 8; i++) pthread_create(&threads[i], NULL, create, (void *)i);
    for (int i = 0; i < 8; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 8; i++) printf("vCPU %d created on its thread: %d\n", i, results[i]);
    CHECK(ioctl(vm, KVM_CREATE_VCPU, 3));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        CHECK(ioctl(vm, KVM_CREATE_VCPU, 9));
        CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY));
        CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY));
        CHECK(ioctl(kvm, KVM_CREATE_VM, 0) >= 0);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("child exited: %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    CHECK(ioctl(vm, KVM_CREATE_VCPU, 9) >= 0);
    return 0;
}
