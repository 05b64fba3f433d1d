// SSSE3 (Intel SDM Vol. 2), the 0F 38 and 0F 3A instructions with MMX
// (no prefix) and XMM (66) forms: PSHUFB, PHADD/PHSUB W/D/SW, PMADDUBSW,
// PSIGN B/W/D, PMULHRSW, PABS B/W/D and PALIGNR. Every other encoding of
// the two maps is #UD (SSE4, MOVBE, CRC32 and the rest are not advertised).

extension X86CPU {
    /// Opcodes 0x200 + xx (0F 38 xx) and 0x300 + xx (0F 3A xx).
    mutating func executeSSSE3(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let prefix = simdPrefix(insn)
        let known: Bool
        switch op {
        case 0x200...0x20B, 0x21C...0x21E, 0x30F: known = true
        default: known = false
        }
        guard known, prefix == 0 || prefix == 0x66 else { return undefined() }
        let mmx = prefix == 0
        if mmx {
            guard mmxReady() else { return false }
        } else {
            guard sseReady() else { return false }
        }
        let source: UInt128
        if mmx {
            guard let value = mmxOperand(insn) else { return false }
            source = UInt128(value)
        } else {
            guard let value = xmmOperand(insn, size: 16, aligned: true) else { return false }
            source = value
        }
        let destination = mmx ? UInt128(state.fpu.mm(insn.reg)) : state.fpu.xmm(insn.reg)
        let result = SIMDInteger.ssse3(op, destination, source, immediate: insn.immediate, mmx: mmx)
        if mmx {
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, UInt64(truncatingIfNeeded: result))
        } else {
            state.fpu.setXMM(insn.reg, result)
        }
        state.rip = insn.nextRIP
        return true
    }
}

extension SIMDInteger {
    /// The SSSE3 operation `op` (0x200 + 0F 38 opcode, 0x30F PALIGNR) of
    /// `a` (the destination) and `b`, on 8 bytes for MMX, 16 for XMM.
    static func ssse3(_ op: Int, _ a: UInt128, _ b: UInt128, immediate: UInt64, mmx: Bool) -> UInt128 {
        let bytes = mmx ? 8 : 16
        switch op {
        case 0x200:  // PSHUFB
            var result: UInt128 = 0
            for index in 0..<bytes {
                let control = element(b, index, width: 8)
                if control & 0x80 == 0 {
                    result = replacing(result, index, width: 8, with: element(a, Int(control) & (bytes - 1), width: 8))
                }
            }
            return result
        case 0x201, 0x202, 0x203, 0x205, 0x206, 0x207:  // PHADD/PHSUB W, D, SW
            let width = op & 3 == 2 ? 32 : 16
            let saturate = op & 3 == 3
            let subtract = op >= 0x205
            let count = bytes * 8 / width
            var result: UInt128 = 0
            for index in 0..<count {
                let half = count / 2
                let from = index < half ? a : b
                let pair = index % half
                let x = Int64(bitPattern: signExtend(element(from, 2 * pair, width: width), size: width / 8))
                let y = Int64(bitPattern: signExtend(element(from, 2 * pair + 1, width: width), size: width / 8))
                var value = subtract ? x - y : x + y
                if saturate { value = min(max(value, -32768), 32767) }
                result = replacing(result, index, width: width, with: UInt64(bitPattern: value))
            }
            return result
        case 0x204:  // PMADDUBSW: unsigned bytes of `a` by signed bytes of `b`, pairs summed with saturation
            var result: UInt128 = 0
            for index in 0..<(bytes / 2) {
                var sum: Int64 = 0
                for k in 0..<2 {
                    let x = Int64(element(a, 2 * index + k, width: 8))
                    let y = Int64(Int8(truncatingIfNeeded: element(b, 2 * index + k, width: 8)))
                    sum += x * y
                }
                result = replacing(result, index, width: 16, with: UInt64(bitPattern: min(max(sum, -32768), 32767)))
            }
            return result
        case 0x208, 0x209, 0x20A:  // PSIGN B/W/D: negated, zeroed or kept by the sign of `b`
            let width = 8 << (op - 0x208)
            var result: UInt128 = 0
            for index in 0..<(bytes * 8 / width) {
                let control = Int64(bitPattern: signExtend(element(b, index, width: width), size: width / 8))
                let value = element(a, index, width: width)
                let signed = control < 0 ? 0 &- value : (control == 0 ? 0 : value)
                result = replacing(result, index, width: width, with: signed)
            }
            return result
        case 0x20B:  // PMULHRSW: (a × b >> 14, + 1) >> 1
            var result: UInt128 = 0
            for index in 0..<(bytes / 2) {
                let x = Int64(Int16(truncatingIfNeeded: element(a, index, width: 16)))
                let y = Int64(Int16(truncatingIfNeeded: element(b, index, width: 16)))
                result = replacing(result, index, width: 16, with: UInt64(bitPattern: (((x * y) >> 14) + 1) >> 1))
            }
            return result
        case 0x21C, 0x21D, 0x21E:  // PABS B/W/D of `b`
            let width = 8 << (op - 0x21C)
            var result: UInt128 = 0
            for index in 0..<(bytes * 8 / width) {
                let value = Int64(bitPattern: signExtend(element(b, index, width: width), size: width / 8))
                result = replacing(result, index, width: width, with: value.magnitude)
            }
            return result
        default:  // 0x30F PALIGNR: `a`:`b` shifted right by imm8 bytes
            let shift = Int(immediate & 0xFF)
            if mmx {
                let concatenated = UInt128(UInt64(truncatingIfNeeded: a)) << 64 | UInt128(UInt64(truncatingIfNeeded: b))
                return shift >= 16 ? 0 : concatenated >> (8 * shift)
            }
            if shift >= 32 { return 0 }
            if shift >= 16 { return a >> (8 * (shift - 16)) }
            if shift == 0 { return b }
            return b >> (8 * shift) | a << (8 * (16 - shift))
        }
    }
}
