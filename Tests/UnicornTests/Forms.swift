import X86OracleSupport

/// One instruction form of the general-purpose set: its encoding, the
/// operand sizes and modes where it exists, the flags the manuals leave
/// undefined, and what its operands need. A new instruction is one line in
/// `Form.all`; a form that X86 does not implement yet (it raises #UD) is
/// skipped until it does, so forms may land before their instructions.
struct Form: Sendable, CustomStringConvertible {
    /// Operand sizes the form takes.
    enum Sizes: Sendable {
        /// Byte operands only.
        case byte
        /// 16 or 32 bits (66), and 64 with REX.W in 64-bit mode.
        case v
        /// PUSH, POP, near indirect branches, LEAVE: 16 or 32 bits, and 16
        /// or 64 (the default) in 64-bit mode.
        case stack
        /// Relative branches: 16 or 32 bits, only 64 in 64-bit mode.
        case near
        /// Fixed 16-bit operands (segment registers), no operand-size prefix.
        case word
        /// 32 bits in every mode without a 66 prefix (which is not allowed),
        /// and 64 with REX.W in 64-bit mode (MOVNTI).
        case dq
        /// No operand size (CLC, SAHF...).
        case none
    }

    enum Operands: Sendable {
        case none
        /// ModRM: reg names a general register, rm a register or memory.
        case modrm
        /// ModRM with an opcode extension (/digit) in reg.
        case digit(Int)
        /// The register is the opcode's low three bits (with REX.B).
        case plusRegister
        /// A0-A3: an absolute offset of the address size.
        case moffs
    }

    enum RM: Sendable { case any, register, memory }

    enum Immediate: Sendable {
        case none, b, w
        /// 16 or 32 bits by operand size (32 for 64-bit operands).
        case z
        /// The full operand size (MOV r64, imm64).
        case v
        case rel8
        /// rel16 or rel32 by operand size.
        case relz
        /// ptr16:16 or ptr16:32 (far JMP).
        case pointer
        /// ENTER: imm16, imm8.
        case enter
    }

    enum Modes: Sendable {
        case all
        /// Not in 64-bit mode (the opcode is invalid or means something else there).
        case legacy
        /// 64-bit mode only.
        case long
        /// Protected mode only (not real mode, not 64-bit mode).
        case protected
        /// SSE: 32-bit protected and 64-bit mode (unicorn runs no SSE in real mode).
        case sse
    }

    /// What a ModRM operand names: a general register or an XMM register.
    enum RegisterClass: Sendable { case gpr, xmm }

    /// How XMM and SSE memory operands are filled: lanes of edge values.
    enum Elements: Sendable { case none, f32, f64, i8, i16, i32, i64 }

    /// Where a shift's count comes from.
    enum Count: Sendable { case one, cl, imm }

    /// The rule of `UndefinedFlags` and `UndefinedResults` (in
    /// X86OracleSupport) that applies.
    enum Flags: Sendable {
        case defined, logic, multiply, divide, bitTest, bitScan, leadingZeroCount, asciiAdjust, decimalAdjust, asciiMultiplyDivide
        case shift(Count), shiftArithmetic(Count), rotate(Count), doubleShift(Count)
        /// No flag, but a 16-bit destination is undefined.
        case byteSwap
    }

    /// What the operands need beyond edge values.
    struct Needs: OptionSet, Sendable {
        let rawValue: Int
        /// RSP points into the stack page.
        static let stack = Needs(rawValue: 1 << 0)
        /// RBP points into the stack page too (LEAVE, ENTER).
        static let framePointer = Needs(rawValue: 1 << 1)
        /// rDX:rAX often gives a quotient that fits.
        static let divide = Needs(rawValue: 1 << 2)
        /// rSI, rDI and rCX for a string instruction; DF random.
        static let string = Needs(rawValue: 1 << 3)
        /// A register bit offset that stays near the memory operand.
        static let bitOffset = Needs(rawValue: 1 << 4)
        /// Changes RIP: stepped by count, not up to the next instruction.
        static let branch = Needs(rawValue: 1 << 5)
        /// Loads a segment register: a selector from the GDT's list.
        static let segmentLoad = Needs(rawValue: 1 << 6)
        /// rAX often equals the destination (CMPXCHG).
        static let compareAccumulator = Needs(rawValue: 1 << 7)
        /// rDX:rAX often equals the memory operand (CMPXCHG8B/16B).
        static let comparePair = Needs(rawValue: 1 << 8)
        /// rBX points at a table (XLAT).
        static let table = Needs(rawValue: 1 << 9)
        /// CL holds a shift count.
        static let shiftCount = Needs(rawValue: 1 << 10)
        /// LOCK is allowed with a memory destination.
        static let lockable = Needs(rawValue: 1 << 11)
        /// The memory operand holds a far pointer (offset then selector).
        static let farPointer = Needs(rawValue: 1 << 12)
        /// The memory operand is 16-byte aligned when the operand size is 64 (CMPXCHG16B).
        static let aligned16 = Needs(rawValue: 1 << 13)
        /// The memory operand is mostly a valid MXCSR with every exception masked (LDMXCSR).
        static let mxcsrImage = Needs(rawValue: 1 << 14)
    }

    var name: String
    var opcode: [UInt8]
    var sizes: Sizes
    var operands: Operands
    var rm: RM
    var immediate: Immediate
    var modes: Modes
    var flags: Flags
    var needs: Needs
    /// Prefixes that are part of the form (F3 for REP, F2...).
    var prefix: [UInt8]
    var regClass: RegisterClass = .gpr
    var rmClass: RegisterClass = .gpr
    var elements: Elements = .none
    /// An SSE memory operand's size (16 for packed operands).
    var memorySize = 0
    /// A 16-byte SSE memory operand need not be aligned (MOVUPS...).
    var unaligned = false

    var isSIMD: Bool { regClass == .xmm || rmClass == .xmm }
    /// A 16-byte legacy SSE operand must be 16-byte aligned (#GP(0) otherwise).
    var needsAlignment: Bool { isSIMD && memorySize == 16 && !unaligned }

    init(_ name: String, _ opcode: [UInt8], _ sizes: Sizes, _ operands: Operands = .none, rm: RM = .any,
         imm: Immediate = .none, modes: Modes = .all, flags: Flags = .defined, needs: Needs = [], prefix: [UInt8] = []) {
        self.name = name
        self.opcode = opcode
        self.sizes = sizes
        self.operands = operands
        self.rm = rm
        self.immediate = imm
        self.modes = modes
        self.flags = flags
        self.needs = needs
        self.prefix = prefix
    }

    var description: String { name }

    var hasModRM: Bool {
        switch operands {
        case .modrm, .digit: return true
        default: return false
        }
    }

    func exists(in mode: CodeMode) -> Bool {
        switch modes {
        case .all: return true
        case .legacy: return mode != .long64
        case .long: return mode == .long64
        case .protected: return mode == .protected32
        case .sse: return mode != .real
        }
    }

    func needing(_ more: Needs) -> Form {
        var form = self
        form.needs.formUnion(more)
        return form
    }

    /// An SSE form: `prefix` the mandatory prefix (nil: none), `reg` and `rm`
    /// what the ModRM names (`digit`: an opcode extension in reg), `memory`
    /// the size of a memory operand.
    static func sse(_ name: String, _ prefix: UInt8?, _ opcode: [UInt8], _ elements: Elements, reg: RegisterClass = .xmm,
                    rm: RegisterClass = .xmm, digit: Int? = nil, memory: Int = 16, rmKind: RM = .any,
                    imm: Immediate = .none, unaligned: Bool = false, flags: Flags = .defined, sizes: Sizes = .none) -> Form {
        var form = Form(name, [0x0F] + opcode, sizes, digit.map { .digit($0) } ?? .modrm, rm: rmKind, imm: imm, modes: .sse,
                        flags: flags, prefix: prefix.map { [$0] } ?? [])
        form.regClass = digit == nil ? reg : .gpr
        form.rmClass = rm
        form.elements = elements
        form.memorySize = memory
        form.unaligned = unaligned
        return form
    }

    /// Operand sizes in bytes in `mode` (0: none).
    func operandSizes(in mode: CodeMode) -> [Int] {
        switch sizes {
        case .byte: return [1]
        case .v: return mode == .long64 ? [2, 4, 8] : [2, 4]
        case .stack: return mode == .long64 ? [2, 8] : [2, 4]
        case .near: return mode == .long64 ? [8] : [2, 4]
        case .word: return [2]
        case .dq: return mode == .long64 ? [4, 8] : [4]
        case .none: return [0]
        }
    }
}

extension Form {
    static let conditions = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]

    /// The general-purpose instruction set, one form per line (families with
    /// a regular encoding are spelled out by a loop).
    static let all: [Form] = {
        var forms: [Form] = []
        // ADD OR ADC SBB AND SUB XOR CMP: six encodings each.
        for (index, name) in ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"].enumerated() {
            let base = UInt8(index * 8)
            let flags: Flags = [1, 4, 6].contains(index) ? .logic : .defined
            let lock: Needs = name == "cmp" ? [] : .lockable
            forms += [
                Form("\(name) Eb,Gb", [base], .byte, .modrm, flags: flags, needs: lock),
                Form("\(name) Ev,Gv", [base + 1], .v, .modrm, flags: flags, needs: lock),
                Form("\(name) Gb,Eb", [base + 2], .byte, .modrm, flags: flags),
                Form("\(name) Gv,Ev", [base + 3], .v, .modrm, flags: flags),
                Form("\(name) AL,Ib", [base + 4], .byte, imm: .b, flags: flags),
                Form("\(name) rAX,Iz", [base + 5], .v, imm: .z, flags: flags),
                Form("\(name) Eb,Ib", [0x80], .byte, .digit(index), imm: .b, flags: flags, needs: lock),
                Form("\(name) Ev,Iz", [0x81], .v, .digit(index), imm: .z, flags: flags, needs: lock),
                Form("\(name) Eb,Ib (82)", [0x82], .byte, .digit(index), imm: .b, modes: .legacy, flags: flags, needs: lock),
                Form("\(name) Ev,Ib", [0x83], .v, .digit(index), imm: .b, flags: flags, needs: lock),
            ]
        }
        // Shifts and rotates: by 1, by CL, by imm8.
        for (index, name) in ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"].enumerated() {
            func flags(_ count: Count) -> Flags {
                index < 4 ? .rotate(count) : index == 7 ? .shiftArithmetic(count) : .shift(count)
            }
            forms += [
                Form("\(name) Eb,1", [0xD0], .byte, .digit(index), flags: flags(.one)),
                Form("\(name) Ev,1", [0xD1], .v, .digit(index), flags: flags(.one)),
                Form("\(name) Eb,CL", [0xD2], .byte, .digit(index), flags: flags(.cl), needs: .shiftCount),
                Form("\(name) Ev,CL", [0xD3], .v, .digit(index), flags: flags(.cl), needs: .shiftCount),
                Form("\(name) Eb,Ib", [0xC0], .byte, .digit(index), imm: .b, flags: flags(.imm)),
                Form("\(name) Ev,Ib", [0xC1], .v, .digit(index), imm: .b, flags: flags(.imm)),
            ]
        }
        for (cc, name) in conditions.enumerated() {
            forms += [
                Form("j\(name) rel8", [0x70 + UInt8(cc)], .near, imm: .rel8, needs: .branch),
                Form("j\(name) relz", [0x0F, 0x80 + UInt8(cc)], .near, imm: .relz, needs: .branch),
                Form("set\(name) Eb", [0x0F, 0x90 + UInt8(cc)], .byte, .modrm),
                Form("cmov\(name) Gv,Ev", [0x0F, 0x40 + UInt8(cc)], .v, .modrm),
            ]
        }
        forms += [
            // INC DEC NOT NEG, TEST.
            Form("inc Zv", [0x40], .v, .plusRegister, modes: .legacy),
            Form("dec Zv", [0x48], .v, .plusRegister, modes: .legacy),
            Form("inc Eb", [0xFE], .byte, .digit(0), needs: .lockable),
            Form("dec Eb", [0xFE], .byte, .digit(1), needs: .lockable),
            Form("inc Ev", [0xFF], .v, .digit(0), needs: .lockable),
            Form("dec Ev", [0xFF], .v, .digit(1), needs: .lockable),
            Form("test Eb,Ib", [0xF6], .byte, .digit(0), imm: .b, flags: .logic),
            Form("not Eb", [0xF6], .byte, .digit(2), needs: .lockable),
            Form("neg Eb", [0xF6], .byte, .digit(3), needs: .lockable),
            Form("mul Eb", [0xF6], .byte, .digit(4), flags: .multiply),
            Form("imul Eb", [0xF6], .byte, .digit(5), flags: .multiply),
            Form("div Eb", [0xF6], .byte, .digit(6), flags: .divide, needs: .divide),
            Form("idiv Eb", [0xF6], .byte, .digit(7), flags: .divide, needs: .divide),
            Form("test Ev,Iz", [0xF7], .v, .digit(0), imm: .z, flags: .logic),
            Form("not Ev", [0xF7], .v, .digit(2), needs: .lockable),
            Form("neg Ev", [0xF7], .v, .digit(3), needs: .lockable),
            Form("mul Ev", [0xF7], .v, .digit(4), flags: .multiply),
            Form("imul Ev", [0xF7], .v, .digit(5), flags: .multiply),
            Form("div Ev", [0xF7], .v, .digit(6), flags: .divide, needs: .divide),
            Form("idiv Ev", [0xF7], .v, .digit(7), flags: .divide, needs: .divide),
            Form("test Eb,Gb", [0x84], .byte, .modrm, flags: .logic),
            Form("test Ev,Gv", [0x85], .v, .modrm, flags: .logic),
            Form("test AL,Ib", [0xA8], .byte, imm: .b, flags: .logic),
            Form("test rAX,Iz", [0xA9], .v, imm: .z, flags: .logic),
            Form("imul Gv,Ev,Iz", [0x69], .v, .modrm, imm: .z, flags: .multiply),
            Form("imul Gv,Ev,Ib", [0x6B], .v, .modrm, imm: .b, flags: .multiply),
            Form("imul Gv,Ev", [0x0F, 0xAF], .v, .modrm, flags: .multiply),
            // BCD.
            Form("daa", [0x27], .none, modes: .legacy, flags: .decimalAdjust),
            Form("das", [0x2F], .none, modes: .legacy, flags: .decimalAdjust),
            Form("aaa", [0x37], .none, modes: .legacy, flags: .asciiAdjust),
            Form("aas", [0x3F], .none, modes: .legacy, flags: .asciiAdjust),
            Form("aam Ib", [0xD4], .none, imm: .b, modes: .legacy, flags: .asciiMultiplyDivide),
            Form("aad Ib", [0xD5], .none, imm: .b, modes: .legacy, flags: .asciiMultiplyDivide),
            // Moves.
            Form("mov Eb,Gb", [0x88], .byte, .modrm),
            Form("mov Ev,Gv", [0x89], .v, .modrm),
            Form("mov Gb,Eb", [0x8A], .byte, .modrm),
            Form("mov Gv,Ev", [0x8B], .v, .modrm),
            Form("mov AL,Ob", [0xA0], .byte, .moffs),
            Form("mov rAX,Ov", [0xA1], .v, .moffs),
            Form("mov Ob,AL", [0xA2], .byte, .moffs),
            Form("mov Ov,rAX", [0xA3], .v, .moffs),
            Form("mov Zb,Ib", [0xB0], .byte, .plusRegister, imm: .b),
            Form("mov Zv,Iv", [0xB8], .v, .plusRegister, imm: .v),
            Form("mov Eb,Ib", [0xC6], .byte, .digit(0), imm: .b),
            Form("mov Ev,Iz", [0xC7], .v, .digit(0), imm: .z),
            Form("movzx Gv,Eb", [0x0F, 0xB6], .v, .modrm),
            Form("movzx Gv,Ew", [0x0F, 0xB7], .v, .modrm),
            Form("movsx Gv,Eb", [0x0F, 0xBE], .v, .modrm),
            Form("movsx Gv,Ew", [0x0F, 0xBF], .v, .modrm),
            Form("movsxd Gv,Ed", [0x63], .v, .modrm, modes: .long),
            Form("arpl Ew,Gw", [0x63], .word, .modrm, modes: .protected),
            Form("lea Gv,M", [0x8D], .v, .modrm, rm: .memory),
            Form("xchg Eb,Gb", [0x86], .byte, .modrm, needs: .lockable),
            Form("xchg Ev,Gv", [0x87], .v, .modrm, needs: .lockable),
            Form("xchg Zv,rAX", [0x90], .v, .plusRegister),
            Form("nop", [0x90], .none),
            Form("pause", [0x90], .none, prefix: [0xF3]),
            Form("nop Ev", [0x0F, 0x1F], .v, .modrm),
            Form("hint nop Ev (0F 19)", [0x0F, 0x19], .v, .modrm),
            Form("hint nop Ev (0F 1A)", [0x0F, 0x1A], .v, .modrm),
            Form("hint nop Ev (0F 1B)", [0x0F, 0x1B], .v, .modrm),
            Form("hint nop Ev (0F 1C)", [0x0F, 0x1C], .v, .modrm),
            Form("hint nop Ev (0F 1D)", [0x0F, 0x1D], .v, .modrm),
            Form("hint nop Ev (0F 1E)", [0x0F, 0x1E], .v, .modrm),
            Form("prefetch Mb (0F 18)", [0x0F, 0x18], .none, .modrm, rm: .memory),
            Form("prefetchw Mb (0F 0D)", [0x0F, 0x0D], .none, .modrm, rm: .memory),
            Form("movnti My,Gy", [0x0F, 0xC3], .dq, .modrm, rm: .memory),
            Form("cbw/cwde/cdqe", [0x98], .v),
            Form("cwd/cdq/cqo", [0x99], .v),
            Form("bswap Zv", [0x0F, 0xC8], .v, .plusRegister, flags: .byteSwap),
            Form("xlat", [0xD7], .none, needs: .table),
            Form("bound Gv,Ma", [0x62], .v, .modrm, rm: .memory, modes: .legacy),
            Form("salc", [0xD6], .none, modes: .legacy),
            // Segment registers.
            Form("mov Ev,Sreg", [0x8C], .v, .modrm),
            Form("mov es,Ew", [0x8E], .word, .digit(0), needs: .segmentLoad),
            Form("mov ss,Ew", [0x8E], .word, .digit(2), needs: .segmentLoad),
            Form("mov ds,Ew", [0x8E], .word, .digit(3), needs: .segmentLoad),
            Form("mov fs,Ew", [0x8E], .word, .digit(4), needs: .segmentLoad),
            Form("mov gs,Ew", [0x8E], .word, .digit(5), needs: .segmentLoad),
            Form("push es", [0x06], .stack, modes: .legacy, needs: .stack),
            Form("pop es", [0x07], .stack, modes: .legacy, needs: [.stack, .segmentLoad]),
            Form("push cs", [0x0E], .stack, modes: .legacy, needs: .stack),
            Form("push ss", [0x16], .stack, modes: .legacy, needs: .stack),
            Form("pop ss", [0x17], .stack, modes: .legacy, needs: [.stack, .segmentLoad]),
            Form("push ds", [0x1E], .stack, modes: .legacy, needs: .stack),
            Form("pop ds", [0x1F], .stack, modes: .legacy, needs: [.stack, .segmentLoad]),
            Form("push fs", [0x0F, 0xA0], .stack, needs: .stack),
            Form("pop fs", [0x0F, 0xA1], .stack, needs: [.stack, .segmentLoad]),
            Form("push gs", [0x0F, 0xA8], .stack, needs: .stack),
            Form("pop gs", [0x0F, 0xA9], .stack, needs: [.stack, .segmentLoad]),
            Form("les Gv,Mp", [0xC4], .v, .modrm, rm: .memory, modes: .legacy, needs: [.segmentLoad, .farPointer]),
            Form("lds Gv,Mp", [0xC5], .v, .modrm, rm: .memory, modes: .legacy, needs: [.segmentLoad, .farPointer]),
            Form("lss Gv,Mp", [0x0F, 0xB2], .v, .modrm, rm: .memory, needs: [.segmentLoad, .farPointer]),
            Form("lfs Gv,Mp", [0x0F, 0xB4], .v, .modrm, rm: .memory, needs: [.segmentLoad, .farPointer]),
            Form("lgs Gv,Mp", [0x0F, 0xB5], .v, .modrm, rm: .memory, needs: [.segmentLoad, .farPointer]),
            // The stack.
            Form("push Zv", [0x50], .stack, .plusRegister, needs: .stack),
            Form("pop Zv", [0x58], .stack, .plusRegister, needs: .stack),
            Form("push Iz", [0x68], .stack, imm: .z, needs: .stack),
            Form("push Ib", [0x6A], .stack, imm: .b, needs: .stack),
            Form("pop Ev", [0x8F], .stack, .digit(0), needs: .stack),
            Form("push Ev", [0xFF], .stack, .digit(6), needs: .stack),
            Form("pushf", [0x9C], .stack, needs: .stack),
            Form("popf", [0x9D], .stack, needs: .stack),
            Form("pusha", [0x60], .stack, modes: .legacy, needs: .stack),
            Form("popa", [0x61], .stack, modes: .legacy, needs: .stack),
            Form("leave", [0xC9], .stack, needs: [.stack, .framePointer]),
            Form("enter Iw,Ib", [0xC8], .stack, imm: .enter, needs: [.stack, .framePointer]),
            // Branches.
            Form("jmp rel8", [0xEB], .near, imm: .rel8, needs: .branch),
            Form("jmp relz", [0xE9], .near, imm: .relz, needs: .branch),
            Form("jmp Ev", [0xFF], .near, .digit(4), needs: .branch),
            Form("call relz", [0xE8], .near, imm: .relz, needs: [.branch, .stack]),
            Form("call Ev", [0xFF], .near, .digit(2), needs: [.branch, .stack]),
            Form("ret", [0xC3], .stack, needs: [.branch, .stack]),
            Form("ret Iw", [0xC2], .stack, imm: .w, needs: [.branch, .stack]),
            Form("loopne rel8", [0xE0], .near, imm: .rel8, needs: .branch),
            Form("loope rel8", [0xE1], .near, imm: .rel8, needs: .branch),
            Form("loop rel8", [0xE2], .near, imm: .rel8, needs: .branch),
            Form("jcxz rel8", [0xE3], .near, imm: .rel8, needs: .branch),
            Form("jmp ptr16:z", [0xEA], .v, imm: .pointer, modes: .legacy, needs: [.branch, .segmentLoad]),
            Form("jmp Mp", [0xFF], .v, .digit(5), rm: .memory, needs: [.branch, .segmentLoad, .farPointer]),
            // Flags.
            Form("cmc", [0xF5], .none),
            Form("clc", [0xF8], .none),
            Form("stc", [0xF9], .none),
            Form("cli", [0xFA], .none),
            Form("sti", [0xFB], .none),
            Form("cld", [0xFC], .none),
            Form("std", [0xFD], .none),
            Form("sahf", [0x9E], .none),
            Form("lahf", [0x9F], .none),
            // Strings, with and without REP.
            Form("movsb", [0xA4], .byte, needs: .string),
            Form("movs", [0xA5], .v, needs: .string),
            Form("cmpsb", [0xA6], .byte, needs: .string),
            Form("cmps", [0xA7], .v, needs: .string),
            Form("stosb", [0xAA], .byte, needs: .string),
            Form("stos", [0xAB], .v, needs: .string),
            Form("lodsb", [0xAC], .byte, needs: .string),
            Form("lods", [0xAD], .v, needs: .string),
            Form("scasb", [0xAE], .byte, needs: .string),
            Form("scas", [0xAF], .v, needs: .string),
            Form("rep movsb", [0xA4], .byte, needs: .string, prefix: [0xF3]),
            Form("rep movs", [0xA5], .v, needs: .string, prefix: [0xF3]),
            Form("repe cmpsb", [0xA6], .byte, needs: .string, prefix: [0xF3]),
            Form("repne cmpsb", [0xA6], .byte, needs: .string, prefix: [0xF2]),
            Form("repe cmps", [0xA7], .v, needs: .string, prefix: [0xF3]),
            Form("repne cmps", [0xA7], .v, needs: .string, prefix: [0xF2]),
            Form("rep stosb", [0xAA], .byte, needs: .string, prefix: [0xF3]),
            Form("rep stos", [0xAB], .v, needs: .string, prefix: [0xF3]),
            Form("rep lodsb", [0xAC], .byte, needs: .string, prefix: [0xF3]),
            Form("rep lods", [0xAD], .v, needs: .string, prefix: [0xF3]),
            Form("repe scasb", [0xAE], .byte, needs: .string, prefix: [0xF3]),
            Form("repne scasb", [0xAE], .byte, needs: .string, prefix: [0xF2]),
            Form("repe scas", [0xAF], .v, needs: .string, prefix: [0xF3]),
            Form("repne scas", [0xAF], .v, needs: .string, prefix: [0xF2]),
            // Bits.
            Form("bt Ev,Gv", [0x0F, 0xA3], .v, .modrm, flags: .bitTest, needs: .bitOffset),
            Form("bts Ev,Gv", [0x0F, 0xAB], .v, .modrm, flags: .bitTest, needs: [.bitOffset, .lockable]),
            Form("btr Ev,Gv", [0x0F, 0xB3], .v, .modrm, flags: .bitTest, needs: [.bitOffset, .lockable]),
            Form("btc Ev,Gv", [0x0F, 0xBB], .v, .modrm, flags: .bitTest, needs: [.bitOffset, .lockable]),
            Form("bt Ev,Ib", [0x0F, 0xBA], .v, .digit(4), imm: .b, flags: .bitTest),
            Form("bts Ev,Ib", [0x0F, 0xBA], .v, .digit(5), imm: .b, flags: .bitTest, needs: .lockable),
            Form("btr Ev,Ib", [0x0F, 0xBA], .v, .digit(6), imm: .b, flags: .bitTest, needs: .lockable),
            Form("btc Ev,Ib", [0x0F, 0xBA], .v, .digit(7), imm: .b, flags: .bitTest, needs: .lockable),
            Form("bsf Gv,Ev", [0x0F, 0xBC], .v, .modrm, flags: .bitScan),
            Form("bsr Gv,Ev", [0x0F, 0xBD], .v, .modrm, flags: .bitScan),
            Form("lzcnt Gv,Ev", [0x0F, 0xBD], .v, .modrm, flags: .leadingZeroCount, prefix: [0xF3]),
            Form("popcnt Gv,Ev", [0x0F, 0xB8], .v, .modrm, prefix: [0xF3]),
            Form("shld Ev,Gv,Ib", [0x0F, 0xA4], .v, .modrm, imm: .b, flags: .doubleShift(.imm)),
            Form("shld Ev,Gv,CL", [0x0F, 0xA5], .v, .modrm, flags: .doubleShift(.cl), needs: .shiftCount),
            Form("shrd Ev,Gv,Ib", [0x0F, 0xAC], .v, .modrm, imm: .b, flags: .doubleShift(.imm)),
            Form("shrd Ev,Gv,CL", [0x0F, 0xAD], .v, .modrm, flags: .doubleShift(.cl), needs: .shiftCount),
            // Atomics.
            Form("cmpxchg Eb,Gb", [0x0F, 0xB0], .byte, .modrm, needs: [.compareAccumulator, .lockable]),
            Form("cmpxchg Ev,Gv", [0x0F, 0xB1], .v, .modrm, needs: [.compareAccumulator, .lockable]),
            Form("xadd Eb,Gb", [0x0F, 0xC0], .byte, .modrm, needs: .lockable),
            Form("xadd Ev,Gv", [0x0F, 0xC1], .v, .modrm, needs: .lockable),
            Form("cmpxchg8b/16b Mq", [0x0F, 0xC7], .v, .digit(1), rm: .memory,
                 needs: [.comparePair, .lockable, .aligned16]),
        ]
        return forms + sse
    }()

    /// SSE, SSE2 and SSSE3 on XMM registers (MMX forms are not compared).
    static let sse: [Form] = {
        var forms: [Form] = []
        let packedAndScalar: [(suffix: String, prefix: UInt8?, elements: Elements, memory: Int)] = [
            ("ps", nil, .f32, 16), ("pd", 0x66, .f64, 16), ("ss", 0xF3, .f32, 4), ("sd", 0xF2, .f64, 8),
        ]
        for (name, op) in [("add", 0x58), ("mul", 0x59), ("sub", 0x5C), ("min", 0x5D), ("div", 0x5E), ("max", 0x5F),
                           ("sqrt", 0x51)] as [(String, UInt8)] {
            for f in packedAndScalar {
                forms.append(.sse("\(name)\(f.suffix)", f.prefix, [op], f.elements, memory: f.memory))
            }
        }
        for f in packedAndScalar {
            forms.append(.sse("cmp\(f.suffix)", f.prefix, [0xC2], f.elements, memory: f.memory, imm: .b))
        }
        for (name, op) in [("and", 0x54), ("andn", 0x55), ("or", 0x56), ("xor", 0x57), ("unpckl", 0x14), ("unpckh", 0x15)]
            as [(String, UInt8)] {
            forms.append(.sse("\(name)ps", nil, [op], .f32))
            forms.append(.sse("\(name)pd", 0x66, [op], .f64))
        }
        // SSE2 integer operations: 66 0F xx xmm, xmm/m128.
        let integer: [(String, UInt8, Elements)] = [
            ("punpcklbw", 0x60, .i8), ("punpcklwd", 0x61, .i16), ("punpckldq", 0x62, .i32), ("packsswb", 0x63, .i16),
            ("pcmpgtb", 0x64, .i8), ("pcmpgtw", 0x65, .i16), ("pcmpgtd", 0x66, .i32), ("packuswb", 0x67, .i16),
            ("punpckhbw", 0x68, .i8), ("punpckhwd", 0x69, .i16), ("punpckhdq", 0x6A, .i32), ("packssdw", 0x6B, .i32),
            ("punpcklqdq", 0x6C, .i64), ("punpckhqdq", 0x6D, .i64), ("pcmpeqb", 0x74, .i8), ("pcmpeqw", 0x75, .i16),
            ("pcmpeqd", 0x76, .i32), ("psrlw", 0xD1, .i64), ("psrld", 0xD2, .i64), ("psrlq", 0xD3, .i64),
            ("paddq", 0xD4, .i64), ("pmullw", 0xD5, .i16), ("psubusb", 0xD8, .i8), ("psubusw", 0xD9, .i16),
            ("pminub", 0xDA, .i8), ("pand", 0xDB, .i64), ("paddusb", 0xDC, .i8), ("paddusw", 0xDD, .i16),
            ("pmaxub", 0xDE, .i8), ("pandn", 0xDF, .i64), ("pavgb", 0xE0, .i8), ("psraw", 0xE1, .i64),
            ("psrad", 0xE2, .i64), ("pavgw", 0xE3, .i16), ("pmulhuw", 0xE4, .i16), ("pmulhw", 0xE5, .i16),
            ("psubsb", 0xE8, .i8), ("psubsw", 0xE9, .i16), ("pminsw", 0xEA, .i16), ("por", 0xEB, .i64),
            ("paddsb", 0xEC, .i8), ("paddsw", 0xED, .i16), ("pmaxsw", 0xEE, .i16), ("pxor", 0xEF, .i64),
            ("psllw", 0xF1, .i64), ("pslld", 0xF2, .i64), ("psllq", 0xF3, .i64), ("pmuludq", 0xF4, .i32),
            ("pmaddwd", 0xF5, .i16), ("psadbw", 0xF6, .i8), ("psubb", 0xF8, .i8), ("psubw", 0xF9, .i16),
            ("psubd", 0xFA, .i32), ("psubq", 0xFB, .i64), ("paddb", 0xFC, .i8), ("paddw", 0xFD, .i16),
            ("paddd", 0xFE, .i32),
        ]
        for (name, op, elements) in integer { forms.append(.sse(name, 0x66, [op], elements)) }
        // SSSE3: 66 0F 38 xx.
        let ssse3: [(String, UInt8, Elements)] = [
            ("pshufb", 0x00, .i8), ("phaddw", 0x01, .i16), ("phaddd", 0x02, .i32), ("phaddsw", 0x03, .i16),
            ("pmaddubsw", 0x04, .i8), ("phsubw", 0x05, .i16), ("phsubd", 0x06, .i32), ("phsubsw", 0x07, .i16),
            ("psignb", 0x08, .i8), ("psignw", 0x09, .i16), ("psignd", 0x0A, .i32), ("pmulhrsw", 0x0B, .i16),
            ("pabsb", 0x1C, .i8), ("pabsw", 0x1D, .i16), ("pabsd", 0x1E, .i32),
        ]
        for (name, op, elements) in ssse3 { forms.append(.sse(name, 0x66, [0x38, op], elements)) }
        forms += [
            .sse("palignr", 0x66, [0x3A, 0x0F], .i8, imm: .b),
            // Moves.
            .sse("movups xmm,xmm/m128", nil, [0x10], .f32, unaligned: true),
            .sse("movups xmm/m128,xmm", nil, [0x11], .f32, unaligned: true),
            .sse("movupd xmm,xmm/m128", 0x66, [0x10], .f64, unaligned: true),
            .sse("movupd xmm/m128,xmm", 0x66, [0x11], .f64, unaligned: true),
            .sse("movss xmm,xmm/m32", 0xF3, [0x10], .f32, memory: 4),
            .sse("movss xmm/m32,xmm", 0xF3, [0x11], .f32, memory: 4),
            .sse("movsd xmm,xmm/m64", 0xF2, [0x10], .f64, memory: 8),
            .sse("movsd xmm/m64,xmm", 0xF2, [0x11], .f64, memory: 8),
            .sse("movlps xmm,m64 / movhlps", nil, [0x12], .f32, memory: 8),
            .sse("movlps m64,xmm", nil, [0x13], .f32, memory: 8, rmKind: .memory),
            .sse("movlpd xmm,m64", 0x66, [0x12], .f64, memory: 8, rmKind: .memory),
            .sse("movlpd m64,xmm", 0x66, [0x13], .f64, memory: 8, rmKind: .memory),
            .sse("movhps xmm,m64 / movlhps", nil, [0x16], .f32, memory: 8),
            .sse("movhps m64,xmm", nil, [0x17], .f32, memory: 8, rmKind: .memory),
            .sse("movhpd xmm,m64", 0x66, [0x16], .f64, memory: 8, rmKind: .memory),
            .sse("movhpd m64,xmm", 0x66, [0x17], .f64, memory: 8, rmKind: .memory),
            .sse("movaps xmm,xmm/m128", nil, [0x28], .f32),
            .sse("movaps xmm/m128,xmm", nil, [0x29], .f32),
            .sse("movapd xmm,xmm/m128", 0x66, [0x28], .f64),
            .sse("movapd xmm/m128,xmm", 0x66, [0x29], .f64),
            .sse("movntps m128,xmm", nil, [0x2B], .f32, rmKind: .memory),
            .sse("movntpd m128,xmm", 0x66, [0x2B], .f64, rmKind: .memory),
            .sse("movmskps r32,xmm", nil, [0x50], .f32, reg: .gpr, rmKind: .register),
            .sse("movmskpd r32,xmm", 0x66, [0x50], .f64, reg: .gpr, rmKind: .register),
            .sse("shufps", nil, [0xC6], .f32, imm: .b),
            .sse("shufpd", 0x66, [0xC6], .f64, imm: .b),
            .sse("movd/movq xmm,r/m", 0x66, [0x6E], .i32, rm: .gpr, memory: 4, sizes: .dq),
            .sse("movd/movq r/m,xmm", 0x66, [0x7E], .i32, rm: .gpr, memory: 4, sizes: .dq),
            .sse("movdqa xmm,xmm/m128", 0x66, [0x6F], .i64),
            .sse("movdqa xmm/m128,xmm", 0x66, [0x7F], .i64),
            .sse("movdqu xmm,xmm/m128", 0xF3, [0x6F], .i64, unaligned: true),
            .sse("movdqu xmm/m128,xmm", 0xF3, [0x7F], .i64, unaligned: true),
            .sse("movq xmm,xmm/m64", 0xF3, [0x7E], .i64, memory: 8),
            .sse("movq xmm/m64,xmm", 0x66, [0xD6], .i64, memory: 8),
            .sse("movntdq m128,xmm", 0x66, [0xE7], .i64, rmKind: .memory),
            .sse("pshufd", 0x66, [0x70], .i32, imm: .b),
            .sse("pshufhw", 0xF3, [0x70], .i16, imm: .b),
            .sse("pshuflw", 0xF2, [0x70], .i16, imm: .b),
            .sse("pinsrw xmm,r32/m16,ib", 0x66, [0xC4], .i16, rm: .gpr, memory: 2, imm: .b),
            .sse("pextrw r32,xmm,ib", 0x66, [0xC5], .i16, reg: .gpr, rmKind: .register, imm: .b),
            .sse("pmovmskb r32,xmm", 0x66, [0xD7], .i8, reg: .gpr, rmKind: .register),
            // Shifts by an immediate: 66 0F 71-73 /digit ib on a register.
            .sse("psrlw xmm,ib", 0x66, [0x71], .i16, digit: 2, rmKind: .register, imm: .b),
            .sse("psraw xmm,ib", 0x66, [0x71], .i16, digit: 4, rmKind: .register, imm: .b),
            .sse("psllw xmm,ib", 0x66, [0x71], .i16, digit: 6, rmKind: .register, imm: .b),
            .sse("psrld xmm,ib", 0x66, [0x72], .i32, digit: 2, rmKind: .register, imm: .b),
            .sse("psrad xmm,ib", 0x66, [0x72], .i32, digit: 4, rmKind: .register, imm: .b),
            .sse("pslld xmm,ib", 0x66, [0x72], .i32, digit: 6, rmKind: .register, imm: .b),
            .sse("psrlq xmm,ib", 0x66, [0x73], .i64, digit: 2, rmKind: .register, imm: .b),
            .sse("psrldq xmm,ib", 0x66, [0x73], .i8, digit: 3, rmKind: .register, imm: .b),
            .sse("psllq xmm,ib", 0x66, [0x73], .i64, digit: 6, rmKind: .register, imm: .b),
            .sse("pslldq xmm,ib", 0x66, [0x73], .i8, digit: 7, rmKind: .register, imm: .b),
            // Comparisons into EFLAGS.
            .sse("ucomiss", nil, [0x2E], .f32, memory: 4),
            .sse("ucomisd", 0x66, [0x2E], .f64, memory: 8),
            .sse("comiss", nil, [0x2F], .f32, memory: 4),
            .sse("comisd", 0x66, [0x2F], .f64, memory: 8),
            // Conversions.
            .sse("cvtsi2ss xmm,r/m", 0xF3, [0x2A], .f32, rm: .gpr, memory: 4, sizes: .dq),
            .sse("cvtsi2sd xmm,r/m", 0xF2, [0x2A], .f64, rm: .gpr, memory: 4, sizes: .dq),
            .sse("cvttss2si r,xmm/m32", 0xF3, [0x2C], .f32, reg: .gpr, memory: 4, sizes: .dq),
            .sse("cvttsd2si r,xmm/m64", 0xF2, [0x2C], .f64, reg: .gpr, memory: 8, sizes: .dq),
            .sse("cvtss2si r,xmm/m32", 0xF3, [0x2D], .f32, reg: .gpr, memory: 4, sizes: .dq),
            .sse("cvtsd2si r,xmm/m64", 0xF2, [0x2D], .f64, reg: .gpr, memory: 8, sizes: .dq),
            .sse("cvtps2pd", nil, [0x5A], .f32, memory: 8),
            .sse("cvtpd2ps", 0x66, [0x5A], .f64),
            .sse("cvtss2sd", 0xF3, [0x5A], .f32, memory: 4),
            .sse("cvtsd2ss", 0xF2, [0x5A], .f64, memory: 8),
            .sse("cvtdq2ps", nil, [0x5B], .i32),
            .sse("cvtps2dq", 0x66, [0x5B], .f32),
            .sse("cvttps2dq", 0xF3, [0x5B], .f32),
            .sse("cvttpd2dq", 0x66, [0xE6], .f64),
            .sse("cvtdq2pd", 0xF3, [0xE6], .i32, memory: 8),
            .sse("cvtpd2dq", 0xF2, [0xE6], .f64),
            // Group 15: MXCSR, fences, CLFLUSH.
            .sse("ldmxcsr m32", nil, [0xAE], .none, digit: 2, memory: 4, rmKind: .memory).needing(.mxcsrImage),
            .sse("stmxcsr m32", nil, [0xAE], .none, digit: 3, memory: 4, rmKind: .memory),
            .sse("lfence", nil, [0xAE], .none, digit: 5, rmKind: .register),
            .sse("mfence", nil, [0xAE], .none, digit: 6, rmKind: .register),
            .sse("sfence", nil, [0xAE], .none, digit: 7, rmKind: .register),
            .sse("clflush m8", nil, [0xAE], .none, digit: 7, memory: 1, rmKind: .memory),
        ]
        return forms
    }()
}
