import Testing
@testable import X86

/// The x87 control instructions and FXSAVE/FXRSTOR, run on the soft CPU
/// and natively on the host CPU: each snippet loads a state (FNINIT,
/// FRSTOR, FLDENV or FXRSTOR from memory at RSI), stores it back in the
/// other formats, and ends with FNINIT so that nothing is left pending.
/// The stored bytes must match.
@Suite("x87 control and FXSAVE against the host CPU")
struct X87ControlTests {
    // Snippet pieces; all operands are [rsi + displacement].
    static func rm(_ opcode: [UInt8], reg: UInt8, _ offset: Int32) -> [UInt8] {
        opcode + [0x86 | reg << 3] + withUnsafeBytes(of: offset.littleEndian, Array.init)
    }
    static let fninit: [UInt8] = [0xDB, 0xE3]
    static func fnstcw(_ at: Int32) -> [UInt8] { rm([0xD9], reg: 7, at) }
    static func fldcw(_ at: Int32) -> [UInt8] { rm([0xD9], reg: 5, at) }
    static func fnstsw(_ at: Int32) -> [UInt8] { rm([0xDD], reg: 7, at) }
    static func fnstenv(_ at: Int32, size16: Bool = false) -> [UInt8] { rm(size16 ? [0x66, 0xD9] : [0xD9], reg: 6, at) }
    static func fldenv(_ at: Int32, size16: Bool = false) -> [UInt8] { rm(size16 ? [0x66, 0xD9] : [0xD9], reg: 4, at) }
    static func fnsave(_ at: Int32, size16: Bool = false) -> [UInt8] { rm(size16 ? [0x66, 0xDD] : [0xDD], reg: 6, at) }
    static func frstor(_ at: Int32, size16: Bool = false) -> [UInt8] { rm(size16 ? [0x66, 0xDD] : [0xDD], reg: 4, at) }
    static func fxsave(_ at: Int32, rexW: Bool) -> [UInt8] { rm(rexW ? [0x48, 0x0F, 0xAE] : [0x0F, 0xAE], reg: 0, at) }
    static func fxrstor(_ at: Int32, rexW: Bool) -> [UInt8] { rm(rexW ? [0x48, 0x0F, 0xAE] : [0x0F, 0xAE], reg: 1, at) }

    /// Output areas in the snippet memory.
    static let fxsaveArea: Int32 = 0x200, fnsaveArea: Int32 = 0x400, fnstenvArea: Int32 = 0x480, wordArea: Int32 = 0x4C0

    func expectSame(_ code: [UInt8], _ before: SIMDSnapshot, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let host = HostCPU.run(code, before)
        let (soft, exit) = SoftCPU.run(code, before)
        #expect(exit == .halt, "\(what): \(exit)", sourceLocation: sourceLocation)
        // MXCSR_MASK describes the CPU: the host, an AMD CPU, has 0x2FFFF
        // (with its misaligned-SSE bit), the soft CPU 0xFFFF.
        var hostMemory = host.memory, softMemory = soft.memory
        for offset in Int(Self.fxsaveArea) + 28..<Int(Self.fxsaveArea) + 32 {
            hostMemory[offset] = 0
            softMemory[offset] = 0
        }
        #expect(Array(soft.memory[Int(Self.fxsaveArea) + 28..<Int(Self.fxsaveArea) + 32]) == [0xFF, 0xFF, 0, 0]
                || soft.memory[Int(Self.fxsaveArea)] == 0xCC, "\(what): MXCSR_MASK", sourceLocation: sourceLocation)
        for offset in stride(from: 0, to: SIMDSnapshot.memorySize, by: 16) {
            let h = Array(hostMemory[offset..<offset + 16]), s = Array(softMemory[offset..<offset + 16])
            #expect(h == s, "\(what): bytes \(String(offset, radix: 16)): host \(h.map { String($0, radix: 16) }), soft \(s.map { String($0, radix: 16) })",
                    sourceLocation: sourceLocation)
        }
        #expect(host.xmm == soft.xmm, "\(what): XMM", sourceLocation: sourceLocation)
        #expect(host.mxcsr == soft.mxcsr, "\(what): MXCSR", sourceLocation: sourceLocation)
        #expect(host.gpr == soft.gpr, "\(what): GPRs", sourceLocation: sourceLocation)
    }

    /// Memory filled with a pattern, so that bytes an instruction does not write show.
    static func patterned() -> SIMDSnapshot {
        var snapshot = SIMDSnapshot()
        for i in 0..<SIMDSnapshot.memorySize { snapshot.memory[i] = 0xCC }
        return snapshot
    }

    @Test func initialStateIsStoredInEveryFormat() {
        let code = Self.fninit + Self.fnstcw(Self.wordArea) + Self.fnstsw(Self.wordArea + 2) + [0xDF, 0xE0]  // fnstsw ax
            + Self.fnstenv(Self.fnstenvArea) + Self.fnstenv(Self.fnstenvArea + 32, size16: true)
            + Self.fxsave(Self.fxsaveArea, rexW: true) + Self.fnsave(Self.fnsaveArea) + Self.fninit
        var before = Self.patterned()
        for i in 0..<16 { before.xmm[i] = UInt128(i + 1) << 64 | UInt128(0x1111 * (i + 1)) }
        before.gpr[0] = 0xFFFF_FFFF_FFFF_FFFF
        expectSame(code, before, "FNINIT then stores")
        let legacy = Self.fninit + Self.fxsave(Self.fxsaveArea, rexW: false) + Self.fninit
        expectSame(legacy, before, "FXSAVE, 32-bit layout")
    }

    @Test func loadedControlWordKeepsOnlyItsDefinedBits() {
        var random = SplitMix(seed: 0x87)
        let values: [UInt16] = [0, 0xFFFF, 0x037F, 0x0040, 0x1F3F, 0x0C00, 0x8080, 0x2000]
        for value in values + (0..<16).map({ _ in UInt16(truncatingIfNeeded: random.next()) }) {
            var before = Self.patterned()
            before.memory[0] = UInt8(value & 0xFF)
            before.memory[1] = UInt8(value >> 8)
            // Mask every exception first, so that no flag becomes pending.
            let code = Self.fninit + Self.fldcw(0) + Self.fnstcw(Self.wordArea) + Self.fnstsw(Self.wordArea + 2) + Self.fninit
            expectSame(code, before, "FLDCW \(String(value, radix: 16))")
        }
    }

    /// An x87 environment image: random control, status and tag words with
    /// the instruction and operand pointers zero (the host, an AMD CPU,
    /// leaves them out of FXSAVE unless an exception is pending).
    static func environment(_ random: inout SplitMix, pointers: Bool) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 28)
        func put(_ offset: Int, _ value: UInt32) { for i in 0..<4 { image[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
        put(0, UInt32(truncatingIfNeeded: random.next()) | 0x3F)  // FCW, every exception masked
        put(4, UInt32(truncatingIfNeeded: random.next()) & 0x7F7F)  // FSW without ES and B
        put(8, UInt32(truncatingIfNeeded: random.next()))  // FTW
        if pointers {
            put(12, UInt32(truncatingIfNeeded: random.next()))
            put(16, UInt32(truncatingIfNeeded: random.next()) & 0x07FF_FFFF)
            put(20, UInt32(truncatingIfNeeded: random.next()))
            put(24, UInt32(truncatingIfNeeded: random.next()) & 0xFFFF)
        }
        return image
    }

    /// 80-bit register values of every class: zeros, normals, denormals,
    /// pseudo-denormals, unnormals, infinities, NaNs.
    static func registerValue(_ random: inout SplitMix) -> [UInt8] {
        let classes: [(UInt64, UInt16)] = [
            (0, 0), (0, 0x8000), (0x8000_0000_0000_0000, 0x3FFF), (random.next() | 1 << 63, UInt16(truncatingIfNeeded: random.next())),
            (random.next() >> 1, 0), (random.next() | 1 << 63, 0), (random.next() >> 1, 0x4000), (1 << 63, 0x7FFF),
            (0xC000_0000_0000_0000, 0xFFFF), (random.next() >> 2 | 1 << 63, 0x7FFF), (random.next(), UInt16(truncatingIfNeeded: random.next())),
        ]
        let (significand, signExponent) = classes[Int(random.next() % UInt64(classes.count))]
        return withUnsafeBytes(of: significand.littleEndian, Array.init) + withUnsafeBytes(of: signExponent.littleEndian, Array.init)
    }

    @Test func restoredStateIsStoredBackInEveryFormat() {
        var random = SplitMix(seed: 0xF5A7E)
        for round in 0..<60 {
            var before = Self.patterned()
            var image = Self.environment(&random, pointers: false)
            for _ in 0..<8 { image += Self.registerValue(&random) }
            before.memory.replaceSubrange(0..<108, with: image)
            let code = Self.frstor(0) + Self.fnstenv(Self.fnstenvArea) + Self.fnstsw(Self.wordArea) + Self.fnstcw(Self.wordArea + 2)
                + Self.fxsave(Self.fxsaveArea, rexW: round % 2 == 0) + Self.frstor(0) + Self.fnsave(Self.fnsaveArea) + Self.fninit
            expectSame(code, before, "FRSTOR round \(round)")
        }
    }

    @Test func environmentPointersAndSixteenBitFormsRoundTrip() {
        var random = SplitMix(seed: 0xE27)
        for round in 0..<40 {
            var before = Self.patterned()
            before.memory.replaceSubrange(0..<28, with: Self.environment(&random, pointers: true))
            let size16 = round % 2 == 1
            let code = Self.fldenv(0, size16: size16) + Self.fnstenv(Self.fnstenvArea, size16: size16)
                + Self.fnstenv(Self.fnstenvArea + 32, size16: !size16) + Self.fninit
            expectSame(code, before, "FLDENV round \(round)")
        }
    }

    @Test func fxrstorThenFXSAVERoundTrips() {
        var random = SplitMix(seed: 0xFF5)
        for round in 0..<40 {
            var before = Self.patterned()
            var image = [UInt8](repeating: 0, count: 512)
            for i in 0..<512 { image[i] = UInt8(truncatingIfNeeded: random.next()) }
            let environment = Self.environment(&random, pointers: false)
            image[0] = environment[0] | 0x3F
            image[1] = environment[1]
            image[2] = environment[4]
            image[3] = environment[5]
            for i in 5..<24 { image[i] = 0 }  // reserved byte, FOP, FIP, FDP
            image[24] = UInt8(truncatingIfNeeded: random.next()) & 0xBF  // MXCSR within the mask, all exceptions masked
            image[25] = 0x1F | UInt8(truncatingIfNeeded: random.next()) & 0xE0
            image[26] = 0
            image[27] = 0
            for slot in 0..<8 { image.replaceSubrange(32 + 16 * slot..<42 + 16 * slot, with: Self.registerValue(&random)) }
            before.memory.replaceSubrange(0..<512, with: image)
            let rexW = round % 2 == 0
            let code = Self.fxrstor(0, rexW: rexW) + Self.fxsave(Self.fxsaveArea, rexW: rexW)
                + Self.fnstenv(Self.fnstenvArea) + Self.fninit
            expectSame(code, before, "FXRSTOR round \(round)")
        }
    }

    /// ES and B follow the unmasked exception flags when FLDENV, FRSTOR or
    /// FXRSTOR load a status word, whatever the image says (no waiting
    /// instruction runs before FNINIT, so nothing is delivered).
    @Test func loadedStatusWordGetsItsErrorSummaryRecomputed() {
        var random = SplitMix(seed: 0xE5)
        for round in 0..<48 {
            var before = Self.patterned()
            let fcw = UInt16(truncatingIfNeeded: random.next()) | 0x0300
            let fsw = UInt16(truncatingIfNeeded: random.next())
            var code: [UInt8]
            switch round % 3 {
            case 0:
                var image = [UInt8](repeating: 0, count: 28)
                image[0] = UInt8(fcw & 0xFF); image[1] = UInt8(fcw >> 8)
                image[4] = UInt8(fsw & 0xFF); image[5] = UInt8(fsw >> 8)
                image[8] = 0xFF; image[9] = 0xFF
                before.memory.replaceSubrange(0..<28, with: image)
                code = Self.fldenv(0)
            case 1:
                var image = [UInt8](repeating: 0, count: 108)
                image[0] = UInt8(fcw & 0xFF); image[1] = UInt8(fcw >> 8)
                image[4] = UInt8(fsw & 0xFF); image[5] = UInt8(fsw >> 8)
                image[8] = 0xFF; image[9] = 0xFF
                before.memory.replaceSubrange(0..<108, with: image)
                code = Self.frstor(0)
            default:
                var image = [UInt8](repeating: 0, count: 512)
                image[0] = UInt8(fcw & 0xFF); image[1] = UInt8(fcw >> 8)
                image[2] = UInt8(fsw & 0xFF); image[3] = UInt8(fsw >> 8)
                image[24] = 0x80; image[25] = 0x1F
                before.memory.replaceSubrange(0..<512, with: image)
                code = Self.fxrstor(0, rexW: true)
            }
            code += Self.fnstsw(Self.wordArea) + Self.fnstcw(Self.wordArea + 2) + Self.fninit
            expectSame(code, before, "round \(round): FCW \(String(fcw, radix: 16)) FSW \(String(fsw, radix: 16))")
        }
    }

    /// FISTTP (SSE3) of every class of value to each integer size, with IE
    /// and PE masked or not, from a full, an empty and a partly full stack:
    /// the stored integer, the status word and the environment (but for the
    /// instruction and operand pointers, which are addresses in each CPU's
    /// own memory) must match the host.
    @Test func fisttpMatchesTheHost() {
        var random = SplitMix(seed: 0xF157)
        let edges: [(UInt64, UInt16)] = [
            (0, 0), (0, 0x8000), (1 << 63, 0x3FFF), (0xC000_0000_0000_0000, 0x3FFF), (0xC000_0000_0000_0000, 0xBFFE),
            (0xFFFE_0000_0000_0000, 0x400D), (0xFFFF_0000_0000_0000, 0x400D), (0xFFFF_8000_0000_0000, 0x400D),
            (1 << 63, 0xC00E), (0x8000_8000_0000_0000, 0xC00E), (0xFFFF_FFFE_0000_0000, 0x401D), (0xFFFF_FFFF_8000_0000, 0x401D),
            (1 << 63, 0xC01E), (0x8000_0001_0000_0000, 0xC01E), (0xFFFF_FFFF_FFFF_FFFF, 0x403D), (1 << 63, 0x403E),
            (1 << 63, 0xC03E), (0x8000_0000_0000_0001, 0xC03E), (1 << 63, 0x7FFF), (0xC000_0000_0000_0000, 0xFFFF),
            (0x8000_0000_0000_0001, 0x7FFF), (0x1234, 0), (1 << 63, 0), (0x4000_0000_0000_0000, 0x3FFF), (1 << 63, 0x3FFD),
            (1 << 63, 0x5000),
        ]
        for round in 0..<240 {
            var before = Self.patterned()
            var image = [UInt8](repeating: 0, count: 108)
            let masks = round % 4 == 0 ? UInt16(truncatingIfNeeded: random.next()) & 0x21 : 0x3F
            let fcw: UInt16 = 0x0300 | masks | (0x3F & ~0x21)
            let top = UInt16(random.next() % 8)
            image[0] = UInt8(fcw & 0xFF); image[1] = UInt8(fcw >> 8)
            image[4] = 0; image[5] = UInt8(top << 3) | UInt8(truncatingIfNeeded: random.next() & 0x47)  // C0-C3 random
            // ST(0) empty one time in eight, else valid.
            let empty = round % 8 == 7
            let tagWord: UInt16 = empty ? 0xFFFF : ~(UInt16(3) << (2 * top))
            image[8] = UInt8(tagWord & 0xFF); image[9] = UInt8(tagWord >> 8)
            let (significand, signExponent) = random.next() % 3 == 0
                ? (random.next() | (random.next() % 2 == 0 ? 1 << 63 : 0), UInt16(0x3FF0 + random.next() % 80) | UInt16(random.next() % 2) << 15)
                : edges[Int(random.next() % UInt64(edges.count))]
            image.replaceSubrange(28..<38, with: withUnsafeBytes(of: significand, Array.init) + withUnsafeBytes(of: signExponent, Array.init))
            before.memory.replaceSubrange(0..<108, with: image)
            let store: [UInt8] = [[0xDF], [0xDB], [0xDD]][round % 3]
            let code = Self.frstor(0) + Self.rm(store, reg: 1, Self.wordArea) + Self.fnstsw(Self.wordArea + 0x10)
                + Self.fnstenv(Self.fnstenvArea) + Self.fninit
            let host = HostCPU.run(code, before)
            let (soft, exit) = SoftCPU.run(code, before)
            #expect(exit == .halt)
            var h = host.memory, s = soft.memory
            // FIP, FCS, FDP, FDS of the environment.
            for offset in [12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 25] {
                h[Int(Self.fnstenvArea) + offset] = 0
                s[Int(Self.fnstenvArea) + offset] = 0
            }
            let what = "FISTTP \(store) of \(String(significand, radix: 16)) \(String(signExponent, radix: 16)), FCW \(String(fcw, radix: 16)), empty \(empty)"
            #expect(Array(s[Int(Self.wordArea)..<Int(Self.wordArea) + 0x12]) == Array(h[Int(Self.wordArea)..<Int(Self.wordArea) + 0x12]), "\(what): integer and FSW")
            #expect(Array(s[Int(Self.fnstenvArea)..<Int(Self.fnstenvArea) + 28]) == Array(h[Int(Self.fnstenvArea)..<Int(Self.fnstenvArea) + 28]), "\(what): environment")
        }
    }

    @Test func stmxcsrAndLdmxcsrRoundTrip() {
        // ldmxcsr [rsi]; stmxcsr [rsi+4]; with DAZ and FTZ and every mask.
        for value: UInt32 in [0x1F80, 0xFFFF & ~0x3F, 0x1FC0, 0x9F80, 0x7F80] {
            var before = Self.patterned()
            withUnsafeBytes(of: value) { before.memory.replaceSubrange(0..<4, with: $0) }
            expectSame([0x0F, 0xAE, 0x16, 0x0F, 0xAE, 0x5E, 0x04], before, "LDMXCSR \(String(value, radix: 16))")
        }
    }
}
