import Testing
import KVM
@testable import X86

/// Faults raised at CPL 3 and delivered to CPL 0 through 64-bit gates
/// (stack from TSS.RSP0 or an IST stack, SS null), IRETQ back to CPL 3:
/// compared with the host's /dev/kvm, which runs the CPL-3 code natively
/// and delivers its faults.
@Suite("X86 privilege changes against the host", .enabled(if: HostKVM.isAvailable))
struct PrivilegeDifferentialTests {
    /// The user data segment in DS, ES, FS, GS (the SDM nulls DPL-0 ones on
    /// the way out, which kvm_pvm does not show), then an IRETQ frame to
    /// user code at 0xC000 with CS `codeSelector`, RFLAGS 2.
    static func enterUser(codeSelector: UInt8) -> [UInt8] {
        [0xB8, 0x2B, 0x00, 0x00, 0x00,  // mov eax, 0x2b
         0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xE0, 0x8E, 0xE8,  // mov ds/es/fs/gs, eax
         0x6A, 0x2B, 0x68, 0x00, 0xC0, 0x00, 0x00, 0x6A, 0x02,  // push 0x2b; push 0xc000; push 2
         0x6A, codeSelector, 0x68, 0x00, 0xC0, 0x00, 0x00, 0x48, 0xCF]  // push cs; push 0xc000; iretq
    }
    static let enterUser64 = enterUser(codeSelector: 0x33)

    /// A guest whose user code faults three times: #GP (HLT), #PF (a
    /// supervisor page), #UD through IST1, whose handler halts.
    static func userFaults(userCode: [UInt8]? = nil, kernelCode: [UInt8] = enterUser64) -> SystemGuest {
        var g = SystemGuest.long64(code: kernelCode)
        g.write(userCode ?? [
            0x48, 0xC7, 0xC0, 0x11, 0x11, 0x00, 0x00,        // mov rax, 0x1111
            0xF4,                                            // hlt: #GP(0)
            0x48, 0x8B, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00,  // mov rax, [0x1000]: #PF, a supervisor page
            0x48, 0xC7, 0xC3, 0x22, 0x22, 0x00, 0x00,        // mov rbx, 0x2222
            0x0F, 0x0B,                                      // ud2: #UD on IST1
        ], at: SystemGuest.userCode)
        g.store64(0x1000 | 3, at: 0x5000 + 8)  // page 1: present, writable, supervisor
        g.write([
            0x58, 0xE7, 0x41,                                // pop rax (error code); out 0x41, eax
            0x48, 0x83, 0x04, 0x24, 0x01,                    // add qword [rsp], 1: past the HLT
            0x48, 0xCF,                                      // iretq
        ], at: SystemGuest.handlers + 0x200)
        g.write([
            0x58, 0xE7, 0x50,                                // pop rax (error code); out 0x50, eax
            0x0F, 0x20, 0xD0, 0xE7, 0x51,                    // mov rax, cr2; out 0x51, eax
            0x48, 0x83, 0x04, 0x24, 0x08,                    // add qword [rsp], 8: past the load
            0x48, 0xCF,                                      // iretq
        ], at: SystemGuest.handlers + 0x300)
        g.write([0x48, 0x89, 0xE0, 0xE7, 0x36, 0xF4], at: SystemGuest.handlers + 0x100)  // mov rax, rsp; out 0x36, eax; hlt
        g.gate64(6, handler: UInt64(SystemGuest.handlers + 0x100), ist: 1)
        g.gate64(13, handler: UInt64(SystemGuest.handlers + 0x200))
        g.gate64(14, handler: UInt64(SystemGuest.handlers + 0x300), type: 0xF)
        return g
    }

    @Test func userFaultsUseRSP0AndISTStacksAndIRETQReturns() throws {
        let steps = try Self.userFaults().expectSameOnHostAndSoftCPU()
        #expect(steps.map(\.exit) == [
            "io out 0x41 size 4 value 0x0",
            "io out 0x50 size 4 value 0x5",
            "io out 0x51 size 4 value 0x1000",
            "io out 0x36 size 4 value 0xafd8",
            "halt",
        ])
        #expect(steps.first?.registers.rsp == SystemGuest.kernelStack - 40, "SS, RSP, RFLAGS, CS, RIP after the error code")
        #expect(steps.first?.special.ss.selector == 0)
    }


    /// 32-bit user code in compatibility mode faulting into the 64-bit kernel.
    @Test func compatibilityModeUserFaultsReachTheLongModeKernel() throws {
        let kernel = Self.enterUser(codeSelector: 0x23)
        let user: [UInt8] = [
            0xB8, 0x11, 0x11, 0x00, 0x00,                    // mov eax, 0x1111
            0xF4,                                            // hlt: #GP(0)
            0xA1, 0x00, 0x10, 0x00, 0x00,                    // mov eax, [0x1000]: #PF
            0x90, 0x90, 0x90,                                // (the #PF handler skips 8 bytes)
            0x0F, 0x0B,                                      // ud2
        ]
        let steps = try Self.userFaults(userCode: user, kernelCode: kernel).expectSameOnHostAndSoftCPU()
        #expect(steps.last?.exit == "halt")
    }
}
