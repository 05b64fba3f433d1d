import CLinuxKVM
import GuestMemory
@testable import KVM
@testable import SoftKVM
import SystemPackage
import Testing

/// The same request sequences on the host's /dev/kvm and on SoftKVM, which
/// must give the same results and errno (DESIGN.md, "Correctness").
@Suite("SoftKVM against the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct DifferentialTests {
    @Test func systemRequestsAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let backend = hypervisor.handle.backend
            let system = hypervisor.rawDescriptor
            return [
                ("api version", outcome { () throws(KVMError) in try hypervisor.apiVersion() }),
                ("api version with an argument", rawOutcome(backend, system, KVMRequest.getAPIVersion.number, value: 1)),
                ("mmap size", outcome { () throws(KVMError) in Int32(try hypervisor.vcpuMmapSize()) }),
                ("create VM type 1", outcome { () throws(KVMError) in _ = try hypervisor.createVM(type: 1) }),
                ("create VM type 0xff", outcome { () throws(KVMError) in _ = try hypervisor.createVM(type: 0xFF) }),
                ("unknown request", rawOutcome(backend, system, 0xAEFF, value: 0)),
                ("trace enable", rawOutcome(backend, system, KVMRequest.traceEnable.number, value: 0)),
                ("set regs on the system", rawOutcome(backend, system, KVMRequest.setRegs.number, value: 0)),
            ]
        }
    }

    /// Capabilities whose value SoftKVM gives as the host does.
    @Test(arguments: [
        Capability.userMemory, .setTSSAddr, .mpState, .maxVCPUs, .maxVCPUID, .nrMemslots, .nrVCPUs,
        .immediateExit, .readonlyMem, .setIdentityMapAddr, .extCPUID, .vcpuEvents, .debugregs, .xcrs, .checkExtensionVM,
        .destroyMemoryRegionWorks, .joinMemoryRegionsWorks, .syncMMU, .multiAddressSpace, Capability(rawValue: 100_000),
    ])
    func capabilityAgrees(_ capability: Capability) throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            return [
                ("system", outcome { () throws(KVMError) in try hypervisor.checkExtension(capability) }),
                ("VM", outcome { () throws(KVMError) in try vm.checkExtension(capability) }),
            ]
        }
    }

    @Test func unknownRequestsAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let backend = hypervisor.handle.backend
            let vm = try hypervisor.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            return [
                ("VM unknown", rawOutcome(backend, vm.rawDescriptor, 0xAEFF, value: 0)),
                ("VM api version", rawOutcome(backend, vm.rawDescriptor, KVMRequest.getAPIVersion.number, value: 0)),
                ("VM mmap size", rawOutcome(backend, vm.rawDescriptor, KVMRequest.getVCPUMmapSize.number, value: 0)),
                ("VM get regs", rawOutcome(backend, vm.rawDescriptor, KVMRequest.getRegs.number, value: 0)),
                ("vCPU unknown", rawOutcome(backend, vcpu.rawDescriptor, 0xAEFF, value: 0)),
                ("vCPU create VM", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.createVM.number, value: 0)),
                ("vCPU check extension", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.checkExtension.number, value: 3)),
            ]
        }
    }

    @Test func vcpuCreationLimitsAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let maximumID = try hypervisor.checkExtension(.maxVCPUID)
            let vm = try hypervisor.createVM()
            let backend = hypervisor.handle.backend
            var kept: [VCPU] = []
            func create(_ id: UInt32) -> Outcome {
                outcome { () throws(KVMError) in kept.append(try vm.createVCPU(id: id)) }
            }
            return [
                ("id 0", create(0)),
                ("id 0 again", create(0)),
                ("id 1", create(1)),
                ("id max", create(UInt32(maximumID))),
                ("id max - 1", create(UInt32(maximumID - 1))),
                ("id -1", rawOutcome(backend, vm.rawDescriptor, KVMRequest.createVCPU.number, value: UInt.max)),
                ("id 1 << 32", rawOutcome(backend, vm.rawDescriptor, KVMRequest.createVCPU.number, value: 1 << 32)),
            ]
        }
    }

    @Test func tssAddressRulesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            return [
                ("below 4 GiB", outcome { () throws(KVMError) in try vm.setTSSAddress(0xFFFB_D000) }),
                ("again", outcome { () throws(KVMError) in try vm.setTSSAddress(0xFFFB_D000) }),
                ("last three pages", outcome { () throws(KVMError) in try vm.setTSSAddress(0xFFFF_D000) }),
                ("crossing 4 GiB", outcome { () throws(KVMError) in try vm.setTSSAddress(0xFFFF_E000) }),
                ("far above", outcome { () throws(KVMError) in try vm.setTSSAddress(0xF_FFFF_FFFF_F000) }),
            ]
        }
    }

    @Test func identityMapAddressRulesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let backend = hypervisor.handle.backend
            let vm = try hypervisor.createVM()
            var results: [(String, Outcome)] = [
                ("before vCPUs", outcome { () throws(KVMError) in try vm.setIdentityMapAddress(0xFFFB_C000) }),
                ("again", outcome { () throws(KVMError) in try vm.setIdentityMapAddress(0xFEFF_C000) }),
                ("bad pointer", rawOutcome(backend, vm.rawDescriptor, KVMRequest.setIdentityMapAddr.number, value: 8)),
            ]
            _ = try vm.createVCPU(id: 0)
            results.append(("after a vCPU", outcome { () throws(KVMError) in try vm.setIdentityMapAddress(0xFFFB_C000) }))
            return results
        }
    }

    /// Every case of KVMTests/MemoryRegionTests.swift, and the rules around them.
    @Test func memorySlotRulesAgree() throws {
        // The regions outlive both VMs: raw slots do not own their memory.
        let big = try GuestMemoryRegion(size: 0x20000)
        let small = try GuestMemoryRegion(size: 0x10000)
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let slotLimit = UInt32(try hypervisor.checkExtension(.nrMemslots))
            let host = UInt(bitPattern: big.hostAddress)
            let other = UInt(bitPattern: small.hostAddress)
            func set(_ slot: UInt32, _ gpa: UInt64, _ size: UInt64, _ hva: UInt, _ flags: UInt32 = 0) -> Outcome {
                outcome { () throws(KVMError) in
                    try vm.setUserMemoryRegionUnsafe(slot: slot, guestAddress: gpa, size: size, hostAddress: hva,
                                                     flags: MemoryRegionFlags(rawValue: flags))
                }
            }
            func dirtyLog(_ slot: UInt32) -> Outcome {
                var words = [UInt64](repeating: 0xFF, count: 4)
                let result = words.withUnsafeMutableBytes { bytes in
                    var log = kvm_dirty_log()
                    log.slot = slot
                    log.dirty_bitmap = bytes.baseAddress
                    return rawOutcome(hypervisor.handle.backend, vm.rawDescriptor, KVMRequest.getDirtyLog.number, &log)
                }
                return result == .ok(0) && words != [0, 0xFF, 0xFF, 0xFF] ? .failed(.badMessage) : result
            }
            return [
                ("misaligned guest address", set(0, 0x1001, 0x1000, host)),
                ("size not whole pages", set(0, 0, 0x1001, host)),
                ("misaligned host address", set(0, 0, 0x1000, host + 8)),
                ("unknown flag", set(0, 0, 0x1000, host, 1 << 7)),
                ("slot at the limit", set(slotLimit, 0, 0x1000, host)),
                ("address space 1", set(1 << 16, 0, 0x1000, host)),
                ("guest range wraps", set(0, 0xFFFF_FFFF_FFFF_F000, 0x2000, host)),
                ("host range beyond user space", set(0, 0, 0x1000, 0xFFFF_8000_0000_0000)),
                ("delete a missing slot", set(3, 0, 0, 0)),
                ("dirty log of a missing slot", dirtyLog(0)),
                ("map slot 0", set(0, 0, 0x10000, host)),
                ("map it again unchanged", set(0, 0, 0x10000, host)),
                ("overlap", set(1, 0x8000, 0x10000, other)),
                ("same host memory, other guest range", set(1, 0x100000, 0x10000, host)),
                ("dirty log without logging", dirtyLog(0)),
                ("move", set(0, 0x200000, 0x10000, host)),
                ("make read-only", set(0, 0x200000, 0x10000, host, UInt32(KVM_MEM_READONLY))),
                ("resize", set(0, 0x200000, 0x20000, host)),
                ("other host memory", set(0, 0x200000, 0x10000, other)),
                ("turn logging on", set(0, 0x200000, 0x10000, host, UInt32(KVM_MEM_LOG_DIRTY_PAGES))),
                ("dirty log with logging", dirtyLog(0)),
                ("dirty log of the last slot", dirtyLog(slotLimit - 1)),
                ("dirty log beyond the limit", dirtyLog(slotLimit)),
                ("delete", set(0, 0x200000, 0, 0)),
                ("delete again", set(0, 0x200000, 0, 0)),
                ("range free again", set(2, 0x200000, 0x10000, other)),
                ("read-only slot", set(4, 0x400000, 0x10000, host, UInt32(KVM_MEM_READONLY))),
                ("make it writable", set(4, 0x400000, 0x10000, host)),
                ("last slot", set(slotLimit - 1, 0x800000, 0x1000, other)),
            ]
        }
    }

    @Test func resetStateOfANewVCPUAgrees() throws {
        let host = try Backend.host.hypervisor().createVM()
        let soft = try Backend.soft.hypervisor().createVM()
        for id: UInt32 in [0, 1] {
            let expected = try host.createVCPU(id: id)
            let actual = try soft.createVCPU(id: id)
            #expect(try actual.registers() == expected.registers(), "vCPU \(id)")
            let want = try expected.specialRegisters()
            let got = try actual.specialRegisters()
            #expect(got.cs == want.cs)
            #expect(got.ds == want.ds)
            #expect(got.es == want.es)
            #expect(got.fs == want.fs)
            #expect(got.gs == want.gs)
            #expect(got.ss == want.ss)
            #expect(got.tr == want.tr)
            #expect(got.ldt == want.ldt)
            #expect(got.gdt == want.gdt)
            #expect(got.idt == want.idt)
            #expect(got.cr0 == want.cr0)
            #expect(got.cr2 == want.cr2)
            #expect(got.cr3 == want.cr3)
            #expect(got.cr4 == want.cr4)
            #expect(got.cr8 == want.cr8)
            #expect(got.efer == want.efer)
            #expect(got.apicBase == want.apicBase, "vCPU \(id)")
            #expect(got.interruptBitmap == want.interruptBitmap)
            #expect(got == want)
            #expect(try actual.fpu() == expected.fpu())
            #expect(try actual.mpState() == expected.mpState())
            #expect(try actual.events() == expected.events())
            #expect(try actual.debugRegisters() == expected.debugRegisters())
            #expect(try actual.extendedControlRegisters() == expected.extendedControlRegisters())
            #expect(try actual.cpuid() == expected.cpuid())
            let pat = try actual.msrs([MSR_IA32_CR_PAT, MSR_IA32_SYSENTER_CS, MSR_EFER, MSR_IA32_APICBASE])
            #expect(try pat == expected.msrs([MSR_IA32_CR_PAT, MSR_IA32_SYSENTER_CS, MSR_EFER, MSR_IA32_APICBASE]))
        }
    }

    @Test func stateRoundTripsAndRulesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            var regs = Registers()
            regs.rax = 0x1122_3344_5566_7788
            regs.r15 = 0xDEAD_BEEF
            regs.rip = 0x1000
            regs.rflags = 0x202
            var sregs = try vcpu.specialRegisters()
            sregs.cs.base = 0
            sregs.cs.selector = 0
            sregs.cr0 |= 1
            sregs.efer = EFER_SCE
            var longMode = sregs
            longMode.efer = EFER_LMA
            var pagingWithoutProtection = sregs
            pagingWithoutProtection.cr0 = 0x8000_0000
            var fpu = try vcpu.fpu()
            fpu.fcw = 0x27F
            // Not MXCSR: this host's kvm_pvm reads it back as 0 whatever was set.
            fpu.xmm[3] = 0x0123_4567_89AB_CDEF
            var debug = try vcpu.debugRegisters()
            debug.db[0] = 0x1234
            debug.dr7 = 0x401
            var debugHigh = debug
            debugHigh.dr7 = 1 << 32
            var events = try vcpu.events()
            events.exception.injected = true
            events.exception.vector = 6
            var nmiException = events
            nmiException.exception.vector = 2
            func value(_ body: () throws(KVMError) -> Bool) -> Outcome {
                outcome { () throws(KVMError) in try body() ? 1 : 0 }
            }
            return [
                ("set regs", outcome { () throws(KVMError) in try vcpu.setRegisters(regs) }),
                ("regs read back", value { () throws(KVMError) in try vcpu.registers() == regs }),
                ("set sregs", outcome { () throws(KVMError) in try vcpu.setSpecialRegisters(sregs) }),
                ("sregs read back", value { () throws(KVMError) in try vcpu.specialRegisters() == sregs }),
                ("LMA without paging", outcome { () throws(KVMError) in try vcpu.setSpecialRegisters(longMode) }),
                ("PG without PE", outcome { () throws(KVMError) in try vcpu.setSpecialRegisters(pagingWithoutProtection) }),
                ("set fpu", outcome { () throws(KVMError) in try vcpu.setFPU(fpu) }),
                ("fpu read back", value { () throws(KVMError) in try vcpu.fpu() == fpu }),
                ("set debug", outcome { () throws(KVMError) in try vcpu.setDebugRegisters(debug) }),
                ("debug read back", value { () throws(KVMError) in try vcpu.debugRegisters() == debug }),
                ("DR7 above 32 bits", outcome { () throws(KVMError) in try vcpu.setDebugRegisters(debugHigh) }),
                ("set events", outcome { () throws(KVMError) in try vcpu.setEvents(events) }),
                ("events read back", value { () throws(KVMError) in try vcpu.events() == events }),
                ("inject NMI's vector as an exception", outcome { () throws(KVMError) in try vcpu.setEvents(nmiException) }),
                ("MP state runnable", outcome { () throws(KVMError) in try vcpu.setMPState(.runnable) }),
                ("MP state halted", outcome { () throws(KVMError) in try vcpu.setMPState(.halted) }),
                ("MP state uninitialized", outcome { () throws(KVMError) in try vcpu.setMPState(.uninitialized) }),
                ("XCR0 = x87", outcome { () throws(KVMError) in try vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 1)]) }),
                ("XCR0 without x87", outcome { () throws(KVMError) in try vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 2)]) }),
                ("XCR0 = SSE before CPUID", outcome { () throws(KVMError) in try vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 3)]) }),
                ("set SYSENTER_CS", outcome { () throws(KVMError) in try vcpu.setMSRs([MSREntry(index: MSR_IA32_SYSENTER_CS, data: 0x10)]) }),
                ("SYSENTER_CS read back", value { () throws(KVMError) in try vcpu.msrs([MSR_IA32_SYSENTER_CS]).first?.data == 0x10 }),
                ("set LSTAR", outcome { () throws(KVMError) in try vcpu.setMSRs([MSREntry(index: MSR_LSTAR, data: 0xFFFF_FFFF_8100_0000)]) }),
                ("LSTAR read back", value { () throws(KVMError) in try vcpu.msrs([MSR_LSTAR]).first?.data == 0xFFFF_FFFF_8100_0000 }),
                ("set CPUID", outcome { () throws(KVMError) in try vcpu.setCPUID([CPUIDEntry(function: 0, eax: 1), CPUIDEntry(function: 1, eax: 0x663)]) }),
                // This host's kvm_pvm adds leaves (0xD) and feature bits of its own, so only what was set is compared.
                ("CPUID read back", value { () throws(KVMError) in try vcpu.cpuid().first { $0.function == 0 }?.eax == 1 }),
            ]
        }
    }

    @Test func msrRequestsStopAtTheFirstUnknownMSR() throws {
        try expectSameOnBothBackends { hypervisor in
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            let backend = hypervisor.handle.backend
            let buffer = FlexibleArrayBuffer<kvm_msrs, kvm_msr_entry>(capacity: 3)
            buffer.header.pointee.nmsrs = 3
            buffer.entries[0].index = MSR_IA32_SYSENTER_CS
            buffer.entries[1].index = 0x1234_5678
            buffer.entries[2].index = MSR_IA32_SYSENTER_ESP
            let get = rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getMSRs.number, buffer.raw)
            let set = rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.setMSRs.number, buffer.raw)
            buffer.header.pointee.nmsrs = 256
            let tooMany = rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getMSRs.number, buffer.raw)
            return [("get", get), ("set", set), ("256 entries", tooMany)]
        }
    }

    @Test func shortBuffersGiveE2BIG() throws {
        try expectSameOnBothBackends { hypervisor in
            let backend = hypervisor.handle.backend
            let msrs = FlexibleArrayBuffer<kvm_msr_list, UInt32>(capacity: 0)
            let cpuid = FlexibleArrayBuffer<kvm_cpuid2, kvm_cpuid_entry2>(capacity: 1)
            cpuid.header.pointee.nent = 1
            let cpuidOutcome = rawOutcome(backend, hypervisor.rawDescriptor, KVMRequest.getSupportedCPUID.number, cpuid.raw)
            let vcpuCPUID = FlexibleArrayBuffer<kvm_cpuid2, kvm_cpuid_entry2>(capacity: 1)
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            return [
                ("MSR list with no room", rawOutcome(backend, hypervisor.rawDescriptor, KVMRequest.getMSRIndexList.number, msrs.raw)),
                ("MSR list count given back", .ok(Int32(msrs.header.pointee.nmsrs) > 0 ? 1 : 0)),
                ("supported CPUID with room for one", cpuidOutcome),
                ("nent left as it was", .ok(Int32(cpuid.header.pointee.nent))),
                ("a new vCPU's CPUID with room for none", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getCPUID2.number, vcpuCPUID.raw)),
                ("has no entries", .ok(Int32(vcpuCPUID.header.pointee.nent))),
            ]
        }
    }

    @Test func immediateExitGivesEINTRAndLeavesTheExitReason() throws {
        try expectSameOnBothBackends { hypervisor in
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            vcpu.immediateExit = true
            let backend = hypervisor.handle.backend
            let run = rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.run.number, nil)
            let reason = vcpu.runMapping.load(fromByteOffset: MemoryLayout<kvm_run>.offset(of: \.exit_reason) ?? 0, as: UInt32.self)
            return [
                ("run", run),
                ("exit reason", .ok(Int32(reason))),
                ("run with an argument", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.run.number, value: 1)),
            ]
        }
    }
}
