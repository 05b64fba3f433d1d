import Testing
@testable import X86

/// x87 states and operands that reach the edges of the 80-bit format and
/// of the instructions: signed zeros, denormals and pseudo-denormals,
/// unnormals, infinities, QNaNs, SNaNs, the indefinite, pseudo-NaNs and
/// pseudo-infinities, integer and BCD range limits, halfway cases for
/// rounding, arguments near the transcendentals' range limits.
enum X87Edge {
    static func value(_ significand: UInt64, _ signExponent: UInt16) -> X87Value {
        X87Value(significand: significand, signExponent: signExponent)
    }

    /// Exactly representable values the instructions treat specially.
    static let specials: [Float80] = [
        0.5, 1.5, 2.5, -0.5, -1.5, 1, 2, 3, 10, 0.25, 0.75, 1e-5, -1e-5, 0.999, -0.999, 1.0001,
        32767, 32767.5, 32768, -32768, -32768.5, -32769, 2_147_483_647, 2_147_483_647.5, 2_147_483_648, -2_147_483_648,
        -2_147_483_648.5, -2_147_483_649, 9_223_372_036_854_775_807, 9_223_372_036_854_775_808, -9_223_372_036_854_775_808,
        999_999_999_999_999_999, 1_000_000_000_000_000_000, -999_999_999_999_999_999, 999_999_999_999_999_999.5,
        .pi, -.pi, 2 * .pi, .pi / 2, .pi / 4, 3 * .pi / 4, 0x1p63, -0x1p63, 0x1p62, 0x1p64, 0x1p-64, 0x1p-16382, 0x1p16383,
        16384, -16384, 16383, -16383, 0x1p15, 20000, -20000, 64, 63.5, -64.5, 1e4000, -1e-4000,
    ]

    static func register(_ random: inout SplitMix) -> X87Value {
        let sign: UInt16 = random.next() % 2 == 0 ? 0 : 0x8000
        let r = random.next()
        switch random.next() % 18 {
        case 0: return value(0, sign)
        case 1, 2: return value(r | 1 << 63, sign | UInt16(0x3FFF - 70 + Int(random.next() % 140)))
        case 3: return value(r | 1 << 63, sign | UInt16(1 + random.next() % 0x7FFE))
        case 4: return value(max(1, (r >> 1) >> (random.next() % 63)), sign)  // denormal
        case 5: return value(r | 1 << 63, sign)  // pseudo-denormal
        case 6: return value(r >> 1, sign | UInt16(1 + random.next() % 0x7FFE))  // unnormal
        case 7: return value(1 << 63, sign | 0x7FFF)  // infinity
        case 8: return value(0xC000_0000_0000_0000 | r >> 2, sign | 0x7FFF)  // QNaN
        case 9: return value(0x8000_0000_0000_0000 | max(1, r >> 2), sign | 0x7FFF)  // SNaN
        case 10: return value(0xC000_0000_0000_0000, 0xFFFF)  // the indefinite
        case 11: return value(r >> 1, sign | 0x7FFF)  // pseudo-NaN, pseudo-infinity
        case 12: return value(1 << 63, sign | UInt16(0x3FFF + Int(random.next() % 20) - 10))  // powers of two
        case 13: return value((1 << 63) | (r & 0x7FF), sign | UInt16(0x3FFF + Int(random.next() % 128) - 64))  // near powers of two
        case 14: return value(r | 1 << 63, sign | UInt16(1 + random.next() % 3))  // tiny normals
        case 15: return value(r | 1 << 63, sign | UInt16(0x7FFE - random.next() % 3))  // huge normals
        default: return X87Value(specials[Int(random.next() % UInt64(specials.count))])
        }
    }

    /// A control word: every precision and rounding mode, and mostly every
    /// exception masked; sometimes some or all unmasked.
    static func controlWord(_ random: inout SplitMix) -> UInt16 {
        let modes = UInt16(truncatingIfNeeded: random.next()) & 0x1F00
        let masks: UInt16
        switch random.next() % 4 {
        case 0: masks = UInt16(truncatingIfNeeded: random.next()) & 0x3F
        case 1: masks = 0
        default: masks = 0x3F
        }
        return modes | masks | 0x40
    }

    /// Bytes of a memory operand of `size` for escape `escape`.
    static func operand(_ random: inout SplitMix, escape: Int, reg: Int, size: Int) -> [UInt8] {
        func bytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        let r = random.next()
        switch (escape, size) {
        case (_, 4) where escape == 0 || escape == 1:
            return bytes(UInt32(truncatingIfNeeded: EdgeOperands.singleLane(&random)))
        case (_, 8) where escape == 4 || escape == 5:
            return bytes(EdgeOperands.doubleLane(&random))
        case (7, 10) where reg == 4:  // packed BCD: valid digits, a bad digit, any sign byte
            var digits = [UInt8](repeating: 0, count: 10)
            for i in 0..<9 { digits[i] = UInt8((random.next() % 10) << 4 | random.next() % 10) }
            if random.next() % 4 == 0 { digits[Int(random.next() % 9)] |= 0xA0 }
            if random.next() % 4 == 0 { for i in Int(random.next() % 9)..<9 { digits[i] = 0 } }
            digits[9] = [0x00, 0x80, 0x7F, 0xFF][Int(random.next() % 4)]
            return digits
        case (_, 10):
            var v = register(&random)
            return withUnsafeBytes(of: &v.significand, Array.init) + bytes(v.signExponent)
        default:  // integers: 0, ±1, the range limits, random
            let limits: [UInt64] = [0, 1, ~0, 0x7FFF, 0x8000, 0x7FFF_FFFF, 0x8000_0000, 0x7FFF_FFFF_FFFF_FFFF, 1 << 63, 0xFFFF_8000]
            let value = random.next() % 2 == 0 ? limits[Int(random.next() % UInt64(limits.count))] : r >> (random.next() % 64)
            return Array(bytes(value).prefix(size))
        }
    }
}

/// The x87 data instructions, run on the soft CPU and natively on the
/// host CPU from the same state (an FRSTOR image of random control and
/// status words, tags and registers), the state stored back with FNSAVE
/// (which waits for nothing, so that unmasked exceptions can be tested
/// too: the host takes no #MF). Compared: the FNSAVE image bit for bit
/// (FCW, FSW with C0-C3, TOP, the flags, ES and B, the full tag word,
/// ST0-ST7), FOP, FIP and FDP relative to the instruction and the
/// operand, the memory operand, EFLAGS.
@Suite("x87 data instructions against the host CPU")
struct X87DataTests {
    static let operandOffset = 0x100
    static let saveOffset = 0x200

    /// lea rbx, [rip]; mov rcx, rsi; cmp eax, edx; frstor [rsi]; the
    /// instruction (memory forms on [rsi + 0x100]); fnsave [rsi + 0x200].
    static func snippet(escape: Int, modrm: Int) -> (code: [UInt8], instructionOffset: Int) {
        var code: [UInt8] = [0x48, 0x8D, 0x1D, 0, 0, 0, 0, 0x48, 0x89, 0xF1, 0x39, 0xD0, 0xDD, 0x26]
        let at = code.count - 7  // from the address LEA gives RBX
        code += [UInt8(0xD8 + escape)]
        if modrm < 0xC0 {
            code += [UInt8(0x80 | (modrm & 0x38) | 6), 0x00, 0x01, 0x00, 0x00]
        } else {
            code += [UInt8(modrm)]
        }
        code += [0xDD, 0xB6, 0x00, 0x02, 0x00, 0x00]
        return (code, at)
    }

    /// An FNSAVE image with every exception the control word unmasks clear
    /// in the status word (else FRSTOR would leave one pending on the host).
    static func image(_ random: inout SplitMix, fcw: UInt16? = nil, registers: [X87Value]? = nil,
                      emptyChance: UInt64 = 4) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 108)
        func put16(_ offset: Int, _ value: UInt16) { image[offset] = UInt8(value & 0xFF); image[offset + 1] = UInt8(value >> 8) }
        let control = fcw ?? X87Edge.controlWord(&random)
        var status = UInt16(truncatingIfNeeded: random.next()) & 0x7F7F
        status &= ~(0x3F & ~control)
        put16(0, control)
        put16(4, status)
        let top = Int(status >> 11) & 7
        var tagWord: UInt16 = 0
        for i in 0..<8 {
            let value = registers.map { $0[i] } ?? X87Edge.register(&random)
            var significand = value.significand
            withUnsafeBytes(of: &significand) { image.replaceSubrange(28 + 10 * i..<36 + 10 * i, with: $0) }
            put16(36 + 10 * i, value.signExponent)
            let physical = (top + i) & 7
            let empty = emptyChance != 0 && random.next() % emptyChance == 0
            tagWord |= (empty ? 3 : value.tag) << UInt16(2 * physical)
        }
        put16(8, tagWord)
        return image
    }

    static func snapshot(image: [UInt8], operand: [UInt8], random: inout SplitMix) -> SIMDSnapshot {
        var snapshot = SIMDSnapshot()
        for i in 0..<SIMDSnapshot.memorySize { snapshot.memory[i] = 0xCC }
        snapshot.memory.replaceSubrange(0..<108, with: image)
        snapshot.memory.replaceSubrange(operandOffset..<operandOffset + operand.count, with: operand)
        // cmp eax, edx: below, equal, above, and parity both ways (FCMOVcc reads CF ZF PF).
        let pairs: [(UInt64, UInt64)] = [(1, 2), (2, 2), (3, 2), (0, 3), (7, 4), (4, 4)]
        let (a, d) = pairs[Int(random.next() % UInt64(pairs.count))]
        snapshot.gpr = [a, 0, d, 0]
        return snapshot
    }

    static func word32(_ memory: [UInt8], _ offset: Int) -> UInt32 {
        memory[offset..<offset + 4].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) }
    }

    /// Runs the snippet on both CPUs and compares.
    func expectSame(escape: Int, modrm: Int, _ before: SIMDSnapshot, _ what: @autoclosure () -> String,
                    sourceLocation: SourceLocation = #_sourceLocation) {
        let (code, at) = Self.snippet(escape: escape, modrm: modrm)
        var host = HostCPU.run(code, before)
        // The host thread may be switched out between the instruction and
        // FNSAVE; the kernel's save and restore need not keep FIP and FDP.
        for _ in 0..<3 where Self.word32(host.memory, Self.saveOffset + 12) &- UInt32(truncatingIfNeeded: host.gpr[3]) != UInt32(at) {
            host = HostCPU.run(code, before)
        }
        let (soft, exit) = SoftCPU.run(code, before)
        guard exit == .halt else {
            Issue.record("\(what()): \(exit)", sourceLocation: sourceLocation)
            return
        }
        let save = Self.saveOffset
        var hostMemory = host.memory, softMemory = soft.memory
        // FIP, FDP: relative to the instruction (LEA's RBX) and the operand
        // (RSI, copied to RCX); FCS and FDS: each CPU's own selectors.
        let hostFIP = Self.word32(host.memory, save + 12) &- UInt32(truncatingIfNeeded: host.gpr[3])
        let softFIP = Self.word32(soft.memory, save + 12) &- UInt32(truncatingIfNeeded: soft.gpr[3])
        let hostFDP = Self.word32(host.memory, save + 20) &- UInt32(truncatingIfNeeded: host.gpr[1])
        let softFDP = Self.word32(soft.memory, save + 20) &- UInt32(truncatingIfNeeded: soft.gpr[1])
        for offset in [save + 12, save + 13, save + 14, save + 15, save + 16, save + 17, save + 20, save + 21, save + 22,
                       save + 23, save + 24, save + 25] {
            hostMemory[offset] = 0
            softMemory[offset] = 0
        }
        #expect(softFIP == hostFIP && softFIP == UInt32(at), "\(what()): FIP \(softFIP), host \(hostFIP)", sourceLocation: sourceLocation)
        if modrm < 0xC0 {
            #expect(softFDP == hostFDP && softFDP == UInt32(Self.operandOffset), "\(what()): FDP \(softFDP), host \(hostFDP)",
                    sourceLocation: sourceLocation)
        }
        #expect(Array(soft.memory[save + 16..<save + 18]) == [8, 0], "\(what()): FCS", sourceLocation: sourceLocation)
        if softMemory != hostMemory {
            func hex(_ bytes: ArraySlice<UInt8>) -> String { bytes.reversed().map { String(format: "%02x", $0) }.joined() }
            var lines: [String] = []
            lines.append("FCW \(hex(hostMemory[save..<save + 2])) FSW host \(hex(hostMemory[save + 4..<save + 6])) soft \(hex(softMemory[save + 4..<save + 6]))"
                + " FTW host \(hex(hostMemory[save + 8..<save + 10])) soft \(hex(softMemory[save + 8..<save + 10]))"
                + " FOP host \(hex(hostMemory[save + 18..<save + 20])) soft \(hex(softMemory[save + 18..<save + 20]))")
            for i in 0..<8 {
                let range = save + 28 + 10 * i..<save + 38 + 10 * i
                if hostMemory[range] != softMemory[range] { lines.append("ST\(i) host \(hex(hostMemory[range])) soft \(hex(softMemory[range]))") }
            }
            let operand = Self.operandOffset..<Self.operandOffset + 16
            if hostMemory[operand] != softMemory[operand] { lines.append("operand host \(hex(hostMemory[operand])) soft \(hex(softMemory[operand]))") }
            let other = (0..<SIMDSnapshot.memorySize).filter { hostMemory[$0] != softMemory[$0] && !operand.contains($0) && !(save..<save + 108).contains($0) }
            if !other.isEmpty { lines.append("other bytes differ at \(other.prefix(8))") }
            Issue.record("\(what()): \(lines.joined(separator: "; "))", sourceLocation: sourceLocation)
        }
        #expect(soft.flags == host.flags, "\(what()): EFLAGS soft \(String(soft.flags, radix: 16)) host \(String(host.flags, radix: 16))",
                sourceLocation: sourceLocation)
    }

    static func describe(_ escape: Int, _ modrm: Int, _ before: SIMDSnapshot) -> String {
        let image = before.memory[0..<108].map { String(format: "%02x", $0) }.joined()
        let operand = before.memory[operandOffset..<operandOffset + 10].map { String(format: "%02x", $0) }.joined()
        return String(format: "%02X %02X", 0xD8 + escape, modrm) + " from \(image) operand \(operand) gpr \(before.gpr)"
    }

    /// The defined register forms (not the control ones, FNSTSW AX and DB E0-E4).
    static func registerForms(_ escape: Int) -> [Int] {
        (0xC0...0xFF).filter { modrm in
            let undefined = x87UndefinedForTests[escape] >> UInt64(modrm - 0xC0) & 1 != 0
            let control = (escape == 3 && modrm >= 0xE0 && modrm <= 0xE4) || (escape == 7 && modrm == 0xE0)
            return !undefined && !control
        }
    }

    static let x87UndefinedForTests: [UInt64] = [
        0, 0x0000_80CC_00FE_0000, 0xFFFF_FDFF_0000_0000, 0xFF00_00E0_0000_0000, 0, 0xFFFF_0000_0000_0000,
        0x0000_0000_FD00_0000, 0xFF00_00FE_0000_0000,
    ]

    /// Memory forms and their operand sizes (the control forms and the undefined ones left out).
    static let memoryForms: [(escape: Int, reg: Int, size: Int)] = {
        let sizes: [[Int]] = [
            [4, 4, 4, 4, 4, 4, 4, 4], [4, 0, 4, 4, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 0, 10, 0, 10],
            [8, 8, 8, 8, 8, 8, 8, 8], [8, 8, 8, 8, 0, 0, 0, 0], [2, 2, 2, 2, 2, 2, 2, 2], [2, 2, 2, 2, 10, 8, 10, 8],
        ]
        return (0..<8).flatMap { e in (0..<8).compactMap { r in sizes[e][r] == 0 ? nil : (e, r, sizes[e][r]) } }
    }()

    @Test(arguments: 0..<8)
    func everyRegisterFormMatchesTheHost(escape: Int) {
        var random = SplitMix(seed: 0x87_0000 + UInt64(escape))
        for modrm in Self.registerForms(escape) {
            for _ in 0..<48 {
                let before = Self.snapshot(image: Self.image(&random), operand: [], random: &random)
                expectSame(escape: escape, modrm: modrm, before, Self.describe(escape, modrm, before))
            }
        }
    }

    @Test func everyMemoryFormMatchesTheHost() {
        var random = SplitMix(seed: 0x87_1000)
        for form in Self.memoryForms {
            let modrm = form.reg << 3
            for _ in 0..<120 {
                let operand = X87Edge.operand(&random, escape: form.escape, reg: form.reg, size: form.size)
                let before = Self.snapshot(image: Self.image(&random), operand: operand, random: &random)
                expectSame(escape: form.escape, modrm: modrm, before, Self.describe(form.escape, modrm, before))
            }
        }
    }

    /// FADD FMUL FSUB FSUBR FDIV FDIVR ST0, ST1, FSQRT, FRNDINT, FSCALE
    /// and FLDPI/FLDL2T/FLDL2E/FLDLG2/FLDLN2 in each of the twelve
    /// precision and rounding combinations (PC 01 is reserved), with every
    /// exception masked and then unmasked, on normal, tiny and huge operands.
    @Test func arithmeticRoundsInEveryPrecisionAndRoundingMode() {
        var random = SplitMix(seed: 0x87_2000)
        let forms: [(Int, Int)] = [(0, 0xC1), (0, 0xC9), (0, 0xE1), (0, 0xE9), (0, 0xF1), (0, 0xF9), (1, 0xFA), (1, 0xFC),
                                   (1, 0xFD), (1, 0xE9), (1, 0xEA), (1, 0xEB), (1, 0xEC), (1, 0xED)]
        for pc: UInt16 in [0, 2, 3] {
            for rc: UInt16 in 0..<4 {
                for masks: UInt16 in [0x3F, 0x00, 0x20] {
                    let fcw = rc << 10 | pc << 8 | masks | 0x40
                    for (escape, modrm) in forms {
                        for _ in 0..<12 {
                            let scale = [0x3FFF, 0x3FFF, 4, 0x7FFA, 0x3FFF + 30][Int(random.next() % 5)]
                            let registers = (0..<8).map { _ in
                                X87Value(significand: random.next() | 1 << 63,
                                         signExponent: UInt16(scale + Int(random.next() % 8) - 4) | (random.next() % 3 == 0 ? 0x8000 : 0))
                            }
                            var image = Self.image(&random, fcw: fcw, registers: registers, emptyChance: 0)
                            image[4] = 0
                            image[5] &= 0x38  // TOP only: no flags set before
                            let before = Self.snapshot(image: image, operand: [], random: &random)
                            expectSame(escape: escape, modrm: modrm, before, Self.describe(escape, modrm, before))
                        }
                    }
                }
            }
        }
    }

    /// Loads onto a full stack overflow; everything on an empty stack underflows.
    @Test func stackOverflowAndUnderflowMatchTheHost() {
        var random = SplitMix(seed: 0x87_3000)
        for masks: UInt16 in [0x3F, 0x3E] {
            let fcw = 0x0340 | masks
            for full in [true, false] {
                var image = Self.image(&random, fcw: fcw, emptyChance: 0)
                image[4] = 0
                image[5] &= 0x38
                image[8] = full ? image[8] : 0xFF
                image[9] = full ? image[9] : 0xFF
                // Register forms that push (FLD ST(i), the constants, FXTRACT, FPTAN, FSINCOS) and the rest.
                for escape in 0..<8 {
                    for modrm in Self.registerForms(escape) {
                        let before = Self.snapshot(image: image, operand: [], random: &random)
                        expectSame(escape: escape, modrm: modrm, before, (full ? "full: " : "empty: ") + Self.describe(escape, modrm, before))
                    }
                }
                for form in Self.memoryForms {
                    let operand = X87Edge.operand(&random, escape: form.escape, reg: form.reg, size: form.size)
                    let before = Self.snapshot(image: image, operand: operand, random: &random)
                    expectSame(escape: form.escape, modrm: form.reg << 3, before,
                               (full ? "full: " : "empty: ") + Self.describe(form.escape, form.reg << 3, before))
                }
            }
        }
    }

    /// FLD ST(i), FST ST(i), FXCH, FCMOVcc, FFREE and the comparisons on a
    /// few registers, so that the operands are often the same register.
    @Test func comparisonsAndMovesMatchTheHost() {
        var random = SplitMix(seed: 0x87_4000)
        // (escape, ModRM, whether ModRM.rm names ST(i)).
        let forms: [(Int, Int, Bool)] = [
            (0, 0xD0, true), (0, 0xD8, true), (2, 0xE9, false), (3, 0xE8, true), (3, 0xF0, true), (7, 0xE8, true),
            (7, 0xF0, true), (5, 0xE0, true), (5, 0xE8, true), (6, 0xD9, false), (1, 0xE4, false), (1, 0xE5, false),
            (2, 0xC0, true), (2, 0xC8, true), (2, 0xD0, true), (2, 0xD8, true), (3, 0xC0, true), (3, 0xC8, true),
            (3, 0xD0, true), (3, 0xD8, true), (1, 0xC8, true), (1, 0xC0, true), (5, 0xD0, true), (5, 0xD8, true),
            (5, 0xC0, true), (7, 0xC0, true),
        ]
        for (escape, base, indexed) in forms {
            for i in indexed ? [0, 1] : [0] {
                for _ in 0..<40 {
                    let a = X87Edge.register(&random), b = random.next() % 3 == 0 ? a : X87Edge.register(&random)
                    let before = Self.snapshot(image: Self.image(&random, registers: [a, b, a, b, a, b, a, b]), operand: [], random: &random)
                    let modrm = base + i
                    expectSame(escape: escape, modrm: modrm, before, Self.describe(escape, modrm, before))
                }
            }
        }
    }

    /// Sequences of random data instructions with every exception masked
    /// (an unmasked one would take #MF natively at the next), each from a
    /// random state and with sixteen operands in memory: the FNSAVE image
    /// but its pointers, the operands and EFLAGS must match.
    @Test func randomSequencesMatchTheHost() {
        var random = SplitMix(seed: 0x87_5000)
        let registerForms = (0..<8).flatMap { escape in Self.registerForms(escape).map { (escape, $0) } }
        for round in 0..<300 {
            let fcw = X87Edge.controlWord(&random) | 0x3F
            var before = Self.snapshot(image: Self.image(&random, fcw: fcw), operand: [], random: &random)
            var code: [UInt8] = [0x39, 0xD0, 0xDD, 0x26]  // cmp eax, edx; frstor [rsi]
            var names: [String] = []
            for slot in 0..<16 {
                let form = Self.memoryForms[Int(random.next() % UInt64(Self.memoryForms.count))]
                let operand = X87Edge.operand(&random, escape: form.escape, reg: form.reg, size: form.size)
                before.memory.replaceSubrange(Self.operandOffset + 16 * slot..<Self.operandOffset + 16 * slot + operand.count, with: operand)
            }
            for _ in 0..<12 {
                if random.next() % 2 == 0 {
                    let (escape, modrm) = registerForms[Int(random.next() % UInt64(registerForms.count))]
                    code += [UInt8(0xD8 + escape), UInt8(modrm)]
                    names.append(String(format: "%02X %02X", 0xD8 + escape, modrm))
                } else {
                    let form = Self.memoryForms[Int(random.next() % UInt64(Self.memoryForms.count))]
                    let slot = Int(random.next() % 16)
                    code += [UInt8(0xD8 + form.escape), UInt8(0x86 | form.reg << 3)]
                    code += withUnsafeBytes(of: UInt32(Self.operandOffset + 16 * slot).littleEndian, Array.init)
                    names.append(String(format: "%02X /%d [%d]", 0xD8 + form.escape, form.reg, slot))
                }
            }
            code += [0xDD, 0xB6, 0x00, 0x02, 0x00, 0x00]  // fnsave [rsi + 0x200]
            let host = HostCPU.run(code, before)
            let (soft, exit) = SoftCPU.run(code, before)
            #expect(exit == .halt, "round \(round): \(exit)")
            var hostMemory = host.memory, softMemory = soft.memory
            for offset in [12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 25] {
                hostMemory[Self.saveOffset + offset] = 0
                softMemory[Self.saveOffset + offset] = 0
            }
            let differing = (0..<SIMDSnapshot.memorySize).filter { hostMemory[$0] != softMemory[$0] }
            #expect(differing.isEmpty, "round \(round): \(names) differ at \(differing.prefix(12).map { String($0, radix: 16) })")
            #expect(soft.flags == host.flags, "round \(round): \(names) EFLAGS")
        }
    }

    /// One value of each class the instructions tell apart.
    static let representatives: [X87Value] = [
        X87Value(significand: 0, signExponent: 0), X87Value(significand: 0, signExponent: 0x8000),
        X87Value(significand: 1, signExponent: 0), X87Value(significand: 0x7FFF_FFFF_FFFF_FFFF, signExponent: 0x8000),
        X87Value(significand: 1 << 63, signExponent: 0),  // pseudo-denormal
        X87Value(1), X87Value(-1), X87Value(1.5), X87Value(-0.5), X87Value(3), X87Value(0.1), X87Value(.pi), X87Value(0x1p63),
        X87Value(significand: ~0, signExponent: 0x7FFE), X87Value(significand: 1 << 63, signExponent: 0x8001),
        X87Value(significand: 0x1234, signExponent: 0x4000),  // unnormal
        X87Value(significand: 1 << 63, signExponent: 0x7FFF), X87Value(significand: 1 << 63, signExponent: 0xFFFF),
        X87Value(significand: 0xC000_0000_0000_1234, signExponent: 0x7FFF), X87Value(significand: 0xE000_0000_0000_0000, signExponent: 0xFFFF),
        X87Value(significand: 0x8000_0000_0000_0001, signExponent: 0x7FFF), X87Value(significand: 0xA000_0000_0000_0000, signExponent: 0xFFFF),
        X87Value(significand: 0xC000_0000_0000_0000, signExponent: 0xFFFF),  // the indefinite
        X87Value(significand: 0x4000_0000_0000_0000, signExponent: 0x7FFF),  // pseudo-NaN
        X87Value(significand: 0, signExponent: 0x7FFF),  // pseudo-infinity
    ]

    /// Every pair of classes in ST0 and ST1 for the two-operand forms and
    /// every class in ST0 for the one-operand ones: every exception masked
    /// in the default modes, then every exception unmasked in single
    /// precision rounding up.
    @Test func everyOperandClassPairMatchesTheHost() {
        var random = SplitMix(seed: 0x87_6000)
        let forms: [(Int, Int)] = [(0, 0xC1), (0, 0xC9), (0, 0xD1), (0, 0xE1), (0, 0xE9), (0, 0xF1), (0, 0xF9), (3, 0xF1), (3, 0xE9),
                                   (5, 0xE1), (1, 0xF1), (1, 0xF3), (1, 0xF5), (1, 0xF8), (1, 0xF9), (1, 0xFD)]
            + [0xE0, 0xE1, 0xE4, 0xE5, 0xF0, 0xF2, 0xF4, 0xFA, 0xFB, 0xFC, 0xFE, 0xFF].map { (1, $0) }
        for fcw: UInt16 in [0x037F, 0x0840] {
            for (escape, modrm) in forms {
                for a in Self.representatives {
                    for b in Self.representatives {
                        let registers = [a, b] + (0..<6).map { _ in X87Edge.register(&random) }
                        var image = Self.image(&random, fcw: fcw, registers: registers, emptyChance: 0)
                        image[4] = 0
                        image[5] = 0x30  // TOP 6, no flags
                        image[8] = 0xFF  // ST2-ST7 (R0-R5) empty, so that a push has room
                        image[9] = 0x0F
                        let before = Self.snapshot(image: image, operand: [], random: &random)
                        expectSame(escape: escape, modrm: modrm, before, Self.describe(escape, modrm, before))
                        if modrm >= 0xE0 && escape == 1 && ![0xF1, 0xF3, 0xF5, 0xF8, 0xF9, 0xFD].contains(modrm) { break }
                    }
                }
            }
        }
    }
}
