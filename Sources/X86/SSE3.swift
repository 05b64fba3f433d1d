// SSE3 (Intel SDM Vol. 2): ADDSUBPS/PD, HADDPS/PD, HSUBPS/PD, MOVSLDUP,
// MOVSHDUP, MOVDDUP, LDDQU. The x87 FISTTP that SSE3 brought runs on the
// host FPU with the other x87 stores (X87Arithmetic.swift). MONITOR and
// MWAIT have their own CPUID bit and are not here.

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
}
