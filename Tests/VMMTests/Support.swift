// HostKVM, RealModeGuest and runWithDeadline, shared, for every file of this test target.
@_exported import KVMTestSupport
