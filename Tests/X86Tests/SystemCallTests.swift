import Testing
import KVM
@testable import X86

/// SYSCALL/SYSRET, SWAPGS, SYSENTER/SYSEXIT against the SDM (the host's
/// kvm_pvm handles SYSCALL from CPL 3 its own paravirtual way, so it is no
/// oracle for them).
@Suite("X86 fast system calls")
struct SystemCallTests {
    static let star = MSREntry(index: MSR.star, data: 0x0023_0010_0000_0000)  // SYSCALL CS 0x10; SYSRET base 0x23
    static let lstar = MSREntry(index: MSR.lstar, data: UInt64(SystemGuest.handlers + 0x400))
    static let sfmask = MSREntry(index: MSR.syscallMask, data: 0x700)  // TF IF DF

    /// User code that makes a system call, a LSTAR handler that records
    /// what SYSCALL set and returns with SYSRETQ, and a #UD handler that
    /// records the frame's CS and SS.
    static func syscallGuest(user: [UInt8], handler: [UInt8]? = nil) -> SystemGuest {
        var g = SystemGuest.long64(code: PrivilegeDifferentialTests.enterUser64)
        g.write(user, at: SystemGuest.userCode)
        g.write(handler ?? [
            0x48, 0x89, 0xCE,  // mov rsi, rcx
            0x4C, 0x89, 0xDF,  // mov rdi, r11
            0x66, 0x8C, 0xC8, 0x49, 0x89, 0xC0,  // mov ax, cs; mov r8, rax
            0x66, 0x8C, 0xD0, 0x49, 0x89, 0xC1,  // mov ax, ss; mov r9, rax
            0x9C, 0x41, 0x5A,  // pushfq; pop r10
            0x48, 0x0F, 0x07,  // sysretq
        ], at: SystemGuest.handlers + 0x400)
        g.write([
            0x48, 0x8B, 0x44, 0x24, 0x08, 0x49, 0x89, 0xC4,  // mov rax, [rsp+8]; mov r12, rax (CS)
            0x48, 0x8B, 0x44, 0x24, 0x20, 0x49, 0x89, 0xC5,  // mov rax, [rsp+32]; mov r13, rax (SS)
            0xF4,
        ], at: SystemGuest.handlers + 0x100)
        g.write([0x58, 0xF4], at: SystemGuest.handlers + 0x200)  // #GP: pop rax (error code); hlt
        g.gate64(6, handler: UInt64(SystemGuest.handlers + 0x100), ist: 1)
        g.gate64(13, handler: UInt64(SystemGuest.handlers + 0x200))
        g.msrs = [star, lstar, sfmask]
        return g
    }

    static let userSyscall: [UInt8] = [
        0x48, 0xC7, 0xC3, 0x07, 0x00, 0x00, 0x00,  // mov rbx, 7
        0x9C, 0x48, 0x81, 0x0C, 0x24, 0x00, 0x04, 0x00, 0x00, 0x9D,  // pushfq; or qword [rsp], 0x400 (DF); popfq
        0x0F, 0x05,                                // syscall
        0x48, 0xC7, 0xC2, 0x09, 0x00, 0x00, 0x00,  // mov rdx, 9
        0x0F, 0x0B,                                // ud2
    ]

    @Test func syscallEntersLSTARAndSysretqReturnsToUser() {
        let run = Self.syscallGuest(user: Self.userSyscall).runOnSoftCPU()
        guard let last = run.steps.last else { Issue.record("no exit"); return }
        let r = last.registers
        #expect(last.exit == "halt")
        #expect(r.rsi == UInt64(SystemGuest.userCode + 19), "RCX: the instruction after SYSCALL")
        #expect(r.rdi == 0x402, "R11: RFLAGS at SYSCALL, DF set")
        #expect(r.r8 == 0x10 && r.r9 == 0x18, "CS and SS from STAR[47:32]")
        #expect(r.r10 == 0x2, "SFMASK cleared DF")
        #expect(r.rdx == 9, "SYSRETQ went back to the next instruction")
        #expect(r.r12 == 0x33 && r.r13 == 0x2B, "CS = STAR[63:48] + 16, SS = + 8, RPL 3")
    }

    @Test func sysretWithoutREXWReturnsToCompatibilityMode() {
        // The handler ends in SYSRET (no REX.W): CS 0x23, 32-bit code, at ECX.
        var handler: [UInt8] = [0x0F, 0x07]
        handler.insert(contentsOf: [0x48, 0x89, 0xCE], at: 0)  // mov rsi, rcx
        let user: [UInt8] = [0x0F, 0x05, 0x0F, 0x0B]  // syscall; ud2 (decoded as 32-bit code after the return)
        let run = Self.syscallGuest(user: user, handler: handler).runOnSoftCPU()
        #expect(run.steps.last?.exit == "halt")
        #expect(run.steps.last?.registers.r12 == 0x23)
    }

    @Test func syscallWithoutSCEIsUndefined() {
        var g = Self.syscallGuest(user: Self.userSyscall)
        g.special.efer &= ~ControlBits.eferSCE
        let run = g.runOnSoftCPU()
        #expect(run.steps.last?.exit == "halt")
        #expect(run.steps.last?.registers.r12 == 0x33, "#UD raised at CPL 3")
        #expect(run.steps.last?.registers.rdx == 0, "never returned past SYSCALL")
    }

    @Test func sysretAtCPL3IsGeneralProtection() {
        let run = Self.syscallGuest(user: [0x48, 0x0F, 0x07]).runOnSoftCPU()
        #expect(run.steps.last?.exit == "halt")
        #expect(run.steps.last?.registers.rip == UInt64(SystemGuest.handlers + 0x202), "in the #GP handler")
        #expect(run.steps.last?.registers.rax == 0)
    }

    @Test func sysretToANonCanonicalRCXIsGeneralProtectionAtCPL0() {
        // The handler sets RCX = 0x0000_8000_0000_0000 and returns.
        let handler: [UInt8] = [0x48, 0xB9, 0, 0, 0, 0, 0, 0x80, 0, 0, 0x48, 0x0F, 0x07]
        let run = Self.syscallGuest(user: Self.userSyscall, handler: handler).runOnSoftCPU()
        let last = run.steps.last
        #expect(last?.registers.rip == UInt64(SystemGuest.handlers + 0x202))
        #expect(last?.special.cs.selector == 0x10)
        #expect(last?.registers.rsp == SystemGuest.userStack - 40, "SYSCALL keeps the user stack; #GP at CPL 0 pushes on it")
    }

    @Test func swapgsExchangesGSBaseWithKernelGSBase() {
        var g = SystemGuest.long64(code: [
            0x0F, 0x01, 0xF8,                          // swapgs
            0xB9, 0x01, 0x01, 0x00, 0xC0, 0x0F, 0x32,  // mov ecx, GS_BASE; rdmsr
            0x89, 0xC6,                                // mov esi, eax
            0xB9, 0x02, 0x01, 0x00, 0xC0, 0x0F, 0x32,  // mov ecx, KERNEL_GS_BASE; rdmsr
            0x89, 0xC7,                                // mov edi, eax
            0x65, 0x48, 0x8B, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00,  // mov rax, gs:[0]
            0xF4,
        ])
        g.msrs = [MSREntry(index: MSR.gsBase, data: 0xE000), MSREntry(index: MSR.kernelGSBase, data: 0xE100)]
        g.store64(0x55, at: 0xE100)
        let r = g.runOnSoftCPU().steps.last?.registers
        #expect(r?.rsi == 0xE100 && r?.rdi == 0xE000 && r?.rax == 0x55)
    }

    @Test func swapgsAtCPL3IsGeneralProtection() {
        let run = Self.syscallGuest(user: [0x0F, 0x01, 0xF8]).runOnSoftCPU()
        #expect(run.steps.last?.registers.rip == UInt64(SystemGuest.handlers + 0x202))
    }

    @Test func swapgsOutside64BitModeIsUndefined() {
        var m = Machine(.protected32, code: [0x0F, 0x01, 0xF8])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
        m = Machine(.long64, code: [])
        m.cpu.state.cs.attributes = 0xC09B  // compatibility mode
        m.write([0x0F, 0x01, 0xF8], at: Machine.codeAddress)
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    /// SYSENTER from 32-bit CPL-3 code to the SYSENTER MSRs' CS:EIP and
    /// stack, SYSEXIT back with CS + 16, SS + 24 at ECX:EDX.
    @Test func sysenterAndSysexitIn32BitProtectedMode() {
        let m = Machine(.protected32, code: [0x0F, 0x34])  // sysenter
        m.cpu.state.msrs.sysenterCS = 0x08
        m.cpu.state.msrs.sysenterESP = 0x7000
        m.cpu.state.msrs.sysenterEIP = 0x2000
        m.cpu.state.cs = SegmentRegister(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0FB)
        m.cpu.state.ss = SegmentRegister(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0F3)
        m.cpu.state.rflags = 0x202
        // At 0x2000: mov ecx, 0x6000; mov edx, 0x3000; sysexit. At 0x3000: hlt (at CPL 3: #GP).
        m.write([0xB9, 0x00, 0x60, 0x00, 0x00, 0xBA, 0x00, 0x30, 0x00, 0x00, 0x0F, 0x35], at: 0x2000)
        m.write([hlt], at: 0x3000)
        #expect(m.cpu.step() == .instructionLimit)
        #expect(m.cpu.state.cs.selector == 0x08 && m.cpu.state.cpl == 0)
        #expect(m.cpu.state.ss.selector == 0x10 && m.cpu.state.rip == 0x2000 && m[.rsp] == 0x7000)
        #expect(m.cpu.state.rflags & RFLAGS.if == 0)
        #expect(m.run() == .exception(vector: 13, errorCode: 0), "HLT at CPL 3 after SYSEXIT")
        #expect(m.cpu.state.cs.selector == 0x1B && m.cpu.state.ss.selector == 0x23)
        #expect(m.cpu.state.rip == 0x3000 && m[.rsp] == 0x6000)
    }

    @Test func sysenterWithANullSysenterCSIsGeneralProtection() {
        let m = Machine(.protected32, code: [0x0F, 0x34])
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        let real = Machine(.real, code: [0x0F, 0x34])
        real.cpu.state.msrs.sysenterCS = 0x08
        #expect(real.run() == .exception(vector: 13, errorCode: 0))
    }
}
