// HostKVM, the shared host-/dev/kvm skip rule, for every file of this test target.
@_exported import HostKVMSupport
