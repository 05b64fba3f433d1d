import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage
import X86

// The x86 part of KVM, after the kernel's arch/x86/kvm/x86.c (kvm_arch_*)
// and cpuid.c.

/// MAX_IO_MSRS: the most entries one KVM_GET_MSRS or KVM_SET_MSRS takes.
let MAX_IO_MSRS: UInt32 = 256
/// KVM_MAX_CPUID_ENTRIES.
let KVM_MAX_CPUID_ENTRIES: UInt32 = 256
/// KVM_MAX_XCRS.
let KVM_MAX_XCRS: UInt32 = 16

// The kernel's names (msr-index.h, processor-flags.h) for the numbers and
// bits the CPU defines once (X86's MSR and ControlBits), so that a reader
// of the kernel finds each rule here under the same name.
let MSR_IA32_TSC = MSR.tsc
let MSR_IA32_APICBASE = MSR.apicBase
let MSR_IA32_APICBASE_BSP: UInt64 = 1 << 8
let X2APIC_ENABLE: UInt64 = 1 << 10
let MSR_IA32_APICBASE_ENABLE: UInt64 = 1 << 11
let MSR_IA32_APICBASE_BASE: UInt64 = 0xF_FFFF << 12
let MSR_IA32_SYSENTER_CS = MSR.sysenterCS
let MSR_IA32_SYSENTER_ESP = MSR.sysenterESP
let MSR_IA32_SYSENTER_EIP = MSR.sysenterEIP
let MSR_IA32_CR_PAT = MSR.pat
let MSR_EFER = MSR.efer
let MSR_STAR = MSR.star
let MSR_LSTAR = MSR.lstar
let MSR_CSTAR = MSR.cstar
let MSR_SYSCALL_MASK = MSR.syscallMask
let MSR_FS_BASE = MSR.fsBase
let MSR_GS_BASE = MSR.gsBase
let MSR_KERNEL_GS_BASE = MSR.kernelGSBase
let MSR_TSC_AUX = MSR.tscAux
let MSR_IA32_ARCH_CAPABILITIES = MSR.archCapabilities

/// The MSRs KVM_GET_MSR_INDEX_LIST reports (the kernel's msrs_to_save and
/// emulated_msrs): those whose state lives only in the MSR. EFER, APIC base
/// and the FS/GS bases are readable as MSRs too, but travel in kvm_sregs.
let msrsToSave: [UInt32] = [
    MSR_IA32_TSC, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_IA32_CR_PAT,
    MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE, MSR_IA32_ARCH_CAPABILITIES,
    // The TSC's, the APIC timer's and kvmclock's (LAPICVCPU.swift, KVMClock.swift).
    MSR_TSC_AUX, MSR_IA32_TSC_ADJUST, MSR_IA32_TSC_DEADLINE,
    MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME, MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW,
]

/// The power-on PAT (Intel SDM 11.12.4).
let MSR_IA32_CR_PAT_DEFAULT: UInt64 = 0x0007_0406_0007_0406

let EFER_SCE = ControlBits.eferSCE
let EFER_LME = ControlBits.eferLME
let EFER_LMA = ControlBits.eferLMA
let EFER_NX = ControlBits.eferNXE

let X86_CR0_PE = ControlBits.cr0PE
let X86_CR0_NW = ControlBits.cr0NW
let X86_CR0_CD = ControlBits.cr0CD
let X86_CR0_PG = ControlBits.cr0PG
let X86_CR4_PAE = ControlBits.cr4PAE

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
        CPUIDEntry(function: function, eax: eax, ebx: ebx, ecx: ecx, edx: edx).kernelValue
    }
    // "SoftKVMSwift" in EBX, EDX, ECX order, as CPUID leaf 0 spells a vendor.
    let vendor: (UInt32, UInt32, UInt32) = (0x7466_6F53, 0x534D_564B, 0x7466_6977)
    // VME PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT PSE-36; FPU CLFSH MMX
    // FXSR SSE SSE2. FPU: the whole x87 (its arithmetic runs on the host's
    // FPU: on a host without one, the data instructions are an emulation
    // failure). No XSAVE: Linux then saves the FPU with FXSAVE. APIC: the
    // in-kernel local APIC (a VMM without an irqchip clears it).
    let leaf1EDX: UInt32 = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 13)
        | (1 << 15) | (1 << 16) | (1 << 17) | (1 << 0) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
    // CLFLUSH's line size, in 8-byte units (needed with CLFSH).
    let leaf1EBX: UInt32 = 8 << 8
    // SSE3 (with FISTTP; not MONITOR, which has its own bit), SSSE3, CX16,
    // POPCNT. Not MOVBE. TSC-deadline timer mode; running on a hypervisor
    // (which makes guests look at 0x40000000).
    let leaf1ECX: UInt32 = (1 << 0) | (1 << 9) | (1 << 13) | (1 << 23) | (1 << 24) | (1 << 31)
    // SMEP SMAP (the page walk applies them; STAC/CLAC). ERMS: REP MOVSB
    // and STOSB move whole pages at a time (StringBulk.swift), so Linux's
    // memcpy, memset and clear_page, which take them where ERMS is shown,
    // cost one instruction per page instead of a loop.
    let leaf7EBX: UInt32 = (1 << 7) | (1 << 9) | (1 << 20)
    // FSRM (short REP MOVSB is as fast: Linux's memcpy then is REP MOVSB
    // at any size); ARCH_CAPABILITIES, which reports the side channels
    // this CPU does not have (KVM emulates the MSR for every guest, and so
    // lists the bit).
    let leaf7EDX: UInt32 = (1 << 4) | ArchCapabilities.cpuidBit
    let structured = CPUIDEntry(function: 7, index: 0, flags: UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX), ebx: leaf7EBX,
                                edx: leaf7EDX)
    // KVM's paravirtual leaves: kvmclock (both MSR sets, stable TSC), no port 0x80 delays needed.
    let kvmFeatures: UInt32 = (1 << KVM_FEATURE_CLOCKSOURCE) | (1 << KVM_FEATURE_NOP_IO_DELAY)
        | (1 << KVM_FEATURE_CLOCKSOURCE2) | (1 << KVM_FEATURE_CLOCKSOURCE_STABLE_BIT)
    return [
        leaf(0, eax: 7, ebx: vendor.0, ecx: vendor.2, edx: vendor.1),
        leaf(1, eax: 0x600, ebx: leaf1EBX, ecx: leaf1ECX, edx: leaf1EDX),
        // Leaves 2-6 (caches, MONITOR, power) describe nothing.
        leaf(2), leaf(3), leaf(4), leaf(5), leaf(6),
        structured.kernelValue,
        leaf(0x8000_0000, eax: 0x8000_0008),
        // LAHF, ABM (LZCNT); SYSCALL NX Page1GB RDTSCP LM
        leaf(0x8000_0001, ecx: (1 << 0) | (1 << 5), edx: (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29)),
        // No brand string, cache or power leaves.
        leaf(0x8000_0002), leaf(0x8000_0003), leaf(0x8000_0004), leaf(0x8000_0005), leaf(0x8000_0006),
        leaf(0x8000_0007),
        // 40 physical address bits (MAXPHYADDR, which the page walk's reserved bits follow), 48 linear.
        leaf(0x8000_0008, eax: 0x3028),
        // "KVMKVMKVM\0\0\0" and the highest paravirtual leaf.
        leaf(KVM_CPUID_SIGNATURE, eax: KVM_CPUID_FEATURES, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
        leaf(KVM_CPUID_FEATURES, eax: kvmFeatures),
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
             Capability.vcpuEvents.rawValue, Capability.debugregs.rawValue, Capability.xcrs.rawValue,
             Capability.setIdentityMapAddr.rawValue, Capability.setGuestDebug.rawValue:
            return 1
        case Capability.setGuestDebug2.rawValue:
            return Int32(KVM_GUESTDBG_VALID_MASK)
        case Capability.irqchip.rawValue, Capability.irqInjectStatus.rawValue, Capability.ioapicPolarityIgnored.rawValue,
             Capability.signalMSI.rawValue:
            return 1
        case Capability.pit.rawValue, Capability.pit2.rawValue, Capability.pitState2.rawValue,
             Capability.reinjectControl.rawValue:
            return 1
        // EnableCap.swift, MSRAccess.swift, XSave2.swift.
        case Capability.enableCap.rawValue, Capability.x86UserSpaceMSR.rawValue, Capability.x86MSRFilter.rawValue,
             Capability.enforcePvFeatureCPUID.rawValue:
            return 1
        case Capability.x86DisableExits.rawValue:
            return Int32(softAllowedDisableExits)
        case Capability.xsave2.rawValue:
            return Int32(softXSave2Size)
        // The TSC is scaled in software, to any frequency, and the APIC timer has TSC-deadline mode.
        case Capability.getTSCKhz.rawValue, Capability.tscControl.rawValue, Capability.vmTSCControl.rawValue,
             Capability.tscDeadlineTimer.rawValue:
            return 1
        case Capability.adjustClock.rawValue:
            return Int32(KVM_CLOCK_VALID_FLAGS)
        default:
            return 0
        }
    }

    // MARK: kvm_arch_vm_ioctl

    func kvm_arch_vm_ioctl(_ vm: SoftVM, _ request: UInt, _ arg: UInt) -> Int32 {
        switch request {
        case KVMRequest.setTSSAddr.number:
            return kvm_vm_ioctl_set_tss_addr(vm, arg)
        case KVMRequest.setIdentityMapAddr.number:
            return kvm_vm_ioctl_set_identity_map_addr(vm, arg)
        case KVMRequest.createIrqchip.number:
            return kvm_vm_ioctl_create_irqchip(vm)
        case KVMRequest.getIrqchip.number, KVMRequest.setIrqchip.number:
            return kvm_vm_ioctl_irqchip(vm, arg, set: request == KVMRequest.setIrqchip.number)
        case KVMRequest.createPIT.number, KVMRequest.createPIT2.number:
            return kvm_vm_ioctl_create_pit(vm, arg, legacy: request == KVMRequest.createPIT.number)
        case KVMRequest.getPIT.number, KVMRequest.setPIT.number, KVMRequest.getPIT2.number, KVMRequest.setPIT2.number,
             KVMRequest.reinjectControl.number:
            return kvm_vm_ioctl_pit(vm, request, arg)
        case KVMRequest.x86SetMSRFilter.number:
            return kvm_vm_ioctl_set_msr_filter(vm, arg)
        case KVMRequest.getClock.number:
            return kvm_vm_ioctl_get_clock(vm, arg)
        case KVMRequest.setClock.number:
            return kvm_vm_ioctl_set_clock(vm, arg)
        case KVMRequest.setTSCKhz.number:
            return kvm_vm_ioctl_set_tsc_khz(vm, arg)
        case KVMRequest.getTSCKhz.number:
            return Int32(bitPattern: vm.arch.withLock { $0.clock.defaultKilohertz })
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

    /// KVM_SET_IDENTITY_MAP_ADDR: refused once a vCPU exists (the kernel
    /// checks created_vcpus before reading the address). SoftKVM's CPU needs
    /// no identity-mapped page table for unpaged protected mode (EPT does),
    /// so the address is only kept.
    func kvm_vm_ioctl_set_identity_map_addr(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        if vm.vcpus.withLock({ $0.created }) > 0 { return fail(.invalidArgument) }
        guard let address = UserMemory.read(UInt64.self, from: arg) else { return fail(.badAddress) }
        vm.arch.withLock { $0.identityMapAddress = address }
        return 0
    }

    // MARK: kvm_arch_vcpu_ioctl

    func kvm_arch_vcpu_ioctl(_ vcpu: SoftVCPU, _ request: UInt, _ arg: UInt) -> Int32 {
        vcpu.arch.withLock { arch in
            switch request {
            case KVMRequest.getRegs.number:
                var regs = arch.regs
                // kvm_get_rflags: while KVM single-steps, TF reads as clear.
                if arch.guestDebug & UInt32(KVM_GUESTDBG_SINGLESTEP) != 0 { regs.rflags &= ~X86_EFLAGS_TF }
                return UserMemory.write(regs, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setRegs.number:
                guard let regs = UserMemory.read(kvm_regs.self, from: arg) else { return fail(.badAddress) }
                arch.regs = regs
                return 0
            case KVMRequest.getSregs.number:
                var sregs = arch.sregs
                sregs.cr8 = kvm_get_cr8(arch, vcpu)
                return UserMemory.write(sregs, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setSregs.number:
                guard let sregs = UserMemory.read(kvm_sregs.self, from: arg) else { return fail(.badAddress) }
                return kvm_arch_vcpu_ioctl_set_sregs(&arch, vcpu, sregs)
            case KVMRequest.getFPU.number:
                return UserMemory.write(arch.fpu, to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setFPU.number:
                guard let fpu = UserMemory.read(kvm_fpu.self, from: arg) else { return fail(.badAddress) }
                arch.setFPU(fpu)
                return 0
            case KVMRequest.getXsave.number, KVMRequest.getXsave2.number:  // FPU.swift
                return kvm_vcpu_ioctl_x86_get_xsave(&arch, arg)
            case KVMRequest.setXsave.number:
                return kvm_vcpu_ioctl_x86_set_xsave(&arch, arg)
            case KVMRequest.getMPState.number:
                let state = kvm_arch_vcpu_ioctl_get_mpstate(vcpu, &arch)
                return UserMemory.write(kvm_mp_state(mp_state: state), to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setMPState.number:
                guard let state = UserMemory.read(kvm_mp_state.self, from: arg) else { return fail(.badAddress) }
                return kvm_arch_vcpu_ioctl_set_mpstate(vcpu, &arch, state.mp_state)
            case KVMRequest.getVCPUEvents.number:
                process_nmi(&arch, vcpu)
                return UserMemory.write(kvm_vcpu_ioctl_x86_get_vcpu_events(arch), to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setVCPUEvents.number:
                guard let events = UserMemory.read(kvm_vcpu_events.self, from: arg) else { return fail(.badAddress) }
                return kvm_vcpu_ioctl_x86_set_vcpu_events(&arch, events)
            case KVMRequest.getLAPIC.number:
                return kvm_vcpu_ioctl_get_lapic(vcpu, arg)
            case KVMRequest.setLAPIC.number:
                return kvm_vcpu_ioctl_set_lapic(vcpu, &arch, arg)
            case KVMRequest.nmi.number:
                return kvm_vcpu_ioctl_nmi(&arch)
            case KVMRequest.getTSCKhz.number:
                return Int32(bitPattern: arch.cpu.tsc.kilohertz)
            case KVMRequest.setTSCKhz.number:
                return kvm_vcpu_ioctl_set_tsc_khz(vcpu.vm, &arch, arg)
            case KVMRequest.getDebugregs.number:
                return UserMemory.write(kvm_vcpu_ioctl_x86_get_debugregs(arch), to: arg) ? 0 : fail(.badAddress)
            case KVMRequest.setDebugregs.number:
                guard let debug = UserMemory.read(kvm_debugregs.self, from: arg) else { return fail(.badAddress) }
                return kvm_vcpu_ioctl_x86_set_debugregs(&arch, debug)
            case KVMRequest.setGuestDebug.number:
                guard let debug = UserMemory.read(kvm_guest_debug.self, from: arg) else { return fail(.badAddress) }
                return kvm_arch_vcpu_ioctl_set_guest_debug(&arch, debug)
            case KVMRequest.translate.number:
                return kvm_arch_vcpu_ioctl_translate(&arch, vcpu.vm, arg)
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
                let r = kvm_vcpu_ioctl_set_cpuid2(&arch, arg)
                if r == 0 { kvm_lapic_after_set_cpuid(arch, vcpu) }
                return r
            case KVMRequest.interrupt.number:
                guard let irq = UserMemory.read(kvm_interrupt.self, from: arg) else { return fail(.badAddress) }
                // With the PIC in the kernel, interrupts come from it, not from user space.
                if vcpu.vm.irqchip != nil { return fail(.noSuchAddressOrDevice) }
                return kvm_vcpu_ioctl_interrupt(&arch, irq)
            case KVMRequest.getMSRs.number:
                return msr_io(&arch, vcpu, arg, write: false)
            case KVMRequest.setMSRs.number:
                return msr_io(&arch, vcpu, arg, write: true)
            case KVMRequest.enableCap.number:
                return kvm_vcpu_ioctl_enable_cap(&arch, arg)
            default:
                return fail(.invalidArgument)
            }
        }
    }

    /// KVM_INTERRUPT with a user-space interrupt controller: injected at the
    /// next KVM_RUN; a second one before that replaces the first, as
    /// kvm_queue_interrupt does (KVM_NR_INTERRUPTS is 256).
    func kvm_vcpu_ioctl_interrupt(_ arch: inout VCPUArch, _ irq: kvm_interrupt) -> Int32 {
        if irq.irq >= 256 { return fail(.invalidArgument) }
        arch.queuedInterrupt = UInt8(irq.irq)
        arch.interruptVector = UInt8(irq.irq)
        arch.interruptSoft = false
        return 0
    }

    // MARK: State rules

    /// kvm_is_valid_sregs and kvm_is_valid_cr0, then the APIC base and CR8
    /// (which go to the local APIC).
    func kvm_arch_vcpu_ioctl_set_sregs(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ sregs: kvm_sregs) -> Int32 {
        if sregs.efer & EFER_LME != 0 && sregs.cr0 & X86_CR0_PG != 0 {
            if sregs.cr4 & X86_CR4_PAE == 0 || sregs.efer & EFER_LMA == 0 { return fail(.invalidArgument) }
        } else if sregs.efer & EFER_LMA != 0 || sregs.cs.l != 0 {
            return fail(.invalidArgument)
        }
        if sregs.cr0 >> 32 != 0 { return fail(.invalidArgument) }
        if sregs.cr0 & X86_CR0_NW != 0 && sregs.cr0 & X86_CR0_CD == 0 { return fail(.invalidArgument) }
        if sregs.cr0 & X86_CR0_PG != 0 && sregs.cr0 & X86_CR0_PE == 0 { return fail(.invalidArgument) }
        if !kvm_apic_set_base(&arch, vcpu, sregs.apic_base, hostInitiated: true) { return fail(.invalidArgument) }
        arch.sregs = sregs
        _ = kvm_set_cr8(&arch, vcpu, sregs.cr8)
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
        // After the first KVM_RUN the CPUID can only be set again unchanged
        // (kvm_set_cpuid's kvm_cpuid_check_equal).
        if arch.hasRun {
            return Self.sameCPUID(table, arch.cpuid) ? 0 : fail(.invalidArgument)
        }
        arch.cpuid = table
        return 0
    }

    static func sameCPUID(_ a: [kvm_cpuid_entry2], _ b: [kvm_cpuid_entry2]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy {
            $0.function == $1.function && $0.index == $1.index && $0.flags == $1.flags
                && $0.eax == $1.eax && $0.ebx == $1.ebx && $0.ecx == $1.ecx && $0.edx == $1.edx
        }
    }

    /// KVM_GET_MSRS and KVM_SET_MSRS: entries are done in order until one
    /// fails; the result is how many were done.
    func msr_io(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ arg: UInt, write: Bool) -> Int32 {
        guard let msrs = UserMemory.read(kvm_msrs.self, from: arg) else { return fail(.badAddress) }
        if msrs.nmsrs >= MAX_IO_MSRS { return fail(.argListTooLong) }
        let entries = arg + UInt(MemoryLayout<kvm_msrs>.size)
        var done: Int32 = 0
        for i in 0..<Int(msrs.nmsrs) {
            let address = entries + UInt(i * MemoryLayout<kvm_msr_entry>.stride)
            guard var entry = UserMemory.read(kvm_msr_entry.self, from: address) else { return fail(.badAddress) }
            if write {
                if let done = kvm_set_msr_local(&arch, vcpu, entry.index, entry.data, hostInitiated: true) {
                    guard done else { break }
                } else {
                    guard arch.setMSR(entry.index, entry.data) else { break }
                }
            } else {
                guard let data = kvm_get_msr_local(arch, vcpu, entry.index) ?? arch.getMSR(entry.index) else { break }
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
    var identityMapAddress: UInt64 = 0
    /// KVM_CAP_X86_USER_SPACE_MSR's exit reasons and KVM_X86_SET_MSR_FILTER's filter (MSRAccess.swift).
    var userSpaceMSRMask: UInt32 = 0
    var msrFilter: X86MSRFilter? = nil
    /// kvmclock and the TSCs (KVMClock.swift).
    var clock: VMClock
}

/// A vCPU's x86 state (`struct kvm_vcpu_arch`). The architectural state
/// lives in the X86 CPU; the ABI structs are made from it and written into
/// it, so that what KVM_GET_* gives is what the guest runs with.
struct VCPUArch: @unchecked Sendable {
    var cpu = X86CPU(memory: PhysicalMemory(ranges: []))
    /// What kvm_sregs holds that the CPU does not model yet: CR8 and the
    /// interrupt bitmap, kept as set.
    var extraSregs = kvm_sregs()
    /// The XSAVE components KVM_SET_XSAVE last marked present (FPU.swift).
    var xfeatures: UInt64 = 0
    var mpState = UInt32(KVM_MP_STATE_RUNNABLE)
    /// The NMI state KVM_SET_VCPU_EVENTS gave, kept as set.
    var events = kvm_vcpu_events()
    /// KVM_SET_GUEST_DEBUG's control word (`vcpu->guest_debug`); 0 when off.
    var guestDebug: UInt32 = 0
    /// The exception for the next entry (`vcpu->arch.exception`).
    var exception = QueuedException()
    /// The length of the instruction the last #BP stop was at, which an
    /// injected #BP returns past (`event_exit_inst_len`).
    var eventExitInstructionLength: UInt64 = 0
    var xcr0: UInt64 = XFEATURE_MASK_FP
    /// NMIs KVM_NMI queued (`nmi_queued`) and those waiting for delivery (`nmi_pending`).
    var nmiQueued = 0
    var nmiPending = 0
    /// kvmclock (KVMClock.swift).
    var clock = VCPUClock()
    /// How fast the CPU has been running, to end a slice near the APIC timer's expiry (Run.swift).
    var instructionsPerNanosecond = 0.05
    var cpuid: [kvm_cpuid_entry2] = [] {
        didSet {
            cpu.cpuid = cpuid.map {
                CPUIDLeaf(function: $0.function, index: $0.index,
                          significantIndex: $0.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0,
                          eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
            }
        }
    }
    /// Whether KVM_RUN has been entered (kvm_vcpu_has_run).
    var hasRun = false
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID (`vcpu->arch.pv_cpuid.enforce`).
    var pvCPUIDEnforced = false
    /// The vector KVM_INTERRUPT queued, injected at the next entry (`vcpu->arch.interrupt`).
    var queuedInterrupt: UInt8? = nil
    /// The queued interrupt is a software one (INT n, from KVM_SET_VCPU_EVENTS).
    var interruptSoft = false
    /// `vcpu->arch.interrupt.nr`: the last vector queued, still reported once delivered.
    var interruptVector: UInt8 = 0
    /// The read the last exit asked user space to answer (complete_userspace_io).
    var pendingRead = PendingRead.none
    /// The slots generation the CPU's memory view was built from, and the
    /// dirty logs it points into (kept alive while it does).
    var memoryGeneration: UInt64 = ~0
    var memoryOwners: [DirtyLog] = []

    enum PendingRead {
        case none
        case port(size: Int)
        case string(size: Int, count: Int)
        case mmio(address: UInt64, size: Int)
    }

    /// The vCPU's state at creation (kvm_vcpu_reset with init_event false),
    /// as the kernel gives it: the x86 reset vector in real mode.
    init(id: UInt32) {
        var regs = kvm_regs()
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
        var sregs = kvm_sregs()
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
        self.regs = regs
        self.sregs = sregs
        // FNINIT's x87 state and the default MXCSR (the kernel's fpstate_init_fx).
        cpu.state.fpu = .initialized
        // Faults go to the guest's IDT, as on hardware; KVM's exits are what is left.
        cpu.deliversExceptions = true
        // KVM decides every guest MSR access (MSRAccess.swift), as VMX and SVM intercept them.
        cpu.interceptsMSRs = true
        // The APIC's and kvmclock's MSRs and CR8 are KVM's (LAPICVCPU.swift).
        cpu.forwardsSystemRegisters = true
    }

    /// kvm_regs, from and to the CPU's registers.
    var regs: kvm_regs {
        get {
            let s = cpu.state
            var regs = kvm_regs()
            regs.rax = s[.rax]; regs.rbx = s[.rbx]; regs.rcx = s[.rcx]; regs.rdx = s[.rdx]
            regs.rsi = s[.rsi]; regs.rdi = s[.rdi]; regs.rsp = s[.rsp]; regs.rbp = s[.rbp]
            regs.r8 = s[.r8]; regs.r9 = s[.r9]; regs.r10 = s[.r10]; regs.r11 = s[.r11]
            regs.r12 = s[.r12]; regs.r13 = s[.r13]; regs.r14 = s[.r14]; regs.r15 = s[.r15]
            regs.rip = s.rip
            regs.rflags = s.rflags
            return regs
        }
        set {
            cpu.state[.rax] = newValue.rax; cpu.state[.rbx] = newValue.rbx
            cpu.state[.rcx] = newValue.rcx; cpu.state[.rdx] = newValue.rdx
            cpu.state[.rsi] = newValue.rsi; cpu.state[.rdi] = newValue.rdi
            cpu.state[.rsp] = newValue.rsp; cpu.state[.rbp] = newValue.rbp
            cpu.state[.r8] = newValue.r8; cpu.state[.r9] = newValue.r9
            cpu.state[.r10] = newValue.r10; cpu.state[.r11] = newValue.r11
            cpu.state[.r12] = newValue.r12; cpu.state[.r13] = newValue.r13
            cpu.state[.r14] = newValue.r14; cpu.state[.r15] = newValue.r15
            cpu.state.rip = newValue.rip
            cpu.state.rflags = newValue.rflags
        }
    }

    /// kvm_sregs, from and to the CPU's segments, control registers and
    /// descriptor tables (the rest as set).
    var sregs: kvm_sregs {
        get {
            let s = cpu.state
            var sregs = extraSregs
            sregs.cs = Self.segment(s.cs)
            sregs.ds = Self.segment(s.ds)
            sregs.es = Self.segment(s.es)
            sregs.fs = Self.segment(s.fs)
            sregs.gs = Self.segment(s.gs)
            sregs.ss = Self.segment(s.ss)
            sregs.tr = Self.segment(s.tr)
            sregs.ldt = Self.segment(s.ldtr)
            sregs.gdt = kvm_dtable(base: s.gdtr.base, limit: s.gdtr.limit, padding: (0, 0, 0))
            sregs.idt = kvm_dtable(base: s.idtr.base, limit: s.idtr.limit, padding: (0, 0, 0))
            sregs.cr0 = s.cr0
            sregs.cr2 = s.cr2
            sregs.cr3 = s.cr3
            sregs.cr4 = s.cr4
            sregs.efer = s.efer
            sregs.apic_base = s.msrs.apicBase
            return sregs
        }
        set {
            extraSregs = newValue
            // CR0 and EFER before CS, so that the mode CS sets is derived from them.
            cpu.state.cr0 = newValue.cr0
            cpu.state.cr2 = newValue.cr2
            cpu.state.cr3 = newValue.cr3
            cpu.state.cr4 = newValue.cr4
            cpu.state.efer = newValue.efer
            cpu.state.cs = Self.segment(newValue.cs)
            cpu.state.ds = Self.segment(newValue.ds)
            cpu.state.es = Self.segment(newValue.es)
            cpu.state.fs = Self.segment(newValue.fs)
            cpu.state.gs = Self.segment(newValue.gs)
            cpu.state.ss = Self.segment(newValue.ss)
            cpu.state.tr = Self.segment(newValue.tr)
            cpu.state.ldtr = Self.segment(newValue.ldt)
            cpu.state.gdtr = DescriptorTableRegister(base: newValue.gdt.base, limit: newValue.gdt.limit)
            cpu.state.idtr = DescriptorTableRegister(base: newValue.idt.base, limit: newValue.idt.limit)
            cpu.state.msrs.apicBase = newValue.apic_base
        }
    }

    /// A segment register as kvm_segment: the VMX access-rights layout the
    /// CPU keeps, unpacked; an unusable segment is one not present (as VMX reports it).
    static func segment(_ segment: SegmentRegister) -> kvm_segment {
        let a = segment.attributes
        return kvm_segment(
            base: segment.base, limit: segment.limit, selector: segment.selector, type: UInt8(a & 0xF),
            present: UInt8((a >> 7) & 1), dpl: UInt8((a >> 5) & 3), db: UInt8((a >> 14) & 1), s: UInt8((a >> 4) & 1),
            l: UInt8((a >> 13) & 1), g: UInt8((a >> 15) & 1), avl: UInt8((a >> 12) & 1),
            unusable: a & 0x80 == 0 ? 1 : 0, padding: 0)
    }

    static func segment(_ segment: kvm_segment) -> SegmentRegister {
        var attributes = UInt16(segment.type & 0xF) | UInt16(segment.s & 1) << 4 | UInt16(segment.dpl & 3) << 5
            | UInt16(segment.present & 1) << 7 | UInt16(segment.avl & 1) << 12 | UInt16(segment.l & 1) << 13
            | UInt16(segment.db & 1) << 14 | UInt16(segment.g & 1) << 15
        if segment.unusable != 0 { attributes = 0 }
        return SegmentRegister(selector: segment.selector, base: segment.base, limit: segment.limit, attributes: attributes)
    }

    /// The XCR0 bits the guest's CPUID leaf 0xD allows, within what SoftKVM supports.
    var guestSupportedXCR0: UInt64 {
        guard let leaf = cpuid.first(where: { $0.function == 0xD && $0.index == 0 }) else { return 0 }
        return (UInt64(leaf.eax) | UInt64(leaf.edx) << 32) & softSupportedXCR0
    }

    /// An MSR for KVM_GET_MSRS: those in the list, and EFER, APIC base and
    /// the FS/GS bases that travel in kvm_sregs too.
    func getMSR(_ index: UInt32) -> UInt64? {
        guard Self.accessibleMSRs.contains(index) else { return nil }
        return cpu.readMSR(index, host: true)
    }

    mutating func setMSR(_ index: UInt32, _ data: UInt64) -> Bool {
        guard Self.accessibleMSRs.contains(index) else { return false }
        return cpu.writeMSR(index, data, host: true)
    }

    static let accessibleMSRs: Set<UInt32> = Set(msrsToSave + [MSR_EFER, MSR_IA32_APICBASE, MSR_FS_BASE, MSR_GS_BASE])
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
    /// The in-kernel local APIC, with an in-kernel irqchip (`vcpu->arch.apic`).
    let apic: LocalAPIC?

    init?(vm: SoftVM, id: UInt32, index: Int, descriptor: Int32) {
        guard let address = mmap(nil, SoftVCPU.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0),
              address != MAP_FAILED else { return nil }
        guard vm.coalesced.mapInto(address, size: SoftVCPU.mmapSize) else {
            munmap(address, SoftVCPU.mmapSize)
            return nil
        }
        self.vm = vm
        self.id = id
        mapping = address
        apic = SoftVCPU.kvm_create_lapic(vm, id: id, index: index)
        var arch = VCPUArch(id: id)
        // kvm_arch_vcpu_create: with an in-kernel APIC, vCPUs other than the BSP wait for INIT.
        if apic != nil && id != 0 { arch.mpState = UInt32(KVM_MP_STATE_UNINITIALIZED) }
        self.arch = Mutex(arch)
    }

    deinit { munmap(mapping, SoftVCPU.mmapSize) }

    var run: UnsafeMutablePointer<kvm_run> { mapping.assumingMemoryBound(to: kvm_run.self) }
}
