import CLinuxKVM
import KVM
import SystemPackage
import X86

// The guest's RDMSR and WRMSR, after the kernel's handle_rdmsr/handle_wrmsr
// path in arch/x86/kvm/x86.c: the MSR filter (KVM_X86_SET_MSR_FILTER,
// kvm_msr_allowed) is asked first, then the MSR is read or written
// (kvm_get_msr_common/kvm_set_msr_common, here the CPU's MSRs); a failure
// exits to user space when KVM_CAP_X86_USER_SPACE_MSR asked for its reason
// (kvm_msr_user_space), and otherwise raises #GP(0). User space's answer,
// kvm_run.msr.data and .error, completes the instruction on the next
// KVM_RUN (complete_emulated_rdmsr/complete_emulated_msr_access).
//
// The CPU hands every RDMSR and WRMSR at CPL 0 to SoftKVM
// (`X86CPU.interceptsMSRs`), as VMX and SVM intercept them, so that a
// filter or a mask set while a vCPU runs applies to its next access.

/// KVM_MSR_FILTER_RANGE_VALID_MASK and KVM_MSR_FILTER_VALID_MASK.
let KVM_MSR_FILTER_RANGE_VALID_MASK = UInt32(KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE)
let KVM_MSR_FILTER_VALID_MASK = UInt32(KVM_MSR_FILTER_DEFAULT_DENY)

/// The installed MSR filter (`struct kvm_x86_msr_filter`): ranges with
/// their bitmaps copied in, and what an MSR outside them gets.
struct X86MSRFilter: Sendable {
    struct Range: Sendable {
        /// KVM_MSR_FILTER_READ and/or KVM_MSR_FILTER_WRITE.
        let flags: UInt32
        let base: UInt32
        let nmsrs: UInt32
        /// One bit per MSR from `base`, 1 allowing the access; as many
        /// longs as BITS_TO_LONGS(nmsrs).
        let bitmap: [UInt64]

        func allows(_ offset: UInt32) -> Bool {
            bitmap[Int(offset / 64)] >> UInt64(offset % 64) & 1 != 0
        }
    }

    let defaultAllow: Bool
    let ranges: [Range]
}

/// Why a guest MSR access failed: the kernel's return codes of
/// kvm_get_msr_with_filter and kvm_set_msr_with_filter.
enum MSRFailure: Error {
    /// 1: the MSR exists but refuses the access or value (KVM_MSR_EXIT_REASON_INVAL).
    case invalid
    /// KVM_MSR_RET_UNSUPPORTED: no such MSR (KVM_MSR_EXIT_REASON_UNKNOWN).
    case unsupported
    /// KVM_MSR_RET_FILTERED: the filter denies it (KVM_MSR_EXIT_REASON_FILTER).
    case filtered

    /// kvm_msr_reason.
    var exitReason: UInt32 {
        switch self {
        case .invalid: UInt32(KVM_MSR_EXIT_REASON_INVAL)
        case .unsupported: UInt32(KVM_MSR_EXIT_REASON_UNKNOWN)
        case .filtered: UInt32(KVM_MSR_EXIT_REASON_FILTER)
        }
    }
}

/// The KVM paravirtual MSRs and the KVM_CPUID_FEATURES bit each needs under
/// KVM_CAP_ENFORCE_PV_FEATURE_CPUID (guest_pv_has in kvm_get/set_msr_common).
let kvmPVMSRFeatures: [UInt32: UInt32] = [
    0x11: 0, 0x12: 0,  // MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME: KVM_FEATURE_CLOCKSOURCE
    0x4B56_4D00: 3, 0x4B56_4D01: 3,  // the _NEW clock MSRs: KVM_FEATURE_CLOCKSOURCE2
    0x4B56_4D02: 4,  // MSR_KVM_ASYNC_PF_EN: KVM_FEATURE_ASYNC_PF
    0x4B56_4D03: 5,  // MSR_KVM_STEAL_TIME: KVM_FEATURE_STEAL_TIME
    0x4B56_4D04: 6,  // MSR_KVM_PV_EOI_EN: KVM_FEATURE_PV_EOI
    0x4B56_4D05: 12,  // MSR_KVM_POLL_CONTROL: KVM_FEATURE_POLL_CONTROL
    0x4B56_4D06: 14, 0x4B56_4D07: 14,  // MSR_KVM_ASYNC_PF_INT and _ACK: KVM_FEATURE_ASYNC_PF_INT
    0x4B56_4D08: 17,  // MSR_KVM_MIGRATION_CONTROL: KVM_FEATURE_MIGRATION_CONTROL
]

extension SoftBackend {
    // MARK: KVM_X86_SET_MSR_FILTER

    /// KVM_X86_SET_MSR_FILTER (kvm_vm_ioctl_set_msr_filter): the whole
    /// filter is checked and its bitmaps copied before it replaces the old
    /// one, so a refused filter leaves the old in place. An empty filter
    /// that allows by default removes filtering.
    func kvm_vm_ioctl_set_msr_filter(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard let filter = UserMemory.read(kvm_msr_filter.self, from: arg) else { return fail(.badAddress) }
        if filter.flags & ~KVM_MSR_FILTER_VALID_MASK != 0 { return fail(.invalidArgument) }
        let userRanges = withUnsafeBytes(of: filter.ranges) { Array($0.bindMemory(to: kvm_msr_filter_range.self)) }
        let empty = userRanges.allSatisfy { $0.nmsrs == 0 }
        let defaultAllow = filter.flags & UInt32(KVM_MSR_FILTER_DEFAULT_DENY) == 0
        if empty && !defaultAllow { return fail(.invalidArgument) }
        var ranges: [X86MSRFilter.Range] = []
        for user in userRanges {
            switch kvm_add_msr_filter(user) {
            case .success(let range?): ranges.append(range)
            case .success(nil): continue
            case .failure(let errno): return fail(errno)
            }
        }
        let installed = X86MSRFilter(defaultAllow: defaultAllow, ranges: ranges)
        vm.arch.withLock { $0.msrFilter = installed }
        return 0
    }

    /// kvm_add_msr_filter: a range of no MSRs is skipped whatever its other
    /// fields; otherwise it needs read and/or write in its flags and nothing
    /// else, a bitmap of at most KVM_MSR_FILTER_MAX_BITMAP_SIZE bytes, and
    /// that bitmap readable (memdup_user: EFAULT).
    func kvm_add_msr_filter(_ user: kvm_msr_filter_range) -> Result<X86MSRFilter.Range?, Errno> {
        if user.nmsrs == 0 { return .success(nil) }
        if user.flags & ~KVM_MSR_FILTER_RANGE_VALID_MASK != 0 { return .failure(.invalidArgument) }
        if user.flags == 0 { return .failure(.invalidArgument) }
        let longs = (Int(user.nmsrs) + 63) / 64
        let bitmapSize = longs * MemoryLayout<UInt64>.size
        if bitmapSize > Int(KVM_MSR_FILTER_MAX_BITMAP_SIZE) { return .failure(.invalidArgument) }
        var bitmap = [UInt64](repeating: 0, count: longs)
        let copied = bitmap.withUnsafeMutableBytes { bytes in
            guard let destination = bytes.baseAddress, user.bitmap != nil else { return false }
            return UserMemory.copyIn(destination, from: UInt(bitPattern: user.bitmap), count: bitmapSize)
        }
        guard copied else { return .failure(.badAddress) }
        return .success(X86MSRFilter.Range(flags: user.flags, base: user.base, nmsrs: user.nmsrs,
                                        bitmap: bitmap.map { UInt64(littleEndian: $0) }))
    }

    /// kvm_msr_allowed: the first range holding `index` for this kind of
    /// access decides; an MSR in none gets the default. The x2APIC MSRs are
    /// never filtered. A range's end is computed in 32 bits, as the
    /// kernel's, so a range that wraps past 0xFFFFFFFF holds nothing.
    static func kvm_msr_allowed(_ filter: X86MSRFilter?, _ index: UInt32, write: Bool) -> Bool {
        if index >= 0x800 && index <= 0x8FF { return true }
        guard let filter else { return true }
        let type = UInt32(write ? KVM_MSR_FILTER_WRITE : KVM_MSR_FILTER_READ)
        for range in filter.ranges {
            let start = range.base
            let end = start &+ range.nmsrs
            if index >= start && index < end && range.flags & type != 0 {
                return range.allows(index - start)
            }
        }
        return filter.defaultAllow
    }

    // MARK: The guest's RDMSR and WRMSR

    /// Carries out an RDMSR or WRMSR the CPU handed over. Returns nil when
    /// the guest goes on (the access done, or #GP delivered), `.msr` when
    /// kvm_run now holds an exit for user space, or the exit that
    /// delivering the #GP ended in (a triple fault, say).
    func kvm_emulate_msr(_ access: MSRAccessExit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> X86Exit? {
        let (mask, filter) = vcpu.vm.arch.withLock { ($0.userSpaceMSRMask, $0.msrFilter) }
        let result: Result<UInt64, MSRFailure>
        if !Self.kvm_msr_allowed(filter, access.index, write: access.isWrite) {
            result = .failure(.filtered)
        } else if !guest_pv_has(arch, access.index) {
            result = .failure(.unsupported)
        } else if access.isWrite {
            // The local APIC's, the TSC's and kvmclock's MSRs first (LAPICVCPU.swift).
            if let done = kvm_set_msr_local(&arch, vcpu, access.index, access.value, hostInitiated: false) {
                result = done ? .success(0) : .failure(.invalid)
            } else {
                result = kvm_set_msr_common(&arch, access.index, access.value).map { .failure($0) } ?? .success(0)
            }
        } else if let local = kvm_get_msr_local(arch, vcpu, access.index) {
            result = local.map { .success($0) } ?? .failure(.unsupported)
        } else {
            result = kvm_get_msr_common(&arch, access.index)
        }
        switch result {
        case .success(let value):
            return arch.cpu.completeMSRAccess(value)
        case .failure(let failure):
            if mask & failure.exitReason != 0 {
                kvm_msr_user_space(vcpu, access, reason: failure.exitReason)
                return .msr(access)
            }
            return arch.cpu.completeMSRAccess(nil)
        }
    }

    /// A guest RDMSR of an MSR the filter allowed.
    func kvm_get_msr_common(_ arch: inout VCPUArch, _ index: UInt32) -> Result<UInt64, MSRFailure> {
        if !guest_pv_has(arch, index) { return .failure(.unsupported) }
        guard let value = arch.cpu.readMSR(index) else { return .failure(.unsupported) }
        return .success(value)
    }

    /// A guest WRMSR of an MSR the filter allowed, with the guest's rules
    /// (EFER.LMA is not the guest's to set). Nil when written.
    func kvm_set_msr_common(_ arch: inout VCPUArch, _ index: UInt32, _ value: UInt64) -> MSRFailure? {
        if !guest_pv_has(arch, index) { return .unsupported }
        if arch.cpu.writeMSR(index, value) { return nil }
        return arch.cpu.readMSR(index) == nil ? .unsupported : .invalid
    }

    /// guest_pv_has for the paravirtual MSR `index`: with
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID on, the guest's CPUID must offer its
    /// feature in the KVM leaf (base + 1, found by the "KVMKVMKVM" signature),
    /// and Linux 6.18 then treats the MSR as one KVM does not have (for
    /// SoftKVM, kvmclock's MSRs).
    func guest_pv_has(_ arch: VCPUArch, _ index: UInt32) -> Bool {
        guard arch.pvCPUIDEnforced, let feature = kvmPVMSRFeatures[index] else { return true }
        return Self.kvmCPUIDFeatures(arch.cpuid) & (1 << feature) != 0
    }

    /// KVM_CPUID_FEATURES' EAX from the vCPU's CPUID (kvm_find_kvm_cpuid_features), 0 without a KVM leaf.
    static func kvmCPUIDFeatures(_ cpuid: [kvm_cpuid_entry2]) -> UInt32 {
        // "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
        let signature: (UInt32, UInt32, UInt32) = (0x4B4D_564B, 0x564B_4D56, 0x0000_004D)
        for base in stride(from: UInt32(0x4000_0000), to: 0x4001_0000, by: 0x100) {
            guard let leaf = cpuid.first(where: { $0.function == base }) else { continue }
            guard (leaf.ebx, leaf.ecx, leaf.edx) == signature else { continue }
            return cpuid.first(where: { $0.function == base | 1 })?.eax ?? 0
        }
        return 0
    }

    /// kvm_msr_user_space: fills kvm_run for KVM_EXIT_X86_RDMSR or
    /// _WRMSR; the CPU keeps the instruction waiting for the answer.
    func kvm_msr_user_space(_ vcpu: SoftVCPU, _ access: MSRAccessExit, reason: UInt32) {
        let run = vcpu.run
        run.pointee.exit_reason = UInt32(access.isWrite ? KVM_EXIT_X86_WRMSR : KVM_EXIT_X86_RDMSR)
        run.pointee.msr.error = 0
        run.pointee.msr.pad = (0, 0, 0, 0, 0, 0, 0)
        run.pointee.msr.reason = reason
        run.pointee.msr.index = access.index
        run.pointee.msr.data = access.value
    }

    /// complete_emulated_rdmsr and complete_emulated_msr_access, at the
    /// KVM_RUN after an MSR exit: kvm_run.msr.error set raises #GP(0);
    /// otherwise RDMSR takes kvm_run.msr.data and WRMSR is done. Returns
    /// the exit that delivering the #GP ended in, if it did.
    /// With no access waiting it does nothing.
    func complete_userspace_msr(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> X86Exit? {
        let answer = vcpu.run.pointee.msr
        return arch.cpu.completeMSRAccess(answer.error != 0 ? nil : answer.data)
    }
}
