import Testing
@testable import X86

/// What may run inside a cached block: SSSE3 instructions go on in their
/// block, and blocks run while an event waits that the CPU blocks, stopping
/// at the first boundary where it could be taken. Each `Machine.run` is also
/// made without the cache, and the two must agree.
@Suite("X86 cached block flow")
struct CachedBlockFlowTests {
    /// cli; mov cx, 100; l: dec cx; jnz l; then `enable`; nop; nop; hlt (real mode, at 0x1000).
    static func waitingProgram(enable: [UInt8]) -> [UInt8] {
        [0xFA, 0xB9, 0x64, 0x00, 0x49, 0x75, 0xFD] + enable + [0x90, 0x90, hlt]
    }

    @Test func waitingInterruptIsTakenAfterTheShadowOfSTIThatEndsALoopRunWithInterruptsOff() {
        let m = Machine(code: Self.waitingProgram(enable: [0xFB]))  // sti at 0x1007
        m.cpu.waitingEvents = [.interrupt]
        #expect(m.run() == .instructionLimit)
        // STI's shadow covers the first NOP (0x1008): the boundary is after it.
        #expect(m.cpu.state.rip == 0x1009)
        #expect(m[.rcx] & 0xFFFF == 0)
    }

    @Test func waitingInterruptIsTakenRightAfterPOPFSetsIF() {
        // push 0x0202; popf at 0x100A
        let m = Machine(code: Self.waitingProgram(enable: [0x68, 0x02, 0x02, 0x9D]))
        m.cpu.waitingEvents = [.interrupt]
        #expect(m.run() == .instructionLimit)
        #expect(m.cpu.state.rip == 0x100B)
        #expect(m[.rcx] & 0xFFFF == 0)
    }

    @Test func waitingInterruptWithInterruptsOffLetsTheProgramRunToItsEnd() {
        let m = Machine(code: Self.waitingProgram(enable: [0x90]))
        m.cpu.waitingEvents = [.interrupt]
        #expect(m.run() == .halt)
        #expect(m[.rcx] & 0xFFFF == 0)
    }

    @Test func ssse3InstructionsRunInsideABlock() {
        // A loop of PSHUFB (reversing the bytes of xmm0 each time), PALIGNR, PABSD and
        // PHADDW between ALU instructions, then the low dword of xmm0 and xmm2 in EAX, EDX.
        let m = Machine(code: [
            0x66, 0xB8, 0x0F, 0x0E, 0x0D, 0x0C,  // mov eax, 0x0C0D0E0F
            0x66, 0x0F, 0x6E, 0xC8,              // movd xmm1, eax
            0x66, 0x0F, 0x38, 0x00, 0xC1,        // pshufb xmm0, xmm1 (xmm0 = 0: stays 0; sets up nothing)
            0x66, 0xB8, 0x04, 0x03, 0x02, 0x01,  // mov eax, 0x01020304
            0x66, 0x0F, 0x6E, 0xC0,              // movd xmm0, eax
            0x66, 0x0F, 0x70, 0xC8, 0x1B,        // pshufd xmm1, xmm0, 0x1b
            0xB9, 0x05, 0x00,                    // mov cx, 5
            0x66, 0x0F, 0x38, 0x00, 0xC1,        // l: pshufb xmm0, xmm1
            0x66, 0x0F, 0x3A, 0x0F, 0xD0, 0x03,  // palignr xmm2, xmm0, 3
            0x66, 0x0F, 0x38, 0x1E, 0xDA,        // pabsd xmm3, xmm2
            0x66, 0x0F, 0x38, 0x01, 0xD3,        // phaddw xmm2, xmm3
            0x43,                                // inc bx
            0x49,                                // dec cx
            0x75, 0xE7,                          // jnz l
            0x66, 0x0F, 0x7E, 0xC0,              // movd eax, xmm0
            0x66, 0x0F, 0x7E, 0xD2,              // movd edx, xmm2
            hlt,
        ])
        m.cpu.state.cr4 |= ControlBits.cr4OSFXSR
        #expect(m.run() == .halt)
        #expect(m[.rbx] & 0xFFFF == 5)
        #expect(m.cpu.state.fpu.xmm(1) != 0)
    }

    @Test func swapgsInsideALoopOfCachedBlocksUsesTheSwappedBase() {
        // mov ecx, 3; l: swapgs; mov rax, gs:[0x2000]; add rdx, rax; swapgs; mov rax, gs:[0x2000]; add rbx, rax;
        // dec ecx; jnz l; hlt. GS.base 0, KERNEL_GS_BASE 0x100: [0x2000] = 1, [0x2100] = 16.
        let m = Machine(.long64, code: [0xB9, 0x03, 0x00, 0x00, 0x00,
                                        0x0F, 0x01, 0xF8,
                                        0x65, 0x48, 0x8B, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00,
                                        0x48, 0x01, 0xC2,
                                        0x0F, 0x01, 0xF8,
                                        0x65, 0x48, 0x8B, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00,
                                        0x48, 0x01, 0xC3,
                                        0xFF, 0xC9, 0x75, 0xDE, hlt])
        m.cpu.state.msrs.kernelGSBase = 0x100
        m.store64(0x2000, 1)
        m.store64(0x2100, 16)
        #expect(m.run() == .halt)
        #expect(m[.rdx] == 48)
        #expect(m[.rbx] == 3)
    }
}
