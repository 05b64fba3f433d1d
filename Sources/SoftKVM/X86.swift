import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

// The x86 part of KVM, after the kernel's arch/x86/kvm/x86.c (kvm_arch_*)
// and cpuid.c.

/// MAX_IO_MSRS: the most entries one KVM_GET_MSRS or KVM_SET_MSRS takes.
let MAX_IO_MSRS: UInt32 = 256
/// KVM_MAX_CPUID_ENTRIES.
let KVM_MAX_CPUID_ENTRIES: UInt32 = 256
/// KVM_MAX_XCRS.
let KVM_MAX_XCRS: UInt32 = 16

let MSR_IA32_TSC: UInt32 = 0x10
let MSR_IA32_APICBASE: UInt32 = 0x1B
let MSR_IA32_SYSENTER_CS: UInt32 = 0x174
let MSR_IA32_SYSENTER_ESP: UInt32 = 0x175
let MSR_IA32_SYSENTER_EIP: UInt32 = 0x176
let MSR_IA32_CR_PAT: UInt32 = 0x277
let MSR_EFER: UInt32 = 0xC000_0080
let MSR_STAR: UInt32 = 0xC000_0081
let MSR_LSTAR: UInt32 = 0xC000_0082
let MSR_CSTAR: UInt32 = 0xC000_0083
let MSR_SYSCALL_MASK: UInt32 = 0xC000_0084
let MSR_FS_BASE: UInt32 = 0xC000_0100
let MSR_GS_BASE: UInt32 = 0xC000_0101
let MSR_KERNEL_GS_BASE: UInt32 = 0xC000_0102

/// The MSRs KVM_GET_MSR_INDEX_LIST reports (the kernel's msrs_to_save and
/// emulated_msrs): those whose state lives only in the MSR. EFER, APIC base
/// and the FS/GS bases are readable as MSRs too, but travel in kvm_sregs.
let msrsToSave: [UInt32] = [
    MSR_IA32_TSC, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_IA32_CR_PAT,
    MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE,
]

/// The power-on PAT (Intel SDM 11.12.4).
let MSR_IA32_CR_PAT_DEFAULT: UInt64 = 0x0007_0406_0007_0406

let EFER_SCE: UInt64 = 1 << 0
let EFER_LME: UInt64 = 1 << 8
let EFER_LMA: UInt64 = 1 << 10
let EFER_NX: UInt64 = 1 << 11

let X86_CR0_PE: UInt64 = 1 << 0
let X86_CR0_NW: UInt64 = 1 << 29
let X86_CR0_CD: UInt64 = 1 << 30
let X86_CR0_PG: UInt64 = 1 << 31
let X86_CR4_PAE: UInt64 = 1 << 5

let XFEATURE_MASK_FP: UInt64 = 1 << 0
let XFEATURE_MASK_SSE: UInt64 = 1 << 1
let XFEATURE_MASK_YMM: UInt64 = 1 << 2
/// The XSAVE features SoftKVM's CPU state has: x87 and SSE.
let softSupportedXCR0: UInt64 = XFEATURE_MASK_FP | XFEATURE_MASK_SSE

/// The CPUID leaves KVM_GET_SUPPORTED_CPUID reports: a baseline x86-64 CPU.
/// They must describe exactly what the X86 module implements; change them
/// with it.
let supportedCPUID: [kvm_cpuid_entry2] = {
    func leaf(_ function: UInt32, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.eax = eax
        entry.ebx = ebx
        entry.ecx = ecx
        entry.edx = edx
        return entry
    }
    // "SoftKVMSwift" in EBX, EDX, ECX order, as CPUID leaf 0 spells a vendor.
    let vendor: (UInt32, UInt32, UInt32) = (0x7466_6F53, 0x534D_564B, 0x7466_6977)
    let leaf1EDX: UInt32 = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 11) | (1 << 13)
        | (1 << 15) | (1 << 16) | (1 << 24) | (1 << 25) | (1 << 26)  // FPU TSC MSR PAE CX8 SEP PGE CMOV PAT FXSR SSE SSE2
    return [
        leaf(0, eax: 1, ebx: vendor.0, ecx: vendor.2, edx: vendor.1),
        leaf(1, eax: 0x600, edx: leaf1EDX),
        leaf(0x8000_0000, eax: 0x8000_0001),
        leaf(0x8000_0001, ecx: 1 << 0, edx: (1 << 11) | (1 << 20) | (1 << 29)),  // LAHF; SYSCALL NX LM
    ]
}()

extension SoftBackend {
    // MARK: kvm_arch_dev_ioctl

    func kvm_arch_dev_ioctl(_ request: UInt, _ arg: UInt) -> Int32 {
        switch request {
        case KVMRequest.getMSRIndexList.number:
            guard var list = UserMemory.read(kvm_msr_list.self, from: arg) else { return fail(.badAddress) }
            let room = list.nmsrs
            list.nmsrs = UInt32(msrsToSave.count)
            // The count goes back even when the buffer is short, so that the caller can ask again.
            guard UserMemory.write(list, to: arg) else { return fail(.badAddress) }
            if room < list.nmsrs { return fail(.argListTooLong) }
            let entries = arg + UInt(MemoryLayout<kvm_msr_list>.size)
            for (i, index) in msrsToSave.enumerated() {
                _ = UserMemory.write(index, to: entries + UInt(i * MemoryLayout<UInt32>.stride))
            }
            return 0
        case KVMRequest.getSupportedCPUID.number:
            return kvm_dev_ioctl_get_cpuid(arg)
        default:
            return fail(.invalidArgument)
        }
    }

    /// KVM_GET_SUPPORTED_CPUID: E2BIG for a buffer too small, leaving nent as it was.
    func kvm_dev_ioctl_get_cpuid(_ arg: UInt) -> Int32 {
        guard var cpuid = UserMemory.read(kvm_cpuid2.self, from: arg) else { return fail(.badAddress) }
        if cpuid.nent < 1 { return fail(.argListTooLong) }
        if cpuid.nent < UInt32(supportedCPUID.count) { return fail(.argListTooLong) }
        let entries = arg + UInt(MemoryLayout<kvm_cpuid2>.size)
        for (i, entry) in supportedCPUID.enumerated() {
            _ = UserMemory.write(entry, to: entries + UInt(i * MemoryLayout<kvm_cpuid_entry2>.stride))
        }
        cpuid.nent = UInt32(supportedCPUID.count)
        return UserMemory.write(cpuid, to: arg) ? 0 : fail(.badAddress)
    }

    /// The x86 capabilities (kvm_vm_ioctl_check_extension).
    func kvm_vm_ioctl_check_extension(_ vm: SoftVM?, _ arg: UInt) -> Int32 {
        switch UInt32(truncatingIfNeeded: arg) {
        case Capability.setTSSAddr.rawValue, Capability.mpState.rawValue, Capability.extCPUID.rawValue,
             Capability.vcpuEvents.rawValue, Capability.debugregs.rawValue, Capability.xcrs.rawValue:
            return 1
        case Capability.irqchip.rawValue, Capability.irqInjectStatus.rawValue, Capability.ioapicPolarityIgnored.rawValue,
             Capability.signalMSI.rawValue:
            return 1
        default:
            return 0
        }
    }

    // MARK: kvm_arch_vm_ioctl

    func kvm_arch_vm_ioctl(_ vm: SoftVM, _ request: UInt, _ arg: UInt) -> Int32 {
        switch request {
        case KVMRequest.setTSSAddr.number:
            return kvm_vm_ioctl_set_tss_addr(vm, arg)
        case KVMRequest.createIrqchip.number:
            return kvm_vm_ioctl_create_irqchip(vm)
        case KVMRequest.getIrqchip.number, KVMRequest.setIrqchip.number:
            return kvm_vm_ioctl_irqchip(vm, arg, set: request == KVMRequest.setIrqchip.number)
        default:
            return fail(.inappropriateIOCTLForDevice)
        }
    }

    /// KVM_SET_TSS_ADDR: the three pages must end below 4 GiB. SoftKVM's CPU
    /// needs no TSS for real mode (VMX does), so the address is only kept.
    func kvm_vm_ioctl_set_tss_addr(_ vm: SoftVM, _ addr: UInt) -> Int32 {
        if addr > UInt(UInt32.max - 3 * UInt32(PAGE_SIZE) + 1) { return fail(.invalidArgument) }
        vm.arch.withLock { $0.tssAddress = UInt64(addr) }
        return 0
    }

    // MARK: kvm_arch_vcpu_ioctl

    func kvm_arch_vcpu_ioctl(_ vcpu: SoftVCPU, _ request: UInt, _ arg: UInt) -> Int32 {
        vcpu.arch.withLock { arch in
            switch request {
            case KVMRequest.getRegs.number:
                return UserMemory.write(arch.regs, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setRegs.number:
                guard let regs = UserMemory.read(kvm_regs.self, from: arg) else { return fail(.badAddress) }
                arch.regs = regs
                return 0
            case KVMRequest.getSregs.number:
                return UserMemory.write(arch.sregs, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setSregs.number:
                guard let sregs = UserMemory.read(kvm_sregs.self, from: arg) else { return fail(.badAddress) }
                return kvm_arch_vcpu_ioctl_set_sregs(&arch, sregs)
            case KVMRequest.getFPU.number:
                return UserMemory.write(arch.fpu, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setFPU.number:
                guard let fpu = UserMemory.read(kvm_fpu.self, from: arg) else { return fail(.badAddress) }
                arch.fpu = fpu
                return 0
            case KVMRequest.getMPState.number:
                return UserMemory.write(kvm_mp_state(mp_state: arch.mpState), to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setMPState.number:
                guard let state = UserMemory.read(kvm_mp_state.self, from: arg) else { return fail(.badAddress) }
                // Without an in-kernel local APIC a vCPU can only be runnable.
                if state.mp_state != UInt32(KVM_MP_STATE_RUNNABLE) { return fail(.invalidArgument) }
                arch.mpState = state.mp_state
                return 0
            case KVMRequest.getVCPUEvents.number:
                return UserMemory.write(kvm_vcpu_ioctl_x86_get_vcpu_events(arch), to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setVCPUEvents.number:
                guard let events = UserMemory.read(kvm_vcpu_events.self, from: arg) else { return fail(.badAddress) }
                return kvm_vcpu_ioctl_x86_set_vcpu_events(&arch, events)
            case KVMRequest.getDebugregs.number:
                var debug = kvm_debugregs()
                debug.db = arch.db
                debug.dr6 = arch.dr6
                debug.dr7 = arch.dr7
                return UserMemory.write(debug, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setDebugregs.number:
                guard let debug = UserMemory.read(kvm_debugregs.self, from: arg) else { return fail(.badAddress) }
                if debug.flags != 0 || debug.dr6 >> 32 != 0 || debug.dr7 >> 32 != 0 { return fail(.invalidArgument) }
                arch.db = debug.db
                arch.dr6 = debug.dr6
                arch.dr7 = debug.dr7
                return 0
            case KVMRequest.getXcrs.number:
                var xcrs = kvm_xcrs()
                xcrs.nr_xcrs = 1
                xcrs.xcrs.0 = kvm_xcr(xcr: 0, reserved: 0, value: arch.xcr0)
                return UserMemory.write(xcrs, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setXcrs.number:
                guard let xcrs = UserMemory.read(kvm_xcrs.self, from: arg) else { return fail(.badAddress) }
                return kvm_vcpu_ioctl_x86_set_xcrs(&arch, xcrs)
            case KVMRequest.getCPUID2.number:
                return kvm_vcpu_ioctl_get_cpuid2(arch, arg)
            case KVMRequest.setCPUID2.number:
                return kvm_vcpu_ioctl_set_cpuid2(&arch, arg)
            case KVMRequest.getMSRs.number:
                return msr_io(&arch, arg, write: false)
            case KVMRequest.setMSRs.number:
                return msr_io(&arch, arg, write: true)
            default:
                return fail(.invalidArgument)
            }
        }
    }

    /// KVM_RUN. SoftKVM has no CPU yet (the X86 interpreter is being
    /// written), so a run that is not cut short by `immediate_exit` fails
    /// with ENOSYS rather than pretend to execute.
    func kvm_arch_vcpu_ioctl_run(_ vcpu: SoftVCPU) -> Int32 {
        // The kernel returns EINTR for immediate_exit before entering the
        // guest, and leaves exit_reason as it was (only a pending signal sets KVM_EXIT_INTR).
        if vcpu.run.pointee.immediate_exit != 0 { return fail(.interrupted) }
        return fail(.noFunction)
    }

    // MARK: State rules

    /// kvm_is_valid_sregs and kvm_is_valid_cr0.
    func kvm_arch_vcpu_ioctl_set_sregs(_ arch: inout VCPUArch, _ sregs: kvm_sregs) -> Int32 {
        if sregs.efer & EFER_LME != 0 && sregs.cr0 & X86_CR0_PG != 0 {
            if sregs.cr4 & X86_CR4_PAE == 0 || sregs.efer & EFER_LMA == 0 { return fail(.invalidArgument) }
        } else if sregs.efer & EFER_LMA != 0 || sregs.cs.l != 0 {
            return fail(.invalidArgument)
        }
        if sregs.cr0 >> 32 != 0 { return fail(.invalidArgument) }
        if sregs.cr0 & X86_CR0_NW != 0 && sregs.cr0 & X86_CR0_CD == 0 { return fail(.invalidArgument) }
        if sregs.cr0 & X86_CR0_PG != 0 && sregs.cr0 & X86_CR0_PE == 0 { return fail(.invalidArgument) }
        arch.sregs = sregs
        return 0
    }

    /// KVM_GET_VCPU_EVENTS: the flags say which parts are valid, not what was set.
    func kvm_vcpu_ioctl_x86_get_vcpu_events(_ arch: VCPUArch) -> kvm_vcpu_events {
        var events = arch.events
        events.flags = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM)
        return events
    }

    func kvm_vcpu_ioctl_x86_set_vcpu_events(_ arch: inout VCPUArch, _ events: kvm_vcpu_events) -> Int32 {
        let valid = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW
            | KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT)
        if events.flags & ~valid != 0 { return fail(.invalidArgument) }
        // An injected exception must be a vector below 32 other than NMI's (2).
        if events.exception.injected != 0 && (events.exception.nr > 31 || events.exception.nr == 2) {
            return fail(.invalidArgument)
        }
        var stored = arch.events
        stored.exception = events.exception
        stored.interrupt.injected = events.interrupt.injected
        stored.interrupt.nr = events.interrupt.nr
        stored.interrupt.soft = events.interrupt.soft
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_SHADOW) != 0 { stored.interrupt.shadow = events.interrupt.shadow }
        stored.nmi.injected = events.nmi.injected
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING) != 0 { stored.nmi.pending = events.nmi.pending }
        stored.nmi.masked = events.nmi.masked
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_SMM) != 0 { stored.smi = events.smi }
        arch.events = stored
        return 0
    }

    /// KVM_SET_XCRS: XCR0 only; it must keep x87 and hold only what the guest's CPUID allows.
    func kvm_vcpu_ioctl_x86_set_xcrs(_ arch: inout VCPUArch, _ xcrs: kvm_xcrs) -> Int32 {
        if xcrs.nr_xcrs > KVM_MAX_XCRS || xcrs.flags != 0 { return fail(.invalidArgument) }
        let entries = withUnsafeBytes(of: xcrs.xcrs) { Array($0.bindMemory(to: kvm_xcr.self)) }
        for entry in entries.prefix(Int(xcrs.nr_xcrs)) where entry.xcr == 0 {
            let value = entry.value
            if value & XFEATURE_MASK_FP == 0 { return fail(.invalidArgument) }
            if value & XFEATURE_MASK_YMM != 0 && value & XFEATURE_MASK_SSE == 0 { return fail(.invalidArgument) }
            if value & ~(arch.guestSupportedXCR0 | XFEATURE_MASK_FP) != 0 { return fail(.invalidArgument) }
            arch.xcr0 = value
            break
        }
        return 0
    }

    func kvm_vcpu_ioctl_get_cpuid2(_ arch: VCPUArch, _ arg: UInt) -> Int32 {
        guard var cpuid = UserMemory.read(kvm_cpuid2.self, from: arg) else { return fail(.badAddress) }
        if cpuid.nent < UInt32(arch.cpuid.count) { return fail(.argListTooLong) }
        let entries = arg + UInt(MemoryLayout<kvm_cpuid2>.size)
        for (i, entry) in arch.cpuid.enumerated() {
            _ = UserMemory.write(entry, to: entries + UInt(i * MemoryLayout<kvm_cpuid_entry2>.stride))
        }
        cpuid.nent = UInt32(arch.cpuid.count)
        return UserMemory.write(cpuid, to: arg) ? 0 : fail(.badAddress)
    }

    func kvm_vcpu_ioctl_set_cpuid2(_ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        guard let cpuid = UserMemory.read(kvm_cpuid2.self, from: arg) else { return fail(.badAddress) }
        if cpuid.nent > KVM_MAX_CPUID_ENTRIES { return fail(.argListTooLong) }
        let entries = arg + UInt(MemoryLayout<kvm_cpuid2>.size)
        var table: [kvm_cpuid_entry2] = []
        for i in 0..<Int(cpuid.nent) {
            guard let entry = UserMemory.read(kvm_cpuid_entry2.self, from: entries + UInt(i * MemoryLayout<kvm_cpuid_entry2>.stride)) else {
                return fail(.badAddress)
            }
            table.append(entry)
        }
        arch.cpuid = table
        return 0
    }

    /// KVM_GET_MSRS and KVM_SET_MSRS: entries are done in order until one
    /// fails; the result is how many were done.
    func msr_io(_ arch: inout VCPUArch, _ arg: UInt, write: Bool) -> Int32 {
        guard let msrs = UserMemory.read(kvm_msrs.self, from: arg) else { return fail(.badAddress) }
        if msrs.nmsrs >= MAX_IO_MSRS { return fail(.argListTooLong) }
        let entries = arg + UInt(MemoryLayout<kvm_msrs>.size)
        var done: Int32 = 0
        for i in 0..<Int(msrs.nmsrs) {
            let address = entries + UInt(i * MemoryLayout<kvm_msr_entry>.stride)
            guard var entry = UserMemory.read(kvm_msr_entry.self, from: address) else { return fail(.badAddress) }
            if write {
                guard arch.setMSR(entry.index, entry.data) else { break }
            } else {
                guard let data = arch.getMSR(entry.index) else { break }
                entry.data = data
                guard UserMemory.write(entry, to: address) else { return fail(.badAddress) }
            }
            done += 1
        }
        return done
    }
}

/// x86 VM state (`struct kvm_arch`).
struct KVMArch: Sendable {
    var tssAddress: UInt64 = 0
}

/// A vCPU's x86 state (`struct kvm_vcpu_arch`), in the ABI's own structs.
struct VCPUArch: @unchecked Sendable {
    var regs = kvm_regs()
    var sregs = kvm_sregs()
    var fpu = kvm_fpu()
    var mpState = UInt32(KVM_MP_STATE_RUNNABLE)
    var events = kvm_vcpu_events()
    var db: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    var dr6: UInt64 = 0
    var dr7: UInt64 = 0
    var xcr0: UInt64 = XFEATURE_MASK_FP
    var cpuid: [kvm_cpuid_entry2] = []
    var msrs: [UInt32: UInt64] = [:]

    /// The vCPU's state at creation (kvm_vcpu_reset with init_event false),
    /// as the kernel gives it: the x86 reset vector in real mode.
    init(id: UInt32) {
        // EDX holds the CPU signature, CPUID.1:EAX, or 0x600 before the guest has a CPUID.
        regs.rdx = 0x600
        regs.rip = 0xFFF0
        regs.rflags = 2
        func segment(type: UInt8, s: UInt8, selector: UInt16 = 0, base: UInt64 = 0) -> kvm_segment {
            var segment = kvm_segment()
            segment.base = base
            segment.limit = 0xFFFF
            segment.selector = selector
            segment.type = type
            segment.present = 1
            segment.s = s
            return segment
        }
        sregs.cs = segment(type: 11, s: 1, selector: 0xF000, base: 0xFFFF_0000)
        sregs.ds = segment(type: 3, s: 1)
        sregs.es = sregs.ds
        sregs.fs = sregs.ds
        sregs.gs = sregs.ds
        sregs.ss = sregs.ds
        sregs.tr = segment(type: 11, s: 0)
        sregs.ldt = segment(type: 2, s: 0)
        sregs.gdt.limit = 0xFFFF
        sregs.idt.limit = 0xFFFF
        sregs.cr0 = 0x6000_0010  // CD, NW, ET
        // The APIC is enabled at its default base; vCPU 0 is the bootstrap processor (kvm_vcpu_is_reset_bsp).
        sregs.apic_base = 0xFEE0_0800 | (id == 0 ? 0x100 : 0)
        fpu.fcw = 0x37F
        dr6 = 0xFFFF_0FF0  // DR6_ACTIVE_LOW
        dr7 = 0x400  // DR7_FIXED_1
        msrs[MSR_IA32_CR_PAT] = MSR_IA32_CR_PAT_DEFAULT
    }

    /// The XCR0 bits the guest's CPUID leaf 0xD allows, within what SoftKVM supports.
    var guestSupportedXCR0: UInt64 {
        guard let leaf = cpuid.first(where: { $0.function == 0xD && $0.index == 0 }) else { return 0 }
        return (UInt64(leaf.eax) | UInt64(leaf.edx) << 32) & softSupportedXCR0
    }

    func getMSR(_ index: UInt32) -> UInt64? {
        switch index {
        case MSR_EFER: return sregs.efer
        case MSR_IA32_APICBASE: return sregs.apic_base
        case MSR_FS_BASE: return sregs.fs.base
        case MSR_GS_BASE: return sregs.gs.base
        case _ where msrsToSave.contains(index): return msrs[index] ?? 0
        default: return nil
        }
    }

    mutating func setMSR(_ index: UInt32, _ data: UInt64) -> Bool {
        switch index {
        case MSR_EFER:
            guard data & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NX) == 0 else { return false }
            sregs.efer = data
        case MSR_IA32_APICBASE: sregs.apic_base = data
        case MSR_FS_BASE: sregs.fs.base = data
        case MSR_GS_BASE: sregs.gs.base = data
        case _ where msrsToSave.contains(index): msrs[index] = data
        default: return false
        }
        return true
    }
}

/// A vCPU (`struct kvm_vcpu`). It holds its VM, as the kernel's vCPU holds
/// a reference taken with kvm_get_kvm.
final class SoftVCPU: @unchecked Sendable {
    /// The kvm_run page, the pio data page and the coalesced MMIO ring (KVM_GET_VCPU_MMAP_SIZE).
    static let mmapSize = 3 * Int(PAGE_SIZE)

    let vm: SoftVM
    let id: UInt32
    /// SoftKVM's own mapping of the vCPU's memfd, shared with user space's.
    let mapping: UnsafeMutableRawPointer
    /// `vcpu->mutex` and the state it guards.
    let arch: Mutex<VCPUArch>

    init?(vm: SoftVM, id: UInt32, descriptor: Int32) {
        guard let address = mmap(nil, SoftVCPU.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0),
              address != MAP_FAILED else { return nil }
        guard vm.coalesced.mapInto(address, size: SoftVCPU.mmapSize) else {
            munmap(address, SoftVCPU.mmapSize)
            return nil
        }
        self.vm = vm
        self.id = id
        mapping = address
        arch = Mutex(VCPUArch(id: id))
    }

    deinit { munmap(mapping, SoftVCPU.mmapSize) }

    var run: UnsafeMutablePointer<kvm_run> { mapping.assumingMemoryBound(to: kvm_run.self) }
}
