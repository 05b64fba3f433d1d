import SystemPackage

/// A KVM request, by the kernel's name and number (`KVMRequest.run` is
/// `KVM_RUN`). The table of every x86 request is generated from
/// `<linux/kvm.h>` by scripts/gen-kvm-requests.py.
public struct KVMRequest: Hashable, Sendable, CustomStringConvertible {
    /// The kernel's name, `KVM_...`.
    public let name: String
    /// The ioctl request number.
    public let number: UInt

    public init(name: String, number: UInt) {
        self.name = name
        self.number = number
    }

    public var description: String { name }
}

/// The one error SwiftKVM's KVM API throws: the errno, the operation that
/// failed (a request, or the open or mmap around it), and what was wrong.
///
/// What the guest does never surfaces as a `KVMError`: that is a `VCPUExit`.
public struct KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The errno the kernel (or SoftKVM, which gives the same) returned.
    public let errno: Errno
    /// The request that failed, if the failure was an ioctl.
    public let request: KVMRequest?
    /// What was being done: the request's name, or "open /dev/kvm", "mmap of the kvm_run page"...
    public let operation: String
    /// What was wrong and, where it is known, what to do.
    public let message: String

    public init(errno: Errno, request: KVMRequest?, operation: String? = nil, message: String) {
        self.errno = errno
        self.request = request
        self.operation = operation ?? request?.name ?? "KVM"
        self.message = message
    }

    /// An ioctl's failure, with the reason the kernel documents for that errno from that request.
    public init(errno: Errno, request: KVMRequest, context: String? = nil) {
        let reason = KVMError.reason(for: request, errno: errno)
        let message = [context, reason].compactMap { $0 }.joined(separator: ": ")
        self.init(errno: errno, request: request, message: message)
    }

    public var description: String {
        "\(operation) failed with \(errno.symbolicName) (\(errno.rawValue)): \(message)"
    }

    /// Why `request` gives `errno`, in the terms of the KVM API documentation.
    static func reason(for request: KVMRequest, errno: Errno) -> String {
        switch (request, errno) {
        case (.createVCPU, .fileExists):
            return "a vCPU with this id already exists in the VM"
        case (.createVCPU, .invalidArgument):
            return "the vCPU id is at or beyond KVM_CAP_MAX_VCPU_ID, or the VM has KVM_CAP_MAX_VCPUS vCPUs already"
        case (.setUserMemoryRegion, .invalidArgument):
            return "the region is misaligned (guest address, size or host address not page-aligned), has bad flags, an out-of-range slot, or changes a slot in a way the kernel forbids (resizing it, or toggling KVM_MEM_READONLY)"
        case (.setUserMemoryRegion, .fileExists):
            return "the region overlaps another memory slot"
        case (.setUserMemoryRegion, .badAddress):
            return "the host address range is not accessible memory"
        case (.getDirtyLog, .noSuchFileOrDirectory):
            return "the slot does not exist or does not log dirty pages (KVM_MEM_LOG_DIRTY_PAGES)"
        case (.createIrqchip, .fileExists), (.createPIT2, .fileExists):
            return "the VM has this device already"
        case (.createIrqchip, .invalidArgument):
            return "the irqchip must be created before any vCPU"
        case (.irqLine, .noSuchAddressOrDevice), (.getIrqchip, .noSuchAddressOrDevice),
             (.setIrqchip, .noSuchAddressOrDevice):
            return "the VM has no in-kernel irqchip (create it first)"
        case (.irqfd, .invalidArgument), (.signalMSI, .invalidArgument), (.setGSIRouting, .invalidArgument):
            return "the VM has no in-kernel irqchip, or an entry, flag or padding field is invalid"
        case (.irqfd, .resourceBusy):
            return "this eventfd is already registered as an irqfd"
        case (.createPIT2, .noSuchFileOrDirectory):
            return "the PIT needs the in-kernel irqchip: create it first"
        case (.getPIT2, .noSuchAddressOrDevice), (.setPIT2, .noSuchAddressOrDevice):
            return "the VM has no in-kernel PIT (create it first)"
        case (.getLAPIC, .invalidArgument), (.setLAPIC, .invalidArgument):
            return "the vCPU has no in-kernel local APIC (create the irqchip before the vCPU)"
        case (.interrupt, .noSuchAddressOrDevice):
            return "KVM_INTERRUPT is for a user-space interrupt controller; this VM has an in-kernel irqchip"
        case (.setCPUID2, .invalidArgument):
            return "CPUID cannot change once the vCPU has run, or the table is malformed"
        case (.ioeventfd, .fileExists):
            return "an ioeventfd is already registered for this address, length and datamatch"
        case (.ioeventfd, .noSuchFileOrDirectory):
            return "no such registration to remove"
        case (.createDevice, .operationNotSupportedByDevice):
            return "this KVM has no device of this type (x86 has KVM_DEV_TYPE_VFIO)"
        case (.createDevice, .resourceBusy):
            return "the VM has a kvm-vfio device already (one per VM)"
        case (.setDeviceAttr, .notPermitted), (.getDeviceAttr, .notPermitted), (.hasDeviceAttr, .notPermitted):
            return "the device does not implement this access to its attributes"
        case (.setDeviceAttr, .noSuchAddressOrDevice), (.getDeviceAttr, .noSuchAddressOrDevice):
            return "the device has no such attribute group or attribute"
        case (.setDeviceAttr, .invalidArgument):
            return "the value is not valid for the attribute (for KVM_DEV_VFIO_FILE_ADD: the descriptor is not a VFIO group or device file)"
        case (.setDeviceAttr, .noSuchFileOrDirectory):
            return "the VFIO file was not added to this device"
        case (.setDeviceAttr, .badFileDescriptor):
            return "the value is not an open file descriptor"
        case (.setDeviceAttr, .fileExists):
            return "the VFIO file is added already"
        case (.run, .invalidArgument):
            return "the vCPU cannot run in its present state"
        case (.run, .ioError):
            return "the vCPU belongs to a VM created by another process"
        case (_, .ioError):
            return "the VM was created by another process"
        case (_, .notPermitted), (_, .permissionDenied):
            return "no permission to use /dev/kvm (is the user in the kvm group?)"
        case (_, .notSupported), (_, .operationNotSupportedByDevice):
            return "this KVM does not support the request or device"
        case (_, .inappropriateIOCTLForDevice):
            return "this KVM object does not know the request (an accelerator without it, or the wrong kind of descriptor)"
        case (_, .invalidArgument):
            return "the kernel rejected the argument"
        case (_, .badAddress):
            return "the argument points at memory the kernel cannot access"
        case (_, .noMemory):
            return "the kernel ran out of memory"
        case (_, .argListTooLong):
            return "the buffer is too small for the answer"
        default:
            return errno.description
        }
    }
}

extension Errno {
    /// The C name of the errno, `EINVAL`, `EEXIST`...
    public var symbolicName: String {
        switch self {
        case .notPermitted: "EPERM"
        case .noSuchFileOrDirectory: "ENOENT"
        case .interrupted: "EINTR"
        case .ioError: "EIO"
        case .noSuchAddressOrDevice: "ENXIO"
        case .argListTooLong: "E2BIG"
        case .badFileDescriptor: "EBADF"
        case .resourceTemporarilyUnavailable: "EAGAIN"
        case .noMemory: "ENOMEM"
        case .permissionDenied: "EACCES"
        case .badAddress: "EFAULT"
        case .resourceBusy: "EBUSY"
        case .fileExists: "EEXIST"
        case .operationNotSupportedByDevice: "ENODEV"
        case .invalidArgument: "EINVAL"
        case .inappropriateIOCTLForDevice: "ENOTTY"
        case .tooManyOpenFiles: "EMFILE"
        case .noSpace: "ENOSPC"
        case .outOfRange: "ERANGE"
        case .notSupported: "EOPNOTSUPP"
        case .noFunction: "ENOSYS"
        default: "errno \(rawValue)"
        }
    }
}
