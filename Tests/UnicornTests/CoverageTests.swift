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

    /// SIMD encodings left out, by mandatory prefix (0: none) and opcode.
    static func simdReason(prefix: UInt8, _ opcode: [UInt8]) -> String? {
        let mmx = "MMX: the x87/MMX register file is not compared (unicorn's CPU model has no MMX)"
        let sse3 = "SSE3: unicorn's CPU model lacks it (CPUID.01H:ECX.SSE3 = 0) and raises #UD"
        guard opcode.first == 0x0F, opcode.count >= 2 else { return nil }
        let op = opcode[1]
        if opcode.count == 3 {  // 0F 38 xx, 0F 3A xx
            return prefix == 0 ? mmx : nil
        }
        switch (prefix, op) {
        case (0, 0x60...0x7F), (0, 0xD1...0xFF), (0, 0xC4), (0, 0xC5), (0, 0x2A), (0, 0x2C), (0, 0x2D),
             (0x66, 0x2A), (0x66, 0x2C), (0x66, 0x2D), (0xF3, 0xD6), (0xF2, 0xD6):
            return mmx
        case (_, 0x77): return "EMMS: x87/MMX state"
        case (0xF2, 0x7C), (0x66, 0x7C), (0xF2, 0x7D), (0x66, 0x7D), (0xF2, 0xD0), (0x66, 0xD0), (0xF2, 0xF0),
             (0xF3, 0x12), (0xF3, 0x16), (0xF2, 0x12):
            return sse3
        case (0, 0x52), (0xF3, 0x52), (0, 0x53), (0xF3, 0x53):
            return "RCP/RSQRT: approximations whose values are the implementation's (the SDM bounds their error only)"
        case (0x66, 0xF7): return "MASKMOVDQU: stores bytes through DS:rDI under a mask; not generated"
        case (_, 0xAE): return "FXSAVE/FXRSTOR and the rest of group 15: x87 state (LDMXCSR, STMXCSR, the fences and CLFLUSH have forms)"
        default: return nil
        }
    }

    static func reason(prefix: UInt8, _ opcode: [UInt8], digit: Int?) -> String? {
        if let reason = simdReason(prefix: prefix, opcode) { return reason }
        return entries.first { $0.opcode == opcode && ($0.digit == nil || $0.digit == digit) }?.reason
    }

    /// 0F opcodes whose mandatory prefix picks the instruction: walked with each.
    static func takesMandatoryPrefix(_ opcode: [UInt8]) -> Bool {
        guard opcode.count >= 2, opcode[0] == 0x0F else { return false }
        if opcode.count == 3 { return true }
        switch opcode[1] {
        case 0x10...0x17, 0x28...0x2F, 0x50...0x7F, 0xC2...0xC6, 0xD0...0xFF: return true
        default: return false
        }
    }
}

@Suite("The unicorn comparison's coverage")
struct CoverageTests {
    /// Walks the one-byte, 0F, 0F 38 and 0F 3A opcode maps (every opcode
    /// extension, with a register and a memory operand, and every mandatory
    /// prefix where it picks the instruction) in each mode: every encoding
    /// X86 executes without #UD has a form in the table or a reason in
    /// `NotCompared`, so that an instruction cannot land untested.
    @Test(arguments: CodeMode.allCases)
    func everyImplementedOpcodeHasAForm(mode: CodeMode) {
        let prefixes: Set<UInt8> = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x0F]
        var opcodes: [[UInt8]] = (0...0xFF).filter { !prefixes.contains(UInt8($0)) }.map { [UInt8($0)] }
        if mode == .long64 { opcodes.removeAll { (0x40...0x4F).contains($0[0]) } }
        opcodes += (0...0xFF).filter { $0 != 0x38 && $0 != 0x3A }.map { [0x0F, UInt8($0)] }
        opcodes += (0...0xFF).map { [0x0F, 0x38, UInt8($0)] } + (0...0xFF).map { [0x0F, 0x3A, UInt8($0)] }
        var uncovered: [String] = []
        var implemented = 0
        let probe = X86Probe(mode: mode)
        for opcode in opcodes {
            let mandatory: [UInt8] = NotCompared.takesMandatoryPrefix(opcode) ? [0, 0x66, 0xF3, 0xF2] : [0]
            let digits: [Int?] = probe.hasModRM(opcode) ? (0..<8).map { $0 } : [nil]
            for prefix in mandatory {
                for digit in digits {
                    let lead: [UInt8] = prefix == 0 ? [] : [prefix]
                    let runs = digit == nil
                        ? [lead + opcode + [UInt8](repeating: 0, count: 10)]
                        : [lead + probe.registerForm(opcode, digit: digit!), lead + probe.memoryForm(opcode, digit: digit!)]
                    guard runs.contains(where: { !probe.raisesUD($0) }) else { continue }
                    implemented += 1
                    if Form.covers(opcode, digit: digit, prefix: prefix, mode: mode)
                        || NotCompared.reason(prefix: prefix, opcode, digit: digit) != nil { continue }
                    uncovered.append(([prefix].filter { $0 != 0 } + opcode).map { String($0, radix: 16).leftPadded(2) }
                        .joined(separator: " ") + (digit.map { " /\($0)" } ?? ""))
                }
            }
        }
        #expect(implemented > 200, "the walk found only \(implemented) implemented opcodes in \(mode)")
        #expect(uncovered.isEmpty, "implemented in \(mode) but in no unicorn form (add a line to Form.all) nor in NotCompared: \(uncovered)")
    }
}

extension Form {
    /// Whether some form of the table (existing in `mode`) encodes `opcode` with opcode extension `digit`.
    static func covers(_ opcode: [UInt8], digit: Int?, prefix: UInt8, mode: CodeMode) -> Bool {
        all.contains { form in
            guard form.exists(in: mode) else { return false }
            // A mandatory prefix is part of the encoding; REP and the like on general forms are not.
            if NotCompared.takesMandatoryPrefix(opcode) && (form.prefix.first ?? 0) != prefix { return false }
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
final class X86Probe {
    let mode: CodeMode
    // One memory for all the probes: an instruction's stores cannot change
    // whether the next one raises #UD.
    let memory = GuardedMemory(size: Layout.memorySize)
    let tables = GuardedMemory(size: 0x3000)

    init(mode: CodeMode) { self.mode = mode }

    func hasModRM(_ opcode: [UInt8]) -> Bool {
        let cpu = X86CPU(memory: PhysicalMemory(ranges: []))
        switch opcode.count {
        case 3: return cpu.hasModRM((opcode[1] == 0x38 ? 0x200 : 0x300) + Int(opcode[2]))
        case 2: return cpu.hasModRM(0x100 + Int(opcode[1]))
        default: return cpu.hasModRM(Int(opcode[0]))
        }
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
        var state = CPUState()
        for (index, segment) in Layout.segments(mode).enumerated() { state[segmentIndex: index] = segment }
        var ranges = [PhysicalRange(guestAddress: 0, size: UInt64(Layout.memorySize), host: memory.base)]
        if mode != .real {
            state.cr0 |= ControlBits.cr0PE
            state.cr4 |= ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT
            state.gdtr = DescriptorTableRegister(base: Layout.gdt, limit: Layout.gdtLimit)
            for (index, descriptor) in Layout.descriptors.enumerated() { memory.store(descriptor, at: Int(Layout.gdt) + index * 8) }
        }
        if mode == .long64 {
            // The same identity map as PairedMachine's.
            tables.store(Layout.pageTables + 0x1000 | 0x7, at: 0)
            tables.store(Layout.pageTables + 0x2000 | 0x7, at: 0x1000)
            tables.store(UInt64(0x87), at: 0x2000)
            ranges.append(PhysicalRange(guestAddress: Layout.pageTables, size: 0x3000, host: tables.base))
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
