import Testing
@testable import X86
import X86OracleSupport

/// Opcodes X86 implements that the unicorn comparison leaves out, and why.
/// Everything else X86 executes without #UD must have a form in `Form.all`.
enum NotCompared {
    /// (opcode bytes, opcode extension or nil for all, reason).
    static let entries: [(opcode: [UInt8], digit: Int?, reason: String)] = [
        ([0x6C], nil, "INS: port I/O, an exit on X86"), ([0x6D], nil, "INS: port I/O"),
        ([0x6E], nil, "OUTS: port I/O"), ([0x6F], nil, "OUTS: port I/O"),
        ([0xE4], nil, "IN: port I/O"), ([0xE5], nil, "IN: port I/O"), ([0xE6], nil, "OUT: port I/O"),
        ([0xE7], nil, "OUT: port I/O"), ([0xEC], nil, "IN: port I/O"), ([0xED], nil, "IN: port I/O"),
        ([0xEE], nil, "OUT: port I/O"), ([0xEF], nil, "OUT: port I/O"),
        ([0xF4], nil, "HLT: an exit on X86"),
        ([0xCC], nil, "INT3: unicorn stops at an interrupt without delivering it"),
        ([0xCD], nil, "INT n: unicorn stops at an interrupt without delivering it"),
        ([0xCE], nil, "INTO: unicorn stops at an interrupt without delivering it"),
        ([0xF1], nil, "INT1: unicorn stops at an interrupt without delivering it"),
        ([0xCF], nil, "IRET: needs a delivered interrupt's frame (system tests compare it with the host)"),
        ([0x9A], nil, "CALL far: system (call gates, privilege), compared with the host"),
        ([0xCA], nil, "RET far: system (privilege), compared with the host"),
        ([0xCB], nil, "RET far: system (privilege), compared with the host"),
        ([0xFF], 3, "CALL far m16:z: system, compared with the host"),
        ([0xF6], 1, "TEST Eb,Ib (F6 /1): undocumented alias; the SDM's opcode map leaves Group 3 /1 blank and unicorn raises #UD"),
        ([0xF7], 1, "TEST Ev,Iz (F7 /1): undocumented alias; the SDM's opcode map leaves Group 3 /1 blank and unicorn raises #UD"),
        ([0x0F, 0x00], nil, "SLDT STR LLDT LTR VERR VERW: system"),
        ([0x0F, 0x01], nil, "SGDT SIDT LGDT LIDT SMSW LMSW INVLPG SWAPGS RDTSCP...: system"),
        ([0x0F, 0x02], nil, "LAR: system"), ([0x0F, 0x03], nil, "LSL: system"),
        ([0x0F, 0x05], nil, "SYSCALL: system"), ([0x0F, 0x06], nil, "CLTS: system"), ([0x0F, 0x07], nil, "SYSRET: system"),
        ([0x0F, 0x08], nil, "INVD: system"), ([0x0F, 0x09], nil, "WBINVD: system"),
        ([0x0F, 0x20], nil, "MOV r, CR: system"), ([0x0F, 0x21], nil, "MOV r, DR: system"),
        ([0x0F, 0x22], nil, "MOV CR, r: system"), ([0x0F, 0x23], nil, "MOV DR, r: system"),
        ([0x0F, 0x30], nil, "WRMSR: system"), ([0x0F, 0x31], nil, "RDTSC: the time differs"),
        ([0x0F, 0x32], nil, "RDMSR: system"), ([0x0F, 0x33], nil, "RDPMC: system"),
        ([0x0F, 0x34], nil, "SYSENTER: system"), ([0x0F, 0x35], nil, "SYSEXIT: system"),
        ([0x0F, 0xA2], nil, "CPUID: the leaves are SoftKVM's, not unicorn's"),
        ([0x0F, 0xAA], nil, "RSM: system"),
        ([0x9B], nil, "WAIT: x87"),
        ([0xD8], nil, "x87"), ([0xD9], nil, "x87"), ([0xDA], nil, "x87"), ([0xDB], nil, "x87"),
        ([0xDC], nil, "x87"), ([0xDD], nil, "x87"), ([0xDE], nil, "x87"), ([0xDF], nil, "x87"),
    ]

    /// SSE and later maps: the SSE part's, outside the general-purpose set.
    static func isVector(_ opcode: [UInt8]) -> Bool {
        guard opcode.count == 2, opcode[0] == 0x0F else { return false }
        switch opcode[1] {
        case 0x10...0x17, 0x28...0x2F, 0x50...0x7F, 0xC2...0xC6, 0xD0...0xFF, 0x38, 0x3A, 0x0E, 0x0F, 0x77, 0xAE:
            return true
        default:
            return false
        }
    }

    static func reason(_ opcode: [UInt8], digit: Int?) -> String? {
        if isVector(opcode) { return "SSE" }
        return entries.first { $0.opcode == opcode && ($0.digit == nil || $0.digit == digit) }?.reason
    }
}

@Suite("The unicorn comparison's coverage")
struct CoverageTests {
    /// Walks the one-byte and 0F opcode maps (every opcode extension, with a
    /// register and a memory operand) in each mode: every opcode X86
    /// executes without #UD has a form in the table or a reason in
    /// `NotCompared`, so that an instruction cannot land untested.
    @Test(arguments: CodeMode.allCases)
    func everyImplementedOpcodeHasAForm(mode: CodeMode) {
        let prefixes: Set<UInt8> = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x0F]
        var opcodes: [[UInt8]] = (0...0xFF).filter { !prefixes.contains(UInt8($0)) }.map { [UInt8($0)] }
        if mode == .long64 { opcodes.removeAll { (0x40...0x4F).contains($0[0]) } }
        opcodes += (0...0xFF).map { [0x0F, UInt8($0)] }
        var uncovered: [String] = []
        var implemented = 0
        for opcode in opcodes {
            let probe = X86Probe(mode: mode)
            let digits: [Int?] = probe.hasModRM(opcode) ? (0..<8).map { $0 } : [nil]
            for digit in digits {
                let runs = digit == nil
                    ? [opcode + [UInt8](repeating: 0, count: 10)]
                    : [probe.registerForm(opcode, digit: digit!), probe.memoryForm(opcode, digit: digit!)]
                guard runs.contains(where: { !probe.raisesUD($0) }) else { continue }
                implemented += 1
                if Form.covers(opcode, digit: digit, mode: mode) || NotCompared.reason(opcode, digit: digit) != nil { continue }
                uncovered.append(opcode.map { String($0, radix: 16).leftPadded(2) }.joined(separator: " ")
                                 + (digit.map { " /\($0)" } ?? ""))
            }
        }
        #expect(implemented > 200, "the walk found only \(implemented) implemented opcodes in \(mode)")
        #expect(uncovered.isEmpty, "implemented in \(mode) but in no unicorn form (add a line to Form.all) nor in NotCompared: \(uncovered)")
    }
}

extension Form {
    /// Whether some form of the table (existing in `mode`) encodes `opcode` with opcode extension `digit`.
    static func covers(_ opcode: [UInt8], digit: Int?, mode: CodeMode) -> Bool {
        all.contains { form in
            guard form.exists(in: mode) else { return false }
            switch form.operands {
            case .plusRegister:
                return form.opcode.count == opcode.count && form.opcode.dropLast() == opcode.dropLast()
                    && (form.opcode.last! ... form.opcode.last! + 7).contains(opcode.last!)
            case .digit(let d):
                return form.opcode == opcode && d == digit
            default:
                return form.opcode == opcode
            }
        }
    }
}

/// Runs single instructions on a bare X86 in one of the modes, to see
/// whether it raises #UD (that is, does not implement them).
struct X86Probe {
    let mode: CodeMode

    func hasModRM(_ opcode: [UInt8]) -> Bool {
        let cpu = X86CPU(memory: PhysicalMemory(ranges: []))
        return cpu.hasModRM(opcode.count == 2 ? 0x100 + Int(opcode[1]) : Int(opcode[0]))
    }

    func registerForm(_ opcode: [UInt8], digit: Int) -> [UInt8] {
        opcode + [UInt8(0xC1 | digit << 3)] + [UInt8](repeating: 0, count: 8)
    }

    /// [disp] at the data page.
    func memoryForm(_ opcode: [UInt8], digit: Int) -> [UInt8] {
        let modrm: [UInt8]
        switch mode {
        case .real: modrm = [UInt8(0x06 | digit << 3), 0x00, 0x00]
        case .protected32: modrm = [UInt8(0x05 | digit << 3)] + le(Layout.pages[3], 4)
        case .long64: modrm = [UInt8(0x04 | digit << 3), 0x25] + le(Layout.pages[3], 4)
        }
        return opcode + modrm + [UInt8](repeating: 0, count: 8)
    }

    /// Whether `bytes` (one instruction) raise #UD on a fresh X86 in `mode`.
    func raisesUD(_ bytes: [UInt8]) -> Bool {
        let memory = GuardedMemory(size: Layout.memorySize)
        let tables = GuardedMemory(size: 0x2000)
        var state = CPUState()
        for (index, segment) in Layout.segments(mode).enumerated() { state[segmentIndex: index] = segment }
        var ranges = [PhysicalRange(guestAddress: 0, size: UInt64(Layout.memorySize), host: memory.base)]
        if mode != .real {
            state.cr0 |= ControlBits.cr0PE
            state.gdtr = DescriptorTableRegister(base: Layout.gdt, limit: Layout.gdtLimit)
            for (index, descriptor) in Layout.descriptors.enumerated() { memory.store(descriptor, at: Int(Layout.gdt) + index * 8) }
        }
        if mode == .long64 {
            // The same identity map as PairedMachine's.
            tables.store(Layout.pageTables + 0x1000 | 0x7, at: 0)
            tables.store(UInt64(0x87), at: 0x1000)
            ranges.append(PhysicalRange(guestAddress: Layout.pageTables, size: 0x2000, host: tables.base))
            state.cr3 = Layout.pageTables
            state.cr4 |= ControlBits.cr4PAE
            state.efer = ControlBits.eferLME | ControlBits.eferLMA
            state.cr0 |= ControlBits.cr0PG
        }
        state.rip = Layout.codeStart
        state[.rsp] = Layout.stackPage + 0x800
        state[.rbp] = Layout.stackPage + 0x800
        memory.write(bytes, at: Int(Layout.codeStart))
        var cpu = X86CPU(memory: PhysicalMemory(ranges: ranges), state: state)
        return cpu.step() == .exception(vector: Vector.ud.rawValue, errorCode: nil)
    }
}
