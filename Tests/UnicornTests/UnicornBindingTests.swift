import Testing
import X86OracleSupport

@Suite("unicorn binding", .enabled(if: UnicornLibrary.isAvailable, Comment(rawValue: UnicornLibrary.skipMessage)))
struct UnicornBindingTests {
    @Test func stepsOneInstructionAndReportsADivideErrorInEachMode() throws {
        for mode in [Unicorn.Mode.real16, .protected32, .long64] {
            let memory = UnsafeMutableRawPointer.allocate(byteCount: 0x10000, alignment: 4096)
            defer { memory.deallocate() }
            memory.initializeMemory(as: UInt8.self, repeating: 0, count: 0x10000)
            let code: [UInt8] = [0x01, 0xD8, 0xF7, 0xF1]  // add eax, ebx (ax, bx in 16-bit); div ecx
            for (i, byte) in code.enumerated() { memory.storeBytes(of: byte, toByteOffset: 0x1000 + i, as: UInt8.self) }
            let uc = try Unicorn(mode: mode, memory: memory, size: 0x10000)
            let regs = mode == .long64 ? UnicornRegister.gpr64 : UnicornRegister.gpr32
            try uc.write(regs[0], 5)
            try uc.write(regs[3], 7)
            try uc.write(regs[1], 0)
            #expect(uc.step(at: 0x1000, until: 0x1002) == .completed)
            #expect(uc.read(regs[0]) == 12)
            let ip = uc.read(mode == .long64 ? .rip : .eip)
            #expect(ip == 0x1002)
            #expect(uc.step(at: ip, until: ip + 2) == .exception(vector: 0))
        }
    }
}
