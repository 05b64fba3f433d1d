import CLinuxKVM
import Foundation
import GuestMemory
import Testing
@testable import KVM
@testable import SoftKVM

/// One stop of a debugged guest: the exit, and RIP and RFLAGS after it.
/// A debug exit is shown without its dr7: KVM's emulator, which runs
/// real-mode and CPL-0 code on this host, leaves kvm_run's dr7 as it was.
struct DebugStep: Equatable, CustomStringConvertible {
    var exit: String
    var rip: UInt64
    var rflags: UInt64

    var description: String { "\(exit) rip \(hex(rip)) rflags \(hex(rflags))" }
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }

/// An exit as a debugged run is compared: an `out`'s bytes, an `in`, the
/// debug exit's exception, pc and DR6.
func describe(_ exit: VCPUExit) -> String {
    switch exit {
    case .debug(let stop): "debug \(stop.exception) pc \(hex(stop.pc)) dr6 \(hex(stop.dr6))"
    case .io(let io) where io.direction == .out: "out \(hex(io.port)) \(hex(io.value))"
    case .io(let io): "in \(hex(io.port))"
    default: "\(exit)"
    }
}

/// Sets KVM_SET_GUEST_DEBUG's control word and registers as given (the
/// Swift API builds DR7 itself).
func setGuestDebug(_ vcpu: VCPU, control: Int32, registers: [UInt64] = []) throws {
    var debug = kvm_guest_debug()
    debug.control = UInt32(control)
    CArray.store(registers, into: &debug.arch.debugreg)
    try vcpu.handle.call(.setGuestDebug, &debug)
}

/// Runs a real-mode guest (code at 0x1000) for at most `exits` exits,
/// answering each `in` with 0x5A bytes; stops at an `out` to port 0xFF (the
/// guests' end) and at the first exit that is neither a debug exit nor port I/O.
func debugTrace(_ backend: Backend, code: [UInt8], exits: Int = 16, irqchip: Bool = false,
                setup: (RealModeGuest) throws -> Void = { _ in },
                afterExit: (RealModeGuest, VCPUExit) throws -> Void = { _, _ in }) throws -> [DebugStep] {
    let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code, irqchip: irqchip)
    try setup(guest)
    var steps: [DebugStep] = []
    for _ in 0..<exits {
        let exit = try guest.vcpu.runWithDeadline()
        let registers = try guest.vcpu.registers()
        steps.append(DebugStep(exit: describe(exit), rip: registers.rip, rflags: registers.rflags))
        try afterExit(guest, exit)
        switch exit {
        case .io(let io) where io.direction == .in:
            try guest.vcpu.setInput(repeatElement(0x5A, count: io.length))
        case .io(let io) where io.port == 0xFF:
            return steps
        case .io, .debug:
            continue
        default:
            return steps
        }
    }
    return steps
}

/// The same debugged guest on the host and on SoftKVM: the same stops.
@discardableResult
func expectSameDebugTrace(code: [UInt8], exits: Int = 16, irqchip: Bool = false,
                          setup: (RealModeGuest) throws -> Void = { _ in },
                          afterExit: (RealModeGuest, VCPUExit) throws -> Void = { _, _ in },
                          sourceLocation: SourceLocation = #_sourceLocation) throws -> [DebugStep] {
    let host = try debugTrace(.host, code: code, exits: exits, irqchip: irqchip, setup: setup, afterExit: afterExit)
    let soft = try debugTrace(.soft, code: code, exits: exits, irqchip: irqchip, setup: setup, afterExit: afterExit)
    #expect(soft.count == host.count, "host: \(host)\nsoft: \(soft)", sourceLocation: sourceLocation)
    for (index, (want, got)) in zip(host, soft).enumerated() {
        #expect(got == want, "stop \(index)", sourceLocation: sourceLocation)
    }
    return soft
}

/// A real-mode #DB handler at 0x2100 that reports the IP it will return
/// to: pop ax; out 0x31, ax; push ax; iret.
let reportingDebugHandler: [UInt8] = [0x58, 0xE7, 0x31, 0x50, 0xCF]

/// Points IVT entry `vector` at 0000:`address` and puts `handler` there.
func installHandler(_ guest: RealModeGuest, vector: Int, at address: Int, _ handler: [UInt8]) throws {
    try guest.memory.store(UInt32(address), at: vector * 4)
    try guest.memory.write(handler, at: address)
}

/// Guest debugging on the host's /dev/kvm and on SoftKVM, in real mode,
/// which the host's kvm_pvm runs through KVM's instruction emulator (the
/// kernel code of x86_emulate_instruction): single-step, hardware
/// breakpoints, the guest's own TF, debug registers and general detect, and
/// exceptions queued by KVM_SET_GUEST_DEBUG.
@Suite("Guest debugging on both backends", .enabled(if: HostKVM.isAvailable))
struct GuestDebugDifferentialTests {
    static let singleStep = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP

    /// Each instruction stops with DR6.BS and the linear address of the
    /// next; INT n stops at the handler and IRET back after it; an IN stops
    /// once it is answered; the guest's PUSHF does not see a TF.
    @Test func singleStepStopsAfterEachInstruction() throws {
        let trace = try expectSameDebugTrace(code: [
            0x90,              // nop
            0xB8, 0x34, 0x12,  // mov ax, 0x1234
            0x40,              // inc ax
            0x9C,              // pushf
            0x5B,              // pop bx
            0xCD, 0x21,        // int 0x21 (handler: inc cx; iret)
            0xE4, 0x40,        // in al, 0x40
            0x90,              // nop
            0xA3, 0x00, 0x30,  // mov [0x3000], ax
            0x90,              // nop
        ], exits: 12) { guest in
            try installHandler(guest, vector: 0x21, at: 0x2000, [0x41, 0xCF])
            try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        }
        #expect(trace.map(\.exit) == [
            "debug 1 pc 0x1001 dr6 0xffff4ff0", "debug 1 pc 0x1004 dr6 0xffff4ff0", "debug 1 pc 0x1005 dr6 0xffff4ff0",
            "debug 1 pc 0x1006 dr6 0xffff4ff0", "debug 1 pc 0x1007 dr6 0xffff4ff0", "debug 1 pc 0x2000 dr6 0xffff4ff0",
            "debug 1 pc 0x2001 dr6 0xffff4ff0", "debug 1 pc 0x1009 dr6 0xffff4ff0", "in 0x40", "debug 1 pc 0x100b dr6 0xffff4ff0",
            "debug 1 pc 0x100c dr6 0xffff4ff0", "debug 1 pc 0x100f dr6 0xffff4ff0",
        ])
    }

    /// The stop's pc is CS base + IP.
    @Test func singleStepReportsTheLinearAddress() throws {
        let trace = try expectSameDebugTrace(code: [], exits: 2) { guest in
            try guest.memory.write([0x90, 0x90], at: 0x3010)
            var special = try guest.vcpu.specialRegisters()
            special.cs.selector = 0x300
            special.cs.base = 0x3000
            try guest.vcpu.setSpecialRegisters(special)
            var registers = try guest.vcpu.registers()
            registers.rip = 0x10
            try guest.vcpu.setRegisters(registers)
            try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        }
        #expect(trace.first?.exit == "debug 1 pc 0x3011 dr6 0xffff4ff0")
        #expect(trace.first?.rip == 0x11)
    }

    /// DR0-DR3 of KVM_SET_GUEST_DEBUG: an instruction breakpoint stops
    /// before the instruction, with its B bit in DR6.
    @Test(arguments: 0..<4)
    func hardwareInstructionBreakpointStopsBeforeTheInstruction(_ slot: Int) throws {
        let trace = try expectSameDebugTrace(code: [0x90, 0x90, 0x90, 0xE6, 0xFF], exits: 3) { guest in
            var registers = [UInt64](repeating: 0, count: 8)
            registers[slot] = 0x1002
            registers[7] = 0x400 | (2 << UInt64(2 * slot))  // Gn
            try setGuestDebug(guest.vcpu, control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, registers: registers)
        } afterExit: { guest, exit in
            if case .debug = exit { try guest.vcpu.setGuestDebug(.disabled) }
        }
        #expect(trace.map(\.exit) == ["debug 1 pc 0x1002 dr6 \(hex(0xFFFF_0FF0 | 1 << slot))", "out 0xff 0x0"])
        #expect(trace.first?.rip == 0x1002)
    }

    /// The guest's TF: a #DB after each instruction that began with TF set
    /// (so not after the POPF that sets it, but after the one that clears
    /// it); INT n traps at its handler; a faulting instruction does not
    /// trap, and its handler runs with TF clear.
    @Test func guestTrapFlagTrapsAfterEachInstruction() throws {
        let trace = try expectSameDebugTrace(code: [
            0x9C, 0x58, 0x0D, 0x00, 0x01, 0x50, 0x9D,  // pushf; pop ax; or ax, 0x100; push ax; popf
            0x90,                                      // 1007: nop
            0xCD, 0x21,                                // 1008: int 0x21
            0x0F, 0x0B,                                // 100a: ud2 (its handler skips it)
            0x9C, 0x58, 0x25, 0xFF, 0xFE, 0x50, 0x9D,  // 100c: pushf; pop ax; and ax, ~0x100; push ax; popf
            0x90,                                      // 1013: nop
            0xE6, 0xFF,                                // out 0xff, al
        ], exits: 16) { guest in
            try installHandler(guest, vector: 1, at: 0x2100, reportingDebugHandler)
            try installHandler(guest, vector: 0x21, at: 0x2200, [0xE6, 0x32, 0xCF])  // out 0x32, al; iret
            // #UD: pop ax; add ax, 2; push ax; out 0x36, al; iret
            try installHandler(guest, vector: 6, at: 0x2300, [0x58, 0x05, 0x02, 0x00, 0x50, 0xE6, 0x36, 0xCF])
        }
        #expect(trace.filter { $0.exit.hasPrefix("out 0x31") }.map(\.exit) == [
            "out 0x31 0x1008", "out 0x31 0x2200", "out 0x31 0x100d", "out 0x31 0x100e", "out 0x31 0x1011",
            "out 0x31 0x1012", "out 0x31 0x1013",
        ])
    }

    /// The guest's own breakpoint (KVM_SET_DEBUGREGS): a #DB fault into the
    /// guest, whose handler reads DR6 and clears DR7 before it returns.
    @Test func guestInstructionBreakpointFaultsIntoTheGuest() throws {
        let trace = try expectSameDebugTrace(code: [0x90, 0x90, 0x90, 0x90, 0xE6, 0xFF], exits: 3) { guest in
            var registers = DebugRegisters()
            registers.db = [0, 0, 0x1002, 0]
            registers.dr7 = 0x400 | 0x10  // L2
            try guest.vcpu.setDebugRegisters(registers)
            try installHandler(guest, vector: 1, at: 0x2100, [
                0x0F, 0x21, 0xF0,                    // mov eax, dr6
                0x66, 0xE7, 0x31,                    // out 0x31, eax
                0x66, 0xB8, 0x00, 0x04, 0x00, 0x00,  // mov eax, 0x400
                0x0F, 0x23, 0xF8,                    // mov dr7, eax
                0x58, 0xE7, 0x32, 0x50,              // pop ax; out 0x32, ax; push ax
                0xCF,                                // iret
            ])
        }
        #expect(trace.map(\.exit) == ["out 0x31 0xffff0ff4", "out 0x32 0x1002", "out 0xff 0x2"])
    }

    /// DR7.GD: a MOV from a debug register is a #DB fault with DR6.BD, and
    /// the CPU clears GD for the handler, which can then read DR6 and DR7.
    @Test func generalDetectFaultsWithBDAndClearsGD() throws {
        let trace = try expectSameDebugTrace(code: [
            0x0F, 0x21, 0xC0,  // mov eax, dr0
            0xE6, 0xFF,        // out 0xff, al
        ], exits: 4) { guest in
            var registers = DebugRegisters()
            registers.dr7 = 0x400 | 0x2000
            try guest.vcpu.setDebugRegisters(registers)
            try installHandler(guest, vector: 1, at: 0x2100, [
                0x0F, 0x21, 0xF0, 0x66, 0xE7, 0x31,  // mov eax, dr6; out 0x31, eax
                0x0F, 0x21, 0xF8, 0x66, 0xE7, 0x32,  // mov eax, dr7; out 0x32, eax
                0xCF,                                // iret: MOV DR runs again, now allowed
            ])
        }
        #expect(trace.map(\.exit) == ["out 0x31 0xffff2ff0", "out 0x32 0x400", "out 0xff 0x0"])
    }

    /// MOV to and from DR0-DR7 at CPL 0: DR6 and DR7 keep their fixed bits,
    /// DR4 and DR5 are DR6 and DR7 while CR4.DE is clear and #UD once it is
    /// set; KVM_GET_DEBUGREGS then shows what the guest wrote.
    @Test func moveToAndFromDebugRegisters() throws {
        var read: [String] = []
        try expectSameDebugTrace(code: [
            0x66, 0xB8, 0x78, 0x56, 0x34, 0x12,  // mov eax, 0x12345678
            0x0F, 0x23, 0xC8,                    // mov dr1, eax
            0x66, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF,  // mov eax, 0xffffffff
            0x0F, 0x23, 0xF0,                    // mov dr6, eax
            0x0F, 0x21, 0xF3,                    // mov ebx, dr6
            0x66, 0xB8, 0x00, 0x00, 0x00, 0x00,  // mov eax, 0
            0x0F, 0x23, 0xE0,                    // mov dr4, eax (DR6)
            0x0F, 0x21, 0xE1,                    // mov ecx, dr4
            0x66, 0xB8, 0xFF, 0xD7, 0xFF, 0xFF,  // mov eax, 0xffffd7ff (all but GD and bit 11)
            0x0F, 0x23, 0xF8,                    // mov dr7, eax
            0x0F, 0x21, 0xEA,                    // mov edx, dr5 (DR7)
            0x0F, 0x20, 0xE0,                    // mov eax, cr4
            0x66, 0x83, 0xC8, 0x08,              // or eax, 8 (DE)
            0x0F, 0x22, 0xE0,                    // mov cr4, eax
            0x0F, 0x21, 0xE0,                    // mov eax, dr4: #UD
            0xE6, 0xFF,                          // out 0xff, al
        ], exits: 3) { guest in
            try installHandler(guest, vector: 6, at: 0x2300, [0xE6, 0x36, 0xF4])  // out 0x36, al; hlt
        } afterExit: { guest, exit in
            let registers = try guest.vcpu.registers()
            let debug = try guest.vcpu.debugRegisters()
            read.append("\(describe(exit)) rbx \(hex(registers.rbx)) rcx \(hex(registers.rcx)) rdx \(hex(registers.rdx)) "
                        + "dr \(debug.db.map { hex($0) }) dr6 \(hex(debug.dr6)) dr7 \(hex(debug.dr7))")
        }
        #expect(read.first == "out 0x36 0x8 rbx 0xffffefff rcx 0xffff0ff0 rdx 0xffff07ff "
                + "dr [\"0x0\", \"0x12345678\", \"0x0\", \"0x0\"] dr6 0xffff0ff0 dr7 0xffff07ff")
    }

    /// KVM_SET_DEBUGREGS takes values as given, without the fixed bits a
    /// guest's MOV would add; non-zero flags and DR6 or DR7 bits above 31
    /// are EINVAL.
    @Test func debugRegistersAreTakenAsGiven() throws {
        func results(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xF4])
            func set(_ change: (inout kvm_debugregs) -> Void) -> String {
                var registers = kvm_debugregs()
                change(&registers)
                do throws(KVMError) {
                    try guest.vcpu.handle.call(.setDebugregs, &registers)
                } catch {
                    return error.errno.symbolicName
                }
                let read = try? guest.vcpu.handle.get(.getDebugregs, kvm_debugregs.self)
                return "\(read.map { [$0.db.0, $0.db.1, $0.db.2, $0.db.3, $0.dr6, $0.dr7, $0.flags].map { hex($0) } } ?? [])"
            }
            return [
                set { _ in },
                set { $0.db = (1, 2, 3, 0xFFFF_FFFF_FFFF_FFFF); $0.dr6 = 0xF; $0.dr7 = 0xFFFF_FFFF },
                set { $0.flags = 1 },
                set { $0.dr6 = 1 << 32 },
                set { $0.dr7 = 1 << 40 },
            ]
        }
        let host = try results(.host)
        #expect(try results(.soft) == host)
        #expect(host[2...] == ["EINVAL", "EINVAL", "EINVAL"])
    }

    /// KVM_GUESTDBG_INJECT_DB and _INJECT_BP queue the exception for the
    /// next entry, into the guest's handler; the #BP returns to RIP (no
    /// software-breakpoint stop came before it to give an instruction
    /// length); DR6 does not change.
    @Test func queuedExceptionsReachTheGuest() throws {
        var dr6: [UInt64] = []
        let trace = try expectSameDebugTrace(code: [0xE6, 0x10, 0x90, 0xE6, 0x11, 0xE6, 0xFF], exits: 6) { guest in
            try installHandler(guest, vector: 1, at: 0x2100, reportingDebugHandler)
            try installHandler(guest, vector: 3, at: 0x2200, [0x58, 0xE7, 0x33, 0x50, 0xCF])
        } afterExit: { guest, exit in
            guard case .io(let io) = exit else { return }
            if io.port == 0x10 {
                try guest.vcpu.setGuestDebug(GuestDebug(isEnabled: false, injection: .debugException))
            } else if io.port == 0x11 {
                try guest.vcpu.setGuestDebug(GuestDebug(injection: .breakpoint))
            }
            dr6.append(try guest.vcpu.debugRegisters().dr6)
        }
        #expect(trace.map(\.exit) == ["out 0x10 0x0", "out 0x31 0x1002", "out 0x11 0x2", "out 0x33 0x1005", "out 0xff 0x5"])
        #expect(Set(dr6) == [0xFFFF_0FF0])
    }

    /// While KVM single-steps, KVM_GET_REGS shows TF clear even when the
    /// guest set it; turning single-step off writes that value back, so the
    /// guest's own TF is gone and no #DB follows.
    @Test func singleStepHidesTheGuestsTFAndDropsItWhenTurnedOff() throws {
        let trace = try expectSameDebugTrace(code: [
            0x9C, 0x58, 0x0D, 0x00, 0x01, 0x50, 0x9D,  // pushf; pop ax; or ax, 0x100; push ax; popf
            0x90,                                      // 1007: nop
            0x90,                                      // 1008: nop
            0xE6, 0xFF,                                // out 0xff, al
        ], exits: 8) { guest in
            try installHandler(guest, vector: 1, at: 0x2100, reportingDebugHandler)
            try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        } afterExit: { guest, exit in
            if case .debug(let stop) = exit, stop.pc == 0x1007 { try guest.vcpu.setGuestDebug(.disabled) }
        }
        #expect(trace.map(\.exit).suffix(2) == ["debug 1 pc 0x1007 dr6 0xffff4ff0", "out 0xff 0x2"])
        #expect(trace.allSatisfy { $0.rflags & 0x100 == 0 })
    }

    /// KVM_GUESTDBG_BLOCKIRQ keeps the PIC's interrupt out while stepping
    /// past STI.
    @Test func blockIRQKeepsInterruptsOutWhileStepping() throws {
        let trace = try expectSameDebugTrace(code: Self.picSTICode, exits: 8, irqchip: true) { guest in
            try Self.setUpPICInterrupt(guest)
        } afterExit: { guest, exit in
            try Self.raisePICInterruptAndStep(guest, exit, block: true)
        }
        #expect(trace.map(\.exit) == [
            "out 0x10 0xef", "debug 1 pc 0x1017 dr6 0xffff4ff0", "debug 1 pc 0x1018 dr6 0xffff4ff0",
            "debug 1 pc 0x1019 dr6 0xffff4ff0", "out 0xff 0xef",
        ])
    }

    /// Without KVM_GUESTDBG_BLOCKIRQ the step after the STI shadow lands in
    /// the interrupt handler. SoftKVM stops at its first instruction, as
    /// after INT n (and as VMX's TF-based stepping lands there); the host's
    /// kvm_pvm, whose emulator injects the interrupt and then runs one
    /// instruction before it checks for single-step, stops after it.
    @Test func stepWithoutBlockIRQLandsInTheInterruptHandler() throws {
        func run(_ backend: Backend) throws -> [String] {
            try debugTrace(backend, code: Self.picSTICode, exits: 5, irqchip: true) { guest in
                try Self.setUpPICInterrupt(guest)
            } afterExit: { guest, exit in
                try Self.raisePICInterruptAndStep(guest, exit, block: false)
            }.map(\.exit)
        }
        let common = ["out 0x10 0xef", "debug 1 pc 0x1017 dr6 0xffff4ff0", "debug 1 pc 0x1018 dr6 0xffff4ff0"]
        #expect(try run(.soft) == common + ["debug 1 pc 0x2000 dr6 0xffff4ff0", "debug 1 pc 0x2002 dr6 0xffff4ff0"])
        #expect(try run(.host) == common + ["debug 1 pc 0x2002 dr6 0xffff4ff0", "debug 1 pc 0x2004 dr6 0xffff4ff0"])
    }

    /// PIC programming, then `out 0x10` (where the test raises IRQ 4 and
    /// starts stepping), STI and two NOPs.
    static let picSTICode: [UInt8] = [
        0xB0, 0x11, 0xE6, 0x20,  // ICW1
        0xB0, 0x20, 0xE6, 0x21,  // ICW2: base 0x20
        0xB0, 0x04, 0xE6, 0x21,  // ICW3
        0xB0, 0x01, 0xE6, 0x21,  // ICW4
        0xB0, 0xEF, 0xE6, 0x21,  // mask all but IRQ 4
        0xE6, 0x10,              // 1014: out 0x10, al
        0xFB,                    // 1016: sti
        0x90,                    // 1017: nop
        0x90,                    // 1018: nop
        0xE6, 0xFF,              // 1019: out 0xff, al
    ]

    static func setUpPICInterrupt(_ guest: RealModeGuest) throws {
        // IRQ 4's handler: mov al, 0x20; out 0x20, al (EOI); out 0x30, al; iret.
        try installHandler(guest, vector: 0x24, at: 0x2000, [0xB0, 0x20, 0xE6, 0x20, 0xE6, 0x30, 0xCF])
    }

    static func raisePICInterruptAndStep(_ guest: RealModeGuest, _ exit: VCPUExit, block: Bool) throws {
        guard case .io(let io) = exit, io.port == 0x10 else { return }
        try guest.vm.setIRQLine(4, level: true)
        try guest.vm.setIRQLine(4, level: false)
        try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true, blockInterrupts: block))
    }
}

/// The same in 64-bit mode at CPL 0, which the host's kvm_pvm also runs
/// through its emulator: single-step, the guest's TF with a 64-bit #DB
/// gate, MOV to DR7 with bits above 31 (#GP).
@Suite("Guest debugging in long mode on both backends", .enabled(if: HostKVM.isAvailable))
struct LongModeGuestDebugDifferentialTests {
    /// A 64-bit #DB handler at 0x5000: pop rax; out 0x31, eax; push rax; iretq.
    static let debugHandler: [UInt8] = [0x58, 0xE7, 0x31, 0x50, 0x48, 0xCF]

    @Test func singleStepStopsAfterEachInstruction() throws {
        let trace = try expectSameDebugTrace(code: [
            0x48, 0xC7, 0xC0, 0x01, 0x00, 0x00, 0x00,  // mov rax, 1
            0x50,                                      // push rax
            0x5B,                                      // pop rbx
            0x48, 0x8D, 0x0C, 0x18,                    // lea rcx, [rax + rbx]
            0xE6, 0xFF,
        ], exits: 6) { guest in
            try enterLongMode(guest, gates: [])
            try guest.vcpu.setGuestDebug(GuestDebug(singleStep: true))
        }
        #expect(trace.map(\.exit) == [
            "debug 1 pc 0x1007 dr6 0xffff4ff0", "debug 1 pc 0x1008 dr6 0xffff4ff0", "debug 1 pc 0x1009 dr6 0xffff4ff0",
            "debug 1 pc 0x100d dr6 0xffff4ff0", "out 0xff 0x1",
        ])
    }

    @Test func guestTrapFlagTrapsThroughTheLongModeIDT() throws {
        let trace = try expectSameDebugTrace(code: [
            0x9C,                                      // pushfq
            0x48, 0x81, 0x0C, 0x24, 0x00, 0x01, 0x00, 0x00,  // or qword [rsp], 0x100
            0x9D,                                      // 1009: popfq
            0x90,                                      // 100a: nop
            0x48, 0xFF, 0xC0,                          // 100b: inc rax
            0xE6, 0xFF,                                // 100e
        ], exits: 6) { guest in
            try enterLongMode(guest, gates: [(1, 0x5000)])
            try guest.memory.write(Self.debugHandler, at: 0x5000)
        }
        #expect(trace.map(\.exit) == ["out 0x31 0x100b", "out 0x31 0x100e", "out 0xff 0xe"])
    }

    /// DR0-DR3 take any 64-bit value; DR6 and DR7 refuse bits above 31.
    @Test func moveToDR7WithHighBitsIsGeneralProtection() throws {
        var registers: [String] = []
        let trace = try expectSameDebugTrace(code: [
            0x48, 0xB8, 0x00, 0x10, 0x00, 0x00, 0x00, 0x80, 0xFF, 0xFF,  // mov rax, 0xffff800000001000
            0x0F, 0x23, 0xC0,                                            // mov dr0, rax
            0x48, 0xC7, 0xC0, 0x00, 0x04, 0x00, 0x00,                    // mov rax, 0x400
            0x48, 0x0F, 0xBA, 0xE8, 0x20,                                // bts rax, 32
            0x0F, 0x23, 0xF8,                                            // mov dr7, rax: #GP
            0xE6, 0xFF,
        ], exits: 3) { guest in
            try enterLongMode(guest, gates: [(13, 0x5000)])
            try guest.memory.write([0x58, 0xE7, 0x30, 0x58, 0xE7, 0x31, 0xF4], at: 0x5000)  // error code; RIP
        } afterExit: { guest, _ in
            let debug = try guest.vcpu.debugRegisters()
            registers.append("\(debug.db.map { hex($0) }) dr7 \(hex(debug.dr7))")
        }
        #expect(trace.map(\.exit) == ["out 0x30 0x0", "out 0x31 0x1019", "halt"])
        #expect(registers.first == "[\"0xffff800000001000\", \"0x0\", \"0x0\", \"0x0\"] dr7 0x400")
    }
}
