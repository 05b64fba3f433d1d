import Testing
@testable import X86

/// The cached handlers of CachedArithmeticHandlers.swift (shifts, rotates,
/// multiplies, ADC/SBB, SETcc, CMOVcc, MOVSX/MOVSXD, TEST imm, NEG/NOT and
/// byte forms) against the uncached path, and the lazily recorded flags of
/// shifts and multiplies read by what comes after them.
@Suite("X86 cached arithmetic handlers")
struct CachedArithmeticTests {
    /// Random checkpoints of the forms with handlers of their own, each
    /// followed by a random reader of the flags (SETcc, Jcc, ADC, PUSHF,
    /// CMOVcc), with and without the cache: GPRs, RIP, all of RFLAGS and
    /// memory must agree at every checkpoint.
    @Test(arguments: [(Machine.Setup.long64, UInt64(51)), (.long64, 52), (.long64, 53), (.long64, 54),
                      (.protected32, 55), (.protected32, 56)])
    func cachedArithmeticFormsMatchUncachedRuns(setup: Machine.Setup, seed: UInt64) {
        DecodedCacheTests().compareCachedWithUncached(Self.forms(seed: seed, long: setup == .long64), setup: setup, seed: seed)
    }

    static func forms(seed: UInt64, long: Bool) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        // Not RSP (the stack), RBX (the base) or RSI (the index).
        let usable = long ? [0, 1, 2, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15] : [0, 1, 2, 5, 7]
        func mov(_ register: Int, _ value: UInt64) -> [UInt8] {
            long ? LongModeProgram.mov64(register, value) : [0xB8 + UInt8(register)] + (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) }
        }
        for _ in 0..<120 {
            let width = long ? [8, 16, 32, 64, 32, 64][Int(rng.next() % 6)] : [8, 16, 32, 32][Int(rng.next() % 4)]
            let dst = usable[Int(rng.next() % UInt64(usable.count))]
            let src = usable[Int(rng.next() % UInt64(usable.count))]
            // Values with few or many significant bits: products that fit and that do not.
            func value() -> UInt64 {
                switch rng.next() % 4 {
                case 0: return rng.next() & 0xFF
                case 1: return UInt64(bitPattern: -Int64(rng.next() & 0xFFFF))
                case 2: return rng.next() & 0xFFFF_FFFF
                default: return rng.next()
                }
            }
            var code = mov(dst, value()) + mov(src, value())
            code += mov(3, 0x2000 + rng.next() % 0x100) + mov(6, rng.next() % 0x10)
            // Flags before: explicit (CLC/STC) or lazy from an ADD.
            switch rng.next() % 3 {
            case 0: code += [0xF8]
            case 1: code += [0xF9]
            default: code += LongModeProgram.prefixes(width: 64 == width && long ? 64 : 32, reg: src, rm: dst) + [0x01, modrm(src, dst)]
            }
            let d8 = UInt8(rng.next() % 0x80)
            let memory = rng.next() % 3 == 0
            let byteForm: UInt8 = width == 8 ? 0 : 1
            func prefix(_ reg: Int, _ rm: Int) -> [UInt8] {
                long ? LongModeProgram.prefixes(width: width, reg: reg, rm: rm) : (width == 16 ? [0x66] : [])
            }
            // ModRM and SIB for [rbx + rsi*2 + d8] or register rm.
            func operand(_ reg: Int, _ rm: Int) -> [UInt8] {
                memory ? [0x44 | UInt8((reg & 7) << 3), 0x73, d8] : [modrm(reg, rm)]
            }
            func p(_ reg: Int, _ rm: Int) -> [UInt8] { prefix(reg, memory ? 0 : rm) }
            let imm8 = UInt8(truncatingIfNeeded: rng.next())
            let imm32 = (0..<4).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            var label: String
            switch rng.next() % 11 {
            case 0:  // shifts and rotates by imm8, 1 or CL
                let op = Int(rng.next() % 8)
                let count = [0, 1, 31, 32, 33, 63, 64, 65, Int(rng.next() % 256)][Int(rng.next() % 9)]
                code += mov(1, UInt64(count))
                switch rng.next() % 3 {
                case 0: code += p(op, dst) + [0xC0 | byteForm] + operand(op, dst) + [UInt8(count & 0xFF)]
                case 1: code += p(op, dst) + [0xD0 | byteForm] + operand(op, dst)
                default: code += p(op, dst) + [0xD2 | byteForm] + operand(op, dst)
                }
                label = "shift/\(op) w\(width) by \(count)"
            case 1:  // IMUL r, r/m (, imm)
                switch rng.next() % 3 {
                case 0: code += p(dst, src) + [0x0F, 0xAF] + operand(dst, src)
                case 1: code += p(dst, src) + [0x6B] + operand(dst, src) + [imm8]
                default: code += p(dst, src) + [0x69] + operand(dst, src) + (width == 16 ? Array(imm32[0..<2]) : imm32)
                }
                label = "imul w\(width)"
            case 2:  // group 3: TEST imm, NOT, NEG, MUL, IMUL
                let sub = [0, 1, 2, 3, 4, 5][Int(rng.next() % 6)]
                code += p(sub, dst) + [0xF6 | byteForm] + operand(sub, dst)
                if sub < 2 { code += width == 8 ? [imm8] : width == 16 ? Array(imm32[0..<2]) : imm32 }
                label = "group3/\(sub) w\(width)"
            case 3:  // ADC SBB r, r/m / r/m, r / r, imm
                let op = 2 + Int(rng.next() % 2)
                switch rng.next() % 4 {
                case 0: code += p(src, dst) + [UInt8(op << 3) | byteForm] + operand(src, dst)
                case 1: code += p(dst, src) + [UInt8(op << 3) | 2 | byteForm] + operand(dst, src)
                case 2: code += p(op, dst) + [width == 8 ? 0x80 : 0x83] + operand(op, dst) + [imm8]
                default: code += p(op, dst) + [width == 8 ? 0x80 : 0x81] + operand(op, dst) + (width == 8 ? [imm8] : width == 16 ? Array(imm32[0..<2]) : imm32)
                }
                label = "adc-sbb/\(op) w\(width)"
            case 4:  // SETcc
                let cc = UInt8(rng.next() % 16)
                code += (long && !memory && rng.next() & 1 == 0 ? [0x40 | (dst >= 8 ? 1 : 0)] : long && dst >= 8 && !memory ? [0x41] : [])
                code += [0x0F, 0x90 + cc] + operand(0, dst)
                label = "setcc/\(cc)"
            case 5:  // CMOVcc
                let cc = UInt8(rng.next() % 16)
                code += prefix(dst, memory ? 0 : src) + [0x0F, 0x40 + cc] + operand(dst, src)
                label = "cmov/\(cc) w\(width)"
            case 6:  // MOVSX, MOVSXD
                switch rng.next() % 3 {
                case 0: code += prefix(dst, memory ? 0 : src) + [0x0F, 0xBE] + operand(dst, src)
                case 1: code += prefix(dst, memory ? 0 : src) + [0x0F, 0xBF] + operand(dst, src)
                default:
                    guard long else { code += [0x0F, 0xBE] + operand(dst, src); break }
                    code += prefix(dst, memory ? 0 : src) + [0x63] + operand(dst, src)
                }
                label = "movsx w\(width)"
            case 7:  // byte ALU: 00 02 ... 38 3A, AL imm8, 80 /op, TEST r8 r8
                let op = UInt8(rng.next() % 8)
                // REX (SPL-DIL, R8B-R15B) or none (AH-BH); never REX.B on the memory operand's base.
                let rm = memory ? 0 : dst
                let b: [UInt8] = !long ? [] : rng.next() & 1 == 0 ? [0x40 | (src >= 8 ? 4 : 0) | (rm >= 8 ? 1 : 0)]
                                                                  : LongModeProgram.prefixes(width: 8, reg: src, rm: rm)
                switch rng.next() % 5 {
                case 0: code += b + [op << 3] + operand(src, dst)
                case 1: code += b + [op << 3 | 2] + operand(src, dst)
                case 2: code += [op << 3 | 4, imm8]
                case 3: code += b + [0x80] + operand(Int(op), dst) + [imm8]
                default: code += b + [0x84] + operand(src, dst)
                }
                label = "alu8/\(op)"
            case 8:  // byte moves to and from memory
                switch rng.next() % 3 {
                case 0: code += [0x88, 0x44 | UInt8((src & 7) << 3), 0x73, d8]
                case 1: code += [0x8A, 0x44 | UInt8((src & 7) << 3), 0x73, d8]
                default: code += [0xC6, 0x44, 0x73, d8, imm8]
                }
                label = "mov8 [rbx+rsi*2+\(d8)]"
            case 9:  // the multi-byte NOP
                code += [0x0F, 0x1F, 0x44, 0x00, 0x00]
                label = "nop"
            default:  // two shifts in a row: the second reads no flag of the first but CF through RCL
                code += p(4, dst) + [0xC1, modrm(4, dst), imm8 & 0x1F] + p(2, dst) + [0xD1, modrm(2, dst)]
                label = "shl; rcl"
            }
            code += reader(&rng, long: long)
            // Read back what memory forms wrote.
            code += [0x8B, 0x4C, 0x73, d8]  // mov ecx, [rbx+rsi*2+d8]
            points.append(Checkpoint(code: code + DifferentialProgram.out, undefined: 0, label: label))
        }
        return points
    }

    static func modrm(_ reg: Int, _ rm: Int) -> UInt8 { UInt8(0xC0 | ((reg & 7) << 3) | (rm & 7)) }

    /// An instruction that reads the flags the last one left (lazily recorded or not).
    static func reader(_ rng: inout SplitMix64, long: Bool) -> [UInt8] {
        let cc = UInt8(rng.next() % 16)
        switch rng.next() % 6 {
        case 0: return [0x0F, 0x90 + cc, 0xC2]  // setcc dl
        case 1: return [0x70 + cc, 0x02, 0xFF, 0xC2]  // jcc +2; inc edx
        case 2: return [0x83, 0xD2, 0x00]  // adc edx, 0
        case 3: return [0x9C, 0x5A]  // pushf; pop rdx
        case 4: return [0x0F, 0x40 + cc, 0xD1]  // cmovcc edx, ecx
        default: return []
        }
    }

    // Flags recorded lazily by a cached shift or multiply, read by what follows.

    @Test func shiftFlagsAreReadBySetccPushfAndJcc() {
        // mov eax, 0x80000001; shl eax, 1; setc cl; seto ch; pushfq; pop rbx; jz +2 (not taken); inc edx; hlt
        let m = Machine(.long64, code: [0xB8, 0x01, 0x00, 0x00, 0x80, 0xC1, 0xE0, 0x01, 0x0F, 0x92, 0xC1, 0x0F, 0x90, 0xC5,
                                        0x9C, 0x5B, 0x74, 0x02, 0xFF, 0xC2, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 2)
        #expect(m[.rcx] & 0xFFFF == 0x0101)  // CF = the bit shifted out, OF = CF ^ the result's MSB
        #expect(m[.rbx] & RFLAGS.arithmetic == flags("OC"))
        #expect(m[.rdx] == 1)
    }

    @Test func shiftByAMaskedZeroCountKeepsTheFlagsAndZeroExtends() {
        // mov rax, -1; stc; mov ecx, 32; shr eax, cl (the count masks to 0); adc edx, 0; hlt
        let m = Machine(.long64, code: LongModeProgram.mov64(0, ~0) + [0xF9, 0xB9, 0x20, 0x00, 0x00, 0x00, 0xD3, 0xE8,
                                                                        0x83, 0xD2, 0x00, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xFFFF_FFFF)
        #expect(m[.rdx] == 1)
    }

    @Test func sarSetsItsFlagsAndRotateKeepsTheOthers() {
        // mov rax, -8; sar rax, 2; pushfq; pop rbx;
        // mov edx, 0x80000000; cmp eax, eax (ZF PF); rol edx, 1 (CF OF, ZF PF kept); pushfq; pop rcx; hlt
        let m = Machine(.long64, code: LongModeProgram.mov64(0, UInt64(bitPattern: -8)) + [0x48, 0xC1, 0xF8, 0x02, 0x9C, 0x5B,
            0xBA, 0x00, 0x00, 0x00, 0x80, 0x39, 0xC0, 0xD1, 0xC2, 0x9C, 0x59, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == UInt64(bitPattern: -2))
        #expect(m[.rbx] & RFLAGS.arithmetic == flags("S"))  // CF: bit 1 of -8, 0; PF: 0xFE has seven ones
        #expect(m[.rdx] == 1)
        #expect(m[.rcx] & RFLAGS.arithmetic == flags("ZPOC"))
    }

    @Test func multiplyFlagsAreReadLazily() {
        // mov rax, 1 << 40; mov rcx, 1 << 30; mul rcx (the high half is 64); mov r8, rdx; setc bl; seto bh;
        // imul ecx, ecx, -1 (fits); setc dl; hlt
        let m = Machine(.long64, code: LongModeProgram.mov64(0, 1 << 40) + LongModeProgram.mov64(1, 1 << 30)
            + [0x48, 0xF7, 0xE1, 0x49, 0x89, 0xD0, 0x0F, 0x92, 0xC3, 0x0F, 0x90, 0xC7, 0x6B, 0xC9, 0xFF, 0x0F, 0x92, 0xC2, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0)
        #expect(m[.r8] == 64)
        #expect(m[.rbx] & 0xFFFF == 0x0101)
        #expect(m[.rcx] == 0xC000_0000)
        #expect(m[.rdx] == 0)
    }
}
