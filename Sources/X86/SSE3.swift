// SSE3 (Intel SDM Vol. 2): ADDSUBPS/PD, HADDPS/PD, HSUBPS/PD, MOVSLDUP,
// MOVSHDUP, MOVDDUP, LDDQU, and the x87 FISTTP that SSE3 brought. MONITOR
// and MWAIT have their own CPUID bit and are not here.

extension X86CPU {
    /// 0F D0 (66 ADDSUBPD, F2 ADDSUBPS), 0F 7C (66 HADDPD, F2 HADDPS), 0F 7D
    /// (66 HSUBPD, F2 HSUBPS), F2 0F F0 LDDQU.
    mutating func executeSSE3(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        if op == 0xF0 {
            guard prefix == 0xF2, insn.isMemory else { return undefined() }
            guard sseReady() else { return false }
            guard let value = readVector(insn, size: 16) else { return false }
            state.fpu.setXMM(insn.reg, value)
            return true
        }
        guard prefix == 0x66 || prefix == 0xF2 else { return undefined() }
        guard sseReady() else { return false }
        guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
        let destination = state.fpu.xmm(insn.reg)
        let width = prefix == 0x66 ? 64 : 32
        let lanes = 128 / width
        // Each result lane as (operation, x, y): 0x58 add or 0x5C subtract.
        var env = FloatEnvironment(mxcsr: state.fpu.mxcsr)
        var exceptions = SIMDExceptions()
        var result: UInt128 = 0
        for index in 0..<lanes {
            let x: UInt64, y: UInt64, operation: Int
            if op == 0xD0 {
                x = element(destination, index, width: width)
                y = element(source, index, width: width)
                operation = index & 1 == 0 ? 0x5C : 0x58
            } else {
                // Pairs of the destination, then pairs of the source.
                let half = lanes / 2
                let from = index < half ? destination : source
                let pair = index % half
                x = element(from, 2 * pair, width: width)
                y = element(from, 2 * pair + 1, width: width)
                operation = op == 0x7C ? 0x58 : 0x5C
            }
            let value = width == 32
                ? SIMDFloat.lane(operation, x, y, predicate: 0, &env, Binary32.self)
                : SIMDFloat.lane(operation, x, y, predicate: 0, &env, Binary64.self)
            exceptions.record(&env)
            result = replacing(result, index, width: width, with: value)
        }
        guard commitSIMDExceptions(exceptions) else { return false }
        state.fpu.setXMM(insn.reg, result)
        return true
    }

    /// F3 0F 12 MOVSLDUP, F3 0F 16 MOVSHDUP, F2 0F 12 MOVDDUP.
    mutating func executeSSE3Duplicate(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        guard prefix == 0xF3 || op == 0x12 else { return undefined() }
        guard sseReady() else { return false }
        let result: UInt128
        if prefix == 0xF2 {
            guard let source = xmmOperand(insn, size: 8, aligned: false) else { return false }
            let low = element(source, 0, width: 64)
            result = UInt128(low) << 64 | UInt128(low)
        } else {
            guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
            let odd = op == 0x16 ? 1 : 0
            var value: UInt128 = 0
            for index in 0..<4 {
                value = replacing(value, index, width: 32, with: element(source, (index & ~1) | odd, width: 32))
            }
            result = value
        }
        state.fpu.setXMM(insn.reg, result)
        return true
    }

    /// FISTTP m16 (DF /1), m32 (DB /1), m64 (DD /1): ST(0) to an integer
    /// by truncation, stored, then popped. An empty ST(0) is a stack
    /// underflow (IE and SF); a NaN, an infinity, an unsupported encoding or
    /// a value out of range is IE; with IE masked the integer indefinite is
    /// stored, unmasked nothing is stored or popped and the exception waits
    /// for the next waiting instruction (ES). Inexact sets PE. C1 is cleared.
    mutating func executeFISTTP(_ insn: inout Instruction) -> Bool {
        guard x87ExceptionCheck() else { return false }
        let bytes = insn.opcode == 0xDF ? 2 : (insn.opcode == 0xDB ? 4 : 8)
        let bits = bytes * 8
        var fsw = state.fpu.fsw & ~0x0200  // C1
        var flags: UInt16 = 0
        var integer: UInt64? = nil
        if state.fpu.isEmpty(st: 0) {
            flags = 0x41  // IE, SF
        } else {
            let conversion = Self.truncate(X87Value(slot: state.fpu.st(0)), bits: bits)
            integer = conversion.value
            if conversion.value == nil { flags = 0x01 }
            if conversion.inexact { flags |= 0x20 }
        }
        let invalidUnmasked = flags & 0x01 != 0 && state.fpu.fcw & 0x01 == 0
        if !invalidUnmasked {
            let value = integer ?? (1 << UInt64(bits - 1))
            guard write(insn.segment, insn.offset, value, size: bytes) else { return false }
        }
        fsw |= flags
        state.fpu.fsw = fsw
        state.fpu.updateErrorSummary()
        if !invalidUnmasked { state.fpu.pop() }
        recordX87Pointers(insn)
        return true
    }

    /// What a non-control x87 instruction leaves in FOP, FIP/FCS and FDP/FDS.
    mutating func recordX87Pointers(_ insn: Instruction) {
        let modrm = (insn.mod << 6) | ((insn.reg & 7) << 3) | (insn.rm & 7)
        state.fpu.fop = UInt16(((insn.opcode & 7) << 8) | modrm)
        state.fpu.fip = state.rip
        state.fpu.fcs = state.cs.selector
        if insn.isMemory {
            state.fpu.fdp = insn.offset
            state.fpu.fds = state[segmentIndex: insn.segment].selector
        }
    }

    /// An 80-bit value truncated to a `bits`-bit signed integer: nil when
    /// it is a NaN, an infinity, an unsupported encoding or out of range.
    static func truncate(_ value: X87Value, bits: Int) -> (value: UInt64?, inexact: Bool) {
        let exponent = Int(value.exponent)
        let significand = value.significand
        // NaNs, infinities, pseudo-NaNs and pseudo-infinities; unnormals.
        if exponent == 0x7FFF || (exponent != 0 && significand >> 63 == 0) { return (nil, false) }
        if significand == 0 { return (0, false) }
        // value = significand × 2^(max(exponent, 1) − 16383 − 63); denormals and pseudo-denormals use 1.
        let shift = 16383 + 63 - max(exponent, 1)
        guard shift >= 0 else { return (nil, false) }
        let magnitude = shift >= 64 ? 0 : significand >> UInt64(shift)
        let inexact = shift >= 64 ? true : significand & ((1 << UInt64(shift)) &- 1) != 0
        let limit: UInt64 = value.sign ? 1 << UInt64(bits - 1) : (1 << UInt64(bits - 1)) - 1
        guard magnitude <= limit else { return (nil, false) }
        let mask: UInt64 = bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
        return ((value.sign ? 0 &- magnitude : magnitude) & mask, inexact)
    }
}
