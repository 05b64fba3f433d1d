import Testing
@testable import X86

@Suite("x87, MMX and SSE robustness")
struct SIMDRobustnessTests {
    /// Random x87 and 0F-map SIMD instructions (with random mandatory
    /// prefixes, REX, ModRM and immediates) from random FPU, MXCSR, CR0 and
    /// CR4 states, in every mode: whatever they do, each run ends in an exit,
    /// never in a trap of the process.
    @Test(arguments: [Machine.Setup.real, .protected32, .long64])
    func randomSIMDCodeAlwaysEndsInAnExit(setup: Machine.Setup) {
        var random = SplitMix(seed: 0xF00D + UInt64(setup.hashValue & 0xFF))
        let m = Machine(setup, code: [])
        let initial = m.cpu.state
        let snapshot = (0..<0x14000).map { m.load8(UInt64($0)) }
        var exits: [String: Int] = [:]
        var moved = 0
        // Mostly the mandatory prefixes; LOCK, a segment and an address-size override sometimes.
        let prefixes: [UInt8] = [0x66, 0xF2, 0xF3, 0x66, 0xF2, 0xF3, 0x66, 0xF0, 0x2E, 0x67]
        for _ in 0..<3000 {
            var code: [UInt8] = []
            for _ in 0..<4 {
                if random.next() % 2 == 0 { code.append(prefixes[Int(random.next() % UInt64(prefixes.count))]) }
                if random.next() % 3 == 0 { code.append(prefixes[Int(random.next() % UInt64(prefixes.count))]) }
                if setup == .long64 && random.next() % 2 == 0 { code.append(0x40 | UInt8(random.next() % 16)) }
                switch random.next() % 5 {
                case 0: code += [0xD8 + UInt8(random.next() % 8)]
                case 1: code += [0x9B]
                case 2: code += [0x0F, random.next() % 2 == 0 ? 0x38 : 0x3A, UInt8(random.next() % 32)]
                default: code += [0x0F, [0x0D, 0x10, 0x28, 0x50, 0x60, 0x70, 0xAE, 0xC2, 0xD0, 0xE0, 0xF0][Int(random.next() % 11)]
                                  + UInt8(random.next() % 16)]
                }
                // ModRM: memory operands near RSI/RBX (small values) half the time.
                code += (0..<6).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            }
            m.write(snapshot, at: 0)
            m.write(code + [hlt], at: Machine.codeAddress)
            var state = initial
            for register in GPR.allCases where register != .rsp {
                state[register] = random.next() % 2 == 0 ? random.next() & 0x7FF0 : random.next()
            }
            // The FPU usable most of the time, so that the instructions run.
            if random.next() % 8 == 0 { state.cr0 |= random.next() & (ControlBits.cr0MP | ControlBits.cr0EM | ControlBits.cr0TS) }
            state.cr0 |= random.next() & ControlBits.cr0NE
            state.cr4 |= random.next() % 8 == 0 ? 0 : ControlBits.cr4OSFXSR
            state.cr4 |= random.next() & ControlBits.cr4OSXMMEXCPT
            state.fpu.mxcsr = UInt32(truncatingIfNeeded: random.next()) & 0xFFFF | (random.next() % 2 == 0 ? 0x1F80 : 0)
            state.fpu.fcw = UInt16(truncatingIfNeeded: random.next())
            state.fpu.fsw = UInt16(truncatingIfNeeded: random.next()) & (random.next() % 2 == 0 ? 0x7F7F : 0xFFFF)
            state.fpu.tags = UInt8(truncatingIfNeeded: random.next())
            for i in 0..<16 { state.fpu.setXMM(i, EdgeOperands.vector(&random, double: random.next() % 2 == 0)) }
            for i in 0..<8 { state.fpu.setPhysical(i, UInt128(random.next()) << 64 | UInt128(random.next())) }
            m.cpu = X86CPU(memory: m.cpu.memory, state: state)
            for _ in 0..<4 {
                let before = m.cpu.state.rip
                let exit = m.cpu.run(maxInstructions: 16)
                if m.cpu.state.rip != before { moved += 1 }
                switch exit {
                case .io(let io) where !io.isWrite: m.cpu.completeInput(random.next())
                case .mmio(let access) where !access.isWrite: m.cpu.completeMMIORead(address: access.address, value: random.next())
                default: break
                }
                exits[String(describing: exit).prefix(while: { $0 != "(" }).description, default: 0] += 1
            }
        }
        // Instructions ran (RIP moved) in a good share of the runs, not only faults.
        #expect(exits.count > 2 && moved > 600, "\(exits), RIP moved in \(moved) runs")
    }
}
