import KVM
import Testing
@testable import X86

/// A 32-bit protected-mode kernel that enters virtual-8086 mode with IRETD
/// (EFLAGS `flags` | VM): CS 0x300 (code at 0x3000), SS:SP 0x400:0xF00,
/// DS ES FS GS 0x500. The TSS (0x8000, SS0:ESP0 0x10:0xA000) has its
/// interrupt redirection bitmap at 0x68 (all bits set: no redirection) and
/// its I/O bitmap at 0x88, all ports of 0-0xFF allowed. The #GP handler
/// reports its error code on port 0x3D and halts.
///
/// Against the SDM (chapter 20, and the pages of CLI, STI, PUSHF, POPF,
/// INT n, IRET, IN and OUT): the host's kvm_pvm runs no virtual-8086 mode
/// (its emulator stops with an internal error at the IRET into it).
enum V86Guest {
    static let code = 0x3000, data = 0x5000
    static let vm: UInt32 = 1 << 17

    static func make(flags: UInt32, code v86: [UInt8], cr4: UInt64 = 0) -> SystemGuest {
        let image = flags | vm | 2
        func push(_ value: UInt32) -> [UInt8] { [0x68] + withUnsafeBytes(of: value.littleEndian, Array.init) }
        let enter = [0x500, 0x500, 0x500, 0x500, 0x400, 0xF00, image, 0x300, 0].flatMap(push) + [0xCF]
        var g = SystemGuest.protected32(code: enter)
        g.write(v86, at: code)
        g.store64(SystemGuest.descriptor(type: 0xB, dpl: 0, s: false, db: false, base: UInt32(SystemGuest.tssAddress),
                                         limit: 0xA7, g: false), at: SystemGuest.gdt + 0x28)
        g.special.tr.limit = 0xA7
        g.write([0x88, 0x00], at: SystemGuest.tssAddress + 0x66)
        g.write([UInt8](repeating: 0xFF, count: 32), at: SystemGuest.tssAddress + 0x68)
        g.write([UInt8](repeating: 0, count: 32), at: SystemGuest.tssAddress + 0x88)
        g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0xD0)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0xD0))
        g.special.cr4 = cr4
        return g
    }

    static func gpExit(_ code: UInt32) -> String { "io out 0x3d size 4 value \(hex(code))" }

    static func load32(_ memory: [UInt8], _ address: Int) -> UInt32 {
        memory[address..<address + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    static let iopl3: UInt32 = 0x3000
}

@Suite("X86 virtual-8086 mode")
struct Virtual8086Tests {
    /// Real-mode addressing at CPL 3: DS 0x500 reads 0x5010; OUT consults
    /// the I/O bitmap (allowed here whatever IOPL); HLT is #GP(0).
    @Test func enteredWithIRETDItAddressesAsRealModeAtCPL3() {
        var g = V86Guest.make(flags: 0, code: [0xA1, 0x10, 0x00, 0xE7, 0x10, 0xF4])  // mov ax, [0x10]; out 0x10, ax; hlt
        g.write([0x34, 0x12], at: V86Guest.data + 0x10)
        let steps = g.runOnSoftCPU(maxExits: 2).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0x1234", V86Guest.gpExit(0)])
        let first = steps[0]
        #expect(first.special.cs == Segment(base: 0x3000, limit: 0xFFFF, selector: 0x300, type: 3, dpl: 3))
        #expect(first.special.ss == Segment(base: 0x4000, limit: 0xFFFF, selector: 0x400, type: 3, dpl: 3))
        #expect(first.registers.rflags & RFLAGS.vm != 0)
        #expect(first.registers.rip == 5)
    }

    /// Below IOPL 3, CLI (like STI, PUSHF, POPF, INT n, IRET) is #GP(0),
    /// delivered at CPL 0 with GS FS DS ES SS ESP EFLAGS CS EIP and the
    /// error code on the TSS's ring-0 stack, and the data segments null.
    @Test func iopSensitiveInstructionFaultsToTheProtectedModeHandler() {
        for instruction: [UInt8] in [[0xFA], [0xFB], [0x9C], [0x9D], [0xCD, 0x30], [0xCF]] {
            let run = V86Guest.make(flags: 0, code: instruction).runOnSoftCPU(maxExits: 1)
            let step = run.steps[0]
            #expect(step.exit == V86Guest.gpExit(0), "\(instruction)")
            #expect(step.special.cs.selector == 0x08 && step.registers.rflags & RFLAGS.vm == 0)
            #expect([step.special.ds, step.special.es, step.special.fs, step.special.gs].allSatisfy { $0.selector == 0 && $0.unusable })
            #expect(step.registers.rsp == 0xA000 - 36, "the error code was popped")
            let frame = (0..<9).map { V86Guest.load32(run.memory, 0xA000 - 36 + 4 * $0) }
            #expect(frame == [0, 0x300, V86Guest.vm | 0x10002, 0xF00, 0x400, 0x500, 0x500, 0x500, 0x500], "\(instruction)")
        }
    }

    /// At IOPL 3: CLI, PUSHF, STI work; INT n goes through the IDT to CPL 0
    /// and IRETD returns to virtual-8086 mode.
    @Test func atIOPL3InterruptsGoToTheKernelAndIRETReturns() {
        // cli; pushf; pop ax; out 0x10, ax; sti; int 0x30; out 0x12, al; hlt
        var g = V86Guest.make(flags: V86Guest.iopl3, code: [0xFA, 0x9C, 0x58, 0xE7, 0x10, 0xFB, 0xCD, 0x30, 0xE6, 0x12, 0xF4])
        // The handler: mov eax, [esp+8] (EFLAGS); out 0x31, eax; mov eax, ds; out 0x32, eax; iretd
        g.write([0x8B, 0x44, 0x24, 0x08, 0xE7, 0x31, 0x8C, 0xD8, 0xE7, 0x32, 0xCF], at: SystemGuest.handlers + 0x300)
        g.gate32(0x30, handler: UInt32(SystemGuest.handlers + 0x300), dpl: 3)
        let steps = g.runOnSoftCPU(maxExits: 5).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0x3002", "io out 0x31 size 4 value 0x23202",
                                      "io out 0x32 size 4 value 0x0", "io out 0x12 size 1 value 0x0", V86Guest.gpExit(0)])
        let back = steps[3]
        #expect(back.special.ds == Segment(base: 0x5000, limit: 0xFFFF, selector: 0x500, type: 3, dpl: 3), "IRETD restored DS")
        #expect(back.registers.rsp == 0xF00 && back.special.ss.selector == 0x400)
    }

    /// POPF and IRET in virtual-8086 mode leave IOPL alone.
    @Test func popfAndIRETKeepIOPL() {
        // push 0x0202; popf; pushf; pop ax; out 0x10, ax; then push 0x0002, push cs, push 0x20 (ip); iret; at 0x20: pushf; pop ax; out 0x11, ax
        var code: [UInt8] = [0x68, 0x02, 0x02, 0x9D, 0x9C, 0x58, 0xE7, 0x10, 0x6A, 0x02, 0x0E, 0x6A, 0x20, 0xCF]
        code += [UInt8](repeating: 0x90, count: 0x20 - code.count) + [0x9C, 0x58, 0xE7, 0x11, 0xF4]
        let steps = V86Guest.make(flags: V86Guest.iopl3, code: code).runOnSoftCPU(maxExits: 2).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0x3202", "io out 0x11 size 2 value 0x3002"])
    }

    /// MOV to a segment register and far JMP load real-mode style segments of DPL 3.
    @Test func segmentLoadsAreRealModeStyle() {
        // mov ax, 0x600; mov ds, ax; mov ax, [0]; jmp 0x310:0; at 0x3100: out 0x10, ax; hlt
        var g = V86Guest.make(flags: 0, code: [0xB8, 0x00, 0x06, 0x8E, 0xD8, 0xA1, 0x00, 0x00, 0xEA, 0x00, 0x00, 0x10, 0x03])
        g.write([0xE7, 0x10, 0xF4], at: 0x3100)
        g.write([0xCD, 0xAB], at: 0x6000)
        let steps = g.runOnSoftCPU(maxExits: 2).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0xabcd", V86Guest.gpExit(0)])
        #expect(steps[0].special.cs == Segment(base: 0x3100, limit: 0xFFFF, selector: 0x310, type: 3, dpl: 3))
        #expect(steps[0].special.ds == Segment(base: 0x6000, limit: 0xFFFF, selector: 0x600, type: 3, dpl: 3))
    }

    /// IN and OUT in virtual-8086 mode check the I/O bitmap even at IOPL 3.
    @Test func ioBitmapDecidesPortAccessWhateverIOPL() {
        var g = V86Guest.make(flags: V86Guest.iopl3, code: [0xE6, 0x10, 0xE6, 0x18, 0xF4])  // out 0x10, al; out 0x18, al
        g.memory[SystemGuest.tssAddress + 0x88 + 3] = 1  // port 0x18
        #expect(g.runOnSoftCPU(maxExits: 2).steps.map(\.exit) == ["io out 0x10 size 1 value 0x0", V86Guest.gpExit(0)])
    }

    /// An interrupt from virtual-8086 mode must reach a non-conforming
    /// segment of DPL 0: #GP(selector) otherwise.
    @Test func interruptToAHandlerAboveDPL0IsGeneralProtection() {
        var g = V86Guest.make(flags: V86Guest.iopl3, code: [0xCD, 0x30])
        let low = UInt64(0xD300) | UInt64(0x1B) << 16 | UInt64(0xEE) << 40  // 32-bit interrupt gate, DPL 3, to CS 0x1B
        g.store64(low, at: SystemGuest.idt + 0x30 * 8)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == V86Guest.gpExit(0x18))
    }

    /// A task switch to a TSS whose EFLAGS has VM set enters virtual-8086 mode.
    @Test func taskSwitchIntoVirtual8086Mode() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store32(0x20002, at: TaskGuest.newTSS + 0x24)  // EFLAGS: VM
        g.store32(0x0010, at: TaskGuest.newTSS + 0x20)    // IP
        for (i, selector) in [0x500, 0x300, 0x400, 0x500, 0x500, 0x500].enumerated() {
            g.store32(UInt32(selector), at: TaskGuest.newTSS + 0x48 + 4 * i)
        }
        g.write([0xE7, 0x10, 0xF4], at: 0x3010)
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == "io out 0x10 size 2 value 0x5555")
        #expect(step.special.cs == Segment(base: 0x3000, limit: 0xFFFF, selector: 0x300, type: 3, dpl: 3))
    }
}

/// CR4.VME and CR4.PVI: the virtual interrupt flag, and the interrupt
/// redirection bitmap (SDM 20.3 and 20.4), against the SDM.
@Suite("X86 virtual-mode extensions")
struct VirtualModeExtensionTests {
    static let vif: UInt32 = 1 << 19

    /// CLI and STI change VIF, not IF; the 16-bit PUSHF shows VIF as IF and IOPL as 3.
    @Test func cliAndStiChangeVIFAndPushfShowsIt() {
        // cli; pushf; pop ax; out 0x10, ax; sti; pushf; pop ax; out 0x11, ax; pushfd (32-bit: #GP)
        let code: [UInt8] = [0xFA, 0x9C, 0x58, 0xE7, 0x10, 0xFB, 0x9C, 0x58, 0xE7, 0x11, 0x66, 0x9C]
        let steps = V86Guest.make(flags: 0x200 | Self.vif, code: code, cr4: ControlBits.cr4VME).runOnSoftCPU(maxExits: 3).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0x3002", "io out 0x11 size 2 value 0x3202", V86Guest.gpExit(0)])
        #expect(steps[0].registers.rflags & UInt64(0x200 | Self.vif) == 0x200, "CLI cleared VIF, not IF")
        #expect(steps[1].registers.rflags & UInt64(Self.vif) != 0)
    }

    /// POPF sets VIF from the popped IF and leaves IF; popping TF is #GP(0).
    @Test func popfSetsVIFFromIF() {
        // push 0x0200; popf; out 0x10, al; push 0x0100; popf
        let code: [UInt8] = [0x68, 0x00, 0x02, 0x9D, 0xE6, 0x10, 0x68, 0x00, 0x01, 0x9D]
        let steps = V86Guest.make(flags: 0, code: code, cr4: ControlBits.cr4VME).runOnSoftCPU(maxExits: 2).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 1 value 0x0", V86Guest.gpExit(0)])
        #expect(steps[0].registers.rflags & UInt64(0x200 | Self.vif) == UInt64(Self.vif))
    }

    /// STI with VIP set is #GP(0).
    @Test func stiWithVIPIsGeneralProtection() {
        let steps = V86Guest.make(flags: 1 << 20, code: [0xFB], cr4: ControlBits.cr4VME).runOnSoftCPU(maxExits: 1).steps
        #expect(steps.first?.exit == V86Guest.gpExit(0))
    }

    /// INT n whose redirection bit is clear goes to the 8086 handler of the
    /// interrupt table at 0, with FLAGS (IF as VIF, IOPL 3), CS, IP pushed
    /// and VIF cleared; its 16-bit IRET puts VIF back. A set bit below
    /// IOPL 3 is #GP(0).
    @Test func redirectedInterruptGoesToTheVirtual8086Handler() {
        // int 0x21; out 0x12, al; int 0x22
        var g = V86Guest.make(flags: Self.vif, code: [0xCD, 0x21, 0xE6, 0x12, 0xCD, 0x22], cr4: ControlBits.cr4VME)
        g.memory[SystemGuest.tssAddress + 0x68 + 4] = 0xFD  // vector 0x21: bit 1 of byte 4 clear
        g.write([0x00, 0x00, 0x20, 0x03], at: 0x21 * 4)     // IVT[0x21] = 0x320:0
        // The 8086 handler: pushf; pop ax; out 0x10, ax; mov bp, sp; mov ax, [bp+4]; out 0x11, ax; iret
        g.write([0x9C, 0x58, 0xE7, 0x10, 0x89, 0xE5, 0x8B, 0x46, 0x04, 0xE7, 0x11, 0xCF], at: 0x3200)
        let steps = g.runOnSoftCPU(maxExits: 4).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 2 value 0x3002", "io out 0x11 size 2 value 0x3202",
                                      "io out 0x12 size 1 value 0x2", V86Guest.gpExit(0)])
        #expect(steps[0].special.cs.selector == 0x320 && steps[0].registers.rflags & UInt64(Self.vif) == 0)
        #expect(steps[2].registers.rflags & UInt64(Self.vif) != 0, "the handler's IRET set VIF again")
    }

    /// CR4.PVI: CLI and STI at CPL 3 in protected mode change VIF below IOPL 3.
    @Test func protectedModeVirtualInterruptsAtCPL3() {
        // push 0x23; push 0xC000; push VIF|2; push 0x1B; push 0xC000... iretd to CPL 3
        func push(_ value: UInt32) -> [UInt8] { [0x68] + withUnsafeBytes(of: value.littleEndian, Array.init) }
        var g = SystemGuest.protected32(code: [0x23, 0xC000, Self.vif | 2, 0x1B, 0xC000].flatMap(push) + [0xCF])
        g.write([0xFA, 0x9C, 0x58, 0xE7, 0x10, 0xFB, 0x9C, 0x58, 0xE7, 0x11, 0xF4], at: SystemGuest.userCode)  // cli; pushfd; ...; sti; pushfd
        g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0xD0)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0xD0))
        g.special.cr4 = ControlBits.cr4PVI
        let steps = g.runOnSoftCPU(maxExits: 3).steps
        #expect(steps.map(\.exit) == ["io out 0x10 size 4 value 0x2", "io out 0x11 size 4 value 0x80002", V86Guest.gpExit(0)])
        g.special.cr4 = 0
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == V86Guest.gpExit(0), "without PVI CLI faults")
    }
}
