import X86

/// The one table of what the manuals leave undefined: flags (and results)
/// that X86 is not compared on, per instruction, with the Intel SDM's words
/// (Vol. 2, each instruction's "Flags Affected"). Every differential test
/// (the host's KVM, unicorn) masks from here and nowhere else.
public enum UndefinedFlags {
    public static let none: UInt64 = 0

    /// AND, OR, XOR, TEST: "The OF and CF flags are cleared; the SF, ZF, and
    /// PF flags are set according to the result. The state of the AF flag is
    /// undefined."
    public static let logic = RFLAGS.af

    /// SHL/SAL, SHR, SAR: "The OF flag is affected only on 1-bit shifts. For
    /// left shifts, the OF flag is set to 0 [...]. For a non-zero count, the
    /// AF flag is undefined." and "[CF] is undefined for SHL and SHR
    /// instructions where the count is greater than or equal to the size (in
    /// bits) of the destination operand." `count` is the masked count; a
    /// count of 0 affects no flag. SAR's CF stays defined (the sign).
    public static func shift(count: Int, width: Int, arithmeticRight: Bool = false) -> UInt64 {
        if count == 0 { return 0 }
        var mask = RFLAGS.af
        if count != 1 { mask |= RFLAGS.of }
        if count >= width && !arithmeticRight { mask |= RFLAGS.cf }
        return mask
    }

    /// ROL, ROR, RCL, RCR: "If the masked count is 0, the flags are not
    /// affected. If the masked count is 1, then the OF flag is affected,
    /// otherwise (masked count is greater than 1) the OF flag is undefined."
    public static func rotate(count: Int) -> UInt64 { count <= 1 ? 0 : RFLAGS.of }

    /// MUL, IMUL (all forms): "The SF, ZF, AF, and PF flags are undefined."
    public static let multiply = RFLAGS.sf | RFLAGS.zf | RFLAGS.af | RFLAGS.pf

    /// DIV, IDIV: "The CF, OF, SF, ZF, AF, and PF flags are undefined."
    public static let divide = RFLAGS.arithmetic

    /// BT, BTS, BTR, BTC: "The CF flag contains the value of the selected
    /// bit. The ZF flag is unaffected. The OF, SF, AF, and PF flags are
    /// undefined."
    public static let bitTest = RFLAGS.of | RFLAGS.sf | RFLAGS.af | RFLAGS.pf

    /// BSF, BSR: "The ZF flag is set to 1 if the source operand is 0;
    /// otherwise, the ZF flag is cleared. The CF, OF, SF, AF, and PF flags
    /// are undefined." (The destination is undefined for a zero source: see
    /// `UndefinedResults`.)
    public static let bitScan = RFLAGS.cf | RFLAGS.of | RFLAGS.sf | RFLAGS.af | RFLAGS.pf

    /// LZCNT, TZCNT: "ZF flag is set to 1 in case of zero output (most
    /// significant bit of the source is set), and to 0 otherwise, CF flag is
    /// set to 1 if input was zero and cleared otherwise. OF, SF, PF and AF
    /// flags are undefined."
    public static let leadingZeroCount = RFLAGS.of | RFLAGS.sf | RFLAGS.pf | RFLAGS.af

    /// SHLD, SHRD: "If the count is 1 or greater, the CF flag is filled with
    /// the last bit shifted out of the destination operand and the SF, ZF,
    /// and PF flags are set according to the value of the result. For a
    /// 1-bit shift, the OF flag is set if a sign change occurred; otherwise,
    /// it is cleared. For shifts greater than 1 bit, the OF flag is
    /// undefined. If a shift occurs, the AF flag is undefined. If the count
    /// operand is 0, the flags are not affected. If the count is greater than
    /// the operand size, the flags are undefined." `count` is the masked count.
    public static func doubleShift(count: Int, width: Int) -> UInt64 {
        if count == 0 { return 0 }
        if count > width { return RFLAGS.arithmetic }
        return RFLAGS.af | (count == 1 ? 0 : RFLAGS.of)
    }

    /// AAA, AAS: "The AF and CF flags are set to 1 if there is a decimal
    /// carry [borrow]; otherwise, they are set to 0. The OF, SF, ZF, and PF
    /// flags are undefined."
    public static let asciiAdjust = RFLAGS.of | RFLAGS.sf | RFLAGS.zf | RFLAGS.pf

    /// DAA, DAS: "The CF and AF flags are set if the adjustment of the value
    /// results in a decimal carry [borrow] in either digit of the result. The
    /// SF, ZF, and PF flags are set according to the result. The OF flag is
    /// undefined."
    public static let decimalAdjust = RFLAGS.of

    /// AAM, AAD: "The SF, ZF, and PF flags are set according to the resulting
    /// binary value in the AL register. The OF, AF, and CF flags are
    /// undefined."
    public static let asciiMultiplyDivide = RFLAGS.of | RFLAGS.af | RFLAGS.cf
}

/// Results (not flags) the manuals leave undefined: the register is not
/// compared and the oracle takes X86's value.
public enum UndefinedResults {
    /// BSF, BSR: "If the content of the source operand is 0, the content of
    /// the destination operand is undefined."
    public static func bitScanDestination(source: UInt64) -> Bool { source == 0 }

    /// SHLD, SHRD: "If the count is greater than the operand size, the
    /// result is undefined." (Reachable with 16-bit operands only.)
    public static func doubleShiftDestination(count: Int, width: Int) -> Bool { count > width }

    /// BSWAP: "When the BSWAP instruction references a 16-bit register, the
    /// result is undefined."
    public static func byteSwapDestination(width: Int) -> Bool { width == 16 }
}

/// What a deviation needs to know about the instruction it concerns.
public struct DeviationContext: Sendable {
    /// The form's name as the unicorn tests spell it ("ret Iw").
    public var form: String
    public var bytes: [UInt8]
    /// The REX prefix (0: none), which is `bytes[opcodeIndex - 1]`.
    public var rex: UInt8
    /// Where the opcode starts in `bytes`.
    public var opcodeIndex: Int
    /// In bytes (0: no operand size).
    public var operandSize: Int
    public var mode64: Bool
    public var realMode: Bool
    /// Where the instruction is.
    public var address: UInt64
    /// The stack's address size in bytes.
    public var stackAddressSize: Int
    /// Where the ModRM byte is in `bytes` (nil: none).
    public var modrmIndex: Int?
    /// The ModRM reg operand's register, and the r/m operand's (nil: memory or none).
    public var regIndex: Int?
    public var rmRegister: Int?
    /// The r/m operand is in memory.
    public var memoryOperand: Bool
    /// The r/m operand's value before the instruction, and the 16 bytes at a memory operand.
    public var rmValue: UInt64
    public var rmBytes: [UInt8]
    public var immediate: UInt64
    /// The GPRs, RFLAGS and segment selectors before the instruction.
    public var before: [UInt64]
    public var beforeFlags: UInt64
    public var beforeSelectors: [UInt16]
    /// For SSE forms: the XMM registers the ModRM names (nil: not XMM),
    /// the XMM registers before, the memory operand's linear address and
    /// the alignment it needs (0: none).
    public var simd = false
    public var regXMM: Int?
    public var rmXMM: Int?
    public var beforeXMM: [UInt128] = []
    public var beforeMXCSR: UInt32 = 0
    public var memoryAddress: UInt64?
    public var alignment = 0

    public init(form: String, bytes: [UInt8], rex: UInt8, opcodeIndex: Int, operandSize: Int, mode64: Bool, realMode: Bool, address: UInt64,
                stackAddressSize: Int, modrmIndex: Int?, regIndex: Int?, rmRegister: Int?, memoryOperand: Bool,
                rmValue: UInt64, rmBytes: [UInt8], immediate: UInt64, before: [UInt64], beforeFlags: UInt64,
                beforeSelectors: [UInt16]) {
        self.form = form
        self.bytes = bytes
        self.rex = rex
        self.opcodeIndex = opcodeIndex
        self.operandSize = operandSize
        self.mode64 = mode64
        self.realMode = realMode
        self.address = address
        self.stackAddressSize = stackAddressSize
        self.modrmIndex = modrmIndex
        self.regIndex = regIndex
        self.rmRegister = rmRegister
        self.memoryOperand = memoryOperand
        self.rmValue = rmValue
        self.rmBytes = rmBytes
        self.immediate = immediate
        self.before = before
        self.beforeFlags = beforeFlags
        self.beforeSelectors = beforeSelectors
    }
}

/// unicorn's result, as the deviations correct it.
public struct OracleResult: Sendable {
    public var gpr: [UInt64]
    public var rip: UInt64
    public var rflags: UInt64
    public var selectors: [UInt16]
    public var xmm: [UInt128]
    public var mxcsr: UInt32
    /// The MXCSR bits compared (unicorn leaves some to others to check).
    public var mxcsrCompared: UInt32 = ~0
    /// Bytes to put back into unicorn's memory before it is compared (a
    /// store unicorn made that the SDM does not).
    public var memoryRestore: (address: UInt64, bytes: [UInt8])?
    /// The exception raised, or nil.
    public var exception: UInt32?

    public init(gpr: [UInt64], rip: UInt64, rflags: UInt64, selectors: [UInt16], xmm: [UInt128] = [], mxcsr: UInt32 = 0,
                exception: UInt32?) {
        self.gpr = gpr
        self.rip = rip
        self.rflags = rflags
        self.selectors = selectors
        self.xmm = xmm
        self.mxcsr = mxcsr
        self.exception = exception
    }
}

extension OracleResult {
    /// The SDM's result is a fault: nothing changed, RIP at the instruction.
    public mutating func fault(_ vector: UInt32, _ context: DeviationContext) {
        gpr = context.before
        rip = context.address
        rflags = context.beforeFlags
        selectors = context.beforeSelectors
        if context.simd {
            xmm = context.beforeXMM
            mxcsr = context.beforeMXCSR
        }
        exception = vector
    }
}

/// A place where unicorn (QEMU's TCG inside) is known to differ from the
/// SDM: the instruction, what the SDM states, what unicorn does instead, and
/// either an encoding the SDM gives the same meaning that unicorn gets
/// right, or how to turn unicorn's result into the SDM's. X86 is then
/// checked against the SDM's result.
public struct UnicornDeviation: Sendable {
    public var instruction: String
    public var sdm: String
    public var unicorn: String
    public var applies: @Sendable (DeviationContext) -> Bool
    /// The bytes unicorn runs instead (same meaning by the SDM), or nil.
    public var equivalentEncoding: (@Sendable (DeviationContext) -> [UInt8])?
    /// Turns unicorn's result into the SDM's, or nil.
    public var correct: (@Sendable (inout OracleResult, DeviationContext) -> Void)?
}

/// Every known deviation of unicorn 2.0.1 (Debian's libunicorn2) from the SDM.
public enum UnicornDeviations {
    static func mask(_ size: Int) -> UInt64 { size >= 8 ? ~0 : (1 << UInt64(size * 8)) - 1 }

    static func le(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// PHADD/PHSUB W, D, SW of `a` (destination) and `b` (source): the SDM's result.
    static func horizontal(_ form: String, _ a: UInt128, _ b: UInt128) -> UInt128 {
        let width = form.hasSuffix("d") ? 32 : 16
        let lanes = 128 / width / 2
        let subtract = form.hasPrefix("phsub")
        let saturate = form.hasSuffix("sw")
        func lane(_ v: UInt128, _ i: Int) -> Int64 {
            let raw = UInt64(truncatingIfNeeded: v >> UInt128(i * width)) & ((1 << UInt64(width)) - 1)
            return width == 32 ? Int64(Int32(truncatingIfNeeded: raw)) : Int64(Int16(truncatingIfNeeded: raw))
        }
        var result: UInt128 = 0
        for (half, source) in [a, b].enumerated() {
            for i in 0..<lanes {
                var value = subtract ? lane(source, 2 * i) - lane(source, 2 * i + 1) : lane(source, 2 * i) + lane(source, 2 * i + 1)
                if saturate { value = min(max(value, -32768), 32767) }
                let bits = UInt128(UInt64(bitPattern: value) & ((1 << UInt64(width)) - 1))
                result |= bits << UInt128((half * lanes + i) * width)
            }
        }
        return result
    }

    /// The same instruction with its RIP-relative operand ([RIP + disp32],
    /// ModRM mod 0 rm 5) made absolute ([disp32] through a SIB byte):
    /// one byte longer, same meaning. `length` is the original's.
    static func absolute(_ context: DeviationContext) -> [UInt8] {
        guard let index = context.modrmIndex, context.bytes[index] & 0xC7 == 0x05 else { return context.bytes }
        var bytes = context.bytes
        let displacement = le(bytes[index + 1..<index + 5])
        let target = context.address &+ UInt64(bytes.count) &+ UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: displacement)))
        bytes[index] = bytes[index] & 0x38 | 0x04
        bytes.replaceSubrange(index + 1..<index + 5, with: [0x25] + (0..<4).map { UInt8(truncatingIfNeeded: target >> UInt64($0 * 8)) })
        return bytes
    }

    public static let all: [UnicornDeviation] = [
        UnicornDeviation(
            instruction: "LAHF, SAHF with a REX prefix (64-bit mode)",
            sdm: "LAHF: AH <- EFLAGS(SF:ZF:0:AF:0:PF:1:CF); SAHF: EFLAGS(SF:ZF:0:AF:0:PF:1:CF) <- AH. "
                + "Vol. 2 2.2.1: a REX prefix is ignored by instructions it does not apply to",
            unicorn: "with a REX prefix, writes (LAHF) or reads (SAHF) SPL instead of AH",
            applies: { ($0.form == "lahf" || $0.form == "sahf") && $0.rex != 0 },
            equivalentEncoding: { context in
                var bytes = context.bytes
                bytes.remove(at: context.opcodeIndex - 1)
                return bytes
            },
            correct: nil),
        UnicornDeviation(
            instruction: "MOV Eb,Ib (C6 /0) and MOV Ev,Iz (C7 /0) with REX.R",
            sdm: "Vol. 2 2.2.1.2: REX.R \"is ignored when ModR/M specifies other registers or defines an extended opcode\"",
            unicorn: "reads REX.R into the opcode extension (/8) and raises #UD",
            applies: { ($0.form == "mov Eb,Ib" || $0.form == "mov Ev,Iz") && $0.rex & 0x04 != 0 },
            equivalentEncoding: { context in
                var bytes = context.bytes
                bytes[context.opcodeIndex - 1] &= ~0x04
                return bytes
            },
            correct: nil),
        UnicornDeviation(
            instruction: "RET imm16 (C2) with imm16 >= 8000H",
            sdm: "RET: \"IF instruction has immediate operand THEN RSP <- RSP + SRC\" where SRC is the imm16, "
                + "\"the number of stack bytes to be released\" (zero-extended)",
            unicorn: "sign-extends imm16, releasing 10000H bytes fewer",
            applies: { $0.form == "ret Iw" && $0.immediate & 0x8000 != 0 },
            equivalentEncoding: nil,
            correct: { result, context in
                let mask = UnicornDeviations.mask(context.stackAddressSize)
                let rsp = result.gpr[4]
                result.gpr[4] = (rsp & ~mask) | ((rsp &+ 0x10000) & mask)
            }),
        UnicornDeviation(
            instruction: "SSE instructions that raise floating-point exceptions",
            sdm: "Vol. 1 11.5.1: an SSE instruction that detects a SIMD floating-point exception sets its flag in "
                + "MXCSR (IE DE ZE OE UE PE, bits 0-5), masked or not",
            unicorn: "never sets them (QEMU 5.0 kept no SSE exception flags); not compared here: "
                + "SIMDHostDifferentialTests compares them with the host CPU",
            applies: { $0.simd },
            equivalentEncoding: nil,
            correct: { result, _ in result.mxcsrCompared &= ~0x3F }),
        UnicornDeviation(
            instruction: "SSE instructions with MXCSR.FTZ (bit 15) or MXCSR.DAZ (bit 6) set",
            sdm: "Vol. 1 10.2.3.3, 10.2.3.4: FTZ returns zero for a tiny result (underflow masked); DAZ reads "
                + "denormal sources as zero",
            unicorn: "ignores both (QEMU 5.0); the tests leave them clear: SIMDHostDifferentialTests checks them "
                + "on the host CPU",
            applies: { _ in false },
            equivalentEncoding: nil,
            correct: nil),
        UnicornDeviation(
            instruction: "Legacy SSE instructions with a 16-byte memory operand that is not 16-byte aligned "
                + "(all but MOVUPS, MOVUPD, MOVDQU)",
            sdm: "e.g. ADDPS, Protected Mode Exceptions: \"#GP(0) ... If a memory operand is not aligned on a 16-byte "
                + "boundary, regardless of segment.\"",
            unicorn: "accesses it",
            applies: { context in
                guard context.alignment == 16, let address = context.memoryAddress else { return false }
                return address % 16 != 0
            },
            equivalentEncoding: nil,
            correct: { result, context in
                result.fault(13, context)
                if let address = context.memoryAddress { result.memoryRestore = (address, context.rmBytes) }
            }),
        UnicornDeviation(
            instruction: "LDMXCSR m32 with a reserved bit (16-31) set",
            sdm: "LDMXCSR, Protected Mode Exceptions: \"#GP For an attempt to set reserved bits in MXCSR.\"",
            unicorn: "loads the value",
            applies: { $0.form == "ldmxcsr m32" && $0.rmBytes.count >= 4 && UnicornDeviations.le($0.rmBytes[0..<4]) & 0xFFFF_0000 != 0 },
            equivalentEncoding: nil,
            correct: { result, context in result.fault(13, context) }),
        UnicornDeviation(
            instruction: "PHADDW/PHADDD/PHADDSW/PHSUBW/PHSUBD/PHSUBSW xmm1, xmm2 with xmm1 = xmm2",
            sdm: "PHADDD: \"xmm1[31:0] <- xmm1[63:32] + xmm1[31:0]; ... xmm1[95:64] <- xmm2/m128[63:32] + "
                + "xmm2/m128[31:0]\": the sums of the source are taken from its value before the instruction",
            unicorn: "reads the source after writing the destination's low half",
            applies: { $0.form.hasPrefix("phadd") || $0.form.hasPrefix("phsub") ? $0.regXMM != nil && $0.regXMM == $0.rmXMM : false },
            equivalentEncoding: nil,
            correct: { result, context in
                guard let index = context.regXMM, index < result.xmm.count else { return }
                let value = context.beforeXMM[index]
                result.xmm[index] = UnicornDeviations.horizontal(context.form, value, value)
            }),
        UnicornDeviation(
            instruction: "CMPPS/CMPPD/CMPSS/CMPSD with imm8 bits 7:3 set",
            sdm: "CMPPS: \"bits 2:0 of the immediate define the type of comparison ... bits 7:3 of the immediate "
                + "are reserved\" (the CPU ignores them in the legacy SSE encoding)",
            unicorn: "raises #UD",
            applies: { $0.form.hasPrefix("cmp") && $0.simd && $0.immediate >= 8 },
            equivalentEncoding: { context in
                var bytes = context.bytes
                bytes[bytes.count - 1] &= 7
                return bytes
            },
            correct: nil),
        UnicornDeviation(
            instruction: "ADD/SUB/MUL/DIV PS/PD/SS/SD with a NaN in both sources",
            sdm: "Vol. 1 table 4-7: for SSE, \"SNaN and QNaN\", \"Two SNaNs\" and \"Two QNaNs\" all give \"First "
                + "source operand (if this operand is an SNaN, it is converted to a QNaN)\"",
            unicorn: "follows the x87's rule (the QNaN, or the larger significand)",
            applies: { context in
                context.simd && ["add", "sub", "mul", "div"].contains(where: { context.form.hasPrefix($0) })
                    && ["ps", "pd", "ss", "sd"].contains(String(context.form.suffix(2)))
            },
            equivalentEncoding: nil,
            correct: { result, context in
                guard result.exception == nil, let destination = context.regXMM, destination < result.xmm.count else { return }
                let a = context.beforeXMM[destination]
                let b: UInt128
                if let source = context.rmXMM { b = context.beforeXMM[source] }
                else { b = context.rmBytes.prefix(16).reversed().reduce(0) { $0 << 8 | UInt128($1) } }
                let double = context.form.hasSuffix("d")
                let width = double ? 64 : 32
                let lanes = context.form.hasSuffix("s") && !context.form.hasSuffix("ps") || context.form.hasSuffix("sd")
                    ? 1 : 128 / width
                let mask: UInt128 = (1 << UInt128(width)) - 1
                let exponent: UInt128 = double ? 0x7FF0_0000_0000_0000 : 0x7F80_0000
                let fraction: UInt128 = double ? 0x000F_FFFF_FFFF_FFFF : 0x007F_FFFF
                let quiet: UInt128 = double ? 0x0008_0000_0000_0000 : 0x0040_0000
                func isNaN(_ v: UInt128) -> Bool { v & exponent == exponent && v & fraction != 0 }
                var value = result.xmm[destination]
                for lane in 0..<lanes {
                    let shift = UInt128(lane * width)
                    let x = (a >> shift) & mask, y = (b >> shift) & mask
                    guard isNaN(x) && isNaN(y) else { continue }
                    value = value & ~(mask << shift) | ((x | quiet) << shift)
                }
                result.xmm[destination] = value
            }),
        UnicornDeviation(
            instruction: "SHLD/SHRD Ev,Gv,Ib with a RIP-relative memory operand",
            sdm: "Vol. 2 2.2.1.6: RIP-relative addressing adds the displacement to \"the 64-bit RIP of the next instruction\"",
            unicorn: "adds it to the address of the imm8, one byte early",
            applies: { ($0.form == "shld Ev,Gv,Ib" || $0.form == "shrd Ev,Gv,Ib") && $0.mode64 && $0.memoryOperand },
            equivalentEncoding: { UnicornDeviations.absolute($0) },
            correct: nil),
        UnicornDeviation(
            instruction: "CMPXCHG r/m32, r32 in 64-bit mode",
            sdm: "CMPXCHG: \"IF accumulator = TEMP THEN ZF <- 1; DEST <- SRC; ELSE ZF <- 0; accumulator <- TEMP; "
                + "DEST <- TEMP; FI;\": EAX is written (so RAX zero-extended) only when they differ. A register "
                + "destination keeps its upper half when they differ, on the host CPU (the oracle where the two "
                + "disagree: ../shared/ORACLES.md)",
            unicorn: "zero-extends RAX when they are equal, and a register destination when they differ",
            applies: { $0.form == "cmpxchg Ev,Gv" && $0.mode64 && $0.operandSize == 4 },
            equivalentEncoding: nil,
            correct: { result, context in
                guard result.exception == nil else { return }
                let equal = context.before[0] & 0xFFFF_FFFF == context.rmValue & 0xFFFF_FFFF
                if equal && context.rmRegister != 0 { result.gpr[0] = context.before[0] }
                if !equal, let rm = context.rmRegister, rm != 0 { result.gpr[rm] = context.before[rm] }
            }),
        UnicornDeviation(
            instruction: "LSS/LFS/LGS with REX.W (m16:64)",
            sdm: "LSS/LFS/LGS: \"REX + 0F B2 /r LSS r64,m16:64\": with REX.W the far pointer's offset is 64 bits, "
                + "the selector after it (AMD's manual differs: m16:32)",
            unicorn: "reads m16:32, as AMD describes it. (The tests put a second selector, good for the same "
                + "outcome, in the offset's bits 32-47, where unicorn reads one.)",
            applies: { ["lss Gv,Mp", "lfs Gv,Mp", "lgs Gv,Mp"].contains($0.form) && $0.operandSize == 8 },
            equivalentEncoding: nil,
            correct: { result, context in
                guard result.exception == nil, context.rmBytes.count >= 10, let reg = context.regIndex else { return }
                result.gpr[reg] = UnicornDeviations.le(context.rmBytes[0..<8])
                let segment = ["lss Gv,Mp": 2, "lfs Gv,Mp": 4, "lgs Gv,Mp": 5][context.form] ?? 2
                result.selectors[segment] = UInt16(UnicornDeviations.le(context.rmBytes[8..<10]))
            }),
        UnicornDeviation(
            instruction: "POPCNT (F3 0F B8)",
            sdm: "POPCNT: \"DEST <- number of bits set in SRC; ... OF, SF, ZF, AF, CF, PF are all cleared. ZF is set "
                + "if SRC = 0, otherwise ZF is cleared.\" SoftKVM's CPUID has POPCNT",
            unicorn: "its CPU model's CPUID.01H:ECX.POPCNT[bit 23] is 0: #UD",
            applies: { $0.form == "popcnt Gv,Ev" },
            equivalentEncoding: nil,
            correct: { result, context in
                guard result.exception == 6, let reg = context.regIndex else { return }
                let size = context.operandSize
                let source = context.rmValue & UnicornDeviations.mask(size)
                var gpr = context.before
                let count = UInt64(source.nonzeroBitCount)
                gpr[reg] = size == 2 ? (gpr[reg] & ~0xFFFF) | count : count
                let flags = (context.beforeFlags & ~RFLAGS.arithmetic) | (source == 0 ? RFLAGS.zf : 0)
                result.gpr = gpr
                result.rip = context.address &+ UInt64(context.bytes.count)
                result.rflags = flags
                result.selectors = context.beforeSelectors
                result.exception = nil
            }),
        UnicornDeviation(
            instruction: "JMP m16:64 (REX.W FF /5) to a 64-bit code segment with a non-canonical offset",
            sdm: "JMP, 64-Bit Mode Exceptions: \"#GP(0) If target offset in destination operand is non-canonical.\"",
            unicorn: "jumps, leaving RIP non-canonical",
            applies: { $0.form == "jmp Mp" && $0.mode64 },
            equivalentEncoding: nil,
            correct: { result, context in
                let top = Int64(bitPattern: result.rip) >> 47
                guard result.exception == nil, top != 0 && top != -1 else { return }
                result.fault(13, context)
            }),
        UnicornDeviation(
            instruction: "MOV SS, r/m16 and LSS in 64-bit mode (at CPL 0) with a null selector whose RPL is not the CPL",
            sdm: "MOV, LSS, 64-Bit Mode Exceptions: \"#GP(selector) If an attempt is made to load SS register with "
                + "NULL segment selector when CPL < 3 and CPL != RPL.\"",
            unicorn: "loads it",
            applies: { context in
                guard context.mode64 else { return false }
                let selector: UInt64
                if context.form == "mov ss,Ew" {
                    selector = context.rmValue & 0xFFFF
                } else if context.form == "lss Gv,Mp", context.rmBytes.count >= context.operandSize + 2 {
                    selector = UnicornDeviations.le(context.rmBytes[context.operandSize..<context.operandSize + 2])
                } else {
                    return false
                }
                return selector & 0xFFFC == 0 && selector & 3 != 0
            },
            equivalentEncoding: nil,
            correct: { result, context in
                result.fault(13, context)
            }),
        UnicornDeviation(
            instruction: "LOCK NEG m8/m16/m32/m64",
            sdm: "NEG: \"The CF flag set to 0 if the source operand is 0; otherwise it is set to 1. The OF, SF, ZF, AF, "
                + "and PF flags are set according to the result.\"",
            unicorn: "computes the flags of a locked NEG from the wrong operands",
            applies: { $0.form.hasPrefix("neg ") && $0.memoryOperand && $0.bytes.contains(0xF0) },
            equivalentEncoding: nil,
            correct: { result, context in
                let size = context.operandSize
                let mask = UnicornDeviations.mask(size)
                let value = context.rmValue & mask
                let negated = (0 &- value) & mask
                let sign: UInt64 = 1 << UInt64(size * 8 - 1)
                var flags: UInt64 = 0
                if value != 0 { flags |= RFLAGS.cf }
                if value == sign { flags |= RFLAGS.of }
                if negated == 0 { flags |= RFLAGS.zf }
                if negated & sign != 0 { flags |= RFLAGS.sf }
                if (negated & 0xFF).nonzeroBitCount % 2 == 0 { flags |= RFLAGS.pf }
                if value & 0xF != 0 { flags |= RFLAGS.af }
                result.rflags = (result.rflags & ~RFLAGS.arithmetic) | flags
            }),
        UnicornDeviation(
            instruction: "JMP ptr16:32 (66 EA) and JMP m16:32 (66 FF /5) in real mode with an offset beyond FFFFH",
            sdm: "JMP, real-address mode: \"tempEIP <- DEST(Offset); IF tempEIP is beyond code segment limit THEN #GP(0)\"",
            unicorn: "jumps, with EIP the whole 32-bit offset",
            applies: { context in
                guard context.realMode && context.operandSize == 4 else { return false }
                if context.form == "jmp ptr16:z" { return context.immediate > 0xFFFF }
                return context.form == "jmp Mp" && context.rmValue & 0xFFFF_FFFF > 0xFFFF
            },
            equivalentEncoding: nil,
            correct: { result, context in
                result.fault(13, context)
            }),
    ]
}
