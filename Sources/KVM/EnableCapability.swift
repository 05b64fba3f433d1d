import CLinuxKVM
import SystemPackage

// KVM_ENABLE_CAP on the VM and the vCPU, with typed forms for the x86
// capabilities a VMM turns on: MSR exits to user space, the MSR filter, exit
// disabling, and PV feature enforcement. Whether a capability can be
// enabled is what KVM_CHECK_EXTENSION says of it; enabling one the
// accelerator does not have gives EINVAL.

/// The MSR failures that exit to user space as `.msr` instead of raising
/// #GP in the guest (KVM_CAP_X86_USER_SPACE_MSR's argument, and
/// `kvm_run.msr.reason`).
public struct MSRExitReasons: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// An MSR the vCPU has refused the access or the value (`KVM_MSR_EXIT_REASON_INVAL`).
    public static let invalid = MSRExitReasons(rawValue: UInt32(KVM_MSR_EXIT_REASON_INVAL))
    /// An MSR KVM does not know (`KVM_MSR_EXIT_REASON_UNKNOWN`).
    public static let unknown = MSRExitReasons(rawValue: UInt32(KVM_MSR_EXIT_REASON_UNKNOWN))
    /// An access the MSR filter denies (`KVM_MSR_EXIT_REASON_FILTER`).
    public static let filter = MSRExitReasons(rawValue: UInt32(KVM_MSR_EXIT_REASON_FILTER))
}

extension MSRExit {
    /// `reason` as an option: exactly one of `.invalid`, `.unknown`, `.filter`.
    public var reasons: MSRExitReasons { MSRExitReasons(rawValue: reason) }
}

/// The intercepts KVM_CAP_X86_DISABLE_EXITS turns off; KVM_CHECK_EXTENSION
/// of that capability gives the ones the accelerator allows.
public struct DisabledExits: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let mwait = DisabledExits(rawValue: UInt64(KVM_X86_DISABLE_EXITS_MWAIT))
    public static let hlt = DisabledExits(rawValue: UInt64(KVM_X86_DISABLE_EXITS_HLT))
    public static let pause = DisabledExits(rawValue: UInt64(KVM_X86_DISABLE_EXITS_PAUSE))
    public static let cstate = DisabledExits(rawValue: UInt64(KVM_X86_DISABLE_EXITS_CSTATE))
}

/// Which guest MSR accesses a filter range covers (`kvm_msr_filter_range.flags`).
public struct MSRFilterAccesses: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// RDMSR (`KVM_MSR_FILTER_READ`).
    public static let read = MSRFilterAccesses(rawValue: UInt32(KVM_MSR_FILTER_READ))
    /// WRMSR (`KVM_MSR_FILTER_WRITE`).
    public static let write = MSRFilterAccesses(rawValue: UInt32(KVM_MSR_FILTER_WRITE))
}

/// Which guest RDMSR and WRMSR KVM lets through (`struct kvm_msr_filter`).
/// An access the filter denies raises #GP in the guest, or exits to user
/// space with reason `.filter` when `enableUserSpaceMSR` asked for that.
/// The filter applies to the guest only, never to KVM_GET_MSRS or
/// KVM_SET_MSRS, and never to the x2APIC MSRs (0x800-0x8FF).
public struct MSRFilter: Hashable, Sendable {
    /// What an access no range covers gets.
    public enum DefaultAction: Hashable, Sendable {
        case allow
        case deny
    }

    /// A run of MSRs from `base` with one bit each: 1 allows the accesses
    /// of `accesses`, 0 denies them. For an access of a kind the range
    /// does not cover, the next range (or the default) decides.
    public struct Range: Hashable, Sendable {
        public var accesses: MSRFilterAccesses
        public var base: UInt32
        /// The MSRs the bitmap covers (`nmsrs`). KVM takes at most
        /// `MSRFilter.maximumMSRsPerRange`; a range of none is ignored.
        public var count: UInt32
        /// Bit `i % 8` of byte `i / 8` is MSR `base + i`. Shorter than
        /// `count` bits, the rest reads as 0 (denied).
        public var bitmap: [UInt8]

        public init(accesses: MSRFilterAccesses, base: UInt32, count: UInt32, bitmap: [UInt8]) {
            self.accesses = accesses
            self.base = base
            self.count = count
            self.bitmap = bitmap
        }

        /// The MSRs `msrs` with the accesses `accesses` denied, each of them.
        public static func denying(_ accesses: MSRFilterAccesses, _ msrs: ClosedRange<UInt32>) -> Range {
            Range(accesses: accesses, base: msrs.lowerBound, count: msrs.upperBound - msrs.lowerBound + 1, bitmap: [])
        }

        /// The MSRs from `base` for `count`, with the accesses `accesses`
        /// allowed for those in `allowed` and denied for the others.
        public static func allowing(_ accesses: MSRFilterAccesses, base: UInt32, count: UInt32,
                                    only allowed: some Sequence<UInt32>) -> Range {
            var bitmap = [UInt8](repeating: 0, count: (Int(count) + 7) / 8)
            for msr in allowed where msr >= base && msr - base < count {
                bitmap[Int(msr - base) / 8] |= 1 << UInt8((msr - base) % 8)
            }
            return Range(accesses: accesses, base: base, count: count, bitmap: bitmap)
        }
    }

    /// KVM_MSR_FILTER_MAX_RANGES.
    public static let maximumRanges = Int(KVM_MSR_FILTER_MAX_RANGES)
    /// The MSRs one range's bitmap may cover (KVM_MSR_FILTER_MAX_BITMAP_SIZE bytes of bits).
    public static let maximumMSRsPerRange = UInt32(KVM_MSR_FILTER_MAX_BITMAP_SIZE) * 8

    public var defaultAction: DefaultAction
    /// At most `maximumRanges`; the first range holding an MSR for the
    /// access decides.
    public var ranges: [Range]

    public init(defaultAction: DefaultAction = .allow, ranges: [Range] = []) {
        self.defaultAction = defaultAction
        self.ranges = ranges
    }

    /// No filtering: every MSR access goes to KVM.
    public static let unfiltered = MSRFilter()
}

extension VirtualMachine {
    /// Enables `capability` on the VM with its arguments (up to four). KVM
    /// gives EINVAL for a capability it cannot enable, non-zero `flags`, or
    /// arguments the capability refuses. The ioctl is KVM_ENABLE_CAP on the VM descriptor.
    public func enableCapability(_ capability: Capability, flags: UInt32 = 0, arguments: [UInt64] = []) throws(KVMError) {
        var cap = try EnableCapability.make(capability, flags: flags, arguments: arguments)
        try handle.call(.enableCap, &cap, context: "capability \(capability.rawValue) on the VM, flags \(flags), arguments \(arguments)")
    }

    /// Has guest RDMSR and WRMSR that fail for one of `reasons` exit to user
    /// space as `.msr`, to be answered with `VCPU.setMSRData` or
    /// `VCPU.failMSRAccess` before the next run; `[]` turns it off. It may
    /// change while vCPUs run. The ioctl is KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR).
    public func enableUserSpaceMSR(_ reasons: MSRExitReasons) throws(KVMError) {
        try enableCapability(.x86UserSpaceMSR, arguments: [UInt64(reasons.rawValue)])
    }

    /// Turns off the intercepts `exits`, before any vCPU is created (EINVAL
    /// after, or for an intercept KVM_CHECK_EXTENSION(KVM_CAP_X86_DISABLE_EXITS)
    /// does not list). The ioctl is KVM_ENABLE_CAP(KVM_CAP_X86_DISABLE_EXITS).
    public func disableExits(_ exits: DisabledExits) throws(KVMError) {
        try enableCapability(.x86DisableExits, arguments: [exits.rawValue])
    }

    /// Installs `filter` for every vCPU's next MSR access, replacing the
    /// one before; `.unfiltered` removes filtering. KVM gives EINVAL for a range
    /// with accesses other than read and write or none, more MSRs than
    /// `MSRFilter.maximumMSRsPerRange`, and for a deny-by-default filter with
    /// no ranges. The ioctl is KVM_X86_SET_MSR_FILTER.
    public func setMSRFilter(_ filter: MSRFilter) throws(KVMError) {
        guard filter.ranges.count <= MSRFilter.maximumRanges else {
            throw KVMError(errno: .invalidArgument, request: .x86SetMSRFilter,
                           message: "\(filter.ranges.count) ranges; the filter holds \(MSRFilter.maximumRanges)")
        }
        // Each bitmap padded to the longs the kernel copies, so that it
        // reads no further than the buffer (a range too large to copy is refused before).
        let bitmaps = filter.ranges.map { range -> UnsafeMutableRawBufferPointer in
            let kernelBytes = (Int(range.count) + 63) / 64 * 8
            let copied = kernelBytes <= Int(KVM_MSR_FILTER_MAX_BITMAP_SIZE) ? kernelBytes : 0
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(range.bitmap.count, copied, 1), alignment: 8)
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            buffer.copyBytes(from: range.bitmap)
            return buffer
        }
        defer { bitmaps.forEach { $0.deallocate() } }
        var value = kvm_msr_filter()
        value.flags = filter.defaultAction == .deny ? UInt32(KVM_MSR_FILTER_DEFAULT_DENY) : 0
        let ranges = zip(filter.ranges, bitmaps).map { range, bitmap in
            kvm_msr_filter_range(flags: range.accesses.rawValue, nmsrs: range.count, base: range.base,
                                 bitmap: bitmap.baseAddress?.assumingMemoryBound(to: UInt8.self))
        }
        CArray.store(ranges, into: &value.ranges)
        try handle.call(.x86SetMSRFilter, &value, context: "\(filter.ranges.count) ranges, default \(filter.defaultAction)")
    }
}

extension VCPU {
    /// Enables `capability` on this vCPU with its arguments (up to four).
    /// KVM gives EINVAL for a capability it cannot enable per vCPU or
    /// non-zero `flags`. The ioctl is KVM_ENABLE_CAP on the vCPU descriptor.
    public func enableCapability(_ capability: Capability, flags: UInt32 = 0, arguments: [UInt64] = []) throws(KVMError) {
        var cap = try EnableCapability.make(capability, flags: flags, arguments: arguments)
        try handle.call(.enableCap, &cap, context: "capability \(capability.rawValue) on vCPU \(id), flags \(flags), arguments \(arguments)")
    }

    /// With `enforced`, the guest can use only the KVM paravirtual features
    /// its CPUID's KVM leaf offers (its other PV MSRs and hypercalls fail as
    /// unknown). The ioctl is KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID).
    public func enforcePVFeatureCPUID(_ enforced: Bool = true) throws(KVMError) {
        try enableCapability(.enforcePvFeatureCPUID, arguments: [enforced ? 1 : 0])
    }

    /// Answers the RDMSR of the last `.msr` exit: the guest's EDX:EAX get
    /// `value` when the next `run()` completes the instruction. Without an
    /// answer the RDMSR reads 0 (`kvm_run.msr.data`).
    public func setMSRData(_ value: UInt64) throws(KVMError) {
        guard let access = pendingMSR else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "answering a guest RDMSR",
                           message: "the last exit was not an MSR exit")
        }
        guard !access.isWrite else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "answering a guest RDMSR",
                           message: "the last exit was a WRMSR of MSR 0x\(String(access.index, radix: 16)), which takes no data")
        }
        page.run.pointee.msr.data = value
    }

    /// Fails the RDMSR or WRMSR of the last `.msr` exit: the next `run()`
    /// raises #GP(0) in the guest at the instruction (`kvm_run.msr.error`).
    /// Without it a WRMSR completes as done.
    public func failMSRAccess() throws(KVMError) {
        guard pendingMSR != nil else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "failing a guest MSR access",
                           message: "the last exit was not an MSR exit")
        }
        page.run.pointee.msr.error = 1
    }

    /// The XSAVE area, in the size the VM's KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
    /// gives (at least 4096 bytes), which holds dynamically enabled
    /// components such as AMX that KVM_GET_XSAVE cannot. The ioctl is KVM_GET_XSAVE2.
    public func xsave2() throws(KVMError) -> XSaveArea {
        let size = max(Int(try vm.checkExtension(.xsave2)), XSaveArea.size)
        var region = [UInt32](repeating: 0, count: (size + 3) / 4)
        let result = region.withUnsafeMutableBytes { bytes in
            Result { () throws(KVMError) in try handle.call(.getXsave2, bytes.baseAddress, context: "vCPU \(id), \(size) bytes") }
        }
        _ = try result.get()
        return XSaveArea(region: region)
    }
}

enum EnableCapability {
    /// `struct kvm_enable_cap`; more than four arguments do not fit.
    static func make(_ capability: Capability, flags: UInt32, arguments: [UInt64]) throws(KVMError) -> kvm_enable_cap {
        guard arguments.count <= 4 else {
            throw KVMError(errno: .invalidArgument, request: .enableCap,
                           message: "\(arguments.count) arguments; KVM_ENABLE_CAP takes 4")
        }
        var cap = kvm_enable_cap()
        cap.cap = capability.rawValue
        cap.flags = flags
        CArray.store(arguments, into: &cap.args)
        return cap
    }
}
