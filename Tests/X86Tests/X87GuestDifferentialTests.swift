import Testing
import KVM
@testable import X86

/// x87 code at CPL 3 in a 64-bit guest, run by the host's /dev/kvm (which
/// runs it on the real CPU and delivers its faults to the guest) and by the
/// soft CPU: #MF at the next waiting instruction after an unmasked
/// exception, and FIP, FOP and FDP as FNSTENV stores them at the guest's
/// own addresses. (#NM for CR0.TS and CR0.EM is checked against the SDM
/// only: kvm_pvm lets x87 code at CPL 3 run whatever the guest's CR0 says.)
@Suite("x87 faults and pointers in a guest against the host", .enabled(if: HostKVM.isAvailable))
struct X87GuestDifferentialTests {
    static let data = SystemGuest.data

    /// The handlers: #MF (16) reports the user's EAX (its FNSTSW) on port
    /// 0x16 and the faulting RIP on 0x17 and skips a one-byte FWAIT; #GP
    /// (13) reports its error code on 0x41 and halts. The handlers use
    /// no x87 instruction: the host's KVM cannot emulate one at CPL 0.
    static func guest(user: [UInt8]) -> SystemGuest {
        var g = SystemGuest.long64(code: PrivilegeDifferentialTests.enterUser64)
        g.special.cr0 |= ControlBits.cr0NE
        g.write(user, at: SystemGuest.userCode)
        let handlers = SystemGuest.handlers
        g.write([
            0xE7, 0x16,                    // out 0x16, eax
            0x48, 0x8B, 0x04, 0x24,        // mov rax, [rsp]
            0xE7, 0x17,                    // out 0x17, eax
            0x48, 0x83, 0x04, 0x24, 0x01,  // add qword [rsp], 1
            0x48, 0xCF,                    // iretq
        ], at: handlers + 0x400)
        g.write([0x58, 0xE7, 0x41, 0xF4], at: handlers + 0x200)  // pop rax; out 0x41, eax; hlt
        g.gate64(16, handler: UInt64(handlers + 0x400))
        g.gate64(13, handler: UInt64(handlers + 0x200))
        return g
    }

    static func absolute(_ bytes: [UInt8], reg: UInt8, _ address: Int) -> [UInt8] {
        bytes + [0x04 | reg << 3, 0x25] + withUnsafeBytes(of: UInt32(address).littleEndian, Array.init)
    }

    /// ZE unmasked, 1/0: the exception waits for FWAIT; then loads, the
    /// transcendentals and stores, each leaving its pointers, stored by
    /// FNSTENV and FXSAVE64.
    static let userCode: [UInt8] = {
        var code: [UInt8] = [0xDB, 0xE3]  // fninit
        code += absolute([0xD9], reg: 5, data)  // fldcw [data]
        code += [0xD9, 0xE8, 0xD9, 0xEE, 0xDE, 0xF9]  // fld1; fldz; fdivp
        code += [0xDF, 0xE0, 0x9B]  // fnstsw ax; fwait: #MF
        code += absolute([0xD9], reg: 6, data + 0x20)  // fnstenv [data + 0x20]
        code += [0xDB, 0xE2]  // fnclex
        code += absolute([0xDD], reg: 0, data + 8)  // fld qword [data + 8]
        code += [0xD9, 0xEB, 0xD9, 0xFE, 0xDE, 0xC9]  // fldpi; fsin; fmulp
        code += absolute([0xDD], reg: 3, data + 0x10)  // fstp qword [data + 0x10]
        code += absolute([0xDF], reg: 7, data + 0x18)  // fistp qword [data + 0x18]
        code += absolute([0xD9], reg: 6, data + 0x40)  // fnstenv [data + 0x40]
        code += absolute([0x48, 0x0F, 0xAE], reg: 0, data + 0x100)  // fxsave64 [data + 0x100]
        return code + [0xF4]  // hlt: #GP
    }()

    static func prepared(_ g: SystemGuest) -> SystemGuest {
        var g = g
        g.write([0x7B, 0x03], at: data)  // FCW 037B: ZE unmasked
        g.write(withUnsafeBytes(of: Double(3.25).bitPattern.littleEndian, Array.init), at: data + 8)
        return g
    }

    /// FXSAVE's MXCSR_MASK describes the CPU (the host's has its
    /// misaligned-SSE bit); the soft CPU's is checked elsewhere.
    static let mxcsrMask = data + 0x100 + 28..<data + 0x100 + 32

    /// FCS and FDS in the FNSTENV images: the host saves and restores the
    /// guest's FPU in the 64-bit XSAVE layout at every exit, which has no
    /// room for them, so FCS reads 0 after one (the first image); FDS is
    /// the selector the real CPU had in DS, and kvm_pvm runs guest user
    /// code with the host's DS (0), not the guest's.
    static let selectors = [data + 0x30..<data + 0x32, data + 0x38..<data + 0x3A, data + 0x58..<data + 0x5A]

    /// FOP, FIP and FDP in the FXSAVE image: the host, an AMD CPU, stores
    /// them only while an exception is pending; the soft CPU always does,
    /// as Intel's do (X87ControlTests says the same of FXSAVE).
    static let fxsavePointers = data + 0x106..<data + 0x118

    @Test func unmaskedExceptionWaitsForTheNextWaitingInstruction() throws {
        let steps = try Self.prepared(Self.guest(user: Self.userCode))
            .expectSameOnHostAndSoftCPU(ignoringMemory: [Self.mxcsrMask, Self.fxsavePointers] + Self.selectors)
        #expect(steps.map(\.exit).first?.hasPrefix("io out 0x16") == true, "\(steps)")
    }
}
