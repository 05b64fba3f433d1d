import Foundation
import GuestMemory
import KVM
import Testing
@testable import X86

/// One checkpoint of a differential program: code ending in `out 0xF0, al`,
/// and the flags to ignore when comparing after it.
struct Checkpoint {
    var code: [UInt8]
    var undefined: UInt64
    var label: String
}

/// Code for the host's KVM emulator and the software CPU, in 16-bit (real
/// mode) or 32-bit (flat protected mode) code: `code32` decides which
/// widths need the 66 and 67 prefixes.
struct DifferentialProgram {
    static let out: [UInt8] = [0xE6, 0xF0]
    let code32: Bool

    func operandPrefix(_ width: Int) -> [UInt8] {
        (width == 16 && code32) || (width == 32 && !code32) ? [0x66] : []
    }
    var addressPrefix32: [UInt8] { code32 ? [] : [0x67] }
    /// mov r32, imm32 (B8+r).
    func mov32(_ register: UInt8, _ v: UInt64) -> [UInt8] { operandPrefix(32) + [0xB8 + register] + Self.le32(v) }
    static func le32(_ v: UInt64) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> UInt64($0 * 8)) } }

    /// ALU checkpoints with edge-biased operands at 8, 16 and 32 bits,
    /// on registers and on SIB-addressed memory in the data area.
    func generate(seed: UInt64, count: Int) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        let aluNames = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
        for _ in 0..<count {
            let width = [8, 16, 32][Int(rng.next() % 3)]
            let prefix = operandPrefix(width)
            let a = rng.operand(width), b = rng.operand(width)
            let carry: [UInt8] = rng.next() & 1 == 0 ? [0xF8] : [0xF9]
            var code = mov32(0, a) + mov32(3, b) + carry
            let kind = Int(rng.next() % 9)
            var undefined = UndefinedFlags.none
            var label = ""
            switch kind {
            case 0, 1, 2:  // ALU r/m, reg (01 D8 = op eAX, eBX)
                let op = Int(rng.next() % 8)
                let opcode = UInt8(op << 3) | (width == 8 ? 0 : 1)
                code += prefix + [opcode, 0xD8]
                if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                label = "\(aluNames[op])\(width)"
            case 3:  // INC/DEC/NEG/NOT via FE/FF/F6/F7 on eAX
                let which = Int(rng.next() % 4)
                let byteOp = width == 8
                switch which {
                case 0: code += prefix + [byteOp ? 0xFE : 0xFF, 0xC0]; label = "inc\(width)"
                case 1: code += prefix + [byteOp ? 0xFE : 0xFF, 0xC8]; label = "dec\(width)"
                case 2: code += prefix + [byteOp ? 0xF6 : 0xF7, 0xD8]; label = "neg\(width)"
                default: code += prefix + [byteOp ? 0xF6 : 0xF7, 0xD0]; label = "not\(width)"
                }
            case 4:  // shifts and rotates by CL
                let op = Int(rng.next() % 8)
                let count = Int(rng.next() % 40)
                code += mov32(1, UInt64(count)) + prefix + [width == 8 ? 0xD2 : 0xD3, UInt8(0xC0 | (op << 3))]
                let masked = count & 31
                undefined = op < 4 ? UndefinedFlags.rotate(count: masked) : UndefinedFlags.shift(count: masked, width: width)
                label = "shift/\(op) \(width) by \(count)"
            case 5:  // MUL/IMUL one operand
                let signed = rng.next() & 1 == 0
                code += mov32(2, rng.operand(32)) + prefix + [width == 8 ? 0xF6 : 0xF7, signed ? 0xEB : 0xE3]
                undefined = UndefinedFlags.multiply
                label = signed ? "imul\(width)" : "mul\(width)"
            case 6:  // DIV with a divisor that cannot overflow: eDX = 0 (AH = 0) and divisor != 0
                let divisor = b == 0 ? 3 : b
                code = mov32(0, width == 8 ? a & 0xFF : a) + mov32(3, divisor) + mov32(2, 0) + carry
                code += prefix + [width == 8 ? 0xF6 : 0xF7, 0xF3]
                undefined = UndefinedFlags.divide
                label = "div\(width)"
            case 7:  // op [ebx + esi*2 + d8], eAX with EBX in the data area
                let op = Int(rng.next() % 8)
                let base = 0x2000 + rng.next() % 0x100, index = rng.next() % 0x40
                let d8 = UInt8(rng.next() % 0x40)
                code += mov32(3, base) + mov32(6, index) + carry
                code += addressPrefix32 + prefix + [UInt8(op << 3) | (width == 8 ? 0 : 1), 0x44, 0x73, d8]
                if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                label = "\(aluNames[op])\(width) [ebx+esi*2+\(d8)] base \(base) index \(index)"
            default:  // IMUL r, r/m, imm8 and TEST
                if rng.next() & 1 == 0 || width == 8 {
                    code += prefix + [width == 8 ? 0x84 : 0x85, 0xD8]
                    undefined = UndefinedFlags.logic
                    label = "test\(width)"
                } else {
                    code += prefix + [0x6B, 0xC3, UInt8(truncatingIfNeeded: rng.next())]
                    undefined = UndefinedFlags.multiply
                    label = "imul3 \(width)"
                }
            }
            points.append(Checkpoint(code: code + Self.out, undefined: undefined, label: label + " a=\(a) b=\(b)"))
        }
        return points
    }
}

@Suite("X86 against the host's KVM emulator", .enabled(if: HostKVM.isAvailable))
struct DifferentialTests {
    static let stubAddress = 0xF00
    static let codeAddress = 0x1000
    /// Memory compared after every checkpoint: the data area and the stack.
    static let comparedRanges = [0x2000..<0x2200, 0x7F00..<0x8000]

    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6])
    func realModeArithmeticMatchesHost(seed: UInt64) throws {
        try compare(DifferentialProgram(code32: false).generate(seed: seed, count: 80), seed: seed)
    }

    @Test(arguments: [UInt64(21), 22, 23, 24])
    func flatProtectedModeArithmeticMatchesHost(seed: UInt64) throws {
        try compare(DifferentialProgram(code32: true).generate(seed: seed, count: 80), seed: seed, setup: .protected32)
    }

    @Test(arguments: [UInt64(31), 32, 33, 34])
    func longModeArithmeticMatchesHost(seed: UInt64) throws {
        try compare(LongModeProgram.generate(seed: seed, count: 80), seed: seed, setup: .long64)
    }

    @Test(arguments: [UInt64(11), 12, 13, 14, 15, 16])
    func realModeMemoryStackStringAndBranchCodeMatchesHost(seed: UInt64) throws {
        try compare(MixedProgram.generate(seed: seed, count: 80), seed: seed)
    }

    /// Runs the checkpoints on the host and on the software CPU in lock
    /// step, comparing GPRs, RIP, flags and memory at every `out`.
    func compare(_ points: [Checkpoint], seed: UInt64, setup: Machine.Setup = .real) throws {
        let program = points.flatMap(\.code) + [0xF4]
        var rng = SplitMix64(state: seed ^ 0xDA7A)
        let data = (0..<0x200).map { _ in UInt8(truncatingIfNeeded: rng.next()) }

        // The host: warm up through a stub `out`, since state set before the
        // first KVM_RUN can be lost on kvm_pvm; then start the program.
        let vm = try Hypervisor(accelerator: .host).createVM()
        let memory = try GuestMemoryRegion(size: 0x10000)
        try memory.write(DifferentialProgram.out, at: Self.stubAddress)
        try memory.write(program, at: Self.codeAddress)
        try memory.write(data, at: 0x2000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        let vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.specialRegisters()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.setSpecialRegisters(sregs)
        var registers = Registers()
        registers.rip = UInt64(Self.stubAddress)
        registers.rsp = 0x8000
        try vcpu.setRegisters(registers)
        guard case .io = try vcpu.run() else { Issue.record("warm-up did not exit on out"); return }
        if setup != .real {
            // Flat 4 GiB segments straight into the hidden state: no GDT is read.
            var sregs = try vcpu.specialRegisters()
            sregs.cr0 |= 1
            sregs.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, db: setup == .protected32,
                               l: setup == .long64, g: true)
            let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, db: true, g: true)
            sregs.ds = data; sregs.es = data; sregs.ss = data; sregs.fs = data; sregs.gs = data
            if setup == .long64 {
                // Identity-map the first 2 MiB with one large page (tables at 0x9000).
                try memory.store(UInt64(0xA000 | 3), at: 0x9000)
                try memory.store(UInt64(0xB000 | 3), at: 0xA000)
                try memory.store(UInt64(0x83), at: 0xB000)
                sregs.cr3 = 0x9000
                sregs.cr4 |= 0x20
                sregs.efer |= 0x500
                sregs.cr0 |= 0x8000_0000
            }
            try vcpu.setSpecialRegisters(sregs)
        }
        registers.rip = UInt64(Self.codeAddress)
        try vcpu.setRegisters(registers)

        let machine = Machine(setup, code: program)
        let hostMode = try vcpu.specialRegisters()
        #expect(hostMode.cs.db == (setup == .protected32) && hostMode.cs.l == (setup == .long64))
        #expect((hostMode.cr0 & 1 == 1) == (setup != .real))
        #expect(machine.cpu.state.mode == [.real: CPUMode.real, .protected32: .protected32, .long64: .long64][setup])
        machine.write(data, at: 0x2000)
        machine[.rsp] = 0x8000

        for (index, point) in points.enumerated() {
            let hostExit = try vcpu.run()
            guard case .io(let io) = hostExit, io.port == 0xF0 else {
                Issue.record("host exit \(hostExit) at checkpoint \(index) (\(point.label))")
                return
            }
            let softExit = machine.run(maxInstructions: 100_000)
            guard case .io(let softIO) = softExit, softIO.port == 0xF0 else {
                Issue.record("soft exit \(softExit) at checkpoint \(index) (\(point.label))")
                return
            }
            let host = try vcpu.registers()
            let soft = machine.cpu.state
            let hostGPRs = [host.rax, host.rcx, host.rdx, host.rbx, host.rsp, host.rbp, host.rsi, host.rdi,
                            host.r8, host.r9, host.r10, host.r11, host.r12, host.r13, host.r14, host.r15]
            let softGPRs = (0..<16).map { soft.gpr[$0] }
            #expect(softGPRs == hostGPRs, "GPRs after checkpoint \(index): \(point.label)")
            #expect(soft.rip == host.rip, "RIP after checkpoint \(index): \(point.label)")
            let compared = (RFLAGS.arithmetic | RFLAGS.df) & ~point.undefined
            #expect(soft.rflags & compared == host.rflags & compared,
                    "flags after checkpoint \(index): \(point.label): soft \(String(soft.rflags & compared, radix: 16)) host \(String(host.rflags & compared, radix: 16))")
            for range in Self.comparedRanges {
                let hostBytes = try memory.read(at: range.lowerBound, count: range.count)
                let softBytes = range.map { machine.load8(UInt64($0)) }
                let firstDifference = softBytes.indices.first { softBytes[$0] != hostBytes[$0] }
                #expect(firstDifference == nil,
                        "memory at \(range.lowerBound + (firstDifference ?? 0)) after checkpoint \(index): \(point.label)")
            }
            // Undefined flags (and bytes) would otherwise carry a difference
            // into the next checkpoints, whose instructions keep or read them.
            machine.cpu.state.rflags = (soft.rflags & ~RFLAGS.arithmetic) | (host.rflags & RFLAGS.arithmetic)
        }
    }
}
