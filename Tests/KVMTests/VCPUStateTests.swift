import CLinuxKVM
import GuestMemory
import Testing
@testable import KVM

/// A real-mode VM for state tests: 64 KiB of RAM at 0, one vCPU, optionally
/// an in-kernel irqchip. `warmUp()` runs the vCPU once, through a stub at
/// 0xF00, because state set before a vCPU's first KVM_RUN can be lost on
/// the host's kvm_pvm.
private struct StateGuest {
    static let codeAddress: UInt64 = 0x1000
    static let stubAddress: UInt64 = 0xF00
    static let stubPort: UInt16 = 0xF0

    let vm: VirtualMachine
    let memory: GuestMemoryRegion
    let vcpu: VCPU

    init(code: [UInt8] = [0xF4], irqchip: Bool = false, vcpuID: UInt32 = 0) throws {
        vm = try HostKVM.hypervisor().createVM()
        if irqchip { try vm.createIrqchip() }
        memory = try GuestMemoryRegion(size: 0x10000)
        // out 0xF0, al; then fall into whatever follows (nothing runs it).
        try memory.write([0xE6, UInt8(StateGuest.stubPort)], at: Int(StateGuest.stubAddress))
        try memory.write(code, at: Int(StateGuest.codeAddress))
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        vcpu = try vm.createVCPU(id: vcpuID)
    }

    /// Points the vCPU at flat real-mode code: CS base 0, so RIP is the physical address.
    func start(at address: UInt64, registers: Registers = Registers()) throws {
        var sregs = try vcpu.specialRegisters()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.setSpecialRegisters(sregs)
        var registers = registers
        registers.rip = address
        if registers.rsp == 0 { registers.rsp = 0x8000 }
        try vcpu.setRegisters(registers)
    }

    /// Runs the vCPU once through the stub's `out`.
    func warmUp() throws {
        try start(at: StateGuest.stubAddress)
        let exit = try vcpu.run()
        guard case .io(let io) = exit, io.port == StateGuest.stubPort else {
            throw WarmUpFailed(exit: exit)
        }
    }

    struct WarmUpFailed: Error { let exit: VCPUExit }
}

/// Host state tests use these MSRs, which KVM keeps for every vCPU.
private enum MSR {
    static let sysenterCS: UInt32 = 0x174
    static let sysenterESP: UInt32 = 0x175
    static let tscAux: UInt32 = 0xC000_0103
    /// No CPU has an MSR here, and KVM does not emulate one.
    static let bogus: UInt32 = 0xDEAD_BEEF

    static var hostListsTSCAux: Bool {
        guard HostKVM.isAvailable, let list = try? HostKVM.hypervisor().msrIndexList() else { return false }
        return list.contains(tscAux)
    }
}

@Suite("vCPU state on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct VCPUStateTests {
    // MARK: Registers

    @Test func registersRoundTrip() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var registers = Registers()
        registers.rax = 0x1111_2222_3333_4444; registers.rbx = 0x0102_0304_0506_0708
        registers.rcx = 3; registers.rdx = 4; registers.rsi = 5; registers.rdi = 6
        registers.rsp = 0x7FF0; registers.rbp = 0x7FF8
        registers.r8 = 8; registers.r9 = 9; registers.r10 = 10; registers.r11 = 11
        registers.r12 = 12; registers.r13 = 13; registers.r14 = 14; registers.r15 = 0xFFFF_FFFF_FFFF_FFFF
        registers.rip = 0x1234
        registers.rflags = 0x2 | 0x1 | 0x40 | 0x800  // CF, ZF, OF
        try guest.vcpu.setRegisters(registers)
        #expect(try guest.vcpu.registers() == registers)
    }

    @Test func guestSeesRegistersSetByTheHost() throws {
        let guest = try StateGuest(code: [
            0x66, 0xEF,        // out dx, eax
            0x66, 0x89, 0xD8,  // mov eax, ebx
            0x66, 0xEF,        // out dx, eax
            0xF4,              // hlt
        ])
        try guest.warmUp()
        var registers = Registers()
        registers.rax = 0x1234_5678
        registers.rbx = 0x9ABC_DEF0
        registers.rdx = 0x10
        try guest.start(at: StateGuest.codeAddress, registers: registers)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 4, value: 0x1234_5678)))
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 4, value: 0x9ABC_DEF0)))
    }

    @Test func hostSeesRegistersTheGuestWrote() throws {
        let guest = try StateGuest(code: [
            0x66, 0xB9, 0x0D, 0xF0, 0xFE, 0xCA,  // mov ecx, 0xcafef00d
            0xF4,                                // hlt
        ])
        try guest.start(at: StateGuest.codeAddress)
        #expect(try guest.vcpu.run() == .halt)
        let registers = try guest.vcpu.registers()
        #expect(registers.rcx == 0xCAFE_F00D)
        #expect(registers.rip == StateGuest.codeAddress + 7)
    }

    @Test func specialRegistersRoundTrip() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var sregs = try guest.vcpu.specialRegisters()
        sregs.ds = Segment(base: 0x12340, limit: 0xFFFF, selector: 0x1234, type: 0x3)
        sregs.es = Segment(base: 0x56780, limit: 0xFFFF, selector: 0x5678, type: 0x3)
        sregs.fs.base = 0x9000
        sregs.gs.limit = 0x7FFF
        sregs.gdt = DescriptorTable(base: 0x5000, limit: 0x27)
        sregs.idt = DescriptorTable(base: 0x6000, limit: 0x7FF)
        sregs.cr2 = 0xDEAD_B000
        sregs.cr3 = 0x9000
        try guest.vcpu.setSpecialRegisters(sregs)
        #expect(try guest.vcpu.specialRegisters() == sregs)
    }

    @Test func guestUsesTheDataSegmentBaseSetByTheHost() throws {
        let guest = try StateGuest(code: [
            0xA0, 0x10, 0x00,  // mov al, [0x0010]   (ds:0x10)
            0xE6, 0x10,        // out 0x10, al
            0xF4,              // hlt
        ])
        try guest.memory.store(UInt8(0x5A), at: 0x3010)
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        var sregs = try guest.vcpu.specialRegisters()
        sregs.ds = Segment(base: 0x3000, selector: 0x300)
        try guest.vcpu.setSpecialRegisters(sregs)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0x5A)))
    }

    @Test func resetStateIsTheArchitecturalOne() throws {
        let guest = try StateGuest()
        let sregs = try guest.vcpu.specialRegisters()
        #expect(sregs.cs.selector == 0xF000)
        #expect(sregs.cs.base == 0xFFFF_0000)
        #expect(sregs.cr0 & 1 == 0)
        #expect(try guest.vcpu.registers().rip == 0xFFF0)
    }

    // MARK: FPU, XSAVE, XCRs

    @Test func fpuRoundTrip() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var fpu = FPUState()
        fpu.fcw = 0x27F
        fpu.fsw = 0x3800
        fpu.ftwx = 0x81
        fpu.fpr[0] = 0x3FFF_8000_0000_0000_0000  // 1.0 in 80-bit extended precision
        fpu.fpr[7] = 0x4000_C000_0000_0000_0000  // 3.0
        fpu.lastOpcode = 0x1D9
        fpu.lastIP = 0x1000
        fpu.lastDP = 0x2000
        for index in 0..<16 {
            fpu.xmm[index] = UInt128(index + 1) << 64 | UInt128(0xA5A5_0000 + index)
        }
        fpu.mxcsr = 0  // KVM_GET_FPU leaves MXCSR out: it reads 0 whatever was set
        try guest.vcpu.setFPU(fpu)
        #expect(try guest.vcpu.fpu() == fpu)
    }

    @Test func xsaveXMMReachesTheFPUState() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        let value: UInt128 = 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF
        var area = try guest.vcpu.xsave()
        area.setXMM(3, value)
        area.xstateBV |= 0x2  // the SSE component is present
        try guest.vcpu.setXSave(area)
        #expect(try guest.vcpu.xsave().xmm(3) == value)
        #expect(try guest.vcpu.fpu().xmm[3] == value)
    }

    @Test func xsaveControlWordReachesTheFPUState() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var area = try guest.vcpu.xsave()
        area.fcw = 0x27F
        area.xstateBV |= 0x1  // the x87 component is present
        try guest.vcpu.setXSave(area)
        #expect(try guest.vcpu.fpu().fcw == 0x27F)
    }

    @Test func xsaveMXCSRRoundTrips() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var area = try guest.vcpu.xsave()
        #expect(area.mxcsr == 0x1F80)
        area.mxcsr = 0x1F00
        area.xstateBV |= 0x2
        try guest.vcpu.setXSave(area)
        #expect(try guest.vcpu.xsave().mxcsr == 0x1F00)
    }

    @Test func xcr0RoundTripsOnceCPUIDOffersXSave() throws {
        let guest = try StateGuest()
        try guest.vcpu.setCPUID(try guest.vm.hypervisor.supportedCPUID())
        try guest.vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 0x3)])
        #expect(try guest.vcpu.extendedControlRegisters() == [ExtendedControlRegister(index: 0, value: 0x3)])
        try guest.vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 0x1)])
        #expect(try guest.vcpu.extendedControlRegisters() == [ExtendedControlRegister(index: 0, value: 0x1)])
    }

    @Test func xcr0WithoutX87IsRejected() throws {
        let guest = try StateGuest()
        try guest.vcpu.setCPUID(try guest.vm.hypervisor.supportedCPUID())
        let error = try #require(throws: KVMError.self) {
            try guest.vcpu.setExtendedControlRegisters([ExtendedControlRegister(index: 0, value: 0x2)])
        }
        #expect(error.errno == .invalidArgument)
        #expect(error.request == .setXcrs)
    }

    // MARK: MSRs

    @Test func sysenterCSRoundTrips() throws {
        let guest = try StateGuest()
        try guest.vcpu.setMSRs([MSREntry(index: MSR.sysenterCS, data: 0x10)])
        #expect(try guest.vcpu.msrs([MSR.sysenterCS]) == [MSREntry(index: MSR.sysenterCS, data: 0x10)])
    }

    @Test(.enabled(if: MSR.hostListsTSCAux)) func tscAuxRoundTrips() throws {
        let guest = try StateGuest()
        try guest.vcpu.setMSRs([MSREntry(index: MSR.tscAux, data: 0x1234)])
        #expect(try guest.vcpu.msrs([MSR.tscAux]) == [MSREntry(index: MSR.tscAux, data: 0x1234)])
    }

    @Test func readingABogusMSRNamesIt() throws {
        let guest = try StateGuest()
        let error = try #require(throws: KVMError.self) {
            try guest.vcpu.msrs([MSR.sysenterCS, MSR.bogus])
        }
        #expect(error.request == .getMSRs)
        #expect(error.message.contains("0xdeadbeef"))
    }

    @Test func readMSRsReportsTheUnreadableAndReadsTheRest() throws {
        let guest = try StateGuest()
        try guest.vcpu.setMSRs([MSREntry(index: MSR.sysenterCS, data: 0x8), MSREntry(index: MSR.sysenterESP, data: 0x7000)])
        let reading = try guest.vcpu.readMSRs([MSR.sysenterCS, MSR.bogus, MSR.sysenterESP])
        #expect(reading.entries == [MSREntry(index: MSR.sysenterCS, data: 0x8), MSREntry(index: MSR.sysenterESP, data: 0x7000)])
        #expect(reading.unreadable == [MSR.bogus])
    }

    @Test func writingABogusMSRNamesItAndKeepsTheWritesBefore() throws {
        let guest = try StateGuest()
        let error = try #require(throws: KVMError.self) {
            try guest.vcpu.setMSRs([MSREntry(index: MSR.sysenterCS, data: 0x18), MSREntry(index: MSR.bogus, data: 1)])
        }
        #expect(error.request == .setMSRs)
        #expect(error.message.contains("0xdeadbeef"))
        #expect(try guest.vcpu.msrs([MSR.sysenterCS]) == [MSREntry(index: MSR.sysenterCS, data: 0x18)])
    }

    // MARK: CPUID

    @Test func cpuidRoundTripsASubsetOfTheSupportedLeaves() throws {
        let guest = try StateGuest()
        // Leaf 0 (vendor) and the extended leaves up to 0x80000004 (brand
        // string): KVM keeps these as given, unlike leaf 1, whose APIC and
        // OSXSAVE bits it derives from the vCPU's state.
        let leaves = try guest.vm.hypervisor.supportedCPUID().filter {
            $0.function == 0 || (0x8000_0000...0x8000_0004).contains($0.function)
        }
        try #require(leaves.count >= 2)
        try guest.vcpu.setCPUID(leaves)
        #expect(try guest.vcpu.cpuid() == leaves)
    }

    @Test func cpuidReturnsEveryLeafOfATableLargerThanTheFirstBuffer() throws {
        let guest = try StateGuest()
        let supported = try guest.vm.hypervisor.supportedCPUID()
        try #require(supported.count > 64)  // cpuid() starts with room for 64 and grows on E2BIG
        try guest.vcpu.setCPUID(supported)
        let leaves = try guest.vcpu.cpuid().map { [$0.function, $0.index] }
        #expect(leaves == supported.map { [$0.function, $0.index] })
    }

    @Test func cpuidCannotChangeAfterTheFirstRun() throws {
        let guest = try StateGuest()
        let supported = try guest.vm.hypervisor.supportedCPUID()
        try guest.vcpu.setCPUID(supported)
        try guest.warmUp()
        let error = try #require(throws: KVMError.self) { try guest.vcpu.setCPUID(Array(supported.prefix(3))) }
        #expect(error.errno == .invalidArgument)
        #expect(error.request == .setCPUID2)
    }

    @Test func cpuidIsEmptyBeforeItIsSet() throws {
        let guest = try StateGuest()
        #expect(try guest.vcpu.cpuid() == [])
    }

    // MARK: Local APIC

    @Test func lapicIDIsTheVCPUID() throws {
        let guest = try StateGuest(irqchip: true, vcpuID: 2)
        let lapic = try guest.vcpu.lapic()
        #expect(lapic.register(at: LAPICState.id) >> 24 == 2)
        #expect(lapic.register(at: LAPICState.version) & 0xFF == 0x14)
    }

    @Test func lapicTaskPriorityRoundTrips() throws {
        let guest = try StateGuest(irqchip: true)
        var lapic = try guest.vcpu.lapic()
        lapic.setRegister(at: LAPICState.taskPriority, to: 0x30)
        lapic.setRegister(at: LAPICState.lvtLINT0, to: 0x700)  // ExtINT, unmasked
        try guest.vcpu.setLAPIC(lapic)
        let read = try guest.vcpu.lapic()
        #expect(read.register(at: LAPICState.taskPriority) == 0x30)
        #expect(read.register(at: LAPICState.lvtLINT0) == 0x700)
    }

    @Test func lapicWithoutIrqchipIsRefused() throws {
        let guest = try StateGuest()
        let error = try #require(throws: KVMError.self) { try guest.vcpu.lapic() }
        #expect(error.errno == .invalidArgument)
    }

    // MARK: MP state

    @Test func bootProcessorIsRunnable() throws {
        let guest = try StateGuest(irqchip: true)
        #expect(try guest.vcpu.mpState() == .runnable)
    }

    @Test func applicationProcessorWaitsForInitUntilMadeRunnable() throws {
        let guest = try StateGuest(irqchip: true)
        let ap = try guest.vm.createVCPU(id: 1)
        #expect(try ap.mpState() == .uninitialized)
        try ap.setMPState(.runnable)
        #expect(try ap.mpState() == .runnable)
    }

    @Test func mpStateKeepsUnknownNumbers() {
        #expect(MPState(rawValue: 3) == .halted)
        #expect(MPState(rawValue: 99) == .unknown(99))
        #expect(MPState.unknown(99).rawValue == 99)
    }

    // MARK: Events

    @Test func injectedNMIShowsAsPending() throws {
        let guest = try StateGuest()
        #expect(try guest.vcpu.events().nmi.pending == false)
        try guest.vcpu.injectNMI()
        #expect(try guest.vcpu.events().nmi.pending == true)
    }

    @Test func nmiMaskRoundTrips() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var events = try guest.vcpu.events()
        events.nmi.masked = true
        try guest.vcpu.setEvents(events)
        #expect(try guest.vcpu.events().nmi.masked == true)
    }

    @Test func interruptShadowRoundTripsWithItsFlag() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var events = try guest.vcpu.events()
        #expect(events.flags.contains(.shadow))
        events.interrupt.shadow = 2  // KVM_X86_SHADOW_INT_STI
        try guest.vcpu.setEvents(events)
        #expect(try guest.vcpu.events().interrupt.shadow == 2)
    }

    // MARK: Debug registers and guest debugging

    @Test func debugRegistersRoundTrip() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        var registers = DebugRegisters()
        registers.db = [0x1000, 0x2000, 0x3000, 0x4000]
        registers.dr7 = 0x400 | 0x1 | (0x1 << 16)  // L0, write breakpoint
        try guest.vcpu.setDebugRegisters(registers)
        let read = try guest.vcpu.debugRegisters()
        #expect(read.db == registers.db)
        #expect(read.dr7 == registers.dr7)
        #expect(read.dr6 == 0xFFFF_0FF0)
    }

    @Test func debugRegistersWithHighDR7BitsAreRejected() throws {
        let guest = try StateGuest()
        var registers = DebugRegisters()
        registers.dr7 = 1 << 32
        let error = try #require(throws: KVMError.self) { try guest.vcpu.setDebugRegisters(registers) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func guestDebugWithSingleStepIsAccepted() throws {
        let guest = try StateGuest()
        try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        try guest.vcpu.setGuestDebug(.disabled)
    }

    @Test func hardwareBreakpointStopsTheGuest() throws {
        let guest = try StateGuest(code: [
            0x90,        // nop
            0x90,        // nop        <- breakpoint
            0xE6, 0x10,  // out 0x10, al
            0xF4,        // hlt
        ])
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        try guest.vcpu.setGuestDebug(GuestDebug(hardwareBreakpoints: [.init(address: StateGuest.codeAddress + 1)]))
        let exit = try guest.vcpu.run()
        guard case .debug(let stop) = exit else { Issue.record("expected a debug exit, got \(exit)"); return }
        #expect(stop.exception == 1)
        #expect(stop.pc == StateGuest.codeAddress + 1)
        #expect(stop.dr6 & 0x1 == 0x1)  // B0: breakpoint 0 matched
    }

    @Test func disablingGuestDebugLetsTheGuestPassTheBreakpoint() throws {
        let guest = try StateGuest(code: [
            0x90,        // nop        <- breakpoint
            0xE6, 0x10,  // out 0x10, al
            0xF4,        // hlt
        ])
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        try guest.vcpu.setGuestDebug(GuestDebug(hardwareBreakpoints: [.init(address: StateGuest.codeAddress)]))
        guard case .debug = try guest.vcpu.run() else { Issue.record("the breakpoint did not stop the guest"); return }
        // On kvm_pvm, RFLAGS.RF does not step over it (the breakpoint fires
        // again); turning the breakpoint off is what lets the guest go on.
        try guest.vcpu.setGuestDebug(.disabled)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0)))
    }

    @Test func singleStepStopsAfterOneInstruction() throws {
        let guest = try StateGuest(code: [
            0x90,        // nop
            0x90,        // nop
            0xF4,        // hlt
        ])
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        let exit = try guest.vcpu.run()
        guard case .debug(let stop) = exit else { Issue.record("expected a debug exit, got \(exit)"); return }
        #expect(stop.exception == 1)
        #expect(stop.pc == StateGuest.codeAddress + 1)
        #expect(stop.dr6 & 0x4000 == 0x4000)  // BS: a single-step trap
    }

    @Test func softwareBreakpointStopsTheGuest() throws {
        let guest = try StateGuest(code: [
            0x90,        // nop
            0xCC,        // int3
            0xE6, 0x10,  // out 0x10, al
            0xF4,        // hlt
        ])
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        try guest.vcpu.setGuestDebug(GuestDebug(softwareBreakpoints: true))
        let exit = try guest.vcpu.run()
        // kvm_pvm emulates real-mode code, and its emulator delivers INT3 to
        // the guest's IVT rather than exiting (the guest then runs zeros into
        // the warm-up stub). Real KVM intercepts #BP and exits.
        withKnownIssue("kvm_pvm's emulator ignores KVM_GUESTDBG_USE_SW_BP", isIntermittent: true) {
            guard case .debug(let stop) = exit else { Issue.record("expected a debug exit, got \(exit)"); return }
            #expect(stop.exception == 3)
            #expect(stop.pc == StateGuest.codeAddress + 1)
        }
    }

    @Test func hardwareBreakpointControlNamesKindAndLength() throws {
        let debug = GuestDebug(hardwareBreakpoints: [
            .init(address: 0x1000),
            .init(address: 0x2000, kind: .write, length: .doubleWord),
        ])
        let value = try #require(debug.kernelValue)
        #expect(value.control == UInt32(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP))
        #expect(value.arch.debugreg.0 == 0x1000)
        #expect(value.arch.debugreg.1 == 0x2000)
        // GE, bit 10, G0, G1; slot 1: R/W 01 at bits 20-21, LEN 11 at bits 22-23.
        #expect(value.arch.debugreg.7 == 0x600 | 0x2 | 0x8 | (0x1 << 20) | (0x3 << 22))
    }

    @Test func fiveHardwareBreakpointsAreRefused() throws {
        let guest = try StateGuest()
        let breakpoints = (0..<5).map { GuestDebug.HardwareBreakpoint(address: UInt64($0) * 0x100) }
        let error = try #require(throws: KVMError.self) {
            try guest.vcpu.setGuestDebug(GuestDebug(hardwareBreakpoints: breakpoints))
        }
        #expect(error.errno == .invalidArgument)
    }

    // MARK: Translation

    @Test func realModeTranslationIsIdentity() throws {
        let guest = try StateGuest()
        try guest.warmUp()
        let translation = try guest.vcpu.translate(0x1234)
        #expect(translation.valid)
        #expect(translation.physicalAddress == 0x1234)
    }

    // MARK: Injection

    @Test func injectedInterruptRunsTheGuestHandler() throws {
        let guest = try StateGuest(code: [
            0xE6, 0x11,  // out 0x11, al   (the main code: reached only if no interrupt came first)
            0xF4,        // hlt
        ])
        // IVT entry 0x20 -> 0000:2000, where the handler reports itself.
        try guest.memory.store(UInt16(0x2000), at: 0x20 * 4)
        try guest.memory.store(UInt16(0), at: 0x20 * 4 + 2)
        try guest.memory.write([0xB0, 0x42, 0xE6, 0x10, 0xF4], at: 0x2000)  // mov al, 0x42; out 0x10, al; hlt
        try guest.warmUp()
        var registers = Registers()
        registers.rflags = 0x202  // IF
        try guest.start(at: StateGuest.codeAddress, registers: registers)
        try guest.vcpu.injectInterrupt(vector: 0x20)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0x42)))
    }

    @Test func interruptInjectionWithAnIrqchipIsRefused() throws {
        let guest = try StateGuest(irqchip: true)
        let error = try #require(throws: KVMError.self) { try guest.vcpu.injectInterrupt(vector: 0x20) }
        #expect(error.errno == .noSuchAddressOrDevice)
    }

    @Test func injectedNMIRunsTheGuestHandler() throws {
        let guest = try StateGuest(code: [
            0xE6, 0x11,  // out 0x11, al
            0xF4,        // hlt
        ])
        // IVT entry 2 (NMI) -> 0000:2000.
        try guest.memory.store(UInt16(0x2000), at: 2 * 4)
        try guest.memory.store(UInt16(0), at: 2 * 4 + 2)
        try guest.memory.write([0xB0, 0x02, 0xE6, 0x10, 0xF4], at: 0x2000)  // mov al, 2; out 0x10, al; hlt
        try guest.warmUp()
        try guest.start(at: StateGuest.codeAddress)
        try guest.vcpu.injectNMI()
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 2)))
    }
}
