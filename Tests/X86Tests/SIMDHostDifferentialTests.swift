import Testing
@testable import X86

/// SSE, SSE2 and MMX instructions run on the soft CPU and natively on the
/// host CPU from the same registers, with edge operands (zeros, denormals,
/// infinities, NaNs, values next to rounding ties, saturation limits) and
/// every MXCSR rounding mode with FTZ and DAZ: the registers, MXCSR (its
/// exception flags included), the arithmetic flags and memory must match.
/// Exceptions stay masked here (an unmasked one would signal the test
/// process); SIMDExceptionTests covers them against the SDM.
@Suite("SIMD instructions against the host CPU")
struct SIMDHostDifferentialTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: [UInt8]
        /// Lanes are doubles (else singles) when making operands.
        var double = false
        /// Integer operands: random bytes with saturation edges.
        var integer = false
        var testDescription: String { name }
    }

    /// `prefix 0F op /r` with xmm0 (or mm0) as destination and xmm1 (mm1) as source.
    static func form(_ name: String, _ prefix: UInt8?, _ op: UInt8, modrm: UInt8 = 0xC1, imm: UInt8? = nil,
                     double: Bool = false, integer: Bool = false) -> Case {
        var bytes: [UInt8] = prefix.map { [$0] } ?? []
        bytes += [0x0F, op, modrm]
        if let imm { bytes.append(imm) }
        return Case(name: name, bytes: bytes, double: double, integer: integer)
    }

    static let arithmetic: [Case] = {
        var cases: [Case] = []
        let ops: [(String, UInt8)] = [("ADD", 0x58), ("MUL", 0x59), ("SUB", 0x5C), ("MIN", 0x5D), ("DIV", 0x5E), ("MAX", 0x5F), ("SQRT", 0x51)]
        for (name, op) in ops {
            cases.append(form("\(name)PS", nil, op))
            cases.append(form("\(name)PD", 0x66, op, double: true))
            cases.append(form("\(name)SS", 0xF3, op))
            cases.append(form("\(name)SD", 0xF2, op, double: true))
            // The memory forms read [rsi].
            cases.append(form("\(name)SS m32", 0xF3, op, modrm: 0x06))
            cases.append(form("\(name)PD m128", 0x66, op, modrm: 0x06, double: true))
        }
        for predicate in UInt8(0)..<8 {
            cases.append(form("CMPPS \(predicate)", nil, 0xC2, imm: predicate))
            cases.append(form("CMPPD \(predicate)", 0x66, 0xC2, imm: predicate, double: true))
            cases.append(form("CMPSS \(predicate)", 0xF3, 0xC2, imm: predicate))
            cases.append(form("CMPSD \(predicate)", 0xF2, 0xC2, imm: predicate, double: true))
        }
        cases += [  // SSE3
            form("ADDSUBPS", 0xF2, 0xD0), form("ADDSUBPD", 0x66, 0xD0, double: true),
            form("HADDPS", 0xF2, 0x7C), form("HADDPD", 0x66, 0x7C, double: true),
            form("HSUBPS", 0xF2, 0x7D), form("HSUBPD", 0x66, 0x7D, double: true),
            form("HADDPS m128", 0xF2, 0x7C, modrm: 0x06),
        ]
        cases += [
            form("UCOMISS", nil, 0x2E), form("COMISS", nil, 0x2F),
            form("UCOMISD", 0x66, 0x2E, double: true), form("COMISD", 0x66, 0x2F, double: true),
        ]
        return cases
    }()

    static let conversions: [Case] = [
        form("CVTPS2PD", nil, 0x5A), form("CVTPD2PS", 0x66, 0x5A, double: true),
        form("CVTSS2SD", 0xF3, 0x5A), form("CVTSD2SS", 0xF2, 0x5A, double: true),
        form("CVTPS2DQ", 0x66, 0x5B), form("CVTTPS2DQ", 0xF3, 0x5B),
        form("CVTPD2DQ", 0xF2, 0xE6, double: true), form("CVTTPD2DQ", 0x66, 0xE6, double: true),
        // cvtss2si eax, xmm1 / cvttss2si / the 64-bit forms / from double
        Case(name: "CVTSS2SI r32", bytes: [0xF3, 0x0F, 0x2D, 0xC1]),
        Case(name: "CVTTSS2SI r32", bytes: [0xF3, 0x0F, 0x2C, 0xC1]),
        Case(name: "CVTSS2SI r64", bytes: [0xF3, 0x48, 0x0F, 0x2D, 0xC1]),
        Case(name: "CVTTSS2SI r64", bytes: [0xF3, 0x48, 0x0F, 0x2C, 0xC1]),
        Case(name: "CVTSD2SI r32", bytes: [0xF2, 0x0F, 0x2D, 0xC1], double: true),
        Case(name: "CVTTSD2SI r32", bytes: [0xF2, 0x0F, 0x2C, 0xC1], double: true),
        Case(name: "CVTSD2SI r64", bytes: [0xF2, 0x48, 0x0F, 0x2D, 0xC1], double: true),
        Case(name: "CVTTSD2SI r64", bytes: [0xF2, 0x48, 0x0F, 0x2C, 0xC1], double: true),
        Case(name: "CVTPS2PI", bytes: [0x0F, 0x2D, 0xC1]),
        Case(name: "CVTTPS2PI", bytes: [0x0F, 0x2C, 0xC1]),
        Case(name: "CVTPD2PI", bytes: [0x66, 0x0F, 0x2D, 0xC1], double: true),
        Case(name: "CVTTPD2PI", bytes: [0x66, 0x0F, 0x2C, 0xC1], double: true),
    ]

    /// Integer sources for the int-to-float conversions (in RAX, RCX, MM1 and XMM1).
    static let integerConversions: [Case] = [
        Case(name: "CVTSI2SS r32", bytes: [0xF3, 0x0F, 0x2A, 0xC1]),
        Case(name: "CVTSI2SS r64", bytes: [0xF3, 0x48, 0x0F, 0x2A, 0xC1]),
        Case(name: "CVTSI2SD r32", bytes: [0xF2, 0x0F, 0x2A, 0xC1]),
        Case(name: "CVTSI2SD r64", bytes: [0xF2, 0x48, 0x0F, 0x2A, 0xC1]),
        Case(name: "CVTDQ2PS", bytes: [0x0F, 0x5B, 0xC1]),
        Case(name: "CVTDQ2PD", bytes: [0xF3, 0x0F, 0xE6, 0xC1]),
        Case(name: "CVTPI2PS", bytes: [0x0F, 0x2A, 0xC1]),
        Case(name: "CVTPI2PD", bytes: [0x66, 0x0F, 0x2A, 0xC1]),
    ]

    static func check(_ testCase: Case, _ before: SIMDSnapshot, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let host = HostCPU.run(testCase.bytes, before)
        let (soft, exit) = SoftCPU.run(testCase.bytes, before)
        #expect(exit == .halt, "\(testCase.name) ended with \(exit)", sourceLocation: sourceLocation)
        guard soft == host else {
            Issue.record("\(testCase.name) from \(before)\n host: \(host)\n soft: \(soft)", sourceLocation: sourceLocation)
            return false
        }
        return true
    }

    @Test(arguments: arithmetic + conversions)
    func floatingPointMatchesTheHost(_ testCase: Case) {
        var random = SplitMix(seed: 0x5EED ^ UInt64(testCase.name.utf8.reduce(0) { $0 &* 31 &+ UInt64($1) }))
        var failures = 0
        for _ in 0..<600 where failures < 3 {
            var before = SIMDSnapshot()
            before.mxcsr = EdgeOperands.mxcsr(&random)
            before.xmm[0] = EdgeOperands.vector(&random, double: testCase.double)
            before.xmm[1] = EdgeOperands.vector(&random, double: testCase.double)
            let memory = EdgeOperands.vector(&random, double: testCase.double)
            withUnsafeBytes(of: memory) { before.memory.replaceSubrange(0..<16, with: $0) }
            if !Self.check(testCase, before) { failures += 1 }
        }
    }

    @Test(arguments: integerConversions)
    func integerToFloatMatchesTheHost(_ testCase: Case) {
        var random = SplitMix(seed: 0xC0FFEE)
        let edges: [UInt64] = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x00FF_FFFF, 0x0100_0001, 0x7FFF_FFFF_FFFF_FFFF,
                               0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0x0020_0000_0000_0001, 0x0000_0000_0100_0003]
        var failures = 0
        for _ in 0..<400 where failures < 3 {
            var before = SIMDSnapshot()
            before.mxcsr = EdgeOperands.mxcsr(&random)
            func pick() -> UInt64 { random.next() % 2 == 0 ? edges[Int(random.next() % UInt64(edges.count))] : random.next() >> (random.next() % 64) }
            before.gpr[1] = pick()
            before.mm[1] = pick()
            before.xmm[1] = UInt128(pick()) | UInt128(pick()) << 64
            before.xmm[0] = UInt128(random.next()) | UInt128(random.next()) << 64
            if !Self.check(testCase, before) { failures += 1 }
        }
    }

    /// Operands whose result lands next to the smallest normal (where
    /// tininess after rounding, FTZ and UE decide) or the largest finite
    /// value (OE, and rounding to the largest finite value or infinity).
    @Test(arguments: [
        form("MULSS", 0xF3, 0x59), form("DIVSS", 0xF3, 0x5E), form("ADDSS", 0xF3, 0x58), form("SUBSS", 0xF3, 0x5C),
        form("MULSD", 0xF2, 0x59, double: true), form("DIVSD", 0xF2, 0x5E, double: true),
        form("ADDSD", 0xF2, 0x58, double: true), form("SUBSD", 0xF2, 0x5C, double: true),
        form("CVTSD2SS", 0xF2, 0x5A, double: true),
    ])
    func rangeBoundariesMatchTheHost(_ testCase: Case) {
        var random = SplitMix(seed: 0xB0DE ^ UInt64(testCase.bytes.reduce(0) { $0 &* 7 &+ Int($1) }))
        let exponentBits: UInt64 = testCase.double ? 11 : 8
        let fractionBits: UInt64 = testCase.double ? 52 : 23
        let bias = Int((1 << (exponentBits - 1)) - 1)
        let isMultiply = testCase.bytes.contains(0x59), isDivide = testCase.bytes.contains(0x5E)
        func value(exponent: Int, nearOne: Bool) -> UInt64 {
            let biased = UInt64(max(1, min(exponent + bias, (1 << Int(exponentBits)) - 2)))
            var fraction = random.next() & ((1 << fractionBits) - 1)
            if nearOne { fraction = random.next() % 2 == 0 ? fraction >> (fractionBits - 3) : ((1 << fractionBits) - 1) ^ (fraction >> (fractionBits - 3)) }
            let sign: UInt64 = random.next() % 4 == 0 ? 1 << (exponentBits + fractionBits) : 0
            return sign | biased << fractionBits | fraction
        }
        var failures = 0
        var boundaryHits = 0
        for _ in 0..<800 where failures < 3 {
            var before = SIMDSnapshot()
            before.mxcsr = EdgeOperands.mxcsr(&random)
            let low = random.next() % 2 == 0
            let target = low ? 1 - bias - Int(random.next() % 3) : bias - Int(random.next() % 2)
            let first = Int(random.next() % UInt64(bias)) - bias / 2
            let second: Int
            if isMultiply { second = target - first } else if isDivide { second = first - target } else { second = target }
            let a = value(exponent: isMultiply || isDivide ? first : target, nearOne: true)
            let b = value(exponent: second, nearOne: true)
            let (x, y) = testCase.bytes.contains(0x5A)
                ? (UInt64(0), value(exponent: low ? -127 - Int(random.next() % 24) : 127, nearOne: true))
                : (a, b)
            before.xmm[0] = UInt128(x)
            before.xmm[1] = UInt128(y)
            if HostCPU.run(testCase.bytes, before).mxcsr & (MXCSRFlag.underflow | MXCSRFlag.overflow) != 0 { boundaryHits += 1 }
            if !Self.check(testCase, before) { failures += 1 }
        }
        // The operands must really reach the boundaries.
        #expect(boundaryHits > 100, "only \(boundaryHits) of 800 results underflowed or overflowed")
    }

    // MARK: Integer

    static let integerOps: [UInt8] = [
        0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x74, 0x75, 0x76,
        0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
        0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE8, 0xE9, 0xEA, 0xEB, 0xEC, 0xED, 0xEE, 0xEF,
        0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE,
    ]

    static let integer: [Case] =
        integerOps.map { form("66 0F \(String($0, radix: 16))", 0x66, $0, integer: true) }
        + integerOps.map { form("0F \(String($0, radix: 16)) (MMX)", nil, $0, integer: true) }
        + [form("66 0F 6C", 0x66, 0x6C, integer: true), form("66 0F 6D", 0x66, 0x6D, integer: true),
           form("PADDD m128", 0x66, 0xFE, modrm: 0x06, integer: true)]

    /// Bytes that reach the saturation and sign edges.
    static func integerVector(_ random: inout SplitMix) -> UInt128 {
        let edges: [UInt8] = [0x00, 0x01, 0x7F, 0x80, 0x81, 0xFE, 0xFF]
        var value: UInt128 = 0
        for i in 0..<16 {
            let byte = random.next() % 2 == 0 ? edges[Int(random.next() % 7)] : UInt8(truncatingIfNeeded: random.next())
            value |= UInt128(byte) << (8 * i)
        }
        return value
    }

    @Test(arguments: integer)
    func integerMatchesTheHost(_ testCase: Case) {
        var random = SplitMix(seed: UInt64(testCase.bytes.reduce(7) { $0 &* 131 &+ Int($1) }))
        let shiftCounts: [UInt64] = [0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 0x1_0000_0001, ~0]
        var failures = 0
        for round in 0..<200 where failures < 3 {
            var before = SIMDSnapshot()
            before.xmm[0] = Self.integerVector(&random)
            before.xmm[1] = Self.integerVector(&random)
            before.mm[0] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
            before.mm[1] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
            if round % 2 == 0 {  // shift counts in the source's low quadword
                let count = shiftCounts[round / 2 % shiftCounts.count]
                before.xmm[1] = (before.xmm[1] >> 64) << 64 | UInt128(count)
                before.mm[1] = count
            }
            let memory = Self.integerVector(&random)
            withUnsafeBytes(of: memory) { before.memory.replaceSubrange(0..<16, with: $0) }
            if !Self.check(testCase, before) { failures += 1 }
        }
    }

    /// SSSE3's 0F 38 instructions in XMM and MMX forms, and PALIGNR (0F 3A 0F) with every kind of shift.
    @Test func ssse3MatchesTheHost() {
        var random = SplitMix(seed: 0x55E3)
        var cases: [Case] = []
        for op: UInt8 in [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x1C, 0x1D, 0x1E] {
            cases.append(Case(name: "66 0F 38 \(String(op, radix: 16))", bytes: [0x66, 0x0F, 0x38, op, 0xC1]))
            cases.append(Case(name: "0F 38 \(String(op, radix: 16)) (MMX)", bytes: [0x0F, 0x38, op, 0xC1]))
            cases.append(Case(name: "66 0F 38 \(String(op, radix: 16)) m128", bytes: [0x66, 0x0F, 0x38, op, 0x06]))
        }
        for imm: UInt8 in [0, 1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 200] {
            cases.append(Case(name: "PALIGNR \(imm)", bytes: [0x66, 0x0F, 0x3A, 0x0F, 0xC1, imm]))
            cases.append(Case(name: "PALIGNR mm \(imm)", bytes: [0x0F, 0x3A, 0x0F, 0xC1, imm]))
        }
        for testCase in cases {
            for _ in 0..<40 {
                var before = SIMDSnapshot()
                before.xmm[0] = Self.integerVector(&random)
                before.xmm[1] = Self.integerVector(&random)
                before.mm[0] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
                before.mm[1] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
                let memory = Self.integerVector(&random)
                withUnsafeBytes(of: memory) { before.memory.replaceSubrange(0..<16, with: $0) }
                if !Self.check(testCase, before) { break }
            }
        }
    }

    /// The immediate forms: shifts, shuffles, word insert/extract, SHUFPS/PD.
    @Test func immediateFormsMatchTheHost() {
        var random = SplitMix(seed: 0x1234)
        var cases: [Case] = []
        for imm: UInt8 in [0, 1, 7, 8, 15, 16, 17, 31, 32, 63, 64, 200, 255] {
            for (op, kinds) in [(UInt8(0x71), [2, 4, 6]), (0x72, [2, 4, 6]), (0x73, [2, 3, 6, 7])] {
                for kind in kinds {
                    let modrm = UInt8(0xC0 | kind << 3)
                    cases.append(Self.form("66 0F \(String(op, radix: 16)) /\(kind) \(imm)", 0x66, op, modrm: modrm, imm: imm))
                    if !(op == 0x73 && (kind == 3 || kind == 7)) {
                        cases.append(Self.form("0F \(String(op, radix: 16)) /\(kind) \(imm) (MMX)", nil, op, modrm: modrm, imm: imm))
                    }
                }
            }
        }
        for _ in 0..<12 {
            let imm = UInt8(truncatingIfNeeded: random.next())
            cases += [
                Self.form("PSHUFD \(imm)", 0x66, 0x70, imm: imm), Self.form("PSHUFHW \(imm)", 0xF3, 0x70, imm: imm),
                Self.form("PSHUFLW \(imm)", 0xF2, 0x70, imm: imm), Self.form("PSHUFW \(imm)", nil, 0x70, imm: imm),
                Self.form("SHUFPS \(imm)", nil, 0xC6, imm: imm), Self.form("SHUFPD \(imm)", 0x66, 0xC6, imm: imm),
                Self.form("PINSRW xmm \(imm)", 0x66, 0xC4, imm: imm), Self.form("PINSRW mm \(imm)", nil, 0xC4, imm: imm),
                Self.form("PEXTRW xmm \(imm)", 0x66, 0xC5, imm: imm), Self.form("PEXTRW mm \(imm)", nil, 0xC5, imm: imm),
            ]
        }
        for testCase in cases {
            var before = SIMDSnapshot()
            before.xmm[0] = Self.integerVector(&random)
            before.xmm[1] = Self.integerVector(&random)
            before.mm[0] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
            before.mm[1] = UInt64(truncatingIfNeeded: Self.integerVector(&random))
            before.gpr = [random.next(), random.next(), random.next(), random.next()]
            _ = Self.check(testCase, before)
        }
    }

    /// Moves, logic, unpacks and masks between registers and memory.
    @Test func movesMatchTheHost() {
        let cases: [Case] = [
            Case(name: "MOVUPS load", bytes: [0x0F, 0x10, 0x06]), Case(name: "MOVUPS store", bytes: [0x0F, 0x11, 0x0E]),
            Case(name: "MOVUPD load", bytes: [0x66, 0x0F, 0x10, 0x06]), Case(name: "MOVAPS xmm", bytes: [0x0F, 0x28, 0xC1]),
            Case(name: "MOVAPD store", bytes: [0x66, 0x0F, 0x29, 0x0E]), Case(name: "MOVSS load", bytes: [0xF3, 0x0F, 0x10, 0x06]),
            Case(name: "MOVSS xmm", bytes: [0xF3, 0x0F, 0x10, 0xC1]), Case(name: "MOVSS store", bytes: [0xF3, 0x0F, 0x11, 0x0E]),
            Case(name: "MOVSD load", bytes: [0xF2, 0x0F, 0x10, 0x06]), Case(name: "MOVSD xmm", bytes: [0xF2, 0x0F, 0x10, 0xC1]),
            Case(name: "MOVSD xmm 11", bytes: [0xF2, 0x0F, 0x11, 0xC8]), Case(name: "MOVSD store", bytes: [0xF2, 0x0F, 0x11, 0x0E]),
            Case(name: "MOVLPS load", bytes: [0x0F, 0x12, 0x06]), Case(name: "MOVHLPS", bytes: [0x0F, 0x12, 0xC1]),
            Case(name: "MOVLPD load", bytes: [0x66, 0x0F, 0x12, 0x06]), Case(name: "MOVLPS store", bytes: [0x0F, 0x13, 0x0E]),
            Case(name: "MOVHPS load", bytes: [0x0F, 0x16, 0x06]), Case(name: "MOVLHPS", bytes: [0x0F, 0x16, 0xC1]),
            Case(name: "MOVHPD load", bytes: [0x66, 0x0F, 0x16, 0x06]), Case(name: "MOVHPS store", bytes: [0x0F, 0x17, 0x0E]),
            Case(name: "UNPCKLPS", bytes: [0x0F, 0x14, 0xC1]), Case(name: "UNPCKHPS", bytes: [0x0F, 0x15, 0xC1]),
            Case(name: "UNPCKLPD", bytes: [0x66, 0x0F, 0x14, 0xC1]), Case(name: "UNPCKHPD", bytes: [0x66, 0x0F, 0x15, 0xC1]),
            Case(name: "MOVNTPS", bytes: [0x0F, 0x2B, 0x0E]), Case(name: "MOVMSKPS", bytes: [0x0F, 0x50, 0xC1]),
            Case(name: "MOVMSKPD", bytes: [0x66, 0x0F, 0x50, 0xC1]), Case(name: "ANDPS", bytes: [0x0F, 0x54, 0xC1]),
            Case(name: "ANDNPD", bytes: [0x66, 0x0F, 0x55, 0xC1]), Case(name: "ORPS", bytes: [0x0F, 0x56, 0xC1]),
            Case(name: "XORPD m128", bytes: [0x66, 0x0F, 0x57, 0x06]),
            Case(name: "MOVD mm, r32", bytes: [0x0F, 0x6E, 0xC1]), Case(name: "MOVQ mm, r64", bytes: [0x48, 0x0F, 0x6E, 0xC1]),
            Case(name: "MOVD xmm, r32", bytes: [0x66, 0x0F, 0x6E, 0xC1]), Case(name: "MOVQ xmm, r64", bytes: [0x66, 0x48, 0x0F, 0x6E, 0xC1]),
            Case(name: "MOVD xmm, m32", bytes: [0x66, 0x0F, 0x6E, 0x06]),
            Case(name: "MOVD r32, mm", bytes: [0x0F, 0x7E, 0xC1]), Case(name: "MOVQ r64, xmm", bytes: [0x66, 0x48, 0x0F, 0x7E, 0xC1]),
            Case(name: "MOVD r32, xmm", bytes: [0x66, 0x0F, 0x7E, 0xC1]), Case(name: "MOVD m32, xmm", bytes: [0x66, 0x0F, 0x7E, 0x0E]),
            Case(name: "MOVQ xmm, xmm (F3 7E)", bytes: [0xF3, 0x0F, 0x7E, 0xC1]), Case(name: "MOVQ xmm, m64", bytes: [0xF3, 0x0F, 0x7E, 0x06]),
            Case(name: "MOVQ xmm, xmm (D6)", bytes: [0x66, 0x0F, 0xD6, 0xC8]), Case(name: "MOVQ m64, xmm", bytes: [0x66, 0x0F, 0xD6, 0x0E]),
            Case(name: "MOVQ2DQ", bytes: [0xF3, 0x0F, 0xD6, 0xC1]), Case(name: "MOVDQ2Q", bytes: [0xF2, 0x0F, 0xD6, 0xC1]),
            Case(name: "MOVQ mm, mm", bytes: [0x0F, 0x6F, 0xC1]), Case(name: "MOVQ mm, m64", bytes: [0x0F, 0x6F, 0x06]),
            Case(name: "MOVQ m64, mm", bytes: [0x0F, 0x7F, 0x0E]), Case(name: "MOVDQA load", bytes: [0x66, 0x0F, 0x6F, 0x06]),
            Case(name: "MOVDQU store", bytes: [0xF3, 0x0F, 0x7F, 0x0E]), Case(name: "MOVNTDQ", bytes: [0x66, 0x0F, 0xE7, 0x0E]),
            Case(name: "MOVNTQ", bytes: [0x0F, 0xE7, 0x0E]), Case(name: "MOVNTI", bytes: [0x48, 0x0F, 0xC3, 0x0E]),
            Case(name: "PMOVMSKB xmm", bytes: [0x66, 0x0F, 0xD7, 0xC1]), Case(name: "PMOVMSKB mm", bytes: [0x0F, 0xD7, 0xC1]),
            Case(name: "MASKMOVDQU", bytes: [0x48, 0x89, 0xF7, 0x66, 0x0F, 0xF7, 0xC1]),  // mov rdi, rsi first
            Case(name: "MASKMOVQ", bytes: [0x48, 0x89, 0xF7, 0x0F, 0xF7, 0xC1]),
            Case(name: "EMMS after MOVQ", bytes: [0x0F, 0x6F, 0xC1, 0x0F, 0x77]),
            Case(name: "MOVSLDUP", bytes: [0xF3, 0x0F, 0x12, 0xC1]), Case(name: "MOVSLDUP m128", bytes: [0xF3, 0x0F, 0x12, 0x06]),
            Case(name: "MOVSHDUP", bytes: [0xF3, 0x0F, 0x16, 0xC1]), Case(name: "MOVDDUP", bytes: [0xF2, 0x0F, 0x12, 0xC1]),
            Case(name: "MOVDDUP m64", bytes: [0xF2, 0x0F, 0x12, 0x06]), Case(name: "LDDQU", bytes: [0xF2, 0x0F, 0xF0, 0x46, 0x03]),
            Case(name: "XMM8-15: movaps xmm9, xmm1; addps xmm9, xmm0", bytes: [0x44, 0x0F, 0x28, 0xC9, 0x44, 0x0F, 0x58, 0xC8]),
            Case(name: "pxor xmm15, [rsi]", bytes: [0x66, 0x44, 0x0F, 0xEF, 0x3E]),
        ]
        var random = SplitMix(seed: 99)
        for testCase in cases {
            for _ in 0..<4 {
                var before = SIMDSnapshot()
                for i in 0..<16 { before.xmm[i] = Self.integerVector(&random) }
                for i in 0..<8 { before.mm[i] = UInt64(truncatingIfNeeded: Self.integerVector(&random)) }
                before.gpr = [random.next(), random.next(), random.next(), random.next()]
                for i in 0..<32 { before.memory[i] = UInt8(truncatingIfNeeded: random.next()) }
                _ = Self.check(testCase, before)
            }
        }
    }

    /// RCPPS/RSQRTPS give implementation-specific approximations: the soft
    /// CPU's must be within the SDM's relative error (1.5 × 2^-12) of the
    /// host's, and equal on the special operands.
    @Test(arguments: [("RCPPS", UInt8(0x53)), ("RSQRTPS", 0x52)])
    func approximationsAgreeWithTheHostWithinTheSDMBound(_ name: String, _ op: UInt8) {
        var random = SplitMix(seed: UInt64(op))
        for _ in 0..<500 {
            var before = SIMDSnapshot()
            before.mxcsr = EdgeOperands.mxcsr(&random)
            before.xmm[1] = EdgeOperands.vector(&random, double: false)
            let bytes: [UInt8] = [0x0F, op, 0xC1]
            let host = HostCPU.run(bytes, before)
            let (soft, _) = SoftCPU.run(bytes, before)
            #expect(soft.mxcsr == host.mxcsr)
            for lane in 0..<4 {
                let h = Float(bitPattern: UInt32(element(host.xmm[0], lane, width: 32)))
                let s = Float(bitPattern: UInt32(element(soft.xmm[0], lane, width: 32)))
                let input = element(before.xmm[1], lane, width: 32)
                if h.isFinite && h != 0 && s.isFinite {
                    #expect(abs(s - h) <= h.magnitude * 3 * 0x1p-12, "\(name) of \(String(input, radix: 16)): host \(h), soft \(s)")
                } else {
                    #expect(h.bitPattern == s.bitPattern || (h.isNaN && s.isNaN),
                            "\(name) of \(String(input, radix: 16)): host \(h), soft \(s)")
                }
            }
        }
    }
}
