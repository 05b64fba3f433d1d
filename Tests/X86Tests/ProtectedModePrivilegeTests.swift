import Testing
import KVM
@testable import X86

/// 32-bit protected mode privilege changes, against the SDM: interrupts
/// from CPL 3 through the TSS's SS0:ESP0, IRETD and far RET to CPL 3, call
/// gates with parameter copy.
@Suite("X86 32-bit privilege changes")
struct ProtectedModePrivilegeTests {
    /// ES = user data; IRETD to 0x1B:0xC000 with SS:ESP = 0x23:0xC000.
    static let enterUser: [UInt8] = [
        0xB8, 0x23, 0x00, 0x00, 0x00, 0x8E, 0xC0,  // mov eax, 0x23; mov es, eax
        0x6A, 0x23, 0x68, 0x00, 0xC0, 0x00, 0x00, 0x6A, 0x02,  // push 0x23; push 0xc000; push 2
        0x6A, 0x1B, 0x68, 0x00, 0xC0, 0x00, 0x00, 0xCF,  // push 0x1b; push 0xc000; iretd
    ]
    static let gpHandler: [UInt8] = [0x58, 0xF4]  // pop eax; hlt

    @Test func interruptFromCPL3SwitchesToSS0ESP0AndIRETDReturns() {
        var g = SystemGuest.protected32(code: Self.enterUser)
        g.write([0xBB, 0x11, 0x11, 0x00, 0x00, 0xCD, 0x80, 0xF4], at: SystemGuest.userCode)  // mov ebx, 0x1111; int 0x80; hlt
        g.write([
            0x89, 0xE6,              // mov esi, esp
            0x8B, 0x7C, 0x24, 0x0C,  // mov edi, [esp+12]: the old ESP
            0x8B, 0x6C, 0x24, 0x10,  // mov ebp, [esp+16]: the old SS
            0x8B, 0x4C, 0x24, 0x04,  // mov ecx, [esp+4]: the old CS
            0xCF,                    // iretd
        ], at: SystemGuest.handlers)
        g.write(Self.gpHandler, at: SystemGuest.handlers + 0x200)
        g.gate32(0x80, handler: UInt32(SystemGuest.handlers), dpl: 3)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0x200))
        let run = g.runOnSoftCPU()
        guard let last = run.steps.last else { Issue.record("no exit"); return }
        #expect(last.exit == "halt")
        let r = last.registers
        #expect(r.rsi == SystemGuest.kernelStack - 20, "SS, ESP, EFLAGS, CS, EIP on the TSS's stack")
        #expect(r.rdi == 0xC000 && r.rbp == 0x23 && r.rcx == 0x1B)
        #expect(r.rax == 0, "HLT back at CPL 3: #GP(0)")
        #expect(r.rsp == SystemGuest.kernelStack - 20, "the #GP frame from CPL 3, less its popped error code")
        #expect(last.special.ds.selector == 0 && last.special.ds.unusable, "IRETD to CPL 3 nulled the DPL-0 DS")
        #expect(last.special.es.selector == 0x23, "ES held user data and stays")
        #expect(last.special.ss.selector == 0x10, "the #GP switched to SS0 again")
    }

    @Test func callGateCopiesParametersAndFarReturnReleasesThem() {
        var g = SystemGuest.protected32(code: Self.enterUser)
        g.write([
            0x6A, 0x11, 0x6A, 0x22,                    // push 0x11; push 0x22
            0x9A, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00,  // call 0x30:0 (the gate)
            0x89, 0xE2,                                // mov edx, esp
            0xF4,                                      // hlt: #GP
        ], at: SystemGuest.userCode)
        g.write([
            0x89, 0xE1,              // mov ecx, esp
            0x8B, 0x5C, 0x24, 0x08,  // mov ebx, [esp+8]: parameter 0x22
            0x8B, 0x7C, 0x24, 0x0C,  // mov edi, [esp+12]: parameter 0x11
            0x8B, 0x6C, 0x24, 0x10,  // mov ebp, [esp+16]: the caller's ESP
            0x8B, 0x74, 0x24, 0x14,  // mov esi, [esp+20]: the caller's SS
            0xCA, 0x08, 0x00,        // retf 8
        ], at: SystemGuest.handlers + 0x500)
        g.write(Self.gpHandler, at: SystemGuest.handlers + 0x200)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0x200))
        let run = g.runOnSoftCPU()
        let r = run.steps.last?.registers
        #expect(run.steps.last?.exit == "halt")
        #expect(r?.rcx == SystemGuest.kernelStack - 24, "SS, ESP, two parameters, CS, EIP")
        #expect(r?.rbx == 0x22 && r?.rdi == 0x11, "the parameters in the caller's order")
        #expect(r?.rbp == 0xBFF8 && r?.rsi == 0x23)
        #expect(r?.rdx == 0xC000, "RETF 8 released the parameters from the caller's stack")
    }

    @Test func farReturnToCPL3PopsSSAndESP() {
        // push 0x23; push 0xbff0; push 0x1b; push 0xc000; retf
        var g = SystemGuest.protected32(code: [0x6A, 0x23, 0x68, 0xF0, 0xBF, 0x00, 0x00, 0x6A, 0x1B, 0x68, 0x00, 0xC0, 0x00, 0x00, 0xCB])
        g.write([0x89, 0xE2, 0xF4], at: SystemGuest.userCode)  // mov edx, esp; hlt
        g.write(Self.gpHandler, at: SystemGuest.handlers + 0x200)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0x200))
        let run = g.runOnSoftCPU()
        #expect(run.steps.last?.registers.rdx == 0xBFF0)
        #expect(run.steps.last?.special.ds.unusable == true)
    }

    @Test func farReturnToAMoreprivilegedLevelIsGeneralProtection() {
        // At CPL 3: push 0x08; push 0x1000; retf: RPL 0 < CPL 3.
        var g = SystemGuest.protected32(code: Self.enterUser)
        g.write([0x6A, 0x08, 0x68, 0x00, 0x10, 0x00, 0x00, 0xCB], at: SystemGuest.userCode)
        g.write(Self.gpHandler, at: SystemGuest.handlers + 0x200)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0x200))
        let r = g.runOnSoftCPU().steps.last?.registers
        #expect(r?.rax == 0x08, "#GP(selector)")
    }

    @Test func callGateBelowCPLIsGeneralProtectionNamingTheGate() {
        var g = SystemGuest.protected32(code: Self.enterUser)
        g.store64(g.memory.withUnsafeBytes { $0.load(fromByteOffset: SystemGuest.gdt + 0x30, as: UInt64.self) } & ~(3 << 45),
                  at: SystemGuest.gdt + 0x30)  // gate DPL 0
        g.write([0x9A, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00], at: SystemGuest.userCode)
        g.write(Self.gpHandler, at: SystemGuest.handlers + 0x200)
        g.gate32(13, handler: UInt32(SystemGuest.handlers + 0x200))
        #expect(g.runOnSoftCPU().steps.last?.registers.rax == 0x30)
    }

    @Test func interruptWithABadSS0IsInvalidTSS() {
        var g = SystemGuest.protected32(code: Self.enterUser)
        g.store32(0x23, at: SystemGuest.tssAddress + 8)  // SS0 = a DPL-3 selector
        g.write([0xCD, 0x80], at: SystemGuest.userCode)
        g.gate32(0x80, handler: UInt32(SystemGuest.handlers), dpl: 3)
        // #TS with the same bad SS0 cannot be delivered either: #DF, and then a triple fault.
        let run = g.runOnSoftCPU()
        #expect(run.steps.last?.exit == "shutdown")
    }

    @Test func farCallAndReturnAtTheSamePrivilege() {
        // call 0x08:0x2000; mov edx, esp; hlt — at 0x2000: mov ebx, [esp]; mov ecx, [esp+4]; retf
        var g = SystemGuest.protected32(code: [0x9A, 0x00, 0x20, 0x00, 0x00, 0x08, 0x00, 0x89, 0xE2, 0xF4])
        g.write([0x8B, 0x1C, 0x24, 0x8B, 0x4C, 0x24, 0x04, 0xCB], at: 0x2000)
        let r = g.runOnSoftCPU().steps.last?.registers
        #expect(r?.rbx == UInt64(SystemGuest.code + 7) && r?.rcx == 0x08 && r?.rdx == SystemGuest.kernelStack)
    }
}
