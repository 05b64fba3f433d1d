import Foundation
import GuestMemory
import Testing
@testable import KVM
@testable import SoftKVM
import X86

/// Guest RDMSR and WRMSR under KVM_CAP_X86_USER_SPACE_MSR and
/// KVM_X86_SET_MSR_FILTER, on SoftKVM and on the host's /dev/kvm: the
/// exits (KVM_EXIT_X86_RDMSR/WRMSR with their reason, index and data),
/// what the guest sees after user space answers, and the #GP that
/// `kvm_run.msr.error` (or no exit at all) raises through the guest's IVT
/// or IDT. Each scenario's expected trace is written out from api.rst, so
/// that each backend is checked against it and so against the other.
@Suite("User-space MSR exits and the MSR filter on both backends")
struct UserSpaceMSRDifferentialTests {
    /// No reasons asked for: an unknown MSR and a refused value raise #GP,
    /// which the guest's handler reports (port 0x13: the faulting IP) and skips.
    @Test(arguments: Backend.available)
    func withoutUserSpaceMSRFailuresRaiseGPInTheGuest(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [])
        #expect(run.events == [
            .gp(ip: MSRGuest.unknownRead), .out(0x10, 0x0000_100A), .out(0x11, 0),
            .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .out(0x14, 0),
            .gp(ip: MSRGuest.eferWrite), .out(0x15, 0x3F),
        ])
        #expect(run.registers == MSRGuest.Registers(rax: 0x0001_103F, rcx: 0xC000_0080, rdx: 0))
    }

    /// Every reason asked for: the unknown MSR's RDMSR takes the data user
    /// space gives, its WRMSR fails with error=1 (#GP), and the EFER write
    /// with a reserved bit exits as INVAL and is taken as done.
    @Test(arguments: Backend.available)
    func everyFailureExitsAndTheAnswerCompletesTheInstruction(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [.invalid, .unknown, .filter])
        let answer = MSRGuest.readAnswer(0x1234_5678)
        #expect(run.events == [
            .rdmsr(0x1234_5678, .unknown),
            .out(0x10, UInt32(truncatingIfNeeded: answer)), .out(0x11, UInt32(answer >> 32)),
            .wrmsr(0x1234_5678, .unknown, data: 0x1122_3344_AABB_CCDD), .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .out(0x14, 0),
            .wrmsr(0xC000_0080, .invalid, data: 0x1_0000), .out(0x15, 0),
        ])
        #expect(run.registers == MSRGuest.Registers(rax: 0x1_0000, rcx: 0xC000_0080, rdx: 0))
    }

    /// Only UNKNOWN asked for: the refused EFER value still raises #GP.
    @Test(arguments: Backend.available)
    func onlyTheReasonsAskedForExit(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [.unknown])
        let answer = MSRGuest.readAnswer(0x1234_5678)
        #expect(run.events == [
            .rdmsr(0x1234_5678, .unknown),
            .out(0x10, UInt32(truncatingIfNeeded: answer)), .out(0x11, UInt32(answer >> 32)),
            .wrmsr(0x1234_5678, .unknown, data: 0x1122_3344_AABB_CCDD), .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .out(0x14, 0),
            .gp(ip: MSRGuest.eferWrite), .out(0x15, 0x3F),
        ])
    }

    /// An RDMSR left unanswered reads the 0 KVM put in kvm_run.msr.data, and
    /// a WRMSR left unanswered is done.
    @Test(arguments: Backend.available)
    func anUnansweredExitReadsZeroAndWrites(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [.unknown, .invalid]) { _ in .none }
        #expect(run.events == [
            .rdmsr(0x1234_5678, .unknown), .out(0x10, 0), .out(0x11, 0),
            .wrmsr(0x1234_5678, .unknown, data: 0x1122_3344_AABB_CCDD), .out(0x12, 0xDD),
            .out(0x14, 0),
            .wrmsr(0xC000_0080, .invalid, data: 0x1_0000), .out(0x15, 0),
        ])
    }

    /// A range denying SYSENTER_CS, an MSR the vCPU has: its RDMSR exits
    /// with reason FILTER and takes the answer; MSRs outside the range keep
    /// their own rules.
    @Test(arguments: Backend.available)
    func aFilteredMSRExitsWithReasonFilter(_ backend: Backend) throws {
        let filter = MSRFilter(ranges: [.denying([.read, .write], 0x174...0x174)])
        let run = try MSRGuest.run(on: backend, reasons: [.filter], filter: filter)
        #expect(run.events == [
            .gp(ip: MSRGuest.unknownRead), .out(0x10, 0x0000_100A), .out(0x11, 0),
            .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .rdmsr(0x174, .filter), .out(0x14, UInt32(truncatingIfNeeded: MSRGuest.readAnswer(0x174))),
            .gp(ip: MSRGuest.eferWrite), .out(0x15, 0x3F),
        ])
    }

    /// The filter without user-space exits for it: the denied read raises #GP.
    @Test(arguments: Backend.available)
    func aFilteredMSRWithoutTheFilterReasonRaisesGP(_ backend: Backend) throws {
        let filter = MSRFilter(ranges: [.denying([.read], 0x170...0x17F)])
        let run = try MSRGuest.run(on: backend, reasons: [.unknown], filter: filter)
        #expect(run.events.contains(.gp(ip: MSRGuest.sysenterRead)))
        #expect(run.events.contains(.out(0x14, 0xAABB_102B)))
        #expect(!run.events.contains { if case .rdmsr(0x174, _) = $0 { true } else { false } })
    }

    /// Deny by default, allowing only reads of SYSENTER_CS: the filter is
    /// asked before the MSR is looked up, so the unknown MSR and EFER exit
    /// as FILTER, not UNKNOWN or INVAL.
    @Test(arguments: Backend.available)
    func theFilterDecidesBeforeTheMSRIsLookedUp(_ backend: Backend) throws {
        let filter = MSRFilter(defaultAction: .deny, ranges: [.allowing([.read], base: 0x174, count: 1, only: [0x174])])
        let run = try MSRGuest.run(on: backend, reasons: [.filter, .unknown, .invalid], filter: filter)
        let answer = MSRGuest.readAnswer(0x1234_5678)
        #expect(run.events == [
            .rdmsr(0x1234_5678, .filter),
            .out(0x10, UInt32(truncatingIfNeeded: answer)), .out(0x11, UInt32(answer >> 32)),
            .wrmsr(0x1234_5678, .filter, data: 0x1122_3344_AABB_CCDD), .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .out(0x14, 0),
            .wrmsr(0xC000_0080, .filter, data: 0x1_0000), .out(0x15, 0),
        ])
    }

    /// A deny-by-default filter, replaced by `.unfiltered` at the first
    /// exit it causes: the accesses after it are not filtered.
    @Test(arguments: Backend.available)
    func removingTheFilterAllowsAgain(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [.filter],
                                   filter: MSRFilter(defaultAction: .deny, ranges: [.denying([.read], 0...0)]),
                                   then: .unfiltered)
        let answer = MSRGuest.readAnswer(0x1234_5678)
        #expect(run.events == [
            .rdmsr(0x1234_5678, .filter),
            .out(0x10, UInt32(truncatingIfNeeded: answer)), .out(0x11, UInt32(answer >> 32)),
            .gp(ip: MSRGuest.unknownWrite), .out(0x12, 0x21),
            .out(0x14, 0),
            .gp(ip: MSRGuest.eferWrite), .out(0x15, 0x3F),
        ])
    }

    /// In protected mode the #GP error=1 raises goes through the IDT's
    /// 32-bit interrupt gate, with error code 0 (port 0x16).
    @Test(arguments: Backend.available)
    func errorRaisesGPThroughTheIDTInProtectedMode(_ backend: Backend) throws {
        let run = try MSRGuest.run(on: backend, reasons: [.invalid, .unknown], protectedMode: true)
        let answer = MSRGuest.readAnswer(0x1234_5678)
        #expect(run.events == [
            .rdmsr(0x1234_5678, .unknown),
            .out(0x10, UInt32(truncatingIfNeeded: answer)), .out(0x11, UInt32(answer >> 32)),
            .wrmsr(0x1234_5678, .unknown, data: 0x1122_3344_AABB_CCDD),
            .out(0x16, 0), .out(0x13, 0x2017), .out(0x12, 0x19),
            .out(0x14, 0),
            .wrmsr(0xC000_0080, .invalid, data: 0x1_0000), .out(0x15, 0),
        ])
        #expect(run.registers == MSRGuest.Registers(rax: 0x1_0000, rcx: 0xC000_0080, rdx: 0))
    }

    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID with no KVM leaf in CPUID: the
    /// KVM clock MSR is one the guest may not use, and Linux 6.18 reports it
    /// as unknown.
    @Test(arguments: Backend.available)
    func enforcedPVFeaturesMakeKVMClockUnknown(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [
            0x66, 0xB9, 0x01, 0x4D, 0x56, 0x4B,  // mov ecx, 0x4b564d01 (MSR_KVM_SYSTEM_TIME_NEW)
            0x0F, 0x32,                          // rdmsr
            0xE6, 0xFF,                          // out 0xff, al
        ])
        try guest.vm.enableUserSpaceMSR([.unknown, .invalid])
        try guest.vcpu.enforcePVFeatureCPUID()
        let exit = try guest.vcpu.runWithDeadline()
        #expect(exit == .msr(MSRExit(isWrite: false, index: 0x4B56_4D01, reason: MSRExitReasons.unknown.rawValue, data: 0)))
    }

    // MARK: The answer API

    @Test(arguments: Backend.available)
    func dataForAWriteIsRejected(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: MSRGuest.realModeCode)
        try guest.vm.enableUserSpaceMSR([.unknown])
        _ = try guest.vcpu.run()  // out 0x01
        #expect(try guest.vcpu.run() == .msr(MSRExit(isWrite: false, index: 0x1234_5678, reason: 2, data: 0)))
        try guest.vcpu.setMSRData(7)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 4, value: 7)))
        _ = try guest.vcpu.run()  // out 0x11
        guard case .msr(let write) = try guest.vcpu.run() else { Issue.record("expected the WRMSR exit"); return }
        #expect(write.isWrite && write.reasons == .unknown)
        let error = try #require(throws: KVMError.self) { try guest.vcpu.setMSRData(1) }
        #expect(error.errno == .invalidArgument)
        try guest.vcpu.failMSRAccess()
    }

    @Test(arguments: Backend.available)
    func answeringWithNoMSRExitIsRejected(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: MSRGuest.realModeCode)
        _ = try guest.vcpu.run()  // out 0x01
        #expect(throws: KVMError.self) { try guest.vcpu.setMSRData(1) }
        #expect(throws: KVMError.self) { try guest.vcpu.failMSRAccess() }
    }
}

/// The filter's rules SoftKVM keeps that the host cannot show here.
struct MSRFilterRuleTests {
    /// The x2APIC MSRs are never filtered (kvm_msr_allowed), whatever the
    /// ranges and the default say. (The host's x2APIC MSRs need an in-kernel
    /// LAPIC in x2APIC mode, which SoftKVM does not have, so this is not
    /// compared with it.)
    @Test func x2APICMSRsAreNeverFiltered() {
        let filter = X86MSRFilter(defaultAllow: false, ranges: [
            X86MSRFilter.Range(flags: 3, base: 0x800, nmsrs: 256, bitmap: [UInt64](repeating: 0, count: 4)),
        ])
        #expect(SoftBackend.kvm_msr_allowed(filter, 0x802, write: false))
        #expect(SoftBackend.kvm_msr_allowed(filter, 0x8FF, write: true))
        #expect(!SoftBackend.kvm_msr_allowed(filter, 0x7FF, write: false))
        #expect(!SoftBackend.kvm_msr_allowed(filter, 0x900, write: false))
    }

    /// A range is asked only for the accesses its flags name; the next one
    /// (or the default) decides the others.
    @Test func aRangeDecidesOnlyItsOwnAccesses() {
        let filter = X86MSRFilter(defaultAllow: true, ranges: [
            X86MSRFilter.Range(flags: 1, base: 0x10, nmsrs: 1, bitmap: [0]),
            X86MSRFilter.Range(flags: 3, base: 0x10, nmsrs: 64, bitmap: [~0]),
        ])
        #expect(!SoftBackend.kvm_msr_allowed(filter, 0x10, write: false))
        #expect(SoftBackend.kvm_msr_allowed(filter, 0x10, write: true))
        #expect(SoftBackend.kvm_msr_allowed(filter, 0x11, write: false))
    }

    /// The end of a range is computed in 32 bits, as the kernel's: one that
    /// wraps past 0xFFFFFFFF holds no MSR.
    @Test func aRangeThatWrapsHoldsNothing() {
        let filter = X86MSRFilter(defaultAllow: true, ranges: [
            X86MSRFilter.Range(flags: 3, base: 0xFFFF_FFF0, nmsrs: 0x20, bitmap: [0]),
        ])
        #expect(SoftBackend.kvm_msr_allowed(filter, 0xFFFF_FFF8, write: false))
        #expect(SoftBackend.kvm_msr_allowed(filter, 0x4, write: false))
    }
}

/// A guest that reads and writes an unknown MSR, reads SYSENTER_CS and
/// writes EFER with a reserved bit, reporting on ports what it got; its #GP
/// handler reports the faulting IP (port 0x13; in protected mode the error
/// code first, on port 0x16) and goes on after the 2-byte instruction.
enum MSRGuest {
    /// What user space does with an MSR exit.
    enum Answer {
        case data(UInt64)
        case fail
        /// Leaves kvm_run.msr as KVM filled it.
        case none
    }

    enum Event: Equatable, CustomStringConvertible {
        case out(UInt16, UInt32)
        case rdmsr(UInt32, MSRExitReasons)
        case wrmsr(UInt32, MSRExitReasons, data: UInt64)
        case other(VCPUExit)

        /// The real-mode handler's report of a #GP at `ip`.
        static func gp(ip: UInt32) -> Event { .out(0x13, ip) }

        var description: String {
            switch self {
            case .out(let port, let value): "out 0x\(String(port, radix: 16)) = 0x\(String(value, radix: 16))"
            case .rdmsr(let index, let reason): "rdmsr exit 0x\(String(index, radix: 16)) reason \(reason.rawValue)"
            case .wrmsr(let index, let reason, let data): "wrmsr exit 0x\(String(index, radix: 16)) reason \(reason.rawValue) data 0x\(String(data, radix: 16))"
            case .other(let exit): "\(exit)"
            }
        }
    }

    struct Registers: Equatable {
        var rax: UInt64
        var rcx: UInt64
        var rdx: UInt64
    }

    struct Run {
        var events: [Event]
        var registers: Registers
    }

    /// The real-mode code at 0x1000: an `out 0x01` to end the first run (the
    /// host may drop state set before it), then the accesses.
    static let realModeCode: [UInt8] = [
        0xE6, 0x01,                          // 1000 out 0x01, al
        0x66, 0xB9, 0x78, 0x56, 0x34, 0x12,  // 1002 mov ecx, 0x12345678
        0x0F, 0x32,                          // 1008 rdmsr
        0x66, 0xE7, 0x10,                    // 100A out 0x10, eax
        0x66, 0x89, 0xD0,                    // 100D mov eax, edx
        0x66, 0xE7, 0x11,                    // 1010 out 0x11, eax
        0x66, 0xB8, 0xDD, 0xCC, 0xBB, 0xAA,  // 1013 mov eax, 0xaabbccdd
        0x66, 0xBA, 0x44, 0x33, 0x22, 0x11,  // 1019 mov edx, 0x11223344
        0x0F, 0x30,                          // 101F wrmsr
        0xE6, 0x12,                          // 1021 out 0x12, al
        0x66, 0xB9, 0x74, 0x01, 0x00, 0x00,  // 1023 mov ecx, 0x174 (SYSENTER_CS)
        0x0F, 0x32,                          // 1029 rdmsr
        0x66, 0xE7, 0x14,                    // 102B out 0x14, eax
        0x66, 0xB9, 0x80, 0x00, 0x00, 0xC0,  // 102E mov ecx, 0xc0000080 (EFER)
        0x66, 0x31, 0xD2,                    // 1034 xor edx, edx
        0x66, 0xB8, 0x00, 0x00, 0x01, 0x00,  // 1037 mov eax, 0x10000 (a reserved bit)
        0x0F, 0x30,                          // 103D wrmsr
        0xE6, 0x15,                          // 103F out 0x15, al
        0xE6, 0xFF,                          // 1041 out 0xff, al
    ]
    /// The real-mode #GP handler at 0x1100 (IVT entry 13 points at it).
    static let realModeHandler: [UInt8] = [
        0x58,              // pop ax (the faulting IP)
        0xE7, 0x13,        // out 0x13, ax
        0x83, 0xC0, 0x02,  // add ax, 2
        0x50,              // push ax
        0xCF,              // iret
    ]
    static let unknownRead: UInt32 = 0x1008, unknownWrite: UInt32 = 0x101F, sysenterRead: UInt32 = 0x1029, eferWrite: UInt32 = 0x103D

    /// The same in 32-bit protected mode at 0x2000, with the handler at 0x2100.
    static let protectedModeCode: [UInt8] = [
        0xB9, 0x78, 0x56, 0x34, 0x12,  // 2000 mov ecx, 0x12345678
        0x0F, 0x32,                    // 2005 rdmsr
        0xE7, 0x10,                    // 2007 out 0x10, eax
        0x89, 0xD0,                    // 2009 mov eax, edx
        0xE7, 0x11,                    // 200B out 0x11, eax
        0xB8, 0xDD, 0xCC, 0xBB, 0xAA,  // 200D mov eax, 0xaabbccdd
        0xBA, 0x44, 0x33, 0x22, 0x11,  // 2012 mov edx, 0x11223344
        0x0F, 0x30,                    // 2017 wrmsr
        0xE6, 0x12,                    // 2019 out 0x12, al
        0xB9, 0x74, 0x01, 0x00, 0x00,  // 201B mov ecx, 0x174
        0x0F, 0x32,                    // 2020 rdmsr
        0xE7, 0x14,                    // 2022 out 0x14, eax
        0xB9, 0x80, 0x00, 0x00, 0xC0,  // 2024 mov ecx, 0xc0000080
        0x31, 0xD2,                    // 2029 xor edx, edx
        0xB8, 0x00, 0x00, 0x01, 0x00,  // 202B mov eax, 0x10000
        0x0F, 0x30,                    // 2030 wrmsr
        0xE6, 0x15,                    // 2032 out 0x15, al
        0xE6, 0xFF,                    // 2034 out 0xff, al
    ]
    static let protectedModeHandler: [UInt8] = [
        0x58,              // pop eax (the error code)
        0xE7, 0x16,        // out 0x16, eax
        0x58,              // pop eax (the faulting EIP)
        0xE7, 0x13,        // out 0x13, eax
        0x83, 0xC0, 0x02,  // add eax, 2
        // Not IRET: KVM's instruction emulator, which runs CPL-0 code on
        // kvm_pvm, has only the real-mode IRET.
        0x83, 0xC4, 0x08,  // add esp, 8 (CS and EFLAGS)
        0xFF, 0xE0,        // jmp eax
    ]

    /// The data user space gives an RDMSR of `index`.
    static func readAnswer(_ index: UInt32) -> UInt64 { 0x0102_0304_0506_0708 ^ UInt64(index) }

    /// RDMSR gets `readAnswer`, the unknown MSR's WRMSR fails, other WRMSRs are done.
    static func defaultAnswer(_ exit: MSRExit) -> Answer {
        if !exit.isWrite { return .data(readAnswer(exit.index)) }
        return exit.index == 0x1234_5678 ? .fail : .none
    }

    /// Runs the guest on `backend` with `reasons` and `filter` (and, after
    /// the first MSR exit, `then` as the filter), answering exits with
    /// `answer`, until its `out 0xff`.
    static func run(on backend: Backend, reasons: MSRExitReasons, filter: MSRFilter? = nil, then next: MSRFilter? = nil,
                    protectedMode: Bool = false, answer: (MSRExit) -> Answer = defaultAnswer) throws -> Run {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: realModeCode)
        try guest.memory.write(realModeHandler, at: 0x1100)
        try guest.memory.write([0x00, 0x11, 0x00, 0x00], at: 13 * 4)  // IVT 13: 0000:1100
        if !reasons.isEmpty { try guest.vm.enableUserSpaceMSR(reasons) }
        if let filter { try guest.vm.setMSRFilter(filter) }
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x01, size: 1, value: 0)))
        if protectedMode { try enterProtectedMode(guest) }
        var events: [Event] = []
        for _ in 0..<32 {
            let exit = try guest.vcpu.runWithDeadline()
            switch exit {
            case .io(let io) where io.direction == .out && io.port == 0xFF:
                let registers = try guest.vcpu.registers()
                return Run(events: events, registers: Registers(rax: registers.rax, rcx: registers.rcx, rdx: registers.rdx))
            case .io(let io) where io.direction == .out:
                events.append(.out(io.port, io.value))
            case .msr(let access):
                events.append(access.isWrite ? .wrmsr(access.index, access.reasons, data: access.data)
                                             : .rdmsr(access.index, access.reasons))
                switch answer(access) {
                case .data(let value): try guest.vcpu.setMSRData(value)
                case .fail: try guest.vcpu.failMSRAccess()
                case .none: break
                }
                if let next { try guest.vm.setMSRFilter(next) }
            default:
                events.append(.other(exit))
                return Run(events: events, registers: Registers(rax: 0, rcx: 0, rdx: 0))
            }
        }
        Issue.record("the guest did not finish: \(events)")
        return Run(events: events, registers: Registers(rax: 0, rcx: 0, rdx: 0))
    }

    /// Flat 32-bit protected mode: a GDT at 0x500 (code 0x08, data 0x10),
    /// an IDT at 0x600 whose #GP gate goes to the handler at 0x2100, and
    /// the code at 0x2000.
    static func enterProtectedMode(_ guest: RealModeGuest) throws {
        try guest.memory.write(protectedModeCode, at: 0x2000)
        try guest.memory.write(protectedModeHandler, at: 0x2100)
        let gdt: [UInt64] = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]
        try guest.memory.write(gdt.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }, at: 0x500)
        // A 32-bit interrupt gate: offset 0x2100, selector 0x08, present, DPL 0.
        let gate: UInt64 = 0x0000_8E00_0008_2100
        try guest.memory.write(withUnsafeBytes(of: gate.littleEndian, Array.init), at: 0x600 + 13 * 8)
        var special = try guest.vcpu.specialRegisters()
        special.cr0 |= 1
        special.gdt = DescriptorTable(base: 0x500, limit: 23)
        special.idt = DescriptorTable(base: 0x600, limit: 14 * 8 - 1)
        special.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x08, type: 0xB, db: true, g: true)
        let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, db: true, g: true)
        special.ds = data
        special.es = data
        special.ss = data
        special.fs = data
        special.gs = data
        try guest.vcpu.setSpecialRegisters(special)
        var registers = try guest.vcpu.registers()
        registers.rip = 0x2000
        registers.rsp = 0x8000
        try guest.vcpu.setRegisters(registers)
    }
}
