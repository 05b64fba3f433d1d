import CLinuxKVM
import SystemPackage

/// The KVM system object, `/dev/kvm` or SoftKVM's equivalent: what the
/// accelerator supports, and the factory of virtual machines.
public final class Hypervisor: Sendable {
    let handle: KVMHandle

    /// The system descriptor, for requests this API does not wrap. It stays
    /// open while the hypervisor lives; do not close it.
    public var rawDescriptor: Int32 { handle.descriptor }

    /// The accelerator serving this hypervisor (never `.automatic`).
    public var accelerator: Accelerator { handle.backend.accelerator }

    /// Opens the system object of `accelerator` where module KVM can: the
    /// host's /dev/kvm. SoftKVM is built on this module, so it cannot be
    /// named here: `Hypervisor.open(_:)` in module Accelerators opens either
    /// (and `.automatic` there falls back to SoftKVM); here `.soft` is an
    /// error that says so, and `.automatic` is the host.
    public convenience init(accelerator: Accelerator = .host) throws(KVMError) {
        switch accelerator {
        case .host, .automatic:
            try self.init(backend: HostBackend.shared)
        case .soft:
            throw Hypervisor.softNotInThisModule
        }
    }

    /// Opens the system object of `backend` and checks its API version.
    public init(backend: any KVMBackend) throws(KVMError) {
        let descriptor = backend.openSystem()
        guard descriptor >= 0 else {
            let errno = Errno(rawValue: -descriptor)
            let hint: String
            switch errno {
            case .noSuchFileOrDirectory: hint = "\(HostBackend.devicePath) does not exist: this machine offers no KVM (load kvm_intel, kvm_amd or kvm_pvm, or use --accel soft)"
            case .permissionDenied, .notPermitted: hint = "no permission to open \(HostBackend.devicePath): add the user to the kvm group or run as root"
            default: hint = "could not open \(HostBackend.devicePath): \(errno)"
            }
            throw KVMError(errno: errno, request: nil, operation: "open \(HostBackend.devicePath)", message: hint)
        }
        handle = KVMHandle(descriptor: descriptor, backend: backend)
        let version = try apiVersion()
        guard version == Hypervisor.expectedAPIVersion else {
            throw KVMError(
                errno: .notSupported, request: .getAPIVersion,
                message: "KVM API version \(version); SwiftKVM speaks version \(Hypervisor.expectedAPIVersion) only")
        }
    }

    /// The only KVM API version there has been since Linux 2.6.22.
    public static let expectedAPIVersion: Int32 = 12

    static let softNotInThisModule = KVMError(
        errno: .operationNotSupportedByDevice, request: nil, operation: "choosing the soft accelerator",
        message: "SoftKVM is opened with Hypervisor.open(.soft) from module Accelerators, or Hypervisor(backend: SoftBackend())")

    /// The KVM API version (12). The ioctl is KVM_GET_API_VERSION.
    public func apiVersion() throws(KVMError) -> Int32 {
        try handle.call(.getAPIVersion, value: 0)
    }

    /// Whether, and how far, `capability` is supported: 0 for not at all,
    /// otherwise a capability-specific value. The ioctl is KVM_CHECK_EXTENSION.
    public func checkExtension(_ capability: Capability) throws(KVMError) -> Int32 {
        try handle.call(.checkExtension, value: UInt(capability.rawValue))
    }

    /// The size of the region a vCPU descriptor maps: the `kvm_run` page and
    /// the pages after it (pio data, coalesced MMIO ring). The ioctl is KVM_GET_VCPU_MMAP_SIZE.
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try handle.call(.getVCPUMmapSize, value: 0))
    }

    /// The CPUID leaves the accelerator can present to a guest. The ioctl is KVM_GET_SUPPORTED_CPUID.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        try CPUIDEntry.fetch(from: handle, request: .getSupportedCPUID)
    }

    /// The CPUID leaves the accelerator emulates rather than passes through. The ioctl is KVM_GET_EMULATED_CPUID.
    public func emulatedCPUID() throws(KVMError) -> [CPUIDEntry] {
        try CPUIDEntry.fetch(from: handle, request: .getEmulatedCPUID)
    }

    /// The MSRs a guest's vCPU state includes, by index. The ioctl is KVM_GET_MSR_INDEX_LIST.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        try fetchMSRList(.getMSRIndexList)
    }

    /// The MSRs that describe the host CPU's features. The ioctl is KVM_GET_MSR_FEATURE_INDEX_LIST.
    public func msrFeatureIndexList() throws(KVMError) -> [UInt32] {
        try fetchMSRList(.getMSRFeatureIndexList)
    }

    private func fetchMSRList(_ request: KVMRequest) throws(KVMError) -> [UInt32] {
        // Asking with room for none tells the count (E2BIG), then ask again.
        var probe = kvm_msr_list()
        do throws(KVMError) {
            try handle.call(request, &probe)
            return []
        } catch where error.errno == .argListTooLong {
            let buffer = FlexibleArrayBuffer<kvm_msr_list, UInt32>(capacity: Int(probe.nmsrs))
            buffer.header.pointee.nmsrs = probe.nmsrs
            try handle.call(request, buffer.raw)
            return Array(UnsafeBufferPointer(start: buffer.entries, count: Int(buffer.header.pointee.nmsrs)))
        }
    }

    /// Creates a virtual machine. `type` is the machine type argument of
    /// KVM_CREATE_VM (0, the default VM, on x86). The ioctl is KVM_CREATE_VM.
    public func createVM(type: UInt = 0) throws(KVMError) -> VirtualMachine {
        let descriptor = try handle.call(.createVM, value: type)
        return try VirtualMachine(hypervisor: self, handle: KVMHandle(descriptor: descriptor, backend: handle.backend))
    }
}

/// One CPUID leaf (function and index) and the registers it returns, as in `struct kvm_cpuid_entry2`.
public struct CPUIDEntry: Hashable, Sendable {
    public var function: UInt32
    public var index: UInt32
    /// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (1) when the index selects a sub-leaf.
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    init(_ entry: kvm_cpuid_entry2) {
        self.init(function: entry.function, index: entry.index, flags: entry.flags,
                  eax: entry.eax, ebx: entry.ebx, ecx: entry.ecx, edx: entry.edx)
    }

    /// The entry as `struct kvm_cpuid_entry2`, for this package's backends.
    package var kernelValue: kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.index = index
        entry.flags = flags
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }

    /// The most entries a CPUID request is asked to hold before giving up (the kernel's KVM_MAX_CPUID_ENTRIES is 256).
    static let maximumEntries = 4096

    /// Fills a `kvm_cpuid2` through `request`, growing the buffer while the kernel answers E2BIG.
    static func fetch(from handle: KVMHandle, request: KVMRequest) throws(KVMError) -> [CPUIDEntry] {
        var capacity = 64
        while true {
            let buffer = FlexibleArrayBuffer<kvm_cpuid2, kvm_cpuid_entry2>(capacity: capacity)
            buffer.header.pointee.nent = UInt32(capacity)
            do throws(KVMError) {
                try handle.call(request, buffer.raw)
                return UnsafeBufferPointer(start: buffer.entries, count: Int(buffer.header.pointee.nent)).map(CPUIDEntry.init)
            } catch where error.errno == .argListTooLong && capacity < maximumEntries {
                capacity *= 2
            }
        }
    }
}
