import Testing
@testable import X86

@Suite("X86 robustness")
struct RobustnessTests {
    /// Random bytes and registers in every mode: whatever they decode to, the
    /// CPU must end each run with an exit (never a trap of the process), and
    /// a fault must leave RIP at an instruction inside the code it ran.
    /// With delivery on, faults go through whatever IDT the random state
    /// points at: still an exit, a shutdown or an emulation failure, never a trap.
    @Test(arguments: [Machine.Setup.real, .protected32, .long64], [false, true])
    func randomCodeAlwaysEndsInAnExit(setup: Machine.Setup, delivery: Bool) {
        var rng = SplitMix64(state: 0x5EED + UInt64(setup.hashValue & 0xFF))
        var exits: [String: Int] = [:]
        // One machine, restored before each run: its first 80 KiB hold the
        // code and the page tables, which random stores may have changed.
        let m = Machine(setup, code: [])
        let initial = m.cpu.state
        let snapshot = (0..<0x14000).map { m.load8(UInt64($0)) }
        for _ in 0..<3000 {
            let code = (0..<32).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            m.write(snapshot, at: 0)
            m.write(code, at: Machine.codeAddress)
            m.cpu = X86CPU(memory: m.cpu.memory, state: initial)
            m.cpu.deliversExceptions = delivery
            for register in GPR.allCases where register != .rsp {
                // Small values half the time, so that memory operands often land in RAM.
                m[register] = rng.next() & 1 == 0 ? rng.next() & 0xFFFF : rng.next()
            }
            for _ in 0..<4 {
                let exit = m.cpu.run(maxInstructions: 64)
                switch exit {
                case .io(let io) where !io.isWrite && m.cpu.hasStringInput:
                    let bytes = (0..<io.size * io.count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    bytes.withUnsafeBytes { m.cpu.completeStringInput($0) }
                case .io(let io) where !io.isWrite: m.cpu.completeInput(rng.next())
                case .mmio(let access) where !access.isWrite: m.cpu.completeMMIORead(address: access.address, value: rng.next())
                default: break
                }
                exits[String(describing: exit).prefix(while: { $0 != "(" }).description, default: 0] += 1
            }
        }
        // The runs reached more than one kind of exit (a sanity check that code ran at all).
        #expect(exits.count > 2, "\(exits)")
    }
}
