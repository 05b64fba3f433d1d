// MOVS STOS LODS CMPS SCAS with REP/REPE/REPNE. A REP instruction runs at
// most `chunk` iterations per step and then restarts (RIP stays), so that a
// long copy cannot hold the loop, and stops after an MMIO write so that the
// host sees each one. Forward REP MOVS and STOS move the elements of a page
// at once when they can (StringBulk.swift), within the same budget.

extension X86CPU {
    static var stringChunk: Int { 4096 }

    mutating func executeString(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let size = op & 1 == 0 ? 1 : insn.operandSize
        let addressSize = insn.addressSize
        let addressMask = sizeMask(addressSize)
        let step = state.flags.bits & RFLAGS.df != 0 ? 0 &- UInt64(size) : UInt64(size)
        let source = insn.segmentOverride >= 0 ? insn.segmentOverride : SegmentRegisterName.ds.rawValue
        let es = SegmentRegisterName.es.rawValue
        let repeated = insn.rep != 0
        let compares = op == 0xA6 || op == 0xA7 || op == 0xAE || op == 0xAF
        var iterations = 0
        // Forward REP MOVS and STOS go page by page where the host TLB lets
        // them (StringBulk.swift); everything else element by element.
        let bulk = repeated && (op & 0xFE == 0xA4 || op & 0xFE == 0xAA) && step == UInt64(size)
            && debugUnit.dataBreakpoints == 0 && !debugUnit.stepping && accessKey != HostTLBEntry.invalidKey
        // The linear pages of the element last done one by one (1: none).
        var primed: (source: UInt64, destination: UInt64) = (1, 1)
        while true {
            if repeated && state.read(1, size: addressSize, legacyHighBytes: false) == 0 { break }
            let si = state.reg(6) & addressMask, di = state.reg(7) & addressMask
            if bulk {
                let done = bulkString(op, size: size, addressSize: addressSize, source: source,
                                      budget: Self.stringChunk - iterations, primed: primed)
                if done > 0 {
                    iterations += done
                    if state.read(1, size: addressSize, legacyHighBytes: false) == 0 { break }
                    // Restart later, as after `stringChunk` elements below.
                    if iterations >= Self.stringChunk { return true }
                    continue
                }
                primed = (bulkBase(source, si).map { $0 & ~0xFFF } ?? 1, bulkBase(es, di).map { $0 & ~0xFFF } ?? 1)
            }
            switch op {
            case 0xA4, 0xA5:
                guard let value = read(source, si, size: size), write(es, di, value, size: size) else { return false }
                state.write(6, si &+ step, size: addressSize, legacyHighBytes: false)
                state.write(7, di &+ step, size: addressSize, legacyHighBytes: false)
            case 0xAA, 0xAB:
                guard write(es, di, state.read(0, size: size, legacyHighBytes: false), size: size) else { return false }
                state.write(7, di &+ step, size: addressSize, legacyHighBytes: false)
            case 0xAC, 0xAD:
                guard let value = read(source, si, size: size) else { return false }
                state.write(0, value, size: size, legacyHighBytes: false)
                state.write(6, si &+ step, size: addressSize, legacyHighBytes: false)
            case 0xA6, 0xA7:
                guard let a = read(source, si, size: size), let b = read(es, di, size: size) else { return false }
                _ = alu(7, a, b, size: size)
                state.write(6, si &+ step, size: addressSize, legacyHighBytes: false)
                state.write(7, di &+ step, size: addressSize, legacyHighBytes: false)
            default:  // AE AF SCAS
                guard let b = read(es, di, size: size) else { return false }
                _ = alu(7, state.read(0, size: size, legacyHighBytes: false), b, size: size)
                state.write(7, di &+ step, size: addressSize, legacyHighBytes: false)
            }
            if !repeated { break }
            let count = (state.read(1, size: addressSize, legacyHighBytes: false) &- 1) & addressMask
            state.write(1, count, size: addressSize, legacyHighBytes: false)
            if compares {
                let zf = state.flags.materialized & RFLAGS.zf != 0
                if (insn.rep == 0xF3 && !zf) || (insn.rep == 0xF2 && zf) { break }
            }
            if count == 0 { break }
            iterations += 1
            // Restart later: RIP stays at the instruction.
            // Single-step and data breakpoints trap after each iteration.
            if mmioWritePending || iterations >= Self.stringChunk || debugUnit.stepping || debugUnit.hits != 0 { return true }
        }
        state.rip = insn.nextRIP
        return true
    }
}
